"""MMDiT models as the host loads them (issue 27): which family, which attention blocks, where the image tokens sit.

Read from the loaded modules, never from a checkpoint's name: a Flux backbone (``double_blocks`` and
``single_blocks``; Flux.1 dev/schnell and their fine-tunes) or an SD3 / SD3.5 MMDiT (``joint_blocks``; SD3.5-Medium's
MMDiT-X blocks carry a second, image-only self-attention, ``x_block.attn2``). Other DiT families (AuraFlow,
HunyuanDiT, Lumina, Qwen-Image, Flux 2, Chroma) keep a refusal that names them.

Token layout inside one joint attention call (the override sees the whole sequence):

* Flux: ``[text | image | reference images]`` (Flux Kontext appends its reference-image tokens after the image);
* SD3: ``[registers | text | image]`` (register tokens, where a model has them, count with the text as "other"
  keys; ComfyUI's SD3 and SD3.5 loaders set none).

The image holds ceil(H/p)·ceil(W/p) tokens for a latent of H×W and patch size p (both families pad to the patch).
"""

from __future__ import annotations

from dataclasses import dataclass

from .dit_blocks import DiTBlocks, flux_blocks, sd3_blocks
from .errors import FPEError

# model_base classes FPE serves on MMDiT (subclasses of these are other families: Flux2, Chroma).
_SERVED = {"Flux": "Flux", "SD3": "SD3"}


@dataclass(frozen=True)
class DiTLayout:
    """One loaded MMDiT: its block table and how its joint sequences are laid out."""

    family: str  # "Flux", "SD3", "SD3.5-M" (with MMDiT-X self-attention)
    blocks: DiTBlocks
    patch: int
    registers: int = 0  # register tokens prepended to the text (the MMDiT class supports them; SD3/3.5 have none)
    hidden: int = 0  # the attention width (heads x head size) of every block

    @property
    def flux(self) -> bool:
        return self.family == "Flux"

    def image_tokens(self, height: int, width: int) -> int:
        p = self.patch
        return ((height + p - 1) // p) * ((width + p - 1) // p)

    def text_width(self, model) -> int | None:
        """The width of the text embedding the model projects in (None where it cannot tell)."""
        backbone = model.model.diffusion_model
        layer = getattr(backbone, "txt_in" if self.flux else "context_embedder", None)
        return getattr(layer, "in_features", None)

    def signature(self) -> tuple:
        return tuple((kind, len(indices)) for kind, indices in sorted(self.blocks.blocks.items()))


def dit_layout(model) -> DiTLayout | None:
    """The layout of a ComfyUI MODEL that is a served MMDiT; None for anything else (UNets, other DiTs)."""
    inner = getattr(model, "model", None)
    backbone = getattr(inner, "diffusion_model", None)
    served = _SERVED.get(type(inner).__name__)
    if served == "Flux" and hasattr(backbone, "double_blocks") and hasattr(backbone, "single_blocks"):
        return DiTLayout("Flux", flux_blocks(len(backbone.double_blocks), len(backbone.single_blocks)),
                         int(getattr(backbone, "patch_size", 2)), hidden=int(getattr(backbone, "hidden_size", 0)))
    if served == "SD3" and hasattr(backbone, "joint_blocks"):
        selfs = tuple(i for i, block in enumerate(backbone.joint_blocks)
                      if getattr(getattr(block, "x_block", None), "x_block_self_attn", False))
        patch = getattr(getattr(backbone, "x_embedder", None), "patch_size", (2, 2))
        patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        qkv = getattr(getattr(getattr(backbone.joint_blocks[0], "x_block", None), "attn", None), "qkv", None)
        return DiTLayout("SD3.5-M" if selfs else "SD3", sd3_blocks(len(backbone.joint_blocks), selfs), patch,
                         int(getattr(backbone, "register_length", 0) or 0),
                         hidden=int(getattr(qkv, "out_features", 0)) // 3)
    return None


def is_dit(model) -> bool:
    return dit_layout(model) is not None


def require_dit(model, node: str, instead: str = "FPE Self-Attn Inject") -> DiTLayout:
    layout = dit_layout(model)
    if layout is None:
        inner = getattr(model, "model", None)
        raise FPEError(
            f"model: {node} edits MMDiT models (Flux.1, SD3, SD3.5); this model is {type(inner).__name__}. For SD1.x, "
            f"SD2.x and SDXL use {instead}")
    return layout


def dit_signature(model, layout: DiTLayout) -> tuple:
    """What must agree between an MMDiT capture's model and its inject's (as ``source.model_signature``)."""
    inner = model.model
    return (type(inner).__name__, type(inner.latent_format).__name__, layout.signature())
