"""FPE in joint (MMDiT) attention, in plain torch: the edit's arithmetic, host-free (issue 27, first part).

In an MMDiT block one softmax runs over the text and the image tokens together (Flux: [text | image],
SD3: text first; Flux Kontext appends reference-image tokens after the image tokens). "Replace the
target's self-attention map by the source's" then has two readings, both here, on per-head tensors
q, k, v of shape [B, H, L, D] with the image tokens at ``img`` (a slice of L):

* ``image map`` (the literal FPE; Shin et al.'s ``I2I``): for image queries, the logits over image keys
  are the source's (q_src·k_src), the logits over every other key the target's (q_tgt·k_tgt), one
  softmax, the target's V. Text queries attend as they would. No N×N map is built: per head the image
  queries become q' = √2·[q_src ; q_tgt] of width 2D and the keys k' = [k_src ; 0] (image) or [0 ; k_tgt]
  (others), so one attention call with the kernel's own 1/√(2D) scale gives exactly those logits (the √2
  turns 1/√(2D) into 1/√D), with V zero-padded to 2D; text queries take a second call with the target's
  own q, k, v.
* ``image Q,K`` (Shin et al.'s recommended ``qiki``): the target's image queries and keys are the source's,
  then plain attention (text queries then see the source's image keys too).

``attention(q, k, v)`` is any kernel with the scale 1/√(q's last dim) and equal q/k/v widths (ComfyUI's
optimized attention, or ``sdpa`` below); ``explicit_*`` are the references the tests compare with.
"""

from __future__ import annotations

import math

import torch

MODES = ("image map", "image Q,K")


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's fused attention on [B, H, L, D] (scale 1/√D)."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def token_slices(text: int, image: int, *, text_first: bool = True, extra: int = 0) -> tuple[slice, slice]:
    """(text, image) token slices of a joint sequence: text first (Flux, SD3) or image first; ``extra``
    tokens (Flux Kontext's reference images) follow the image tokens and count as "other" keys."""
    if text_first:
        return slice(0, text), slice(text, text + image)
    return slice(image + extra, image + extra + text), slice(0, image)


def _others(length: int, img: slice) -> torch.Tensor:
    keep = torch.ones(length, dtype=torch.bool)
    keep[img] = False
    return keep


def explicit_image_map(q_t, k_t, v_t, q_s, k_s, img: slice) -> torch.Tensor:
    """The reference: the logits matrix built whole (image rows × image keys from the source), softmax, V_tgt."""
    scale = q_t.shape[-1] ** -0.5
    logits = (q_t @ k_t.transpose(-1, -2)) * scale
    logits[..., img, img] = (q_s[..., img, :] @ k_s[..., img, :].transpose(-1, -2)) * scale
    return torch.softmax(logits, dim=-1) @ v_t


def image_map_attention(q_t, k_t, v_t, q_s, k_s, img: slice, attention=sdpa) -> torch.Tensor:
    """``image map`` on an ordinary attention kernel: image queries in one call with 2D-wide heads, the other
    queries in a second call with the target's own q, k, v. Returns [B, H, L, D]."""
    length, dim = q_t.shape[-2], q_t.shape[-1]
    others = _others(length, img).to(q_t.device)
    # image queries: [√2·q_src ; √2·q_tgt] against [k_src ; 0] (image keys) and [0 ; k_tgt] (other keys)
    q_img = torch.cat([q_s[..., img, :], q_t[..., img, :]], dim=-1) * math.sqrt(2.0)
    k_wide = torch.cat([torch.zeros_like(k_t), torch.zeros_like(k_t)], dim=-1)
    k_wide[..., img, :dim] = k_s[..., img, :]
    k_wide[..., others, dim:] = k_t[..., others, :]
    v_wide = torch.cat([v_t, torch.zeros_like(v_t)], dim=-1)
    out = torch.empty_like(v_t)
    out[..., img, :] = attention(q_img, k_wide, v_wide)[..., :dim]
    if bool(others.any()):
        out[..., others, :] = attention(q_t[..., others, :], k_t, v_t)
    return out


def image_map_chunked(q_t, k_t, v_t, q_s, k_s, img: slice, chunk: int = 1024) -> torch.Tensor:
    """``image map`` built explicitly, ``chunk`` queries at a time (logits [B, H, chunk, L] in float32): the
    alternative to the 2D-wide kernel call, kept for the benchmark's comparison (dev/benchmark_mmdit.py)."""
    scale = q_t.shape[-1] ** -0.5
    length = q_t.shape[-2]
    out = torch.empty_like(v_t)
    for first in range(0, length, chunk):
        rows = slice(first, min(first + chunk, length))
        logits = (q_t[..., rows, :].float() @ k_t.float().transpose(-1, -2)) * scale
        image_rows = torch.arange(rows.start, rows.stop, device=q_t.device)
        in_image = (image_rows >= img.start) & (image_rows < img.stop)
        if bool(in_image.any()):
            picked = image_rows[in_image] - rows.start
            source = (q_s[..., rows, :][..., picked, :].float() @ k_s[..., img, :].float().transpose(-1, -2)) * scale
            block = logits[..., picked, :]
            block[..., img] = source
            logits[..., picked, :] = block
        out[..., rows, :] = (torch.softmax(logits, dim=-1) @ v_t.float()).to(v_t.dtype)
        del logits
    return out


def explicit_image_qk(q_t, k_t, v_t, q_s, k_s, img: slice) -> torch.Tensor:
    """The reference for ``image Q,K``: the swapped q and k, the logits built whole."""
    q, k = q_t.clone(), k_t.clone()
    q[..., img, :], k[..., img, :] = q_s[..., img, :], k_s[..., img, :]
    return torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1) @ v_t


def image_qk_attention(q_t, k_t, v_t, q_s, k_s, img: slice, attention=sdpa) -> torch.Tensor:
    """``image Q,K``: the target's image queries and keys replaced by the source's, then the kernel."""
    q, k = q_t.clone(), k_t.clone()
    q[..., img, :], k[..., img, :] = q_s[..., img, :], k_s[..., img, :]
    return attention(q, k, v_t)


def self_attention_fpe(q_s, k_s, v_t, attention=sdpa) -> torch.Tensor:
    """SD3.5-Medium's image-only self-attention (MMDiT-X): the UNet operation, Attention(Q_src, K_src, V_tgt)."""
    return attention(q_s, k_s, v_t)


def joint_edit(mode: str, q_t, k_t, v_t, q_s, k_s, img: slice, attention=sdpa) -> torch.Tensor:
    if mode == "image map":
        return image_map_attention(q_t, k_t, v_t, q_s, k_s, img, attention)
    if mode == "image Q,K":
        return image_qk_attention(q_t, k_t, v_t, q_s, k_s, img, attention)
    raise ValueError(f"unknown joint-attention mode {mode!r}; choose one of {', '.join(MODES)}")
