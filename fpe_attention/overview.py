"""A model's transformer layers at one image size, and which ones a layer setting edits.

The data behind FPE Layer Overview: one row per transformer layer (its self-attention ``attn1``
and, if it has one, its cross-attention ``attn2``), in forward order, with the query token grid
at the given latent size. The layers come from the same walker the edits use
(``layers.transformer_layers``) and the choice from ``LayerSelection.includes``, so the overview
cannot disagree with what FPE Self-Attn Inject patches.
"""

from __future__ import annotations

from dataclasses import dataclass

from .architecture import unet_of
from .layers import Attn1Layer, LayerKey, LayerSelection, transformer_layers, unet_attn1_layers

# Pixels per latent cell of every UNet family FPE serves (the other modules assume it too).
LATENT_SCALE = 8


@dataclass(frozen=True)
class OverviewRow:
    number: int  # 1-based forward order among the attn1 layers (what '#4-14' counts)
    name: str  # e.g. "in4.0"
    key: LayerKey
    level: int  # 2x downsamplings before the layer
    grid: tuple[int, int]  # (h, w) of the query tokens
    tokens: int
    heads: int
    channels: int
    has_cross: bool  # the transformer layer has a cross-attention (attn2)
    context_dim: int | None  # attn2's context width (768 SD1.5, 1024 SD2.x, 2048 SDXL), if readable
    selected: bool  # its attn1 is edited by the setting at this size


def token_grid(level: int, latent_h: int, latent_w: int) -> tuple[int, int]:
    """(h, w) of the tokens after ``level`` stride-2 downsamplings: ceil-halving, as ``Attn1Layer.tokens``."""
    h, w = latent_h, latent_w
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def _context_dim(attn2) -> int | None:
    to_k = getattr(attn2, "to_k", None)
    width = getattr(to_k, "in_features", None)
    return int(width) if isinstance(width, int) else None


def layer_overview(model, latent_h: int, latent_w: int, selection: LayerSelection) -> list[OverviewRow]:
    """The transformer layers of a ComfyUI MODEL in forward order at a ``latent_h`` x ``latent_w`` latent;
    ``selected``: ``selection`` edits the layer's attn1 there. A model without a UNet is an FPEError."""
    unet = unet_of(model)
    layers: list[Attn1Layer] = unet_attn1_layers(unet)
    transformers = [transformer for _, transformer, _ in transformer_layers(unet)]
    rows = []
    for layer, transformer in zip(layers, transformers, strict=True):  # one walker: same order, same length
        tokens = layer.tokens(latent_h, latent_w)
        attn2 = getattr(transformer, "attn2", None)  # None in transformer blocks built without cross-attention
        rows.append(OverviewRow(
            number=layer.number, name=layer.name, key=layer.key, level=layer.level,
            grid=token_grid(layer.level, latent_h, latent_w), tokens=tokens, heads=layer.heads,
            channels=layer.channels, has_cross=attn2 is not None,
            context_dim=_context_dim(attn2) if attn2 is not None else None,
            selected=selection.includes(layer.key, tokens)))
    return rows


def group_rows(rows: list[OverviewRow]) -> list[list[OverviewRow]]:
    """Consecutive rows of one block (SDXL's 2 or 10 transformer layers per block) that look alike
    (same edit state and cross-attention) as one group, so a 70-layer model fits a picture;
    SD1.x/SD2.x blocks hold one layer each and stay one row per layer."""
    groups: list[list[OverviewRow]] = []
    for row in rows:
        last = groups[-1][-1] if groups else None
        if last is not None and (last.key[:2], last.selected, last.has_cross, last.context_dim) == (
                row.key[:2], row.selected, row.has_cross, row.context_dim):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def group_name(group: list[OverviewRow]) -> str:
    """A group's name: 'in7.0-9' for transformer layers 0-9 of one block, 'in4.0' for a single layer."""
    first, last = group[0], group[-1]
    return first.name if len(group) == 1 else f"{first.name}-{last.key[2]}"


def group_numbers(group: list[OverviewRow]) -> str:
    first, last = group[0].number, group[-1].number
    return str(first) if first == last else f"{first}-{last}"


def grid_text(row: OverviewRow) -> str:
    return f"{row.grid[0]}x{row.grid[1]} = {row.tokens}"


def cross_text(row: OverviewRow) -> str:
    if not row.has_cross:
        return "no cross-attn"
    return f"cross (ctx {row.context_dim})" if row.context_dim is not None else "cross"


def text_table(rows: list[OverviewRow], header: str) -> str:
    """``header``, then one line per layer (the IMAGE's table, ungrouped)."""
    lines = [header, f"{'#':>3}  {'layer':<9}{'level':>5}  {'tokens (h x w = n)':<22}{'heads':>5}{'channels':>9}  "
                     f"{'self-attn':<11}cross-attn"]
    for row in rows:
        lines.append(f"{row.number:>3}  {row.name:<9}{row.level:>5}  {grid_text(row):<22}{row.heads:>5}"
                     f"{row.channels:>9}  {'EDITED' if row.selected else '-':<11}{cross_text(row)}")
    return "\n".join(lines)
