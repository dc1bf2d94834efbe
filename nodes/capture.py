"""FPE Source Capture: a KSampler for the source image that also outputs FPE_SOURCE."""

from __future__ import annotations

import comfy.samplers

from ..fpe_attention.capture import CaptureSettings, capture_source
from ..fpe_attention.validate import check_number
from .common import EDIT
from .store import schedule, store_cross_input, store_inputs


class FPESourceCapture:
    DISPLAY_NAME = "FPE Source Capture"
    CATEGORY = EDIT
    FUNCTION = "capture"
    RETURN_TYPES = ("LATENT", "FPE_SOURCE")
    RETURN_NAMES = ("source_latent", "fpe_source")
    OUTPUT_TOOLTIPS = (
        "The source image's latent, exactly what a KSampler with these settings returns.",
        "What the edits need from the source run: connect it to FPE Self-Attn Inject. It is cached like any "
        "output, so changing only the target prompt does not re-run the source.",
    )
    DESCRIPTION = ("Samples the source image like a KSampler and records its self-attention for "
                   "Free-Prompt-Editing (on Flux/SD3: its joint attention's image queries and keys, or its model "
                   "inputs for replay). Give the target KSampler the same seed, steps, sampler and scheduler.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model: SD1.x/SD2.x/SDXL (for FPE Self-Attn Inject) or "
                                               "Flux.1/SD3/SD3.5 (for FPE MMDiT Inject). Use the same model (LoRAs "
                                               "included) for the target side."}),
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
                **store_inputs("higher costs memory."),
            },
            "optional": {
                "sigmas": ("SIGMAS", {"tooltip": "Optional exact schedule (e.g. FPE Official DDIM Sigmas). When "
                                                 "connected it replaces steps, scheduler and denoise; sample the "
                                                 "target with SamplerCustom over the same sigmas."}),
                **store_cross_input(),
            },
        }

    def capture(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                store_layers, store_custom_layers, store_end, store_rows, storage, precision, sigmas=None,
                store_cross="off"):
        cfg = check_number("cfg", cfg, 0.0, 100.0)
        settings = CaptureSettings.from_inputs(model, store_layers, store_custom_layers, store_end, store_rows, storage,
                                               precision, store_cross)
        sigmas, origin = schedule(model, sigmas, steps, sampler_name, scheduler, denoise)
        latent, source = capture_source(
            model, seed=seed, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, positive=positive,
            negative=negative, latent=latent_image, sigmas=sigmas, denoise=denoise, schedule_origin=origin,
            settings=settings)
        return (latent, source)

