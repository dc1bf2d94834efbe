"""Real-image editing: FPE DDIM Invert + FPE Self-Attn Inject against the official algorithm."""

from __future__ import annotations

import pytest
import torch

from conftest import load_tiny
from fpe_harness.execute import call_node
from fpe_harness.graphs import TGT, edit_size, encoded_photo, inject, invert, max_abs, sample_back, toy_model
from fpe_harness.host import pack_submodule
from fpe_harness.reference import encode, official_inversion, official_real_edit

STEPS = 6
_RUNS: dict = {}


def _once(key, make):
    if key not in _RUNS:
        _RUNS[key] = make()
    return _RUNS[key]


def _photo(arch="tiny_sd15"):
    return _once(("photo", edit_size(arch)), lambda: encoded_photo(*edit_size(arch)))


def _inverted(model, clip, arch="tiny_sd15", **kw):
    key = ("invert", id(model), tuple(sorted(kw.items())))
    return _once(key, lambda: invert(model, clip, _photo(arch), steps=STEPS, **kw))


def _sigmas(model, steps=STEPS, scheduler="normal"):
    return call_node("BasicScheduler", model=model, scheduler=scheduler, steps=steps, denoise=1.0)[0]


def _rel(a, b):
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def test_inversion_steps_match_the_official_next_step(tiny_sd15):
    model, clip, _ = tiny_sd15
    inverted, source, _ = _inverted(model, clip)
    sigmas = _sigmas(model)
    # Each step, from the same latent, against the authors' VP formula (float64 in the reference):
    local = official_inversion(model, clip, latent=_photo()["samples"], sigmas=sigmas, teacher=source.trajectory)
    scale = float(local[0].abs().max())
    errors = [max_abs(mine, ref) for mine, ref in zip(source.trajectory, local, strict=True)]
    print(f"one-step error vs official next_step: max {max(errors):.3g} (latent scale {scale:.3g})")
    # The same update in sigma space: float32 rounding (measured 5e-7 relative). Evaluating ε at the
    # current level instead of the destination, or a wrong scaling, is off by the step's size (>1e-2).
    assert max(errors) <= 1e-5 * scale
    top = inverted["samples"] * model.model.latent_format.scale_factor  # LATENT -> sampler space
    assert max_abs(top, source.trajectory[0]) <= 1e-6 * scale
    # Free-running on a smooth model the trajectories agree as a whole (the random tiny UNet is
    # chaotic enough to amplify float32 rounding step after step, so it is compared step by step).
    toy = toy_model(model, lambda x: 0.5 * x + 0.1)
    _, toy_source, _ = invert(toy, clip, _photo(), steps=STEPS)
    free = official_inversion(toy, clip, latent=_photo()["samples"], sigmas=sigmas)
    scale = float(free[0].abs().max())
    assert max(max_abs(a, b) for a, b in zip(toy_source.trajectory, free, strict=True)) <= 1e-5 * scale


def test_source_rows_are_the_inverted_latents_of_each_step(tiny_sd15):
    """The stored attn1 inputs at step i are the model's own on trajectory latent i (source prompt)."""
    import comfy.samplers

    model, clip, _ = tiny_sd15
    _, source, _ = _inverted(model, clip)
    sigmas = _sigmas(model)
    first, stop = source.stored_window
    assert (first, stop) == (0, int(STEPS * 0.8))
    for step in (0, 2, stop - 1):
        seen = {}

        def record(n, context, value, extra_options, seen=seen):
            key = (extra_options["block"][0], extra_options["block"][1], extra_options["block_index"])
            seen[key] = n.clone()
            return n, context, value

        def one_call(model_k, x, _s, extra_args=None, callback=None, disable=None, step=step):
            model_k(source.trajectory[step].to(x), sigmas[step] * x.new_ones([x.shape[0]]), **extra_args)
            return x

        probe = model.clone()
        probe.set_model_attn1_patch(record)
        call_node("SamplerCustom", model=probe, add_noise=False, noise_seed=0, cfg=1.0, positive=encode(clip, ""),
                  negative=encode(clip, ""), sampler=comfy.samplers.KSAMPLER(one_call), sigmas=sigmas,
                  latent_image=_photo())
        stored = [key for key in source.entries if key.sigma == ("s", step)]
        assert len(stored) == 1 and (stored[0].kind, stored[0].occurrence) == (0, 0)  # cond rows, one evaluation
        layers = source.entries[stored[0]]
        assert layers and set(layers) <= set(seen)
        for layer, tensor in layers.items():
            assert torch.equal(tensor, seen[layer]), f"step {step} layer {layer}"
    assert not [key for key in source.entries if key.sigma[1] >= stop]  # nothing past store_end


@pytest.mark.parametrize("arch, window", [("tiny_sd15", (0.0, 0.8)), ("tiny_sd15", (0.2, 0.6)),
                                          ("tiny_sd2", (0.0, 0.8)), ("tiny_sd2_v", (0.0, 0.8)),
                                          ("tiny_sdxl", (0.0, 0.8))])
def test_real_edit_matches_official_map_replacement(arch, window):
    model, clip, _ = load_tiny(arch)
    start, end = window
    inverted, source, _ = _inverted(model, clip, arch)
    plain = _once((arch, "plain-target"), lambda: sample_back(model, clip, inverted, steps=STEPS))
    edited = sample_back(inject(model, source, start=start, end=end), clip, inverted, steps=STEPS)
    reference = official_real_edit(model, clip, trajectory=source.trajectory, target=TGT, steps=STEPS, cfg=7.5,
                                   start=start, end=end)
    recon = _once((arch, "recon"), lambda: sample_back(model, clip, inverted, text="", cfg=1.0, steps=STEPS))
    floor = max_abs(plain[0], sample_back(model, clip, {"samples": inverted["samples"].repeat(2, 1, 1, 1)},
                                          steps=STEPS)[1])
    err = max_abs(edited[0], reference[1])
    effect = max_abs(plain[0], reference[1])
    print(f"{arch} window {window}: |edit - reference| {err:.3g}, batch floor {floor:.3g}, edit effect {effect:.3g}, "
          f"latent scale {float(reference.abs().max()):.3g}; reference source row vs reconstruction "
          f"{max_abs(reference[0], recon[0]):.3g}")
    assert err <= 2 * floor + 2e-5 * float(reference.abs().max())
    assert effect > 100 * err


def _report_rmse(report: str) -> float:
    return float(report.split("latent RMSE ")[1].split("%")[0]) / 100


@pytest.mark.parametrize("arch, prediction", [("tiny_sd15", "eps"), ("tiny_sd15", "v_prediction"),
                                              ("tiny_sd2_v", "v_prediction")])
def test_reconstruction_error_falls_with_steps(arch, prediction):
    model, clip, _ = load_tiny(arch)
    if arch == "tiny_sd15" and prediction != "eps":  # an ε model told to predict v (ModelSamplingDiscrete)
        model = call_node("ModelSamplingDiscrete", model=model, sampling=prediction, zsnr=False)[0]
    assert pack_submodule("fpe_attention.architecture").prediction(model) == prediction
    photo = encoded_photo(64, 64, seed=4)
    errors = []
    for steps in (10, 50, 100):
        inverted, source, report = invert(model, clip, photo, steps=steps, check=True, store_end=0.0)
        back = sample_back(model, clip, inverted, text="", cfg=1.0, steps=steps)
        measured = _rel(back, photo["samples"])
        assert abs(_report_rmse(report) - measured) <= 1e-4 + 0.01 * measured  # the node reports what we see
        errors.append(measured)
    print(f"{arch} {prediction}: reconstruction relative RMSE at 10/50/100 steps:", [f"{e:.3%}" for e in errors])
    # DDIM inversion is first order: ~1/n. 5x and 2x more steps must cut the error by well over 2x and 1.4x,
    # and 100 steps must land within 1.5x of the 1/n extrapolation from 10 steps.
    assert errors[1] < errors[0] / 2.5 and errors[2] < errors[1] / 1.4
    assert errors[2] < 1.5 * errors[0] / 10


def test_constant_noise_model_round_trip_is_exact_through_the_nodes(tiny_sd15):
    model, clip, _ = tiny_sd15
    eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    toy = toy_model(model, lambda x: eps.to(x))
    photo = encoded_photo(64, 64, seed=4)
    inverted, _, report = invert(toy, clip, photo, steps=10, check=True)
    back = sample_back(toy, clip, inverted, text="", cfg=1.0, steps=10)
    print("constant-ε:", report)
    assert _rel(back, photo["samples"]) < 1e-5  # x-independent ε: DDIM is exactly invertible
    assert _report_rmse(report) < 1e-4


def test_real_edit_with_the_source_prompt_reproduces_the_reconstruction(tiny_sd15):
    model, clip, _ = tiny_sd15
    inverted, source, _ = _inverted(model, clip)
    recon = _once(("tiny_sd15", "recon"), lambda: sample_back(model, clip, inverted, text="", cfg=1.0, steps=STEPS))
    same = sample_back(inject(model, source), clip, inverted, text="", cfg=1.0, steps=STEPS)
    other = sample_back(inject(model, source), clip, inverted, text=TGT, cfg=1.0, steps=STEPS)
    drift = max_abs(recon, source.trajectory[-1] / model.model.latent_format.scale_factor)
    print(f"same prompt vs reconstruction {max_abs(same, recon):.3g}; other prompt {max_abs(other, recon):.3g}; "
          f"reconstruction's own error {drift:.3g}")
    # The edit's source rows come from the inverted latents, the plain reconstruction's own rows from its
    # drifting latents: they agree up to that drift's effect, far below what another prompt changes.
    assert max_abs(same, recon) <= 0.5 * drift
    assert max_abs(other, recon) > 10 * max_abs(same, recon)
