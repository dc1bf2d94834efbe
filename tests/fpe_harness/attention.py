"""Test-side attention helpers: trace the attn1 layers a model runs, explicit-softmax attention.

Written independently of the pack so tests can compare the pack against them.
"""

from __future__ import annotations

import torch


def explicit_attention(q, k, v, heads: int, map_fn=None):
    """softmax(QKᵀ/√d)·V with the N×N map built explicitly; ``map_fn`` may edit the map.

    q, k, v: [rows, tokens, heads·dim_head] as ComfyUI's attn1 replace hook receives them.
    """
    rows, tokens, channels = q.shape
    dim = channels // heads

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, dim).transpose(1, 2).float()

    qh, kh, vh = split(q), split(k), split(v)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) * dim**-0.5, dim=-1)
    if map_fn is not None:
        weights = map_fn(weights)
    out = weights @ vh
    return out.transpose(1, 2).reshape(rows, tokens, channels).to(q.dtype)


def trace_attn1(model, run):
    """Run ``run(patched_model)`` with an attn1 patch that records every self-attention call.

    Returns a list of dicts: block, block_index, tokens, channels, heads, cond_or_uncond.
    """
    calls = []

    def record(n, context, value, extra_options):
        calls.append({
            "block": tuple(extra_options["block"]),
            "block_index": extra_options["block_index"],
            "tokens": n.shape[1],
            "channels": n.shape[2],
            "heads": extra_options["n_heads"],
            "cond_or_uncond": list(extra_options["cond_or_uncond"]),
            "sigma": float(extra_options["sigmas"][0]),
        })
        return n, context, value

    patched = model.clone()
    patched.set_model_attn1_patch(record)
    run(patched)
    return calls


def layer_keys(calls) -> list[tuple]:
    """Distinct (block_name, id, block_index) keys in first-seen (forward) order."""
    keys = []
    for c in calls:
        key = (c["block"][0], c["block"][1], c["block_index"])
        if key not in keys:
            keys.append(key)
    return keys


def replace_all_attn1(model, keys, fn):
    """A clone of ``model`` whose attn1 layers at ``keys`` all run ``fn(q, k, v, extra_options)``."""
    patched = model.clone()
    for block_name, number, block_index in keys:
        patched.set_model_attn1_replace(fn, block_name, number, block_index)
    return patched


def head_mean_map(q, k, heads):
    """softmax(QKᵀ/√d) averaged over heads, [rows, Nq, Nk], built explicitly from projected q and k."""
    rows, tokens, channels = q.shape
    d = channels // heads
    qh = q.float().reshape(rows, tokens, heads, d).transpose(1, 2)
    kh = k.float().reshape(rows, k.shape[1], heads, d).transpose(1, 2)
    return torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, dim=-1).mean(dim=1)  # [rows, Nq, Nk]


def explicit_maps(model, keys, *, kind=0, image=0):
    """A clone whose attn1/attn2 replaces sum the explicit head-mean map of one row per layer, with the
    evaluations' sigmas; they return plain attention."""
    from .reference import sdpa  # reference imports this module

    sums, counts, sigmas = {}, {}, []

    def make(attention):
        def replace(q, k, v, extra_options):
            kinds = list(extra_options["cond_or_uncond"])
            per = q.shape[0] // len(kinds)
            if kind in kinds:
                row = kinds.index(kind) * per + image
                key = (attention, extra_options["block"][0], extra_options["block"][1], extra_options["block_index"])
                m = head_mean_map(q[row:row + 1], k[row:row + 1], extra_options["n_heads"])[0]
                sums[key] = sums.get(key, 0) + m
                counts[key] = counts.get(key, 0) + 1
                sigma = float(extra_options["sigmas"][0])
                if not sigmas or sigmas[-1] != sigma:
                    sigmas.append(sigma)
            return sdpa(q, k, v, extra_options["n_heads"])
        return replace

    patched = model.clone()
    for block, number, index in keys:
        patched.set_model_attn1_replace(make("self"), block, number, index)
        patched.set_model_attn2_replace(make("cross"), block, number, index)
    return patched, sums, counts, sigmas
