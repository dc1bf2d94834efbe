"""Every FPE error names the input at fault and the fix; most are raised before sampling starts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, TGT, capture, inject, ksampler, latent

W, H = 64, 48
SAME_SCHEDULE = "give the target sampler the same steps, scheduler and denoise as FPE Source Capture"


def _edit(tiny_sd15, source, **kwargs):
    model, clip, _ = tiny_sd15
    options = {"latent_image": latent(W, H), "steps": 3, **kwargs}
    return ksampler(inject(model, source), clip, TGT, **options)


@pytest.mark.parametrize("change", [{"steps": 4}, {"scheduler": "karras"}, {"denoise": 0.6}, {"sampler": "dpm_2"}],
                         ids=["steps", "scheduler", "denoise", "sampler"])
def test_target_schedule_must_be_the_captures(tiny_sd15, small_source, fpe_error, change):
    with pytest.raises(fpe_error, match=SAME_SCHEDULE):
        _edit(tiny_sd15, small_source, **change)


def test_extra_evaluations_of_another_sampler_are_warned(tiny_sd15, small_source, caplog):
    # heun evaluates the capture's (euler) sigmas, some twice: runs, reusing the source's evaluation, and says so.
    with caplog.at_level("WARNING"):
        _edit(tiny_sd15, small_source, sampler="heun")
    assert "the target sampler's model evaluation #2 is at sigma #1" in caplog.text


def test_a_flipped_schedule_is_refused_once_by_name_at_the_capture(tiny_sd15, fpe_error):
    """FlipSigmas on the capture (and the target): the capture would sample away from the image; refused there,
    naming the input, instead of a false 'not where the capture's schedule puts it' at the target."""
    model, clip, _ = tiny_sd15
    sigmas = call_node("BasicScheduler", model=model, scheduler="normal", steps=3, denoise=1.0)[0]
    flipped = call_node("FlipSigmas", sigmas=sigmas)[0]
    with pytest.raises(fpe_error, match=r"^sigmas: the schedule rises at step 0 .*FlipSigmas"):
        capture(model, clip, SRC, latent_image=latent(W, H), sigmas=flipped)
    with pytest.raises(fpe_error, match=r"^sigmas: the schedule rises at step 1 .*FlipSigmas"):  # DDIM Invert too
        call_node("FPEDDIMInvert", model=model, positive=call_node("CLIPTextEncode", clip=clip, text="")[0],
                  latent={"samples": torch.randn(1, 4, H // 8, W // 8)}, steps=3, scheduler="normal", cfg=1.0,
                  denoise=1.0, store_layers="official", store_custom_layers="in4", store_end=0.8, store_rows="cond",
                  storage="auto", precision="exact", reconstruction_check=False,
                  sigmas=torch.tensor([14.6, 2.0, 3.0, 0.0]))


def test_another_checkpoint_or_lora_is_warned(tiny_sd15, small_source, caplog):
    lora = tiny_sd15[0].clone()
    key = "diffusion_model.out.2.weight"
    lora.add_patches({key: (torch.zeros_like(lora.model.state_dict()[key]),)}, 1.0)
    with caplog.at_level("WARNING"):
        inject(lora, small_source)
    assert "gets another checkpoint or other LoRAs than FPE Source Capture used" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        inject(tiny_sd15[0].clone(), small_source)
    assert "other LoRAs" not in caplog.text


def test_the_model_is_compared_by_its_weights_not_by_the_loader(tiny_sd15_ckpt, small_source, comfy_host, caplog):
    """The capture's checkpoint loaded again by another loader node (ComfyUI of early 2024 makes a second module):
    no warning. The same layout with other weights (a fine-tune): warned."""
    import safetensors.torch

    again = call_node("CheckpointLoaderSimple", ckpt_name=tiny_sd15_ckpt)[0]
    with caplog.at_level("WARNING"):
        inject(again, small_source)
    assert "another checkpoint" not in caplog.text
    folder = comfy_host.workdir / "models" / "checkpoints"
    weights = safetensors.torch.load_file(str(folder / tiny_sd15_ckpt))
    tuned = {k: v * 1.01 if k.startswith("model.diffusion_model.") else v for k, v in weights.items()}
    safetensors.torch.save_file(tuned, str(folder / "tiny_sd15_finetune.safetensors"))
    other = call_node("CheckpointLoaderSimple", ckpt_name="tiny_sd15_finetune.safetensors")[0]
    with caplog.at_level("WARNING"):
        inject(other, small_source)
    assert "gets another checkpoint or other LoRAs than FPE Source Capture used" in caplog.text


def test_a_loaded_lora_or_sampling_patch_is_still_the_capture_s_model(tiny_sd15, caplog):
    """After the capture the model stays loaded with its LoRA merged into the weights (and ModelSamplingDiscrete's
    object patch in place): the same MODEL into the Inject is still the capture's, another one is not."""
    model, clip, _ = tiny_sd15
    key = "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"
    lora = model.clone()
    lora.add_patches({key: (torch.ones_like(lora.model.state_dict()[key]) * 0.05,)}, 1.0)
    zsnr = call_node("ModelSamplingDiscrete", model=lora, sampling="eps", zsnr=True)[0]
    for patched in (lora, zsnr):
        _, source = capture(patched, clip, SRC, latent_image=latent(W, H), steps=2)
        with caplog.at_level("WARNING"):
            inject(patched, source)  # the capture's model, still loaded with its patches
        assert "another checkpoint" not in caplog.text
        with caplog.at_level("WARNING"):
            inject(tiny_sd15[0], source)  # the plain model: other weights than the capture's
        assert "gets another checkpoint or other LoRAs than FPE Source Capture used" in caplog.text
        caplog.clear()


def test_target_sigmas_must_be_the_captures(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    sigmas = call_node("FPEOfficialDDIMSigmas", model=model, steps=3)[0]
    _, official = capture(model, clip, SRC, latent_image=latent(W, H), sampler="ddim", sigmas=sigmas)
    assert official.schedule_origin == "sigmas input, 3 steps"
    with pytest.raises(fpe_error, match=SAME_SCHEDULE + r" \(or the same sigmas\)"):
        _edit(tiny_sd15, official, sampler="ddim", scheduler="ddim_uniform")


def test_latent_size_and_batch_must_pair(tiny_sd15, small_source, fpe_error):
    with pytest.raises(fpe_error, match=r"the target latent is 72x48 px \(9x6 latent\) but the source was captured at "
                                       r"64x48 px"):
        _edit(tiny_sd15, small_source, latent_image=latent(72, 48))
    model, clip, _ = tiny_sd15
    _, source2 = capture(model, clip, SRC, latent_image=latent(W, H, 2), steps=3)
    with pytest.raises(fpe_error, match="batch sizes do not pair: the target latent has 3 images, the source 2. Use a "
                                       "source batch of 1"):
        _edit(tiny_sd15, source2, latent_image=latent(W, H, 3))


def test_capture_from_another_architecture_is_refused(tiny_sd15, tiny_sdxl, small_source, fpe_error):
    with pytest.raises(fpe_error, match=r"model: fpe_source was captured with BaseModel \(SD15 latents, 16 self-attention "
                                       r"layers\), but this model is SDXL \(SDXL latents, \d+ self-attention layers\)"):
        inject(tiny_sdxl[0], small_source)


def test_unfinished_capture_is_refused(tiny_sd15, small_source, fpe_error):
    with pytest.raises(fpe_error, match="fpe_source comes from a capture that did not finish"):
        inject(tiny_sd15[0], dataclasses.replace(small_source, complete=False))


def test_interrupted_capture_returns_nothing(tiny_sd15):
    import comfy.model_management

    model, clip, _ = tiny_sd15
    calls = []

    def interrupt_on_second_call(n, context, value, extra_options):
        calls.append(1)
        if len(calls) == 16 * 2:  # the second UNet call
            raise comfy.model_management.InterruptProcessingException()
        return n, context, value

    interrupted = model.clone()
    interrupted.set_model_attn1_patch(interrupt_on_second_call)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        capture(interrupted, clip, SRC, latent_image=latent(W, H), steps=3)


@pytest.mark.parametrize("layers, custom, message", [
    ("custom", "out0", r"layers: layer item 'out0' selects no self-attention layer of this model; its attention "
                       r"blocks are: in1, in2, in4, in5, in7, in8, mid0, out3"),
    ("custom", "foo3", r"layers: unknown block 'foo' in 'foo3': use in, mid or out"),
    ("custom", " ", r"layers: the custom layer list is empty"),
])
def test_layer_lists_that_select_nothing_are_refused(tiny_sd15, small_source, fpe_error, layers, custom, message):
    with pytest.raises(fpe_error, match=message):
        inject(tiny_sd15[0], small_source, layers=layers, custom_layers=custom)


def test_start_after_end_is_refused(tiny_sd15, small_source, fpe_error):
    with pytest.raises(fpe_error, match=r"start \(0.6\) is after end \(0.4\): set start below end"):
        inject(tiny_sd15[0], small_source, start=0.6, end=0.4)


def test_inject_cannot_ask_for_more_than_the_capture_stored(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    _, narrow = capture(model, clip, SRC, latent_image=latent(W, H), steps=3, store_layers="custom",
                        store_custom_layers="in4,in5", store_end=0.5)
    with pytest.raises(fpe_error, match=r"layers 'official' include in1.0, in2.0, in7.0.*which FPE Source Capture did "
                                       r"not store \(its store_layers: 'in4,in5'\)"):
        inject(model, narrow)
    with pytest.raises(fpe_error, match=r"end 0.8 edits steps 0..1 of 3, but FPE Source Capture stored steps 0..0 "
                                       r"\(store_end 0.5\): raise the capture's store_end to at least 0.8"):
        inject(model, narrow, layers="custom", custom_layers="in4")
    with pytest.raises(fpe_error, match="branches 'cond \\+ uncond' needs the source's uncond rows: set FPE Source "
                                       "Capture's store_rows to 'cond \\+ uncond'"):
        inject(model, narrow, layers="custom", custom_layers="in4", end=0.3, branches="cond + uncond")
    _, cfg1 = capture(model, clip, SRC, latent_image=latent(W, H), steps=3, cfg=1.0, store_rows="cond + uncond")
    with pytest.raises(fpe_error, match=r"the capture ran at cfg 1.0, where ComfyUI skips them"):
        inject(model, cfg1, branches="cond + uncond")


def test_capture_layer_list_errors_name_the_capture_s_custom_list_input(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    with pytest.raises(fpe_error, match="store_custom_layers: layer item 'out1'"):
        capture(model, clip, SRC, latent_image=latent(W, H), steps=2, store_layers="custom", store_custom_layers="out1")


def test_capture_stores_only_what_was_asked(tiny_sd15):
    model, clip, _ = tiny_sd15
    _, src = capture(model, clip, SRC, latent_image=latent(W, H), steps=5, store_layers="custom",
                     store_custom_layers="mid0,out3", store_end=0.6, precision="fp16", storage="cpu")
    assert {step for key, step in src.evaluations.items() if key in src.entries} == {0, 1, 2}
    assert all(set(layer_map) == {("middle", 0, 0), ("output", 3, 0)} for layer_map in src.entries.values())
    assert {key[0] for key in src.entries} == {0}  # cond rows only
    tensors = [t for layer_map in src.entries.values() for t in layer_map.values()]
    assert all(t.dtype == torch.float16 and t.device.type == "cpu" for t in tensors)
    per_step = sum(layer.tokens(H // 8, W // 8) * layer.channels for layer in src.layers
                   if layer.key in {("middle", 0, 0), ("output", 3, 0)})
    assert per_step == 1 * 128 + 4 * 128  # 1x1 and 2x2 tokens of 128 channels at this size
    assert src.nbytes == 3 * per_step * 2 and src.bytes_per_step() == per_step * 2


def test_different_seed_is_warned_on_every_host(tiny_sd15, small_source, caplog):
    with caplog.at_level("WARNING"):
        _edit(tiny_sd15, small_source, seed=43)
    assert "the target sampler starts from other noise than FPE Source Capture (a different seed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _edit(tiny_sd15, small_source)
    assert "other noise" not in caplog.text


def test_another_family_s_prompt_or_latent_is_named_before_sampling(tiny_sd15, tiny_sdxl, fpe_error):
    """An SDXL model given SD1.5 prompts, or an SD1.5 model given a 16-channel (SD3/Flux VAE) latent: the source
    nodes name the input instead of failing inside the UNet with a shape error."""
    (model, clip, _), (xl_model, _, _) = tiny_sd15, tiny_sdxl
    positive, negative = (call_node("CLIPTextEncode", clip=clip, text=t)[0] for t in (SRC, ""))
    wide = {"samples": torch.randn(1, 16, H // 8, W // 8)}
    store = dict(store_layers="official", store_custom_layers="in4", store_end=0.8, store_rows="cond",
                 storage="auto", precision="exact")
    sources = {
        "FPESourceCapture": ("latent_image", dict(seed=1, steps=2, cfg=7.5, sampler_name="euler",
                                                  scheduler="normal", denoise=1.0)),
        "FPEDDIMInvert": ("latent", dict(steps=2, scheduler="normal", cfg=1.0, denoise=1.0,
                                         reconstruction_check=False)),
        "FPENullTextInvert": ("latent", dict(steps=2, scheduler="normal", cfg=7.5, inner_steps=1, early_stop=1e-5,
                                             learning_rate=1e-2)),
    }
    for node, (latent_name, settings) in sources.items():
        extra = {} if node == "FPEDDIMInvert" else {"negative": negative}
        with pytest.raises(fpe_error, match=r"^positive: the prompt is encoded \d+ wide, but SDXL's cross-attention "
                                            r"takes \d+: encode it with the CLIP of the same checkpoint"):
            call_node(node, model=xl_model, positive=positive, **extra,
                      **{latent_name: {"samples": torch.randn(1, 4, H // 8, W // 8)}}, **settings, **store)
        with pytest.raises(fpe_error, match=rf"^{latent_name}: the latent has 16 channels but SD1.x takes 4"):
            call_node(node, model=model, positive=positive, **extra, **{latent_name: wide}, **settings, **store)


def _layer_nodes(model, source):
    """Each node input pair (preset, block list) -> a call of that node with the pair set to (preset, text)."""
    def replace(preset_input):
        def call(preset, text):
            layers = {"layers": "official", "custom_layers": "in4", "cross_layers": "all", "cross_custom_layers": "in4"}
            layers.update({preset_input: preset, preset_input.replace("layers", "custom_layers"): text})
            return call_node("FPEAttentionReplace", model=model, fpe_source=source, mode="self", start=0.0, end=0.8,
                             cross_start=0.0, cross_end=0.8, tokens="all tokens", words="", source_text="",
                             target_text="", **layers)
        return call

    def record(preset_input):
        def call(preset, text):
            layers = {"cross_layers": "all", "cross_custom_layers": "", "self_layers": "none", "self_custom_layers": ""}
            layers.update({preset_input: preset, preset_input.replace("layers", "custom_layers"): text})
            return call_node("FPEAttentionRecord", model=model, start_percent=0.0, end_percent=1.0, rows="cond",
                             image=0, **layers)
        return call

    return {
        ("FPESelfAttnInject", "layers"): lambda preset, text: call_node(
            "FPESelfAttnInject", model=model, fpe_source=source, layers=preset, custom_layers=text, start=0.0,
            end=0.8, branches="cond only"),
        ("FPELayerOverview", "layers"): lambda preset, text: call_node(
            "FPELayerOverview", model=model, width=512, height=512, layers=preset, custom_layers=text),
        ("FPEAttentionReplace", "layers"): replace("layers"),
        ("FPEAttentionReplace", "cross_layers"): replace("cross_layers"),
        ("FPEAttentionRecord", "cross_layers"): record("cross_layers"),
        ("FPEAttentionRecord", "self_layers"): record("self_layers"),
    }


def test_every_layer_choice_names_the_input_at_fault_the_same_way(tiny_sd15, small_source, fpe_error):
    """A bad block list is the block-list input's fault; a preset this model cannot take is the preset input's."""
    model, clip, _ = tiny_sd15
    for (_node, preset_input), call in _layer_nodes(model, small_source).items():
        custom_input = preset_input.replace("layers", "custom_layers")
        with pytest.raises(fpe_error, match=rf"^{custom_input}: layer item 'in99'"):
            call("custom", "in99")
        with pytest.raises(fpe_error, match=rf"^{preset_input}: unknown layer preset 'bogus'"):
            call("bogus", "in4")
    with pytest.raises(fpe_error, match=r"^store_custom_layers: layer item 'in99'"):
        capture(model, clip, SRC, latent_image=latent(W, H), steps=2, store_layers="custom", store_custom_layers="in99")
    with pytest.raises(fpe_error, match=r"^store_layers: unknown layer preset 'bogus'"):
        capture(model, clip, SRC, latent_image=latent(W, H), steps=2, store_layers="bogus")
