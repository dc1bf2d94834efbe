"""FPE with every kind of sampler, the other target nodes, ControlNet and the SDXL layout."""

from __future__ import annotations

import pytest
import torch

from conftest import HOST
from fpe_harness.execute import call_node, node_class
from fpe_harness.graphs import SRC, TGT, capture, inject, ksampler, latent, max_abs
from fpe_harness.reference import encode
from fpe_headless.comfy import tiny_models

W, H = 64, 48


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "heunpp2", "dpm_2", "dpmpp_2m", "uni_pc", "lms"])
def test_deterministic_samplers_pair_every_evaluation(tiny_sd15, sampler):
    model, clip, _ = tiny_sd15
    src, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=5, sampler=sampler)
    # Same prompt: every target evaluation met its exact twin, so the source comes back bit for bit.
    same = ksampler(inject(model, source), clip, SRC, latent_image=latent(W, H), steps=5, sampler=sampler)
    assert torch.equal(same, src["samples"])
    plain = ksampler(model, clip, TGT, latent_image=latent(W, H), steps=5, sampler=sampler)
    edited = ksampler(inject(model, source), clip, TGT, latent_image=latent(W, H), steps=5, sampler=sampler)
    assert max_abs(edited, plain) > 1.0


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde"])
def test_stochastic_samplers_run(tiny_sd15, sampler):
    model, clip, _ = tiny_sd15
    src, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=4, sampler=sampler)
    same = ksampler(inject(model, source), clip, SRC, latent_image=latent(W, H), steps=4, sampler=sampler)
    edited = ksampler(inject(model, source), clip, TGT, latent_image=latent(W, H), steps=4, sampler=sampler)
    assert torch.isfinite(edited).all() and max_abs(edited, src["samples"]) > 1.0
    # The per-step noise is drawn from the seed, the same on both sides: the same prompt gives the source back.
    assert torch.equal(same, src["samples"])


def test_ksampler_advanced_target(tiny_sd15):
    model, clip, _ = tiny_sd15
    src, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=5)

    def advanced(m, text):
        return call_node("KSamplerAdvanced", model=m, add_noise="enable", noise_seed=42, steps=5, cfg=7.5,
                         sampler_name="euler", scheduler="normal", positive=encode(clip, text),
                         negative=encode(clip, ""), latent_image=latent(W, H), start_at_step=0, end_at_step=10000,
                         return_with_leftover_noise="disable")[0]["samples"]

    assert torch.equal(advanced(inject(model, source), SRC), src["samples"])
    edited = advanced(inject(model, source), TGT)
    assert torch.equal(edited, ksampler(inject(model, source), clip, TGT, latent_image=latent(W, H), steps=5))


def test_sampler_custom_advanced_target(tiny_sd15):
    try:
        node_class("SamplerCustomAdvanced")
    except KeyError:
        pytest.skip("SamplerCustomAdvanced is not in this ComfyUI")
    model, clip, _ = tiny_sd15
    src, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=5)
    sigmas = call_node("BasicScheduler", model=model, scheduler="normal", steps=5, denoise=1.0)[0]

    def custom_advanced(m, text):
        guider = call_node("CFGGuider", model=m, positive=encode(clip, text), negative=encode(clip, ""), cfg=7.5)[0]
        return call_node("SamplerCustomAdvanced", noise=call_node("RandomNoise", noise_seed=42)[0], guider=guider,
                         sampler=call_node("KSamplerSelect", sampler_name="euler")[0], sigmas=sigmas,
                         latent_image=latent(W, H))[0]["samples"]

    assert torch.equal(custom_advanced(inject(model, source), SRC), src["samples"])
    assert max_abs(custom_advanced(inject(model, source), TGT), custom_advanced(model, TGT)) > 1.0


def test_controlnet_on_the_target_keeps_acting(tiny_sd15, caplog):
    model, clip, _ = tiny_sd15
    tiny_models.write_controlnet(tiny_models.SD15_TINY, HOST.workdir / "models" / "controlnet" / "tiny_cn.safetensors")
    control = call_node("ControlNetLoader", control_net_name="tiny_cn.safetensors")[0]
    hint = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(0))

    def controlled(text):
        return call_node("ControlNetApply", conditioning=encode(clip, text), control_net=control, image=hint,
                         strength=1.0)[0]

    def sample(m, positive):
        return call_node("KSampler", model=m, seed=42, steps=5, cfg=7.5, sampler_name="euler", scheduler="normal",
                         positive=positive, negative=encode(clip, ""), latent_image=latent(W, H),
                         denoise=1.0)[0]["samples"]

    _, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=5)
    with caplog.at_level("WARNING"):
        with_control = sample(inject(model, source), controlled(TGT))
    without_control = sample(inject(model, source), encode(clip, TGT))
    assert "control could not be applied" not in caplog.text
    assert max_abs(with_control, without_control) > 1.0  # the ControlNet still steers the edit
    # Controlled on both sides, the same prompt still gives the (controlled) source back exactly.
    src_controlled = call_node(
        "FPESourceCapture", model=model, seed=42, steps=5, cfg=7.5, sampler_name="euler", scheduler="normal",
        positive=controlled(SRC), negative=encode(clip, ""), latent_image=latent(W, H), denoise=1.0,
        store_layers="official", store_custom_layers="", store_end=0.8, store_rows="cond", storage="auto",
        precision="exact")
    assert torch.equal(sample(inject(model, src_controlled[1]), controlled(SRC)), src_controlled[0]["samples"])


def test_sdxl_layout_with_several_transformer_layers_per_block(tiny_sdxl):
    model, clip, _ = tiny_sdxl
    src, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=4, store_layers="all")
    assert ("input", 7, 1) in source.stored_layers  # transformer layer 1 of a deep block
    same = ksampler(inject(model, source, layers="all"), clip, SRC, latent_image=latent(W, H), steps=4)
    assert torch.equal(same, src["samples"])
    only_second = ksampler(inject(model, source, layers="custom", custom_layers="in7.1"), clip, TGT,
                           latent_image=latent(W, H), steps=4)
    plain = ksampler(model, clip, TGT, latent_image=latent(W, H), steps=4)
    assert max_abs(only_second, plain) > 1e-3
