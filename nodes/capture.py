"""FPE Source Capture: a KSampler for the source image that also outputs FPE_SOURCE."""

from __future__ import annotations

import comfy.samplers

from ..fpe_attention.capture import PRECISION, ROWS, STORAGE, CaptureSettings, capture_source
from ..fpe_attention.errors import FPEError
from ..fpe_attention.layers import PRESETS, select_layers, unet_attn1_layers
from ..fpe_attention.schedule import sampler_sigmas
from . import CATEGORY, as_fpe_error

OFFICIAL_CUSTOM = "in4,in5,in7,in8,mid0,out3-8"


class FPESourceCapture:
    CATEGORY = CATEGORY
    FUNCTION = "capture"
    RETURN_TYPES = ("LATENT", "FPE_SOURCE")
    RETURN_NAMES = ("source_latent", "fpe_source")
    OUTPUT_TOOLTIPS = (
        "The source image's latent, exactly what a KSampler with these settings returns.",
        "What the edits need from the source run: connect it to FPE Self-Attn Inject. It is cached like any "
        "output, so changing only the target prompt does not re-run the source.",
    )
    DESCRIPTION = ("Samples the source image like a KSampler and records its self-attention for "
                   "Free-Prompt-Editing. Give the target KSampler the same seed, steps, sampler and scheduler.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model (SD1.x/SD2.x/SDXL UNet). Use the same model "
                                               "(LoRAs included) for the target side."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed of the source image. The target KSampler must use the same "
                                            "seed so both start from the same noise."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 10000,
                                  "tooltip": "Sampling steps (ignored when sigmas is connected). The target must use "
                                             "the same number. The official example uses 50."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance of the source image (official: 7.5)."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {
                    "default": "ddim",
                    "tooltip": "Sampler. Use the same one on the target side; deterministic samplers (ddim, euler, "
                               "heun, dpmpp_2m, uni_pc, ...) give exact FPE edits."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {
                    "default": "ddim_uniform",
                    "tooltip": "Scheduler (ignored when sigmas is connected). The target must use the same one. "
                               "For the authors' exact timesteps connect FPE Official DDIM Sigmas instead."}),
                "positive": ("CONDITIONING", {"tooltip": "The source prompt: what the image shows before the edit."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt (official: empty text)."}),
                "latent_image": ("LATENT", {"tooltip": "Starting latent (an Empty Latent Image sets the size). The "
                                                       "target latent must have the same size."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Denoise strength (ignored when sigmas is connected). The target "
                                                 "must use the same value."}),
                "store_layers": (list(PRESETS), {
                    "default": "official",
                    "tooltip": "Self-attention layers whose inputs are stored for the edits. 'official' (layers with "
                               "at most 32x32 tokens, the authors' rule) is enough for the Inject's default; widen it "
                               "if the Inject asks for more layers."}),
                "store_custom_layers": ("STRING", {
                    "default": OFFICIAL_CUSTOM, "multiline": False,
                    "tooltip": "Block list used when store_layers is 'custom': in4,in5,mid0,out3-8 · in7.0-4 "
                               "(transformer layers of SDXL blocks) · #4-14 (forward-order numbers)."}),
                "store_end": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Store the first store_end of the steps. Must be at least the "
                                                   "Inject's end (default 0.8); higher costs memory."}),
                "store_rows": (list(ROWS), {
                    "default": "cond",
                    "tooltip": "'cond' serves the official edit; choose 'cond + uncond' to allow the Inject's "
                               "branches 'cond + uncond' (twice the memory)."}),
                "storage": (list(STORAGE), {
                    "default": "auto",
                    "tooltip": "Where the capture lives: 'auto' keeps it beside the model (GPU), 'cpu' in system "
                               "RAM (frees VRAM, costs a small copy per edited layer)."}),
                "precision": (list(PRECISION), {
                    "default": "exact",
                    "tooltip": "'exact' stores in the model's own dtype (lossless). fp16/bf16 halve an fp32 "
                               "model's capture at a ~1e-3 relative rounding."}),
            },
            "optional": {
                "sigmas": ("SIGMAS", {"tooltip": "Optional exact schedule (e.g. FPE Official DDIM Sigmas). When "
                                                 "connected it replaces steps, scheduler and denoise; sample the "
                                                 "target with SamplerCustom over the same sigmas."}),
            },
        }

    def capture(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                store_layers, store_custom_layers, store_end, store_rows, storage, precision, sigmas=None):
        with as_fpe_error("store_layers"):
            selection = select_layers(store_layers, store_custom_layers, unet_attn1_layers(model.model.diffusion_model))
        setting = store_custom_layers if store_layers == "custom" else store_layers
        if sigmas is None:
            if denoise <= 0.0:
                raise FPEError("denoise: 0 leaves nothing to sample; set denoise above 0")
            sigmas = sampler_sigmas(model, steps, sampler_name, scheduler, denoise)
            origin = f"steps {steps}, scheduler {scheduler}, denoise {denoise}, sampler {sampler_name}"
        else:
            sigmas = sigmas.float().cpu()
            origin = f"sigmas input, {sigmas.shape[-1] - 1} steps"
        settings = CaptureSettings(selection=selection, layer_setting=setting, store_end=store_end, rows=store_rows,
                                   storage=storage, precision=precision)
        latent, source = capture_source(
            model, seed=seed, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, positive=positive,
            negative=negative, latent=latent_image, sigmas=sigmas, denoise=denoise, schedule_origin=origin,
            settings=settings)
        return (latent, source)

