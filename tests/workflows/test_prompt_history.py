"""A prompt's result never depends on what the server ran before, and partial target runs.

The Inject's patched model is a cached output, so one patch serves many prompts: its state must
start afresh with every sampling run, on both hosts (current ComfyUI announces runs; ComfyUI of
early 2024 does not).
"""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from conftest import HOST
from fpe_harness.execute import Executor, call_node
from fpe_harness.graphs import SRC, TGT, capture, inject, latent, max_abs
from fpe_harness.host import pack_submodule
from fpe_harness.prompts import STEPS, fpe_prompt
from fpe_harness.reference import encode

START_MESSAGE = r"the target sampler starts at step 1 of the 5 steps FPE Source Capture ran"


def saved_latent(result, node_id="9") -> torch.Tensor:
    saved = result.outputs[node_id]["latents"][0]
    path = HOST.workdir / saved["type"] / saved["subfolder"] / saved["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"]


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_a_prompt_gives_the_same_result_whatever_ran_before(tiny_sd15_ckpt, sampler):
    a = fpe_prompt(tiny_sd15_ckpt, sampler)
    late_start = fpe_prompt(tiny_sd15_ckpt, sampler, start_at_step=1)  # rejected: see below
    other_sampler = fpe_prompt(tiny_sd15_ckpt, sampler, target_sampler="dpm_2")  # fails at a midpoint
    other_prompt = fpe_prompt(tiny_sd15_ckpt, sampler, target="a photo of wooden ducks walking on street")

    fresh = saved_latent(Executor().run(a))
    server = Executor()
    results = [server.run(a)]
    for failing, good in ((late_start, a), (other_sampler, a), (other_prompt, a)):
        failed = server.run(failing, expect_success=failing is other_prompt)
        assert failed.success == (failing is other_prompt)
        results.append(server.run(good))
    for i, result in enumerate(results):
        if i:  # the target sampler really ran again, on the cached Inject
            assert "8" in result.executed and "7" not in result.executed
        assert torch.equal(saved_latent(result), fresh), f"run {i} of A differs from a fresh server's"


def test_two_target_samplers_on_one_inject_give_the_same_edit(tiny_sd15_ckpt):
    result = Executor().run(fpe_prompt(tiny_sd15_ckpt, "heun", twice=True))
    assert torch.equal(saved_latent(result, "9"), saved_latent(result, "11"))


def test_a_late_start_is_refused_the_same_way_before_and_after_a_valid_run(tiny_sd15_ckpt):
    late_start = fpe_prompt(tiny_sd15_ckpt, "heun", start_at_step=1)
    messages = []
    for history in ([], [fpe_prompt(tiny_sd15_ckpt, "heun")]):
        server = Executor()
        for prompt in history:
            server.run(prompt)
        error = server.run(late_start, expect_success=False).error
        assert error["node_id"] == "8" and error["exception_type"].endswith("FPEError")
        messages.append(error["exception_message"])
    assert messages[0] == messages[1]
    assert messages[0].startswith("the target sampler starts at step 1 of the 5 steps FPE Source Capture ran")
    assert "start_at_step to 0" in messages[0]


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("leftover", [True, False], ids=["leftover-noise", "full-denoise"])
def test_a_target_that_stops_early_runs_the_full_edit_s_first_steps(tiny_sd15, sampler, leftover):
    """end_at_step < steps: the steps that run are the full edit's, bit for bit (the latent after
    step 3 of the full run, read by the sampler callback); with full denoise the last one jumps to 0."""
    import comfy.sample

    model, clip, _ = tiny_sd15
    _, source = capture(model, clip, SRC, latent_image=latent(64, 48), steps=STEPS, sampler=sampler)
    patched = inject(model, source)
    positive, negative = encode(clip, TGT), encode(clip, "")
    empty = latent(64, 48)["samples"]
    noise = comfy.sample.prepare_noise(empty, 42)
    seen = {}

    def callback(step, x0, x, total):
        seen[step] = x.detach().clone()

    full = comfy.sample.sample(patched, noise, STEPS, 7.5, sampler, "normal", positive, negative, empty,
                               callback=callback, disable_pbar=True, seed=42)
    stop = 3
    early = call_node("KSamplerAdvanced", model=patched, add_noise="enable", noise_seed=42, steps=STEPS, cfg=7.5,
                      sampler_name=sampler, scheduler="normal", positive=positive, negative=negative,
                      latent_image=latent(64, 48), start_at_step=0, end_at_step=stop,
                      return_with_leftover_noise="enable" if leftover else "disable")[0]["samples"]
    scale = model.model.latent_format.scale_factor
    if leftover:  # exactly the full run's latent entering step 3
        assert torch.equal(early, (seen[stop] / scale).to(early))
    else:
        assert torch.isfinite(early).all() and max_abs(early, full) > 1e-3  # stopped early, on its own schedule
    plain_early = call_node("KSamplerAdvanced", model=model, add_noise="enable", noise_seed=42, steps=STEPS, cfg=7.5,
                            sampler_name=sampler, scheduler="normal", positive=positive, negative=negative,
                            latent_image=latent(64, 48), start_at_step=0, end_at_step=stop,
                            return_with_leftover_noise="enable" if leftover else "disable")[0]["samples"]
    assert max_abs(early, plain_early) > 1.0  # the edit acted in the steps that ran


def test_the_start_check_applies_to_sampler_custom_sigmas_too(tiny_sd15):
    model, clip, _ = tiny_sd15
    FPEError = pack_submodule("fpe_attention.errors").FPEError
    _, source = capture(model, clip, SRC, latent_image=latent(64, 48), steps=STEPS)
    sigmas = call_node("BasicScheduler", model=model, scheduler="normal", steps=STEPS, denoise=1.0)[0]
    with pytest.raises(FPEError, match=START_MESSAGE):
        call_node("SamplerCustom", model=inject(model, source), add_noise=True, noise_seed=42, cfg=7.5,
                  positive=encode(clip, TGT), negative=encode(clip, ""),
                  sampler=call_node("KSamplerSelect", sampler_name="euler")[0], sigmas=sigmas[1:],
                  latent_image=latent(64, 48))


def test_a_schedule_that_repeats_its_first_sigma_pairs_and_restarts_cleanly(tiny_sd15):
    """ComfyUI's `simple` scheduler past 1000 steps starts σ0, σ0, ...: the second evaluation there is the
    same run's step 1 (not a new run), and the next run still starts clean."""
    model, clip, _ = tiny_sd15
    base = call_node("BasicScheduler", model=model, scheduler="normal", steps=4, denoise=1.0)[0]
    sigmas = torch.cat([base[:1], base])  # σ0, σ0, σ1, σ2, σ3, 0
    src, source = capture(model, clip, SRC, latent_image=latent(64, 48), sampler="euler", sigmas=sigmas)
    assert source.top_evaluations() == 2
    assert len([key for key in source.entries if key.sigma == ("s", 0)]) == 2  # step 1 did not overwrite step 0

    def custom(text):
        return call_node("SamplerCustom", model=patched, add_noise=True, noise_seed=42, cfg=7.5,
                         positive=encode(clip, text), negative=encode(clip, ""),
                         sampler=call_node("KSamplerSelect", sampler_name="euler")[0], sigmas=sigmas,
                         latent_image=latent(64, 48))[0]["samples"]

    patched = inject(model, source)
    first = custom(SRC)
    assert torch.equal(first, src["samples"])
    edited = custom(TGT)
    assert torch.equal(custom(SRC), first) and torch.equal(custom(TGT), edited)  # runs after runs
