"""Generated-image editing: FPE Source Capture + FPE Self-Attn Inject against the official algorithm."""

from __future__ import annotations

import pytest

from conftest import load_tiny
from fpe_harness.execute import call_node
from fpe_harness.graphs import (
    SRC,
    TGT,
    capture,
    capture_with,
    edit_size,
    inject,
    ksampler,
    ksampler_with,
    latent,
    max_abs,
)
from fpe_harness.reference import encode, official_batch_edit

_RUNS: dict = {}


def _once(key, make):
    """Runs shared by the parametrized cases below (each sampling run costs seconds on CPU)."""
    if key not in _RUNS:
        _RUNS[key] = make()
    return _RUNS[key]


CASES = [("tiny_sd15", 7.5, (0.0, 0.8)), ("tiny_sd15", 7.5, (0.2, 0.6)), ("tiny_sd15", 1.0, (0.0, 0.8)),
         ("tiny_sd15", 1.0, (0.2, 0.6)), ("tiny_sd2", 7.5, (0.0, 0.8)), ("tiny_sd2_v", 7.5, (0.0, 0.8)),
         ("tiny_sd2_v", 7.5, (0.2, 0.6)), ("tiny_sdxl", 7.5, (0.0, 0.8)), ("tiny_sdxl", 7.5, (0.2, 0.6))]


@pytest.mark.parametrize("arch, cfg, window", CASES)
def test_matches_official_map_replacement(arch, cfg, window):
    model, clip, _ = load_tiny(arch)
    width, height = edit_size(arch)
    steps = 5
    start, end = window
    size = latent(width, height)
    src_latent, source = _once((arch, "capture", cfg), lambda: capture(model, clip, steps=steps, cfg=cfg,
                                                                       latent_image=size))
    plain = _once((arch, "plain", cfg), lambda: ksampler(model, clip, steps=steps, cfg=cfg, latent_image=size))
    edited = ksampler(inject(model, source, start=start, end=end), clip, steps=steps, cfg=cfg, latent_image=size)
    reference = official_batch_edit(model, clip, source=SRC, target=TGT, width=width, height=height, seed=42,
                                     steps=steps, cfg=cfg, start=start, end=end)
    _, _, lh, lw = size["samples"].shape
    kept = {layer.level for layer in source.layers if layer.key in source.stored_layers}
    dropped = {layer.level for layer in source.layers} - kept
    assert kept and dropped, "the size must make the official rule keep some levels and drop others"
    floor = max_abs(src_latent["samples"][0], reference[0])  # same maths, other batch layout and kernel
    err = max_abs(edited[0], reference[1])
    effect = max_abs(plain[0], reference[1])
    print(f"{arch} {lw * 8}x{lh * 8} cfg {cfg} window {window}: |edit - reference| {err:.3g}, source floor "
          f"{floor:.3g}, edit effect {effect:.3g}, latent scale {float(reference.abs().max()):.3g}")
    # The edit must match the reference to the float floor that the unedited source row shows for the
    # same change of batch layout and kernel, and be far from "no edit".
    assert err <= 2 * floor + 1e-5 * float(reference.abs().max())
    assert effect > 100 * err


def _sdxl_encode(clip, text):
    """CLIPTextEncodeSDXL at 1024 px with a crop: pooled output and size conditioning unlike the defaults."""
    return call_node("CLIPTextEncodeSDXL", clip=clip, width=1024, height=1024, crop_w=64, crop_h=32,
                     target_width=1024, target_height=1024, text_g=text, text_l="a photo")[0]


def test_sdxl_prompt_encoder_with_pooled_and_size_conditioning(tiny_sdxl):
    model, clip, _ = tiny_sdxl
    width, height = edit_size("tiny_sdxl")
    size = latent(width, height)
    steps = 4
    src_latent, source = capture_with(model, clip, _sdxl_encode(clip, SRC), size, steps=steps)
    edited = ksampler_with(model, source, clip, _sdxl_encode(clip, TGT), size, steps=steps)
    reference = official_batch_edit(model, clip, source=SRC, target=TGT, width=width, height=height, seed=42,
                                    steps=steps, cfg=7.5, encoder=_sdxl_encode)
    plain = call_node("KSampler", model=model, seed=42, steps=steps, cfg=7.5, sampler_name="euler",
                      scheduler="normal", positive=_sdxl_encode(clip, TGT), negative=encode(clip, ""),
                      latent_image=size, denoise=1.0)[0]["samples"]
    y_effect = max_abs(plain, ksampler(model, clip, steps=steps, latent_image=size))  # CLIPTextEncode: other y
    floor = max_abs(src_latent["samples"][0], reference[0])
    err = max_abs(edited[0], reference[1])
    effect = max_abs(plain[0], reference[1])
    print(f"SDXL encoder: |edit - reference| {err:.3g}, floor {floor:.3g}, edit effect {effect:.3g}, "
          f"size/pooled conditioning effect {y_effect:.3g}")
    assert y_effect > 100 * floor  # the pooled and size conditioning reach the model
    assert err <= 2 * floor + 1e-5 * float(reference.abs().max())
    assert effect > 100 * err
