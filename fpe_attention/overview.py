"""A model's transformer layers at one image size, and which ones a layer setting edits.

The data behind FPE Layer Overview: one row per transformer layer (its self-attention ``attn1``
and, if it has one, its cross-attention ``attn2``), in forward order, with the query token grid
at the given latent size. The layers come from the same walker the edits use
(``architecture.transformer_layers``) and the choice from ``LayerSelection.includes``, so the overview
cannot disagree with what FPE Self-Attn Inject patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from . import drawing
from .architecture import transformer_layers, unet_of
from .layers import OFFICIAL_MAX_TOKENS, Attn1Layer, LayerKey, LayerSelection, unet_attn1_layers

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


# --- the picture (FPE Layer Overview's image) -------------------------------------------------------

_PRESET_NOTES = {
    "official": "official: layers with at most 32x32 = 1024 query tokens at this size (the authors' code)",
    "official relative": "official relative: every attention level but the finest (the paper's levels at any size)",
    "paper 4-14": "paper 4-14: SD1.5's self-attention layers #4-#14 in forward order, as the paper words it",
    "all": "all: every self-attention layer",
    "custom": "custom: the block list of custom_layers",
}

# The picture's layout (tests read it to find a row's bar).
WIDTH = 800
ROW_H = 22
HEADER_H = 112  # four header lines and the column titles
COL_NUMBER, COL_NAME, COL_GRID = 10, 62, 178
BAR_X, BAR_W = 305, 230
COL_SELF, COL_CROSS = 548, 640

BACKGROUND = (24, 24, 24)
STRIPE = (32, 32, 32)
SELECTED_BACKGROUND = (58, 44, 18)
SELECTED = (255, 168, 38)  # bar and label of an edited layer
UNSELECTED = (96, 96, 96)
TEXT = (235, 235, 235)
DIM = (150, 150, 150)
CROSS = (160, 180, 215)
LIMIT = (90, 150, 235)  # the 'official' token limit
WARNING = (255, 110, 90)


def _bar_scale(rows: list[OverviewRow]) -> tuple[float, float]:
    """(log2 tokens of an empty bar, of a full one): the empty bar is one level (4x) below the smallest
    layer, so it still shows one step; the full bar is the largest; the 'official' mark always fits."""
    logs = [math.log2(max(row.tokens, 1)) for row in rows]
    limit = math.log2(OFFICIAL_MAX_TOKENS)
    return min(logs + [limit]) - 2, max(logs + [limit + 1])


def _bar_length(tokens: int, scale: tuple[float, float]) -> int:
    low, high = scale
    return max(3, round(BAR_W * (math.log2(max(tokens, 1)) - low) / (high - low)))


def draw_overview(rows: list[OverviewRow], title: str, setting: str, preset: str) -> torch.Tensor:
    """The table as an IMAGE [1, H, W, 3]: header, then one row per group of alike transformer layers.

    Bars grow with log2(tokens) (an offset log scale): each resolution level is one constant step, where
    a linear scale would shrink the deep levels (64 tokens beside 4096) to a few pixels."""
    groups = group_rows(rows)
    canvas = Image.new("RGB", (WIDTH, HEADER_H + ROW_H * len(groups) + 8), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    big, font, small = drawing.font(17), drawing.font(13), drawing.font(12)
    chosen = sum(row.selected for row in rows)
    draw.text((COL_NUMBER, 8), drawing.fit_text(big, f"FPE Layer Overview: {title}", WIDTH - 20), fill=TEXT, font=big)
    line = f"selects {chosen} of {len(rows)} self-attention layers"
    draw.text((COL_NUMBER, 34), drawing.fit_text(font, f"layers '{setting}' " + line, WIDTH - 20), fill=TEXT, font=font)
    if chosen:
        draw.text((COL_NUMBER, 54), drawing.fit_text(small, _PRESET_NOTES.get(preset, preset), WIDTH - 20), fill=DIM, font=small)
    else:
        draw.text((COL_NUMBER, 54), "none at this size: FPE would refuse it; try 'official relative' or 'all'",
                  fill=WARNING, font=small)
    draw.text((COL_NUMBER, 72), "bar: query tokens, one step per resolution level; blue line: 32x32 = 1024 "
                                "tokens, the 'official' limit", fill=DIM, font=small)
    headings = ((COL_NUMBER, "#"), (COL_NAME, "layer"), (COL_GRID, "tokens h x w"),
                (BAR_X, "query tokens (log scale)"), (COL_SELF, "self-attn"), (COL_CROSS, "cross-attn"))
    for x, heading in headings:
        draw.text((x, 92), heading, fill=DIM, font=small)
    scale = _bar_scale(rows)
    previous_level = None
    for i, group in enumerate(groups):
        first = group[0]
        top = HEADER_H + i * ROW_H
        background = SELECTED_BACKGROUND if first.selected else (STRIPE if i % 2 else BACKGROUND)
        draw.rectangle((0, top, WIDTH - 1, top + ROW_H - 1), fill=background)
        if previous_level is not None and first.level != previous_level:  # a resolution change
            draw.line((0, top, WIDTH - 1, top), fill=(70, 70, 70))
        previous_level = first.level
        y = top + 4
        name = group_name(group) + (f" ({len(group)})" if len(group) > 1 else "")
        draw.text((COL_NUMBER, y), group_numbers(group), fill=TEXT, font=font)
        draw.text((COL_NAME, y), name, fill=TEXT, font=font)
        draw.text((COL_GRID, y), grid_text(first), fill=TEXT, font=font)
        colour = SELECTED if first.selected else UNSELECTED
        draw.rectangle((BAR_X, top + 5, BAR_X + _bar_length(first.tokens, scale), top + ROW_H - 6), fill=colour)
        draw.text((COL_SELF, y), "edited" if first.selected else "not edited",
                  fill=SELECTED if first.selected else DIM, font=font)
        draw.text((COL_CROSS, y), cross_text(first), fill=CROSS if first.has_cross else DIM, font=font)
    limit_x = BAR_X + _bar_length(OFFICIAL_MAX_TOKENS, scale)
    for y in range(HEADER_H, HEADER_H + ROW_H * len(groups), 6):  # dashed
        draw.line((limit_x, y, limit_x, min(y + 3, HEADER_H + ROW_H * len(groups) - 1)), fill=LIMIT, width=2)
    return drawing.to_image(canvas)
