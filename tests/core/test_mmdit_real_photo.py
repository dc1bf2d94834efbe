"""Real photos on MMDiT models: FPE Flow Invert (reverse Euler, destination level) and the edit from its inverted
noise through SamplerCustomAdvanced, on tiny Flux / SD3.5-M models against independent references
(``fpe_harness.mmdit_reference``). Current ComfyUI only (the 2024 host has no flow MMDiT)."""

from __future__ import annotations

import pytest
import torch

from fpe_harness import foreign_models
from fpe_harness.execute import call_node
from fpe_harness.mmdit_reference import reference_edit, reference_inversion

FAMILIES = [name for name in ("Flux", "SD35M") if name in foreign_models.available()]
pytestmark = pytest.mark.skipif(not FAMILIES, reason="this ComfyUI (early 2024) has no Flux or SD3 model classes; "
                                                     "flow inversion is tested on current ComfyUI")
_MODELS: dict = {}


def tiny(name):
    if name not in _MODELS:
        _MODELS[name] = foreign_models.build(name, attention_scale=6.0, scale=0.1)
    return _MODELS[name]


def prompt(seed):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 8, 32, generator=generator),
             {"pooled_output": torch.randn(1, 32, generator=generator), "guidance": 3.5}]]


SRC, TGT = prompt(1), prompt(2)


def photo(seed=5):
    """A stand-in for an encoded photo: a smooth latent (the tiny models have no VAE of their own)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 16, 2, 2, generator=generator)
    return {"samples": torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)}


def invert(name, steps=6, positive=SRC, check=True, storage="auto", **over):
    inputs = dict(model=tiny(name), positive=positive, latent=photo(), steps=steps, scheduler="simple", cfg=1.0,
                  store_end=1.0, storage=storage, store_rows="cond", reconstruction_check=check)
    inputs.update(over)
    return call_node("FPEFlowInvert", **inputs)


def edit(name, noise, sigmas, model, positive=TGT):
    guider = call_node("BasicGuider", model=model, conditioning=positive)[0]
    sampler = call_node("KSamplerSelect", sampler_name="euler")[0]
    return call_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                     latent_image=photo())[0]["samples"]


def layout_of(model):
    from fpe_harness.host import pack_submodule

    return pack_submodule("fpe_attention.dit_model").dit_layout(model)


@pytest.mark.parametrize("name", FAMILIES)
def test_inversion_is_reverse_euler_at_the_destination_level(name):
    noise, source, sigmas, _ = invert(name, check=False)
    expected = reference_inversion(tiny(name), SRC, latent=photo()["samples"], steps=6, flux=layout_of(tiny(name)).flux)
    top = noise.generate_noise(photo())
    assert float(sigmas[0]) == 1.0  # a flow schedule starts at 1: the noise is the inverted latent itself
    assert (top - expected[-1]).abs().max().item() <= 1e-5 * expected[-1].abs().max().item()
    assert len(source.trajectory) == 7
    assert (source.trajectory[-1] - expected[0]).abs().max().item() == 0.0  # the photo's own latent, bottom
    assert source.storage_device == "model" and source.inverted  # a record: it fits


@pytest.mark.parametrize("name", FAMILIES)
def test_the_round_trip_converges_with_steps(name):
    """Reverse Euler's error is first order: 4x the steps cut the reconstruction error ~4x (a random tiny model's
    velocity field is rough, so its error at 6 steps is large: ~50 % of the latent's RMS)."""
    errors = []
    for steps in (6, 24):
        _, _, _, report = invert(name, steps=steps)
        errors.append(float(report.split("latent RMSE ")[1].split("%")[0]))
    assert errors[1] < 0.4 * errors[0], errors


@pytest.mark.parametrize("storage", ["auto", "replay"], ids=["stored", "replay"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_real_photo_edit_matches_the_batched_reference(name, storage):
    model = tiny(name)
    layout = layout_of(model)
    noise, source, sigmas, _ = invert(name, check=False, storage=storage)
    blocks = layout.blocks.keys(("double", "single", "joint"))
    patched = call_node("FPEMMDiTInject", model=model, fpe_source=source, mode="image map", blocks="all",
                        custom_blocks="", start=0.0, end=0.5, branches="cond only")[0]
    edited = edit(name, noise, sigmas, patched)
    plain = edit(name, noise, sigmas, model)
    expected = reference_edit(model, SRC, TGT, latent=None, seed=0, steps=6, mode="image map", blocks=blocks,
                              window=(0, 3), flux=layout.flux, trajectory=source.trajectory)
    unedited = reference_edit(model, SRC, TGT, latent=None, seed=0, steps=6, mode="image map", blocks=blocks,
                              window=(0, 0), flux=layout.flux, trajectory=source.trajectory)
    floor = (unedited - plain).abs().max().item()  # batch-layout rounding alone
    scale = plain.abs().max().item()
    gap = (edited - expected).abs().max().item()
    assert gap <= 3 * floor + 1e-6 * scale, (gap, floor)
    assert (edited - plain).abs().max().item() >= 100 * max(gap, 1e-6 * scale)


def test_the_target_must_start_on_the_inverted_noise_and_take_euler_steps(fpe_error):
    name = FAMILIES[0]
    noise, source, sigmas, _ = invert(name, check=False)
    patched = call_node("FPEMMDiTInject", model=tiny(name), fpe_source=source, mode="image map", blocks="all",
                        custom_blocks="", start=0.0, end=0.5, branches="cond only")[0]
    random_noise = call_node("RandomNoise", noise_seed=3)[0]
    with pytest.raises(fpe_error, match="inverted_noise output to SamplerCustomAdvanced's noise input"):
        edit(name, random_noise, sigmas, patched)
    guider = call_node("BasicGuider", model=patched, conditioning=TGT)[0]
    heun = call_node("KSamplerSelect", sampler_name="dpmpp_2m")[0]
    with pytest.raises(fpe_error, match="does not take Euler steps"):
        call_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=heun, sigmas=sigmas,
                  latent_image=photo())
    assert edit(name, noise, sigmas, patched).isfinite().all()  # and the right run after the failed ones


def test_flow_invert_refuses_unets_and_empty_latents(tiny_sd15, fpe_error):
    with pytest.raises(fpe_error, match="model: FPE Flow Invert edits MMDiT models"):
        call_node("FPEFlowInvert", model=tiny_sd15[0], positive=SRC, latent={"samples": torch.ones(1, 4, 8, 8)},
                  steps=4, scheduler="simple", cfg=1.0, store_end=1.0, storage="auto", store_rows="cond",
                  reconstruction_check=False)
    with pytest.raises(fpe_error, match="latent: it is all zeros"):
        invert(FAMILIES[0], latent={"samples": torch.zeros(1, 16, 8, 8)})



def test_a_schedule_below_sigma_1_starts_on_the_inverted_latent_from_any_latent():
    """A schedule that starts below 1 (the last 4 of 6 sigmas): the inverted noise is the inverse of the host's
    noise scaling there, so the target starts on the inverted latent (to float rounding) whether it gets the
    photo's latent or an empty one (the DDIM guard checks the start)."""
    import comfy.samplers

    name = FAMILIES[0]
    model = tiny(name)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 6)[2:].cpu()
    assert 0.0 < float(sigmas[0]) < 1.0
    noise, source, used, _ = invert(name, check=False, sigmas=sigmas)
    patched = call_node("FPEMMDiTInject", model=model, fpe_source=source, mode="image map", blocks="all",
                        custom_blocks="", start=0.0, end=0.5, branches="cond only")[0]
    guider = call_node("BasicGuider", model=patched, conditioning=TGT)[0]
    sampler = call_node("KSamplerSelect", sampler_name="euler")[0]
    outs = [call_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=used,
                      latent_image=latent)[0]["samples"] for latent in (photo(), {"samples": torch.zeros(1, 16, 8, 8)})]
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-5 * outs[0].abs().max().item()  # the same start
