"""FPE Layer Overview: a model's transformer layers at an image size, and which ones a layers setting edits."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..fpe_attention.architecture import family
from ..fpe_attention.errors import FPEError
from ..fpe_attention.layers import OFFICIAL_MAX_TOKENS, PRESETS, model_attn1_layers, select_layers
from ..fpe_attention.overview import (
    LATENT_SCALE,
    OverviewRow,
    cross_text,
    grid_text,
    group_name,
    group_numbers,
    group_rows,
    layer_overview,
    text_table,
)
from ..fpe_attention.sweep import fit_text
from ..fpe_attention.validate import check_number
from . import CATEGORY, as_fpe_error
from .preview import _font, preview_ui
from .store import OFFICIAL_CUSTOM

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


class FPELayerOverview:
    CATEGORY = CATEGORY
    OUTPUT_NODE = True  # shows its picture even with nothing connected
    FUNCTION = "overview"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "text")
    OUTPUT_TOOLTIPS = (
        "The table as a picture (also shown on the node): one row per transformer layer, or per run of alike "
        "transformer layers of one block (SDXL), the edited ones highlighted.",
        "The same table as plain text, one line per transformer layer (after a summary line and column titles).")
    DESCRIPTION = ("Shows a model's transformer layers in forward order with their query token grids at an image "
                   "size, and which self-attention layers a layers setting (as FPE Self-Attn Inject's) edits there: "
                   "compare 'official', 'official relative', 'all' and block lists on an unfamiliar checkpoint. "
                   "Runs no sampling.")

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 512, "min": 64, "max": 16384, "step": 8}
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to inspect (SD1.x, SD2.x, SDXL and their fine-tunes); it "
                                               "is only read, not run."}),
                "width": ("INT", dict(size, tooltip="Image width in pixels (the latent is 1/8 of it): token counts, "
                                                     "and so 'official', depend on the size. Ignored when latent is "
                                                     "connected.")),
                "height": ("INT", dict(size, tooltip="Image height in pixels (the latent is 1/8 of it). Ignored when "
                                                      "latent is connected.")),
                "layers": (list(PRESETS), {
                    "default": "official",
                    "tooltip": "The layers setting to show, as FPE Self-Attn Inject's: 'official' (at most 32x32 "
                               "tokens), 'official relative' (every level but the finest), 'paper 4-14' (SD1.x), "
                               "'all', or 'custom' (custom_layers)."}),
                "custom_layers": ("STRING", {
                    "default": OFFICIAL_CUSTOM, "multiline": False,
                    "tooltip": "Block list used when layers is 'custom': in4,in5,mid0,out3-8 · in7.0-4 (transformer "
                               "layers of SDXL blocks) · #4-14 (forward-order numbers, 1-based)."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "Optional: the latent the edit will sample (e.g. Empty Latent Image "
                                                 "or DDIM Invert's); its size replaces width and height."}),
            },
        }

    def overview(self, model, width, height, layers, custom_layers, latent=None):
        available = model_attn1_layers(model)  # first: a model without UNet attention is refused by name
        name = family(model)
        with as_fpe_error("custom_layers" if layers == "custom" else "layers"):
            selection = select_layers(layers, custom_layers, available, name)
        latent_h, latent_w = _latent_size(width, height, latent)
        rows = layer_overview(model, latent_h, latent_w, selection)
        setting = custom_layers if layers == "custom" else layers
        size = f"{latent_w * LATENT_SCALE}x{latent_h * LATENT_SCALE} px (latent {latent_w}x{latent_h})"
        chosen = sum(row.selected for row in rows)
        summary = f"{name}, {size}, layers '{setting}': selects {chosen} of {len(rows)} self-attention layers"
        image = draw_overview(rows, f"{name} - {size}", setting, layers)
        text = text_table(rows, summary)
        ui = preview_ui(image, "FPE_layer_overview")
        ui["text"] = [text]  # shown by text-display extensions
        return {"ui": ui, "result": (image, text)}


def _latent_size(width, height, latent) -> tuple[int, int]:
    if latent is not None:
        samples = latent.get("samples") if isinstance(latent, dict) else None
        if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or min(samples.shape[-2:]) < 1:
            shape = list(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            raise FPEError(f"latent: expected an image LATENT [batch, channels, height, width] (e.g. Empty Latent "
                           f"Image), got {shape}; or leave it unconnected to use width and height")
        return int(samples.shape[-2]), int(samples.shape[-1])
    width = int(check_number("width", width, 64, 16384))
    height = int(check_number("height", height, 64, 16384))
    return height // LATENT_SCALE, width // LATENT_SCALE  # as Empty Latent Image rounds


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
    from PIL import Image, ImageDraw

    groups = group_rows(rows)
    canvas = Image.new("RGB", (WIDTH, HEADER_H + ROW_H * len(groups) + 8), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    big, font, small = _font(17), _font(13), _font(12)
    chosen = sum(row.selected for row in rows)
    draw.text((COL_NUMBER, 8), fit_text(big, f"FPE Layer Overview: {title}", WIDTH - 20), fill=TEXT, font=big)
    line = f"selects {chosen} of {len(rows)} self-attention layers"
    draw.text((COL_NUMBER, 34), fit_text(font, f"layers '{setting}' " + line, WIDTH - 20), fill=TEXT, font=font)
    if chosen:
        draw.text((COL_NUMBER, 54), fit_text(small, _PRESET_NOTES.get(preset, preset), WIDTH - 20), fill=DIM, font=small)
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
    array = np.asarray(canvas).astype(np.float32) / 255.0
    return torch.from_numpy(array)[None]
