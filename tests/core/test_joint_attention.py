"""FPE's joint-attention (MMDiT) arithmetic, host-free: the kernel forms against explicit references.

Runs in CI, whose ComfyUI predates SD3 and Flux: the host integration is tested on current ComfyUI."""

from __future__ import annotations

import pytest
import torch

from fpe_harness.host import pack_submodule


def joint():
    return pack_submodule("fpe_attention.joint_attention")


def qkv(seed, batch=2, heads=3, length=29, dim=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=g, dtype=dtype) for _ in range(3)]


LAYOUTS = [dict(text=7, image=22, text_first=True), dict(text=7, image=16, text_first=False, extra=6),
           dict(text=0, image=29, text_first=True)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["text first (Flux, SD3)", "image first + references", "image only"])
def test_image_map_on_a_kernel_equals_the_explicit_logits(layout):
    j = joint()
    q_t, k_t, v_t = qkv(1)
    q_s, k_s, _ = qkv(2)
    _, img = j.token_slices(layout["text"], layout["image"], text_first=layout["text_first"],
                            extra=layout.get("extra", 0))
    reference = j.explicit_image_map(q_t, k_t, v_t, q_s, k_s, img)
    fast = j.image_map_attention(q_t, k_t, v_t, q_s, k_s, img)
    assert float((fast - reference).abs().max()) < 1e-12
    # in float32, within rounding of the latent scale
    fast32 = j.image_map_attention(*(t.float() for t in (q_t, k_t, v_t, q_s, k_s)), img)
    assert float((fast32.double() - reference).abs().max()) < 1e-5
    # the chunked explicit form (the benchmark's alternative), with chunks that cut through the image's rows
    chunked = j.image_map_chunked(q_t, k_t, v_t, q_s, k_s, img, chunk=5)
    assert float((chunked - reference).abs().max()) < 1e-6  # its logits are float32 by design
    # the edit acts: it differs from the target's own attention far above the float floor
    plain = j.sdpa(q_t, k_t, v_t)
    assert float((reference - plain)[..., img, :].abs().max()) > 1e-2


def test_text_queries_and_same_prompts():
    j = joint()
    q_t, k_t, v_t = qkv(3)
    q_s, k_s, _ = qkv(4)
    txt, img = j.token_slices(7, 22)
    plain = j.sdpa(q_t, k_t, v_t)
    edited = j.image_map_attention(q_t, k_t, v_t, q_s, k_s, img)
    assert float((edited[..., txt, :] - plain[..., txt, :]).abs().max()) < 1e-12  # text rows: the target's own
    same = j.image_map_attention(q_t, k_t, v_t, q_t, k_t, img)  # source = target: plain attention
    assert float((same - plain).abs().max()) < 1e-12
    assert torch.equal(j.image_qk_attention(q_t, k_t, v_t, q_t, k_t, img), plain)  # bit for bit


def test_image_qk_and_the_mmdit_x_self_attention():
    j = joint()
    q_t, k_t, v_t = qkv(5)
    q_s, k_s, _ = qkv(6)
    _, img = j.token_slices(7, 22)
    reference = j.explicit_image_qk(q_t, k_t, v_t, q_s, k_s, img)
    assert float((j.image_qk_attention(q_t, k_t, v_t, q_s, k_s, img) - reference).abs().max()) < 1e-12
    # the two modes differ: image Q,K also moves the text rows (they see the source's image keys)
    image_map = j.image_map_attention(q_t, k_t, v_t, q_s, k_s, img)
    assert float((reference - image_map).abs().max()) > 1e-2
    explicit = torch.softmax(q_s @ k_s.transpose(-1, -2) / 4.0, dim=-1) @ v_t  # dim 16: scale 1/4
    assert float((j.self_attention_fpe(q_s, k_s, v_t) - explicit).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="unknown joint-attention mode"):
        j.joint_edit("maps", q_t, k_t, v_t, q_s, k_s, img)
