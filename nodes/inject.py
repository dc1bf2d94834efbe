"""FPE Self-Attn Inject: patch a clone of the model so the target sampler makes the edit."""

from __future__ import annotations

from ..fpe_attention.inject import BRANCHES, inject_model
from ..fpe_attention.layers import OFFICIAL_CUSTOM, PRESETS, choose_layers
from ..fpe_attention.sweep import plan_sweep
from .common import EDIT


class FPESelfAttnInject:
    DISPLAY_NAME = "FPE Self-Attn Inject"
    CATEGORY = EDIT
    FUNCTION = "inject"
    RETURN_TYPES = ("MODEL", "FPE_SWEEP_LABELS")
    RETURN_NAMES = ("model", "sweep_labels")
    OUTPUT_TOOLTIPS = ("The model with the edit attached: sample the target prompt with it (KSampler, "
                       "KSamplerAdvanced, SamplerCustom) using the capture's seed, steps, sampler and scheduler (real photos: "
                       "from DDIM Invert's latent, add_noise off, ddim, its steps and scheduler).",
                       "The sweep's row and column titles, for FPE Sweep Grid and FPE Sweep Latent (without a sweep: "
                       "one image titled with the setting).")
    DESCRIPTION = ("Free-Prompt-Editing: in the chosen self-attention layers and steps, the target's attention map "
                   "is replaced by the source's, so the edit keeps the source layout. The input model is untouched.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model the capture used (LoRAs included); a patched clone is "
                                               "returned."}),
                "fpe_source": ("FPE_SOURCE", {"tooltip": "From FPE Source Capture (generated images), FPE DDIM Invert or FPE Null-Text Invert (real photos)."}),
                "layers": (list(PRESETS), {
                    "default": "official",
                    "tooltip": "Self-attention layers to edit. 'official': layers with at most 32x32 tokens (the "
                               "authors' code; 11 of SD1.5's 16 at 512 px, SDXL's 32x32 level at 1024 px). 'official "
                               "relative': every attention level but the finest, which is what 'official' keeps for "
                               "SD1.5 at 512 px, at any size and on any model. 'paper 4-14': SD1.5 layers 4-14 as the "
                               "paper words it (SD1.x only). 'all': every layer (stronger structure lock). 'custom': "
                               "custom_layers."}),
                "custom_layers": ("STRING", {
                    "default": OFFICIAL_CUSTOM, "multiline": False,
                    "tooltip": "Block list used when layers is 'custom': in4,in5,mid0,out3-8 · in7.0-4 (transformer "
                               "layers of SDXL blocks) · #4-14 (forward-order numbers, 1-based)."}),
                "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "First edited step as a fraction: step i is edited iff "
                                               "int(steps*start) <= i < int(steps*end). start = end turns the edit off."}),
                "end": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "End of the edited steps (official 0.8). Lower (0.4-0.6) frees shape "
                                             "changes; higher keeps more of the source. Must not exceed the capture's "
                                             "store_end."}),
                "branches": (list(BRANCHES), {
                    "default": "cond only",
                    "tooltip": "'cond only' (official): only the target's conditional rows take the source map. "
                               "'cond + uncond' also edits the unconditional rows (needs store_rows 'cond + uncond')."}),
            },
            "optional": {  # after the required inputs, so saved workflows keep their widget order
                "sweep": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Settings sweep in one batched run (empty: none). E.g. 'end=0.2,0.4,0.6,0.8; "
                               "layers=official,all': every combination is one image of the target batch, the first "
                               "setting named varies slowest (grid rows), the last fastest (columns). Settings: start, "
                               "end, layers (preset names, or quoted block lists: layers=\"in4,in5\",all). The target "
                               "latent must hold one image per combination: use FPE Sweep Latent."}),
            },
        }

    def inject(self, model, fpe_source, layers, custom_layers, start, end, branches, sweep=""):
        selection = choose_layers(model, layers, custom_layers)
        plan = plan_sweep(model, sweep, selection=selection, start=start, end=end, custom_layers=custom_layers)
        patched = inject_model(model, fpe_source, selection=selection, start=start, end=end, branches=branches,
                               sweep=plan.settings)
        return (patched, plan.labels)
