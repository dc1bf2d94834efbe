"""What FPE Source Capture and FPE DDIM Invert record, and over which schedule: shared inputs.

Both nodes make an ``FPE_SOURCE`` with the same store settings (same widgets, same order, so
saved workflows keep their values) and take either stock sampler settings or a SIGMAS input.
"""

from __future__ import annotations

from ..fpe_attention.capture import CROSS, PRECISION, ROWS, STORAGE
from ..fpe_attention.errors import FPEError
from ..fpe_attention.layers import OFFICIAL_CUSTOM, PRESETS
from ..fpe_attention.schedule import sampler_sigmas
from ..fpe_attention.validate import check_number


def store_inputs(step_cost: str) -> dict:
    """The six store widgets; ``step_cost`` tells what each stored step costs on this node."""
    return {
        "store_layers": (list(PRESETS), {
            "default": "official",
            "tooltip": "Self-attention layers whose inputs are stored for the edits: at least the Inject's layers. "
                       "'official' (at most 32x32 tokens, the authors' rule) serves the Inject's default; 'official "
                       "relative' every level but the finest (the paper's setting at any size); widen it if the "
                       "Inject asks for more layers."}),
        "store_custom_layers": ("STRING", {
            "default": OFFICIAL_CUSTOM, "multiline": False,
            "tooltip": "Block list used when store_layers is 'custom': in4,in5,mid0,out3-8 · in7.0-4 "
                       "(transformer layers of SDXL blocks) · #4-14 (forward-order numbers)."}),
        "store_end": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Store the first store_end of the steps. Must be at least the Inject's "
                                           f"end (default 0.8); {step_cost}"}),
        "store_rows": (list(ROWS), {
            "default": "cond",
            "tooltip": "'cond' serves the official edit; choose 'cond + uncond' to allow the Inject's branches "
                       "'cond + uncond' (twice the memory)."}),
        "storage": (list(STORAGE), {
            "default": "auto",
            "tooltip": "Where the record lives: 'auto' beside the model (GPU) unless it is large, then system RAM, "
                       "then replay if RAM is short too; 'cpu' in system RAM (frees VRAM, a small copy per edited "
                       "layer); 'replay' keeps no record, only the source's model inputs (kilobytes): each edit "
                       "re-runs the source rows beside the target's (about 1.2-1.4x a plain generation)."}),
        "precision": (list(PRECISION), {
            "default": "exact",
            "tooltip": "'exact' stores in the model's own dtype (lossless). fp16/bf16 halve an fp32 model's record "
                       "at a ~1e-3 relative rounding."}),
    }


def store_cross_input() -> dict:
    """The optional store_cross widget (optional, so saved workflows keep their widget values' order)."""
    return {"store_cross": (list(CROSS), {
        "default": "off",
        "tooltip": "Also record the cross-attention (attn2) inputs and the prompt's text context, which FPE Attention "
                   "Replace needs for its 'cross' and 'self + cross' modes (the paper's comparison). 'on': the "
                   "store_layers' blocks; 'all layers': every block (Prompt-to-Prompt replaces all). About as much "
                   "memory again as the self-attention record; needs storage 'auto' or 'cpu'."})}


def schedule(model, sigmas, steps: int, sampler_name: str, scheduler: str, denoise: float):
    """(sigmas, how they were made): the SIGMAS input if connected, else the stock KSampler's."""
    if sigmas is not None:
        sigmas = sigmas.float().cpu()
        return sigmas, f"sigmas input, {sigmas.shape[-1] - 1} steps"
    denoise = check_number("denoise", denoise, 0.0, 1.0)
    if denoise <= 0.0:
        raise FPEError("denoise: 0 leaves nothing to sample; set denoise above 0")
    return (sampler_sigmas(model, steps, sampler_name, scheduler, denoise),
            f"steps {steps}, scheduler {scheduler}, denoise {denoise}, sampler {sampler_name}")
