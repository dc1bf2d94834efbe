"""FPE Attention Replace: self-attention (FPE), cross-attention (Prompt-to-Prompt style) or both, to compare."""

from __future__ import annotations

from ..fpe_attention.cross import MODES, TOKENS, replace_model
from ..fpe_attention.layers import OFFICIAL_CUSTOM, PRESETS, choose_layers
from .common import COMPARE


class FPEAttentionReplace:
    DISPLAY_NAME = "FPE Attention Replace"
    CATEGORY = COMPARE
    FUNCTION = "replace"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the replacement attached: sample the target prompt with it as after FPE "
                       "Self-Attn Inject (the capture's seed, steps, sampler and scheduler).",)
    DESCRIPTION = ("The paper's comparison (Figs. 4, 5, 10, 11): replace the target's self-attention maps by the "
                   "source's (FPE: keeps the layout), its cross-attention maps (Prompt-to-Prompt style: also carries "
                   "the source's colour and category into the edit), or both. Cross modes need a capture with "
                   "store_cross on, and the CLIP model and both prompts' text to find their tokens.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model the capture used (LoRAs included); a patched clone is "
                                               "returned."}),
                "fpe_source": ("FPE_SOURCE", {
                    "tooltip": "From FPE Source Capture or FPE DDIM Invert; for 'cross' modes captured with "
                               "store_cross on and storage 'auto' or 'cpu'."}),
                "mode": (list(MODES), {
                    "default": "self",
                    "tooltip": "'self': FPE (the source's self-attention maps; layout kept, the edit free). 'cross': "
                               "the source's cross-attention maps (Prompt-to-Prompt; carries the source's colour and "
                               "category). 'self + cross': both."}),
                "layers": (list(PRESETS), {
                    "default": "official",
                    "tooltip": "Self-attention layers replaced in 'self' and 'self + cross' (as FPE Self-Attn "
                               "Inject's layers)."}),
                "custom_layers": ("STRING", {
                    "default": OFFICIAL_CUSTOM, "multiline": False,
                    "tooltip": "Block list used when layers is 'custom': in4,in5,mid0,out3-8 · in7.0-4 · #4-14."}),
                "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "First self-attention step as a fraction: step i is replaced iff "
                                               "int(steps*start) <= i < int(steps*end)."}),
                "end": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "End of the self-attention steps (official 0.8; the supplement's "
                                             "'self-replace ratio')."}),
                "cross_layers": (list(PRESETS), {
                    "default": "all",
                    "tooltip": "Cross-attention layers replaced in 'cross' and 'self + cross' ('all', as "
                               "Prompt-to-Prompt; the same presets and block lists as layers). The capture's "
                               "store_cross must cover them ('all layers' for 'all')."}),
                "cross_custom_layers": ("STRING", {
                    "default": OFFICIAL_CUSTOM, "multiline": False,
                    "tooltip": "Block list used when cross_layers is 'custom'."}),
                "cross_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "First cross-attention step as a fraction (same rule as start)."}),
                "cross_end": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "End of the cross-attention steps: the paper's cross-replace ratio "
                                                   "(0.8). Must not exceed the capture's store_end."}),
                "tokens": (list(TOKENS), {
                    "default": "all tokens",
                    "tooltip": "'all tokens': the whole cross-attention map (word-swap prompts of equal token "
                               "counts). 'named words': only the columns of the words listed in words (Fig. 5: the "
                               "edited word, or non-edited words such as 'car')."}),
                "words": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "For tokens 'named words': words of the prompts, comma or space separated. A word in "
                               "both prompts takes the source's columns of that word; a word in one prompt only (the "
                               "edited word) takes the source's columns at the same positions."}),
                "source_text": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": "The source prompt's text exactly as encoded for the capture (to find its tokens)."}),
                "target_text": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": "The target prompt's text exactly as encoded for the target sampler."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "The CLIP model that encoded the prompts (Load Checkpoint's CLIP); its "
                                             "tokenizer finds the words' tokens. Needed for 'cross' modes."}),
            },
        }

    def replace(self, model, fpe_source, mode, layers, custom_layers, start, end, cross_layers, cross_custom_layers,
                cross_start, cross_end, tokens, words, source_text, target_text, clip=None):
        self_selection = choose_layers(model, layers, custom_layers)
        cross_selection = choose_layers(model, cross_layers, cross_custom_layers, "cross_layers", "cross_custom_layers")
        return (replace_model(
            model, fpe_source, mode=mode, self_selection=self_selection, start=start, end=end,
            cross_selection=cross_selection, cross_start=cross_start, cross_end=cross_end, clip=clip, source_text=source_text,
            target_text=target_text, tokens=tokens, words=words),)
