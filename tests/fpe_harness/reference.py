"""An independent reference for FPE on generated images, written the way the official code works.

The official notebook samples the batch [source, target] from one shared noise; in every
self-attention layer with at most 32x32 query tokens and for steps int(n*start) <= i < int(n*end)
(i counted per UNet call, as its controller does), the target's conditional softmax map is
overwritten by the source's conditional map. Here that runs inside ComfyUI: a batch-2 latent
with batch_index [0, 0] (the same noise on both rows), batched conditioning (source; target),
and an attn1 replace hook on every layer that builds each map explicitly and copies it row to row.
Nothing here imports the pack.
"""

from __future__ import annotations

import torch

from .attention import explicit_attention, layer_keys, trace_attn1
from .execute import call_node

OFFICIAL_MAX_TOKENS = 32 * 32


def sdpa(q, k, v, heads):
    """Attention per head with torch's reference kernel (rows, tokens, heads*dim)."""
    rows, tokens, channels = q.shape

    def split(t):
        return t.reshape(rows, -1, heads, channels // heads).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(rows, tokens, channels)


def encode(clip, text):
    return call_node("CLIPTextEncode", clip=clip, text=text)[0]


def stack_conditioning(first, second):
    """One conditioning entry whose cond tensor holds ``first`` then ``second`` along the batch; the
    pooled output is stacked too, and plain settings both share (SDXL's size conditioning) kept."""
    (c1, d1), (c2, d2) = first[0], second[0]
    extra = {key: value for key, value in d1.items() if not torch.is_tensor(value) and d2.get(key) == value}
    if d1.get("pooled_output") is not None:
        extra["pooled_output"] = torch.cat([d1["pooled_output"], d2["pooled_output"]])
    return [[torch.cat([c1, c2]), extra]]


def _stacked_entries(clip, source, target, encoder=None):
    encoder = encoder or encode
    sources = [source] if isinstance(source, str) else list(source)
    targets = [target] if isinstance(target, str) else list(target)
    assert len(sources) == len(targets)
    return [entry for s, t in zip(sources, targets, strict=True)
            for entry in stack_conditioning(encoder(clip, s), encoder(clip, t))]


def official_batch_edit(model, clip, *, source, target, negative="", width, height, seed, steps, cfg,
                        sampler="euler", scheduler="normal", start=0.0, end=0.8, edit_uncond=False,
                        max_tokens=OFFICIAL_MAX_TOKENS, encoder=None):
    """Sample [source, target] as the official notebook does; returns the [2, C, H, W] latent.

    ``source`` and ``target`` may be lists of prompts: a combined conditioning (one entry per prompt,
    as Conditioning (Combine) makes), where every entry is its own [source_i, target_i] chunk and the
    target row takes the source row's maps entry by entry. ``encoder(clip, text)`` encodes the prompts
    (default CLIPTextEncode; the negative always uses it).
    """
    first, stop = int(steps * start), int(steps * end)
    state = {"calls": 0}
    keys = layer_keys(trace_attn1(model, lambda m: call_node(
        "KSampler", model=m, seed=0, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
        positive=encode(clip, "x"), negative=encode(clip, ""),
        latent_image={"samples": torch.zeros(1, 4, height // 8, width // 8)}, denoise=1.0)))

    def counting_wrapper(apply_model, args):
        state["calls"] += 1  # the official controller's cur_step: one per UNet call
        return apply_model(args["input"], args["timestep"], **args["c"])

    def attn(q, k, v, extra_options):
        step = state["calls"] - 1
        chunks = extra_options["cond_or_uncond"]
        per_chunk = q.shape[0] // len(chunks)
        edit = first <= step < stop and q.shape[1] <= max_tokens

        if not edit:  # any exact attention will do where nothing is replaced
            return sdpa(q, k, v, extra_options["n_heads"])

        def replace(weights):
            weights = weights.clone()
            for j, kind in enumerate(chunks):
                if kind == 0 or edit_uncond:
                    src, tgt = j * per_chunk, j * per_chunk + 1
                    weights[tgt] = weights[src]
            return weights

        return explicit_attention(q, k, v, extra_options["n_heads"], replace)

    patched = model.clone()
    for block_name, number, block_index in keys:
        patched.set_model_attn1_replace(attn, block_name, number, block_index)
    patched.set_model_unet_function_wrapper(counting_wrapper)
    latent = {"samples": torch.zeros(2, 4, height // 8, width // 8), "batch_index": [0, 0]}
    out = call_node("KSampler", model=patched, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                    scheduler=scheduler, positive=_stacked_entries(clip, source, target, encoder),
                    negative=encode(clip, negative), latent_image=latent, denoise=1.0)[0]["samples"]
    assert state["calls"] == steps, f"expected one UNet call per step, got {state['calls']} for {steps} steps"
    return out


def official_inversion(model, clip, *, latent, sigmas, text="", cfg=1.0, teacher=None):
    """The authors' ``invert`` (``next_step``) in VP space, run as a SamplerCustom sampler.

    Walks the forward schedule ``sigmas`` upwards; each step evaluates ε at the destination level
    from the current latent, x_next = √ᾱ_next·(x − √(1−ᾱ_cur)·ε)/√ᾱ_cur + √(1−ᾱ_next)·ε.
    Returns the trajectory in ComfyUI's sampler space (x_VP·√(1+σ²)), forward order: entry i at
    ``sigmas[i]``. With ``teacher`` (a trajectory in the same form), every step starts from the
    teacher's latent at its level instead of the reference's own: one-step (local) comparison.
    """
    import comfy.samplers

    levels = [float(s) for s in sigmas]
    recorded = {}

    def alpha_bar(sigma):
        return 1.0 / (1.0 + sigma**2)

    def sampler(model_k, x, _sigmas, extra_args=None, callback=None, disable=None):
        n = len(levels) - 1
        s_in = x.new_ones([x.shape[0]])
        # The VP update cancels nearly equal terms at high noise: keep the state in float64 (model calls
        # in the model's dtype) so the reference's own rounding stays far below the pack's.
        x_vp = x.double() / (1.0 + levels[n] ** 2) ** 0.5  # the sampler hands the clean latent at sigmas[n]
        recorded[n] = (x_vp * (1.0 + levels[n] ** 2) ** 0.5).float()
        for k in range(n - 1, -1, -1):
            cur, nxt = levels[k + 1], levels[k]
            if teacher is not None:
                x_vp = teacher[k + 1].to(x.device).double() / (1.0 + cur**2) ** 0.5
            x_in = x_vp * (1.0 + nxt**2) ** 0.5
            denoised = model_k(x_in.to(x.dtype), torch.tensor(nxt, dtype=x.dtype, device=x.device) * s_in,
                               **extra_args)
            eps = (x_in - denoised.double()) / nxt
            a_cur, a_nxt = alpha_bar(cur), alpha_bar(nxt)
            x_vp = a_nxt**0.5 * (x_vp - (1 - a_cur) ** 0.5 * eps) / a_cur**0.5 + (1 - a_nxt) ** 0.5 * eps
            recorded[k] = (x_vp * (1.0 + nxt**2) ** 0.5).float()
        return x

    # Start the sampler at the clean latent: SamplerCustom with add_noise off over [σ_end, σ_end].
    end = torch.tensor([levels[-1], levels[-1]], dtype=torch.float32)
    call_node("SamplerCustom", model=model, add_noise=False, noise_seed=0, cfg=cfg, positive=encode(clip, text),
              negative=encode(clip, text), sampler=comfy.samplers.KSAMPLER(sampler), sigmas=end,
              latent_image={"samples": latent * (1.0 + levels[-1] ** 2) ** 0.5})
    return [recorded[i] for i in range(len(levels))]


def official_real_edit(model, clip, *, trajectory, source="", target, negative="", steps, cfg, scheduler="normal",
                       start=0.0, end=0.8, max_tokens=OFFICIAL_MAX_TOKENS):
    """The official real-image edit: rows [source, target] from the inverted noise; before every
    UNet call the source rows are overwritten with the trajectory latent of that step, and the
    target's conditional self-attention maps are replaced by the source's (explicit softmax).
    Returns the [2, C, H, W] latent from KSamplerAdvanced (ddim, no noise)."""
    first, stop = int(steps * start), int(steps * end)
    state = {"calls": 0}
    height, width = trajectory[0].shape[-2] * 8, trajectory[0].shape[-1] * 8
    keys = layer_keys(trace_attn1(model, lambda m: call_node(
        "KSampler", model=m, seed=0, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
        positive=encode(clip, "x"), negative=encode(clip, ""),
        latent_image={"samples": torch.zeros(1, 4, height // 8, width // 8)}, denoise=1.0)))

    def overwrite_source(apply_model, args):
        step = state["calls"]
        state["calls"] += 1
        x = args["input"].clone()
        chunks = len(args["cond_or_uncond"])
        per_chunk = x.shape[0] // chunks
        for j in range(chunks):
            x[j * per_chunk] = trajectory[step][0].to(x)
        return apply_model(x, args["timestep"], **args["c"])

    def attn(q, k, v, extra_options):
        step = state["calls"] - 1
        chunks = extra_options["cond_or_uncond"]
        per_chunk = q.shape[0] // len(chunks)
        if not (first <= step < stop and q.shape[1] <= max_tokens):
            return sdpa(q, k, v, extra_options["n_heads"])

        def replace(weights):
            weights = weights.clone()
            for j, kind in enumerate(chunks):
                if kind == 0:
                    weights[j * per_chunk + 1] = weights[j * per_chunk]
            return weights

        return explicit_attention(q, k, v, extra_options["n_heads"], replace)

    patched = model.clone()
    for block_name, number, block_index in keys:
        patched.set_model_attn1_replace(attn, block_name, number, block_index)
    patched.set_model_unet_function_wrapper(overwrite_source)
    top = trajectory[0] / model.model.latent_format.scale_factor  # sampler space -> LATENT
    out = call_node("KSamplerAdvanced", model=patched, add_noise="disable", noise_seed=0, steps=steps, cfg=cfg,
                    sampler_name="ddim", scheduler=scheduler,
                    positive=stack_conditioning(encode(clip, source), encode(clip, target)),
                    negative=encode(clip, negative), latent_image={"samples": top.repeat(2, 1, 1, 1)},
                    start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable")[0]["samples"]
    assert state["calls"] == steps, f"expected one UNet call per step, got {state['calls']} for {steps} steps"
    return out
