"""FPE DDIM Invert and FPE VAE Encode (Mean): the real-image side of Free-Prompt-Editing."""

from __future__ import annotations

import logging

import comfy.samplers
import torch

from ..fpe_attention.capture import CaptureSettings
from ..fpe_attention.drawing import captioned
from ..fpe_attention.encode import SIDES, check_sides, encode_mean
from ..fpe_attention.errors import FPEError
from ..fpe_attention.host_versions import vae_downscale_ratio
from ..fpe_attention.inversion import PhasedProgress, invert_to_source
from ..fpe_attention.reconstruction import ReconstructionReport, expected_latent, psnr_db, reconstruct, relative_rmse
from ..fpe_attention.run_observers import paused
from ..fpe_attention.steps import step_window
from ..fpe_attention.validate import check_latent, check_number
from .common import REAL_PHOTOS
from .preview import preview_ui
from .store import schedule, store_cross_input, store_inputs

log = logging.getLogger("free-prompt-editing")


class FPEVAEEncodeMean:
    DISPLAY_NAME = "FPE VAE Encode (Mean)"
    CATEGORY = REAL_PHOTOS
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The image's latent (posterior mean): connect it to FPE DDIM Invert.",)
    DESCRIPTION = ("VAE Encode with the posterior mean, as the official real-image code encodes. The stock VAE "
                   "Encode does the same in current ComfyUI, but draws a random sample in ComfyUI of early 2024.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pixels": ("IMAGE", {"tooltip": "The photo to edit (e.g. from Load Image)."}),
                "vae": ("VAE", {"tooltip": "The checkpoint's VAE."}),
                "sides": (list(SIDES), {
                    "default": SIDES[0],
                    "tooltip": "Image sides must be multiples of 8. 'crop to a multiple of 8' keeps the center (up to "
                               "7 px off each side, as VAE Encode does); 'error' stops and names the size."}),
            },
        }

    def encode(self, pixels, vae, sides):
        check_sides(pixels, vae_downscale_ratio(vae), sides)
        return ({"samples": encode_mean(vae, pixels)},)


class FPEDDIMInvert:
    DISPLAY_NAME = "FPE DDIM Invert"
    CATEGORY = REAL_PHOTOS
    FUNCTION = "invert"
    OUTPUT_NODE = True  # shows the reconstruction preview
    RETURN_TYPES = ("LATENT", "FPE_SOURCE", "STRING")
    RETURN_NAMES = ("inverted_latent", "fpe_source", "report")
    OUTPUT_TOOLTIPS = (
        "The image's inverted noise. Sample it with the target prompt: KSamplerAdvanced with add_noise disabled "
        "(or SamplerCustom, add_noise off), sampler ddim, and these steps, scheduler and denoise.",
        "The source branch (the image's attention along its inversion): connect it to FPE Self-Attn Inject.",
        "The reconstruction check's figures as text (empty when the check is off).",
    )
    DESCRIPTION = ("DDIM-inverts a real image (official convention) so FPE can edit it: outputs the inverted noise "
                   "and the source branch for FPE Self-Attn Inject, and optionally shows how well the noise "
                   "reconstructs the image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model (SD1.x/SD2.x/SDXL UNet). Use the same model for "
                                               "the edit."}),
                "positive": ("CONDITIONING", {
                    "tooltip": "The source prompt. The official code inverts with an empty prompt; a prompt that "
                               "describes the photo can help at cfg 1."}),
                "latent": ("LATENT", {"tooltip": "The encoded photo (FPE VAE Encode (Mean), or VAE Encode)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 10000,
                                  "tooltip": "Inversion steps (ignored when sigmas is connected). The edit's sampler "
                                             "must use the same number. Official: 50."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {
                    "default": "ddim_uniform",
                    "tooltip": "Scheduler (ignored when sigmas is connected); the edit's sampler must use the same. "
                               "For the authors' exact timesteps connect FPE Official DDIM Sigmas."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Guidance of the inversion. 1 inverts best. The official 7.5 with an empty "
                                             "prompt on both sides equals 1 (at twice the cost); above 1 with a "
                                             "prompt, the noise no longer reconstructs the image."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "How far up the noise levels to invert (ignored when sigmas is "
                                                 "connected). The edit's sampler must use the same value."}),
                **store_inputs("each stored step costs one model evaluation."),
                "reconstruction_check": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Sample the inverted noise back with the source prompt and show how close it comes to "
                               "the photo (preview and figures) before you edit. Costs one more sampling pass at the "
                               "inversion's cfg, once per image."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {
                    "tooltip": "Negative prompt for cfg above 1 and for store_rows 'cond + uncond' (use the edit's). "
                               "Unconnected: the source prompt on both sides, as the official code does."}),
                "sigmas": ("SIGMAS", {"tooltip": "Optional exact schedule (e.g. FPE Official DDIM Sigmas); replaces "
                                                 "steps, scheduler and denoise. Sample the edit with SamplerCustom "
                                                 "over the same sigmas."}),
                "vae": ("VAE", {"tooltip": "Optional: decodes the reconstruction check's preview and gives its PSNR."}),
                **store_cross_input(),
            },
        }

    def invert(self, model, positive, latent, steps, scheduler, cfg, denoise, store_layers, store_custom_layers,
               store_end, store_rows, storage, precision, reconstruction_check, negative=None, sigmas=None, vae=None,
               store_cross="off"):
        samples = latent["samples"]
        cfg = check_number("cfg", cfg, 0.0, 100.0)
        check_latent(samples, "latent")
        if not torch.count_nonzero(samples):
            raise FPEError("latent: it is all zeros (an empty latent?). Connect the encoded photo: Load Image -> "
                           "FPE VAE Encode (Mean) -> latent")
        settings = CaptureSettings.from_inputs(model, store_layers, store_custom_layers, store_end, store_rows, storage,
                                               precision, store_cross)
        sigmas, origin = schedule(model, sigmas, steps, "ddim", scheduler, denoise)
        n = int(sigmas.shape[-1]) - 1
        first, stop = step_window(n, 0.0, store_end)
        recorded = stop - first
        progress = PhasedProgress(model, n + recorded + (n if reconstruction_check else 0))
        inverted, source = invert_to_source(model, latent=latent, positive=positive, negative=negative, cfg=cfg,
                                            sigmas=sigmas, schedule_origin=origin, settings=settings,
                                            progress=progress)
        if not reconstruction_check:
            return {"ui": {}, "result": (inverted, source, "")}
        report, images = self._check(model, vae, samples, inverted["samples"], positive, negative, cfg, sigmas,
                                     progress)
        if not report.finite:
            raise FPEError(f"FPE DDIM Invert: the reconstruction check came out NaN or infinite ({report.describe()}): "
                           f"the inverted noise does not sample back to a picture. Likely causes: a model running in "
                           f"fp16 that overflows (run it in fp32 or bf16), or a VAE that decodes to NaN (try it in fp32)")
        log.info("FPE DDIM Invert: %s", report.describe())
        ui = preview_ui(captioned(images, report.describe()), "FPE_reconstruction") if images is not None else {}
        ui["text"] = [report.describe()]  # shown by text-display extensions, read by the headless job
        return {"ui": ui, "result": (inverted, source, report.describe())}

    @staticmethod
    def _check(model, vae, samples, inverted, positive, negative, cfg, sigmas, progress):
        n = int(sigmas.shape[-1]) - 1
        with paused(model):  # the check is not the source an attention record should show
            back = reconstruct(model, inverted=inverted, positive=positive,
                               negative=negative if negative is not None else positive, cfg=cfg, sigmas=sigmas,
                               callback=progress.phase(n))
        expected = expected_latent(samples, sigmas)
        rmse = relative_rmse(back, expected)
        if vae is None:
            return ReconstructionReport(back, rmse), None
        original, rebuilt = vae.decode(expected), vae.decode(back)
        report = ReconstructionReport(back, rmse, psnr_db(rebuilt, original))
        return report, torch.cat([original, rebuilt], dim=2)  # input | reconstruction, per image
