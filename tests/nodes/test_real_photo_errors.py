"""Real-image editing: the checks that stop a wrong graph, and what the nodes accept."""

from __future__ import annotations

import logging

import pytest
import torch

from fpe_harness.execute import call_node
from fpe_harness.graphs import encoded_photo, inject, invert, max_abs, sample_back
from fpe_harness.host import pack_submodule

STEPS = 4
_RUNS: dict = {}


@pytest.fixture(scope="module")
def fpe_error():
    return pack_submodule("fpe_attention.errors").FPEError


def _setup(model, clip):
    if "setup" not in _RUNS:
        photo = encoded_photo(64, 64, seed=7)
        inverted, source, _ = invert(model, clip, photo, steps=STEPS)
        _RUNS["setup"] = (photo, inverted, source)
    return _RUNS["setup"]


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m", "dpmpp_sde"])
def test_a_sampler_other_than_ddim_is_an_error(tiny_sd15, fpe_error, sampler):
    model, clip, _ = tiny_sd15
    _, inverted, source = _setup(model, clip)
    # One evaluation per step (ancestral, multistep): caught by its step; evaluations between the
    # schedule's sigmas (SDE, higher order): caught by the pairing. Both name ddim.
    with pytest.raises(fpe_error, match="(does not take DDIM steps|where the source run never did).*sampler ddim"):
        sample_back(inject(model, source), clip, inverted, steps=STEPS, sampler=sampler)


def test_euler_is_ddim(tiny_sd15):
    model, clip, _ = tiny_sd15
    _, inverted, source = _setup(model, clip)
    a = sample_back(inject(model, source), clip, inverted, steps=STEPS, sampler="euler")
    b = sample_back(inject(model, source), clip, inverted, steps=STEPS, sampler="ddim")
    assert torch.equal(a, b)


def test_added_noise_or_another_latent_is_an_error(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    photo, inverted, source = _setup(model, clip)
    with pytest.raises(fpe_error, match="does not start from FPE DDIM Invert's latent.*add_noise"):
        sample_back(inject(model, source), clip, inverted, steps=STEPS, add_noise="enable")
    with pytest.raises(fpe_error, match="does not start from FPE DDIM Invert's latent"):
        sample_back(inject(model, source), clip, photo, steps=STEPS)


@pytest.mark.parametrize("change", [{"steps": STEPS + 1}, {"scheduler": "karras"}])
def test_another_schedule_is_an_error(tiny_sd15, fpe_error, change):
    model, clip, _ = tiny_sd15
    _, inverted, source = _setup(model, clip)
    settings = {"steps": STEPS, "scheduler": "normal", **change}
    with pytest.raises(fpe_error, match="same steps, scheduler and denoise as FPE DDIM Invert"):
        sample_back(inject(model, source), clip, inverted, **settings)


def test_partial_denoise_pairs_with_the_matching_start_step(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    photo = encoded_photo(64, 64, seed=7)
    inverted, source, _ = invert(model, clip, photo, steps=3, denoise=0.6)  # ComfyUI: the last 3 of 5 steps
    with pytest.raises(fpe_error, match="same steps, scheduler and denoise as FPE DDIM Invert"):
        sample_back(inject(model, source), clip, inverted, steps=3)  # denoise 1: another schedule
    from fpe_harness.reference import encode

    out = call_node("KSamplerAdvanced", model=inject(model, source), add_noise="disable", noise_seed=0, steps=5,
                    cfg=1.0, sampler_name="ddim", scheduler="normal", positive=encode(clip, ""),
                    negative=encode(clip, ""), latent_image=inverted, start_at_step=2, end_at_step=10000,
                    return_with_leftover_noise="disable")[0]["samples"]
    rel = float((out - photo["samples"]).pow(2).mean().sqrt() / photo["samples"].pow(2).mean().sqrt())
    assert rel < 0.05  # the same prompt gives the photo back (measured well under 1 %)


def test_inverting_with_cfg_above_1(tiny_sd15, caplog):
    model, clip, _ = tiny_sd15
    photo = encoded_photo(64, 64, seed=7)
    base, _, _ = invert(model, clip, photo, steps=STEPS)
    with caplog.at_level(logging.WARNING, logger="free-prompt-editing"):
        official, _, _ = invert(model, clip, photo, steps=STEPS, cfg=7.5, negative="")
    assert "will not reconstruct" not in caplog.text
    # The official setting (empty prompt on both sides at 7.5) is the cfg-1 inversion: CFG between two
    # equal predictions is a no-op (batched vs single calls: float rounding only).
    assert max_abs(official["samples"], base["samples"]) <= 1e-5 * float(base["samples"].abs().max())
    with caplog.at_level(logging.WARNING, logger="free-prompt-editing"):
        invert(model, clip, photo, text="a photo of a cat", steps=STEPS, cfg=7.5, negative="")
    assert "will not reconstruct the image" in caplog.text


def test_bad_invert_inputs_are_named(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    photo = encoded_photo(64, 64, seed=7)
    with pytest.raises(fpe_error, match="latent: it is all zeros"):
        invert(model, clip, {"samples": torch.zeros(1, 4, 8, 8)}, steps=STEPS)
    with pytest.raises(fpe_error, match="store_rows 'cond \\+ uncond'.*connect negative"):
        invert(model, clip, photo, steps=STEPS, store_rows="cond + uncond")
    with pytest.raises(fpe_error, match="store_custom_layers: layer item .in99."):
        invert(model, clip, photo, steps=STEPS, store_layers="custom", store_custom_layers="in99")


def test_uncond_rows_for_branches_cond_and_uncond(tiny_sd15):
    model, clip, _ = tiny_sd15
    photo = encoded_photo(64, 64, seed=7)
    inverted, source, _ = invert(model, clip, photo, steps=STEPS, store_rows="cond + uncond", negative="")
    assert {key[0] for key in source.entries} == {0, 1}
    both = sample_back(inject(model, source, branches="cond + uncond"), clip, inverted, steps=STEPS)
    cond = sample_back(inject(model, source), clip, inverted, steps=STEPS)
    assert max_abs(both, cond) > 1e-3  # the uncond rows are edited too


def test_image_sides(tiny_sd15, fpe_error):
    _, _, vae = tiny_sd15
    image = torch.rand(1, 70, 61, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(fpe_error, match="pixels: the image is 61x70 px.*multiples of 8"):
        call_node("FPEVAEEncodeMean", pixels=image, vae=vae, sides="error")
    latent = call_node("FPEVAEEncodeMean", pixels=image, vae=vae, sides="crop to a multiple of 8")[0]["samples"]
    assert tuple(latent.shape[-2:]) == (8, 7)
    stock = call_node("VAEEncode", pixels=image, vae=vae)[0]["samples"]  # TAESD: deterministic in both hosts
    assert torch.equal(latent, stock)


def test_batch_inverts_as_a_batch(tiny_sd15):
    model, clip, _ = tiny_sd15
    one, two = encoded_photo(64, 64, seed=7), encoded_photo(64, 64, seed=8)
    batch = {"samples": torch.cat([one["samples"], two["samples"]])}
    inverted, source, _ = invert(model, clip, batch, steps=STEPS)
    singles = [invert(model, clip, photo, steps=STEPS)[0]["samples"] for photo in (one, two)]
    scale = float(inverted["samples"].abs().max())
    for i in range(2):
        assert max_abs(inverted["samples"][i], singles[i][0]) <= 1e-5 * scale
    edited = sample_back(inject(model, source), clip, inverted, steps=STEPS)
    assert edited.shape[0] == 2


def test_interrupted_inversion_returns_nothing(tiny_sd15):
    import comfy.model_management

    model, clip, _ = tiny_sd15
    calls = {"n": 0}

    def interrupt_on_second_call(n, context, value, extra_options):
        calls["n"] += 1
        if calls["n"] > 40:  # inside the inversion (11 layers per call)
            raise comfy.model_management.InterruptProcessingException()
        return n, context, value

    interrupted = model.clone()
    interrupted.set_model_attn1_patch(interrupt_on_second_call)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        invert(interrupted, clip, encoded_photo(64, 64, seed=7), steps=STEPS)


def _tiny_gaussian_vae():
    """A small AutoencoderKL (a Gaussian posterior, like SD's VAE), random weights."""
    import comfy.sd

    config = {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
    vae = comfy.sd.VAE(sd={}, config=config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in vae.first_stage_model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return vae


def test_encode_takes_the_posterior_mean(comfy_host):
    vae = _tiny_gaussian_vae()
    image = torch.rand(1, 64, 48, 3, generator=torch.Generator().manual_seed(1))
    ours = call_node("FPEVAEEncodeMean", pixels=image, vae=vae, sides="error")[0]["samples"]
    again = call_node("FPEVAEEncodeMean", pixels=image, vae=vae, sides="error")[0]["samples"]
    assert torch.equal(ours, again)
    with torch.inference_mode():
        engine = vae.first_stage_model
        moments = engine.quant_conv(engine.encoder(image.movedim(-1, 1) * 2.0 - 1.0))
        mean = moments.chunk(2, dim=1)[0]
    assert max_abs(ours, mean) <= 1e-5 * float(mean.abs().max())
    stock = call_node("VAEEncode", pixels=image, vae=vae)[0]["samples"]
    if comfy_host.is_current:  # current ComfyUI's VAE Encode takes the mean too
        assert torch.equal(stock, ours)
    else:  # ComfyUI of early 2024 draws a sample: another latent every run
        assert max_abs(stock, ours) > 1e-3
    assert engine.regularization.sample == (not comfy_host.is_current)  # restored


def test_official_schedule_through_sampler_custom(tiny_sd15, fpe_error):
    from fpe_harness.reference import encode

    model, clip, _ = tiny_sd15
    photo = encoded_photo(64, 64, seed=7)
    sigmas = call_node("FPEOfficialDDIMSigmas", model=model, steps=STEPS)[0]
    inverted, source, report = invert(model, clip, photo, steps=99, sigmas=sigmas, check=True)
    assert source.steps == STEPS  # the sigmas input replaces steps

    def sample(add_noise):
        return call_node("SamplerCustom", model=inject(model, source), add_noise=add_noise, noise_seed=0, cfg=1.0,
                         positive=encode(clip, ""), negative=encode(clip, ""),
                         sampler=call_node("KSamplerSelect", sampler_name="ddim")[0], sigmas=sigmas,
                         latent_image=inverted)[0]["samples"]

    back = sample(False) / torch.sqrt(1 + sigmas[-1] ** 2)  # the official run ends at σ(0), not 0
    rel = float((back - photo["samples"]).pow(2).mean().sqrt() / photo["samples"].pow(2).mean().sqrt())
    print(f"official schedule, {STEPS} steps: edit with the source prompt {rel:.3%} from the photo; {report}")
    assert rel < 0.05
    with pytest.raises(fpe_error, match="add_noise off"):
        sample(True)
