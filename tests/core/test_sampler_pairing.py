"""Source and target with different samplers over the same sigmas: which pairings are exact, which are warned.

FPE pairs the target's n-th model evaluation with the source's n-th (the same sigma, the same place in the
run). Samplers that evaluate the model once per step at the schedule's sigmas (euler, ddim, dpmpp_2m,
euler_ancestral, ...) give the same sequence of sigmas, so any two of them pair one to one: the edit is
Attention(Q_src, K_src, V_tgt) with the source's queries and keys from its own evaluation at that step, the
target stepping with its own sampler. That is checked here against a reference written in the test (the
source's q/k recorded from a plain euler run, handed to the target's cond rows run by dpmpp_2m). A sampler
with correction evaluations (heun, dpm_2) on one side only would pair its corrections with the other side's
steps: the page is told, in both directions.
"""

from __future__ import annotations

import pytest
import torch

from fpe_harness.attention import layer_keys, trace_attn1
from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, TGT, capture, inject, ksampler, latent, max_abs
from fpe_harness.reference import encode, sdpa

W, H, STEPS = 64, 48, 6
PATTERN = "evaluates the model in another pattern than the source's"
_RUNS: dict = {}


def _source(model, clip, sampler):
    if sampler not in _RUNS:
        _RUNS[sampler] = capture(model, clip, SRC, latent_image=latent(W, H), steps=STEPS, sampler=sampler)[1]
    return _RUNS[sampler]


def _reference_edit(model, clip, target_sampler, end=0.8):
    """The edit written out: record the euler source's cond q/k per sigma and layer, then run the target's
    sampler with those q/k on its cond rows for the first int(n*end) steps (every layer: all are at most
    32x32 tokens at this size)."""
    keys = layer_keys(trace_attn1(model, lambda m: ksampler(m, clip, SRC, latent_image=latent(W, H), steps=1)))
    recorded: dict = {}
    sigmas: list[float] = []

    def cond_rows(extra_options, rows):
        chunks = extra_options["cond_or_uncond"]
        per = rows // len(chunks)
        return [slice(j * per, (j + 1) * per) for j, kind in enumerate(chunks) if kind == 0]

    def record(q, k, v, extra_options):
        sigma = float(extra_options["sigmas"][0])
        if sigma not in sigmas:
            sigmas.append(sigma)
        key = (sigma, extra_options["block"][0], extra_options["block"][1], extra_options["block_index"])
        for rows in cond_rows(extra_options, q.shape[0]):
            recorded[key] = (q[rows].clone(), k[rows].clone())
        return sdpa(q, k, v, extra_options["n_heads"])

    def edit(q, k, v, extra_options):
        sigma = float(extra_options["sigmas"][0])
        key = (sigma, extra_options["block"][0], extra_options["block"][1], extra_options["block_index"])
        if sigma not in sigmas[:int(STEPS * end)]:
            return sdpa(q, k, v, extra_options["n_heads"])
        q, k = q.clone(), k.clone()
        for rows in cond_rows(extra_options, q.shape[0]):
            q[rows], k[rows] = recorded[key]
        return sdpa(q, k, v, extra_options["n_heads"])

    def with_replace(fn):
        patched = model.clone()
        for block_name, number, index in keys:
            patched.set_model_attn1_replace(fn, block_name, number, index)
        return patched

    source = ksampler(with_replace(record), clip, SRC, latent_image=latent(W, H), steps=STEPS, sampler="euler")
    assert len(sigmas) == STEPS
    target = ksampler(with_replace(edit), clip, TGT, latent_image=latent(W, H), steps=STEPS, sampler=target_sampler)
    return source, target


def test_single_evaluation_samplers_pair_exactly(tiny_sd15, caplog):
    model, clip, _ = tiny_sd15
    source = _source(model, clip, "euler")
    reference_source, reference = _reference_edit(model, clip, "dpmpp_2m")
    with caplog.at_level("WARNING"):
        edited = ksampler(inject(model, source), clip, TGT, latent_image=latent(W, H), steps=STEPS,
                          sampler="dpmpp_2m")
    plain = ksampler(model, clip, TGT, latent_image=latent(W, H), steps=STEPS, sampler="dpmpp_2m")
    floor = max_abs(capture(model, clip, SRC, latent_image=latent(W, H), steps=STEPS)[0]["samples"], reference_source)
    err, effect = max_abs(edited, reference), max_abs(plain, reference)
    print(f"euler source, dpmpp_2m target: |edit - reference| {err:.3g}, sdpa floor {floor:.3g}, effect {effect:.3g}")
    assert err <= 2 * floor + 1e-5 * float(reference.abs().max())
    assert effect > 100 * err
    assert PATTERN not in caplog.text and "more often" not in caplog.text
    for sampler in ("euler_ancestral", "ddim", "lms"):  # one evaluation per step each: no warning
        with caplog.at_level("WARNING"):
            ksampler(inject(model, source), clip, TGT, latent_image=latent(W, H), steps=STEPS, sampler=sampler)
        assert PATTERN not in caplog.text, sampler


@pytest.mark.parametrize("source_sampler, target_sampler", [("heun", "euler"), ("euler", "heun"),
                                                            ("heun", "dpmpp_2m")])
def test_correction_evaluations_on_one_side_are_warned(tiny_sd15, caplog, source_sampler, target_sampler):
    model, clip, _ = tiny_sd15
    source = _source(model, clip, source_sampler)
    with caplog.at_level("WARNING"):
        ksampler(inject(model, source), clip, TGT, latent_image=latent(W, H), steps=STEPS, sampler=target_sampler)
    assert PATTERN in caplog.text
    assert "Give both sides the same sampler" in caplog.text
    assert caplog.text.count(PATTERN) == 1  # once per run, and not twice for one cause
    assert "more often than the source run did" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the same sampler on both sides: nothing to say
        ksampler(inject(model, source), clip, TGT, latent_image=latent(W, H), steps=STEPS, sampler=source_sampler)
    assert PATTERN not in caplog.text


def test_the_pattern_of_a_real_photo_source_is_ddim(tiny_sd15, caplog):
    """FPE DDIM Invert's source pass evaluates each stored step once: a ddim target pairs, heun is told."""
    from fpe_harness.graphs import encoded_photo, invert

    model, clip, _ = tiny_sd15
    inverted, source = invert(model, clip, encoded_photo(W, H), steps=STEPS)[:2]
    with caplog.at_level("WARNING"):
        call_node("KSamplerAdvanced", model=inject(model, source), add_noise="disable", noise_seed=0, steps=STEPS,
                  cfg=1.0, sampler_name="ddim", scheduler="normal", positive=encode(clip, TGT),
                  negative=encode(clip, ""), latent_image=inverted, start_at_step=0, end_at_step=10000,
                  return_with_leftover_noise="disable")
    assert PATTERN not in caplog.text
    assert torch.isfinite(inverted["samples"]).all()
