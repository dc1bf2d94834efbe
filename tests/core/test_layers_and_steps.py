"""Layer selection (presets, block lists) and the step window / step index rules."""

from __future__ import annotations

import pytest
import torch

from fpe_harness.attention import layer_keys, trace_attn1
from fpe_harness.execute import call_node
from fpe_harness.host import pack_submodule


@pytest.fixture(scope="module")
def layers_mod():
    return pack_submodule("fpe_attention.layers")


@pytest.fixture(scope="module")
def steps_mod():
    return pack_submodule("fpe_attention.steps")


@pytest.fixture(scope="module")
def sd15_layers(tiny_sd15, layers_mod):
    return layers_mod.unet_attn1_layers(tiny_sd15[0].model.diffusion_model)


def test_layers_read_from_modules_match_a_traced_forward_pass(tiny_arch, layers_mod):
    _, (model, clip, _) = tiny_arch
    layers = layers_mod.model_attn1_layers(model)
    # A non-square latent with odd sides exercises the ceil rule of the stride-2 downsampling.
    latent = {"samples": torch.zeros(1, 4, 13, 22)}
    cond = call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    calls = trace_attn1(model, lambda m: call_node(
        "KSampler", model=m, seed=1, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
        positive=cond, negative=cond, latent_image=latent, denoise=1.0))
    assert [layer.key for layer in layers] == layer_keys(calls)
    traced = {(c["block"][0], c["block"][1], c["block_index"]): c["tokens"] for c in calls}
    assert {layer.key: layer.tokens(13, 22) for layer in layers} == traced
    assert [layer.number for layer in layers] == list(range(1, len(layers) + 1))


@pytest.mark.parametrize("name, family, prediction", [
    ("tiny_sd15", "SD1.x", "eps"), ("tiny_sd2", "SD2.x", "eps"), ("tiny_sd2_v", "SD2.x", "v_prediction"),
    ("tiny_sdxl", "SDXL", "eps")])
def test_family_and_prediction_come_from_the_hosts_model_classes(name, family, prediction):
    from conftest import load_tiny

    architecture = pack_submodule("fpe_attention.architecture")
    model = load_tiny(name)[0]
    assert (architecture.family(model), architecture.prediction(model)) == (family, prediction)
    # ModelSamplingDiscrete on top changes what the model predicts, and the pack reads that.
    switched = call_node("ModelSamplingDiscrete", model=model, sampling="v_prediction", zsnr=False)[0]
    assert architecture.prediction(switched) == "v_prediction"
    edm = call_node("ModelSamplingContinuousEDM", model=model, sampling="edm_playground_v2.5", sigma_max=120.0,
                    sigma_min=0.002)[0]
    assert architecture.prediction(edm) == "edm"  # ComfyUI's EDM is a subclass of V_PREDICTION


def test_relative_preset_keeps_every_level_but_the_finest(tiny_arch, layers_mod):
    name, (model, _, _) = tiny_arch
    layers = layers_mod.model_attn1_layers(model)
    family = pack_submodule("fpe_attention.architecture").family(model)
    relative = layers_mod.select_layers("official relative", "", layers, family)
    finest = min(layer.level for layer in layers)
    assert relative.keys == {layer.key for layer in layers if layer.level != finest}
    # It is what the official rule keeps at the architecture's own base size (SD1.5's 512 px rule, SDXL's
    # 1024 px), and it does not change with the size, where the official rule does.
    side = 128 if name == "tiny_sdxl" else 64
    official = layers_mod.select_layers("official", "", layers)
    assert {layer.key for layer in official.resolve(layers, side, side)} == relative.keys
    for other in (side // 2, 3 * side // 2, 2 * side):
        assert {layer.key for layer in relative.resolve(layers, other, other)} == relative.keys
    assert {layer.key for layer in official.resolve(layers, 2 * side, 2 * side)} < relative.keys
def test_official_rule_follows_resolution_as_in_the_code(sd15_layers, layers_mod):
    official = layers_mod.select_layers("official", "", sd15_layers)
    numbers = {side: [layer.number for layer in official.resolve(sd15_layers, side, side)] for side in (32, 64, 128)}
    assert numbers[64] == list(range(3, 14))  # 512 px: #3-#13, 11 layers
    assert numbers[128] == list(range(5, 11))  # 1024 px: #5-#10
    assert numbers[32] == list(range(1, 17))  # 256 px: all 16


def test_paper_preset_and_block_lists(sd15_layers, layers_mod):
    paper = layers_mod.select_layers("paper 4-14", "", sd15_layers)
    assert sorted(layer.number for layer in sd15_layers if layer.key in paper.keys) == list(range(4, 15))
    custom = layers_mod.select_layers("custom", "in4,in5,in7-8, mid0 ;out3-8", sd15_layers)
    official_512 = {layer.key for layer in layers_mod.select_layers("official", "", sd15_layers)
                    .resolve(sd15_layers, 64, 64)}
    assert custom.keys == official_512
    assert layers_mod.parse_block_list("input7.0 middle OUT11", sd15_layers) == {
        ("input", 7, 0), ("middle", 0, 0), ("output", 11, 0)}
    everything = layers_mod.select_layers("all", "", sd15_layers)
    assert len(everything.keys) == 16


def test_sdxl_transformer_layers_can_be_picked_one_by_one(tiny_sdxl, layers_mod):
    layers = layers_mod.unet_attn1_layers(tiny_sdxl[0].model.diffusion_model)
    assert layers_mod.parse_block_list("in7.1,mid.0-1", layers) == {
        ("input", 7, 1), ("middle", 0, 0), ("middle", 0, 1)}
    assert len(layers_mod.parse_block_list("out0-2", layers)) == 6
    with pytest.raises(layers_mod.LayerSelectionError, match="SD1.5's 16 self-attention layers as the paper does; "
                                                             "this model is SDXL with 22"):
        layers_mod.select_layers("paper 4-14", "", layers, "SDXL")


def test_paper_preset_is_sd15_only_even_where_the_count_matches(tiny_sd2, layers_mod):
    layers = layers_mod.model_attn1_layers(tiny_sd2[0])
    assert len(layers) == 16  # SD2 has SD1.5's layer layout, but the paper's numbering is SD1.5's
    with pytest.raises(layers_mod.LayerSelectionError, match="this model is SD2.x with 16: use 'official'"):
        layers_mod.select_layers("paper 4-14", "", layers, "SD2.x")
    assert len(layers_mod.select_layers("custom", "#4-14", layers, "SD2.x").keys) == 11  # the numbers still work


@pytest.mark.parametrize("text, message", [
    ("in3", r"'in3' selects no self-attention layer of this model; its attention blocks are: in1, in2, in4"),
    ("side4", r"unknown block 'side' in 'side4': use in, mid or out; this model's attention blocks are: in1, in2, "
              r"in4, in5, in7, in8, mid0, out3, .*out11 \(#1-#16 in forward order\)"),
    ("in20", r"in block numbers go up to 8 in this model; this model's attention blocks are: in1, "),
    ("#0-17", r"this model has attn1 layers #1-#16 only"),
    ("out8-3", r"range 8-3 runs backwards"),
    ("in4+", r"cannot read layer item 'in4\+'"),
    ("  , ", r"the custom layer list is empty"),
])
def test_bad_block_lists_name_the_item_and_the_fix(sd15_layers, layers_mod, text, message):
    with pytest.raises(layers_mod.LayerSelectionError, match=message):
        layers_mod.select_layers("custom", text, sd15_layers)


def test_step_window_uses_the_official_truncation(steps_mod):
    assert steps_mod.step_window(50, 0.0, 0.8) == (0, 40)
    assert steps_mod.step_window(100, 0.0, 0.29) == (0, 28)  # int(28.999999999999996)
    assert steps_mod.step_window(50, 0.2, 0.6) == (10, 30)
    assert steps_mod.step_window(50, 0.5, 0.5) == (25, 25)
    with pytest.raises(ValueError, match="start .* is after end"):
        steps_mod.step_window(50, 0.6, 0.2)


def test_step_index_comes_from_the_schedule_not_a_counter(tiny_sd15, steps_mod):
    sigmas = call_node("BasicScheduler", model=tiny_sd15[0], scheduler="karras", steps=6, denoise=1.0)[0]
    for i, sigma in enumerate(sigmas[:-1].tolist()):
        assert steps_mod.step_index(sigma, sigmas) == i
        assert steps_mod.step_index(float(torch.tensor(sigma, dtype=torch.float32)), sigmas.double()) == i
        midpoint = (sigmas[i] * sigmas[i + 1]).sqrt().item() if sigmas[i + 1] > 0 else sigmas[i].item() / 2
        assert steps_mod.step_index(midpoint, sigmas) == i  # heun/dpm2 intermediate evaluations
    assert steps_mod.step_index(sigmas[0].item() * 1.5, sigmas) is None


def _linear_step(sigma, values):
    """The step definition, one interval at a time: at its upper end, or strictly inside it."""
    import math

    for i in range(len(values) - 1):
        if math.isclose(sigma, values[i], rel_tol=1e-5, abs_tol=1e-12) or values[i + 1] < sigma < values[i]:
            return i
    return None


def _linear_key(sigma, values):
    """The definition, one position at a time: equal to a schedule value (first one), else between two."""
    import math

    for i, value in enumerate(values):
        if math.isclose(sigma, value, rel_tol=1e-5, abs_tol=1e-12):
            return ("s", i)
    for i in range(len(values) - 1):
        if values[i + 1] < sigma < values[i]:
            return ("m", i)
    return None


def test_the_fast_schedule_index_agrees_with_the_definition(tiny_sd15, steps_mod):
    schedule = pack_submodule("fpe_attention.schedule")
    g = torch.Generator().manual_seed(0)
    for values in (call_node("BasicScheduler", model=tiny_sd15[0], scheduler="karras", steps=37, denoise=1.0)[0],
                   schedule.official_ddim_sigmas(pack_submodule("fpe_attention.host_versions").model_sampling_of(tiny_sd15[0]), 20)):  # ends σ(0), σ(0)
        values = [float(v) for v in values]
        index = steps_mod.ScheduleIndex(values)
        near = [v * (1 + e) for v in values for e in (3e-6, -3e-6, 2e-5, -2e-5)]  # within/outside the tolerance
        probes = values + near + [v * 1.5 for v in values[:3]] + [-1.0, 1e9]
        probes += [float(x) for x in torch.rand(200, generator=g) * values[0] * 1.1]
        for sigma in probes:
            assert index.key(sigma) == _linear_key(sigma, values), sigma
            assert index.step(sigma) == _linear_step(sigma, values), sigma


def test_official_ddim_sigmas_match_the_notebook_schedule(tiny_sd15):
    schedule = pack_submodule("fpe_attention.schedule")
    assert schedule.official_ddim_timesteps(50)[:3] == [980, 960, 940]
    assert schedule.official_ddim_timesteps(50)[-2:] == [20, 0]
    assert len(schedule.official_ddim_timesteps(30)) == 30  # ddim_uniform would give 31 steps
    sigmas = schedule.official_ddim_sigmas(pack_submodule("fpe_attention.host_versions").model_sampling_of(tiny_sd15[0]), 50)
    # Independent: diffusers' scaled_linear betas, alpha_bar, sigma = sqrt((1 - a) / a).
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.tensor(list(range(980, -1, -20)) + [0])
    expected = ((1 - alpha_bar[t]) / alpha_bar[t]).sqrt()
    assert sigmas.shape == (51,)
    torch.testing.assert_close(sigmas.double(), expected, rtol=2e-6, atol=0)
    assert abs(sigmas[0].item() - 13.043) < 1e-3 and abs(sigmas[-1].item() - 0.0292) < 1e-4
    assert sigmas[-1] == sigmas[-2]  # the last step is zero-length, as t = 0 -> alpha_bar_0
