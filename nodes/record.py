"""FPE Attention Record: a recording clone of a MODEL, for the attention picture nodes."""

from __future__ import annotations

from ..fpe_attention.layers import PRESETS, model_attn1_layers
from ..fpe_attention.recording import KINDS, NONE, record_model, record_settings, release_generation
from .common import ATTENTION_MAPS


class FPEAttentionRecord:
    DISPLAY_NAME = "FPE Attention Record"
    CATEGORY = ATTENTION_MAPS
    FUNCTION = "record"
    RETURN_TYPES = ("MODEL", "FPE_ATTENTION_RECORD")
    RETURN_NAMES = ("model", "fpe_record")
    OUTPUT_TOOLTIPS = (
        "The same model with the recorder attached: connect it to the sampler whose attention you want to see. "
        "The sampled image is bit for bit the same as without it.",
        "What sampling with that model recorded; connect it to FPE Word Heatmap, FPE Self-Attn Components or FPE "
        "Attention Query, together with the sampler's output latent.")
    DESCRIPTION = (
        "Records the attention maps of ordinary sampling (paper §3, Figure 3): cross-attention maps (which image "
        "tokens look at which prompt word) and self-attention maps (which image tokens look at which: the layout). "
        "Place it last before the sampler, after FPE Self-Attn Inject if any, to see the maps the sampler used; "
        "before FPE Source Capture or FPE DDIM Invert to see the source's. Memory does not grow with steps.")

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        # After FPE Save Attention Maps freed a run (release_run), record anew: a cached sampler output
        # would point at maps that are gone, and the prompt's result would depend on the one before.
        return release_generation()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to record (after FPE Self-Attn Inject, LoRAs and other "
                                               "patches, to see what the sampler runs); a clone is returned."}),
                "cross_layers": ([NONE, *PRESETS], {
                    "default": "all",
                    "tooltip": "Cross-attention layers recorded for word heatmaps: 'all' (as DAAM), the Inject's "
                               "presets, a custom block list, or 'none'. Cheap: tokens x prompt length per layer."}),
                "cross_custom_layers": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Block list when cross_layers is 'custom': in4,in5,mid0,out3-8 · in7.0-4 · #4-14."}),
                "self_layers": ([NONE, *PRESETS], {
                    "default": "official",
                    "tooltip": "Self-attention layers recorded for structure pictures: 'official' (the layers FPE "
                               "edits: <= 32x32 tokens), 'all', a custom block list, or 'none'. Each layer keeps a "
                               "tokens x tokens map: 4 MiB at 32x32, 64 MiB at 64x64."}),
                "self_custom_layers": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Block list when self_layers is 'custom' (same syntax as cross_custom_layers)."}),
                "start_percent": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "First part of the denoising recorded, as ComfyUI's start_percent (0 = the first "
                               "step). Maps are averaged over every model evaluation in the band."}),
                "end_percent": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "End of the recorded band, as ComfyUI's end_percent (1 = the last step). E.g. 0-0.8 "
                               "matches FPE's default injection window."}),
                "rows": (list(KINDS), {
                    "default": "cond",
                    "tooltip": "Which prompt's rows: 'cond' (the positive prompt, what heatmaps usually show) or "
                               "'uncond' (the negative prompt; needs cfg != 1)."}),
                "image": ("INT", {
                    "default": 0, "min": 0, "max": 4095,
                    "tooltip": "Which image of the batch is recorded (0 = the first)."}),
            },
        }

    def record(self, model, cross_layers, cross_custom_layers, self_layers, self_custom_layers, start_percent,
               end_percent, rows, image):
        settings = record_settings(model, cross_layers=cross_layers, cross_custom_layers=cross_custom_layers,
                                   self_layers=self_layers, self_custom_layers=self_custom_layers,
                                   start_percent=start_percent, end_percent=end_percent, rows=rows, image=image)
        return record_model(model, settings, model_attn1_layers(model))
