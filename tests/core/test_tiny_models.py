"""The tiny checkpoints: real ComfyUI loaders, real layouts, and attention that matters."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from conftest import HOST, tiny_checkpoint
from fpe_harness.attention import explicit_attention, layer_keys, replace_all_attn1, trace_attn1
from fpe_harness.execute import call_node
from fpe_headless.comfy import tiny_models

SD15_KEYS = (
    [("input", i, 0) for i in (1, 2, 4, 5, 7, 8)]
    + [("middle", 0, 0)]
    + [("output", i, 0) for i in range(3, 12)]
)


def _encode(clip, text):
    return call_node("CLIPTextEncode", clip=clip, text=text)[0]


def _sample(model, clip, *, width, height, text="a photo of a cat", batch=1, steps=1, cfg=7.5, seed=7):
    latent = call_node("EmptyLatentImage", width=width, height=height, batch_size=batch)[0]
    return call_node(
        "KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
        positive=_encode(clip, text), negative=_encode(clip, ""), latent_image=latent, denoise=1.0,
    )[0]["samples"]


def test_checkpoints_are_deterministic_and_load_unchanged(tiny_sd15, tiny_sdxl):
    for name, (model, clip, vae) in (("tiny_sd15", tiny_sd15), ("tiny_sdxl", tiny_sdxl)):
        path = HOST.workdir / "models" / "checkpoints" / tiny_checkpoint(name)
        on_disk = load_file(str(path))
        rebuilt = tiny_models.build_state_dict(tiny_models.TINY_SPECS[name])
        assert on_disk.keys() == rebuilt.keys()
        assert all(torch.equal(on_disk[k], rebuilt[k]) for k in on_disk)
        # Every UNet weight the loader built came from the file, unchanged.
        unet = model.model.diffusion_model.state_dict()
        assert len(unet) > 100
        for key, value in unet.items():
            assert torch.equal(value, on_disk["model.diffusion_model." + key]), key
        vae_sd = vae.first_stage_model.state_dict()
        assert len(vae_sd) > 20
        for key, value in vae_sd.items():
            assert torch.equal(value, on_disk["first_stage_model." + key]), key
        # The text encoder weights are loaded too (not left at ComfyUI's default init).
        clip_sd = clip.cond_stage_model.state_dict()
        token_emb = [v for k, v in clip_sd.items() if k.endswith("token_embedding.weight")]
        assert token_emb and all(t.shape[0] == tiny_models.CLIP_VOCAB and t.std() > 0.01 for t in token_emb)


def test_sd15_layout_matches_sd15_attention_table(tiny_sd15):
    model, clip, _ = tiny_sd15
    assert type(model.model).__name__ == "BaseModel"
    assert model.model.latent_format.scale_factor == 0.18215
    calls = trace_attn1(model, lambda m: _sample(m, clip, width=512, height=512))
    assert layer_keys(calls) == SD15_KEYS
    tokens = {(c["block"][0], c["block"][1]): c["tokens"] for c in calls}
    # Same token counts as SD1.5 at 512 px: 4096 / 1024 / 256 / 64.
    assert [tokens[(b, i)] for b, i, _ in SD15_KEYS] == [4096, 4096, 1024, 1024, 256, 256, 64,
                                                         256, 256, 256, 1024, 1024, 1024, 4096, 4096, 4096]
    assert {c["heads"] for c in calls} == {8}
    # One sampling step with cfg: one call per layer holding both chunks.
    assert all(sorted(c["cond_or_uncond"]) == [0, 1] for c in calls) and len(calls) == 16


def test_sdxl_layout_has_several_transformer_layers_per_block(tiny_sdxl):
    model, clip, _ = tiny_sdxl
    assert type(model.model).__name__ == "SDXL"
    assert model.model.latent_format.scale_factor == 0.13025
    cond = _encode(clip, "a photo of a cat")
    assert cond[0][0].shape[-1] == tiny_models.SDXL_TINY.unet_config["context_dim"]
    assert cond[0][1]["pooled_output"].shape[-1] == tiny_models.CLIP_G_TINY["hidden_size"]
    calls = trace_attn1(model, lambda m: _sample(m, clip, width=256, height=256))
    keys = layer_keys(calls)
    expected = (
        [("input", i, j) for i in (4, 5, 7, 8) for j in (0, 1)]
        + [("middle", 0, j) for j in (0, 1)]
        + [("output", i, j) for i in range(0, 6) for j in (0, 1)]
    )
    assert keys == expected
    assert max(k[2] for k in keys) == 1


def _pair_swap_attention(swap: bool):
    """attn1 replacement: each latent row attends with the Q/K of its partner row in the chunk."""
    import comfy.ldm.modules.attention as attention

    def fn(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        if not swap:
            return explicit_attention(q, k, v, heads)
        chunks = len(extra_options["cond_or_uncond"])
        per_chunk = q.shape[0] // chunks
        perm = torch.arange(q.shape[0]).view(chunks, per_chunk).flip(1).reshape(-1)
        return attention.optimized_attention(q[perm], k[perm], v, heads)

    return fn


def test_text_and_self_attention_maps_move_the_output_far_beyond_float_noise(tiny_sd15):
    """Without sharpened attention an FPE edit would be invisible on a random model."""
    model, clip, _ = tiny_sd15
    kw = dict(width=256, height=256, batch=2, steps=4)
    base = _sample(model, clip, **kw)
    keys = layer_keys(trace_attn1(model, lambda m: _sample(m, clip, width=256, height=256)))
    # Float noise: the same attention computed another way (explicit softmax map vs the kernel).
    explicit = _sample(replace_all_attn1(model, keys, _pair_swap_attention(False)), clip, **kw)
    floor = (base - explicit).abs().max().item()
    # Self-attention maps: every row uses its partner image's maps with its own values.
    swapped = _sample(replace_all_attn1(model, keys, _pair_swap_attention(True)), clip, **kw)
    map_effect = (base - swapped).abs().max().item()
    prompt_effect = (base - _sample(model, clip, text="a watercolor of a red bus", **kw)).abs().max().item()
    scale = base.abs().max().item()
    assert floor < 1e-3 * scale, (floor, scale)
    assert map_effect > 1000 * max(floor, 1e-6 * scale), (map_effect, floor)
    assert map_effect > 0.05 * scale, (map_effect, scale)
    assert prompt_effect > 1000 * max(floor, 1e-6 * scale), (prompt_effect, floor)
    assert prompt_effect > 0.05 * scale, (prompt_effect, scale)


def test_self_attention_maps_are_far_from_uniform(tiny_sd15):
    model, clip, _ = tiny_sd15
    peaks = []

    def fn(q, k, v, extra_options):
        def measure(weights):
            tokens = weights.shape[-1]
            peaks.append((weights.amax(-1).mean().item() * tokens, tokens))
            return weights

        return explicit_attention(q, k, v, extra_options["n_heads"], map_fn=measure)

    keys = layer_keys(trace_attn1(model, lambda m: _sample(m, clip, width=256, height=256)))
    _sample(replace_all_attn1(model, keys, fn), clip, width=256, height=256)
    big = [p for p, t in peaks if t >= 64]
    # A uniform map has its peak at 1/T (ratio 1); random init without sharpening stays near 1–2.
    assert big and min(big) > 4.0, peaks
