"""Generated-image editing: FPE Source Capture + FPE Self-Attn Inject against the official algorithm."""

from __future__ import annotations

import pytest

from fpe_harness.graphs import SRC, TGT, H, W, capture, inject, ksampler, max_abs
from fpe_harness.reference import official_batch_edit

_RUNS: dict = {}


def _once(key, make):
    """Runs shared by the parametrized cases below (each sampling run costs seconds on CPU)."""
    if key not in _RUNS:
        _RUNS[key] = make()
    return _RUNS[key]


@pytest.mark.parametrize("cfg", [7.5, 1.0])
@pytest.mark.parametrize("window", [(0.0, 0.8), (0.2, 0.6)])
def test_matches_official_map_replacement(tiny_sd15, cfg, window):
    model, clip, _ = tiny_sd15
    steps = 5
    start, end = window
    src_latent, source = _once(("capture", cfg), lambda: capture(model, clip, steps=steps, cfg=cfg))
    plain = _once(("plain", cfg), lambda: ksampler(model, clip, steps=steps, cfg=cfg))
    edited = ksampler(inject(model, source, start=start, end=end), clip, steps=steps, cfg=cfg)
    reference = official_batch_edit(model, clip, source=SRC, target=TGT, width=W, height=H, seed=42, steps=steps,
                                     cfg=cfg, start=start, end=end)
    floor = max_abs(src_latent["samples"][0], reference[0])  # same maths, other batch layout and kernel
    err = max_abs(edited[0], reference[1])
    effect = max_abs(plain[0], reference[1])
    print(f"cfg {cfg} window {window}: |edit - reference| {err:.3g}, source floor {floor:.3g}, "
          f"edit effect {effect:.3g}, latent scale {float(reference.abs().max()):.3g}")
    # The edit must match the reference to the float floor that the unedited source row shows for the
    # same change of batch layout and kernel, and be far from "no edit".
    assert err <= 2 * floor + 1e-5 * float(reference.abs().max())
    assert effect > 100 * err
