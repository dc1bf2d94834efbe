"""FPE Layer Overview: a model's transformer layers at an image size, and which ones a layers setting edits."""

from __future__ import annotations

import torch

from ..fpe_attention.architecture import family
from ..fpe_attention.errors import FPEError
from ..fpe_attention.layers import OFFICIAL_CUSTOM, PRESETS, choose_layers
from ..fpe_attention.overview import LATENT_SCALE, draw_overview, layer_overview, text_table
from ..fpe_attention.validate import check_number
from .common import ATTENTION_MAPS
from .preview import preview_ui


class FPELayerOverview:
    DISPLAY_NAME = "FPE Layer Overview"
    CATEGORY = ATTENTION_MAPS
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
        selection = choose_layers(model, layers, custom_layers)
        name = family(model)
        latent_h, latent_w = _latent_size(width, height, latent)
        rows = layer_overview(model, latent_h, latent_w, selection)
        setting = selection.label
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
