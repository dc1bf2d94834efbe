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


def _sdpa(q, k, v, heads):
    rows, tokens, channels = q.shape

    def split(t):
        return t.reshape(rows, -1, heads, channels // heads).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(rows, tokens, channels)


def encode(clip, text):
    return call_node("CLIPTextEncode", clip=clip, text=text)[0]


def stack_conditioning(first, second):
    """One conditioning entry whose cond tensor holds ``first`` then ``second`` along the batch."""
    (c1, d1), (c2, d2) = first[0], second[0]
    extra = {}
    if d1.get("pooled_output") is not None:
        extra["pooled_output"] = torch.cat([d1["pooled_output"], d2["pooled_output"]])
    return [[torch.cat([c1, c2]), extra]]


def official_batch_edit(model, clip, *, source, target, negative="", width, height, seed, steps, cfg,
                        sampler="euler", scheduler="normal", start=0.0, end=0.8, edit_uncond=False,
                        max_tokens=OFFICIAL_MAX_TOKENS):
    """Sample [source, target] as the official notebook does; returns the [2, C, H, W] latent."""
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
            return _sdpa(q, k, v, extra_options["n_heads"])

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
                    scheduler=scheduler, positive=stack_conditioning(encode(clip, source), encode(clip, target)),
                    negative=encode(clip, negative), latent_image=latent, denoise=1.0)[0]["samples"]
    assert state["calls"] == steps, f"expected one UNet call per step, got {state['calls']} for {steps} steps"
    return out
