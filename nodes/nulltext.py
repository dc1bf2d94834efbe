"""FPE Null-Text Invert: a real photo's inversion for edits at full guidance (supplement Algorithm 3)."""

from __future__ import annotations

import logging

import comfy.samplers
import torch

from ..fpe_attention.capture import CaptureSettings
from ..fpe_attention.drawing import captioned
from ..fpe_attention.errors import FPEError
from ..fpe_attention.inversion import PhasedProgress
from ..fpe_attention.nulltext import OFFICIAL, null_text_invert_to_source
from ..fpe_attention.reconstruction import ReconstructionReport, expected_latent, psnr_db, relative_rmse
from ..fpe_attention.steps import step_window
from ..fpe_attention.validate import check_latent, check_number
from .common import REAL_PHOTOS
from .preview import preview_ui
from .store import schedule, store_cross_input, store_inputs

log = logging.getLogger("free-prompt-editing")


class FPENullTextInvert:
    DISPLAY_NAME = "FPE Null-Text Invert"
    CATEGORY = REAL_PHOTOS
    FUNCTION = "invert"
    OUTPUT_NODE = True  # shows the reconstruction preview
    RETURN_TYPES = ("LATENT", "FPE_SOURCE", "CONDITIONING", "STRING")
    RETURN_NAMES = ("inverted_latent", "fpe_source", "null_negative", "report")
    OUTPUT_TOOLTIPS = (
        "The photo's inverted noise. Sample it with the target prompt: KSamplerAdvanced with add_noise disabled "
        "(or SamplerCustom, add_noise off), sampler ddim, these steps and scheduler, this cfg, and null_negative "
        "as the negative.",
        "The source branch (the photo's attention as Algorithm 3 samples it back): connect it to FPE Self-Attn "
        "Inject.",
        "The tuned unconditional embeddings, one per step (each acts at its own step only): connect it as the "
        "target sampler's negative. It only fits this schedule.",
        "The optimisation's and the reconstruction's figures as text.",
    )
    DESCRIPTION = ("Null-text inversion (Mokady et al.) for FPE, as the paper's supplement (Algorithm 3) runs it: "
                   "DDIM-inverts the photo with the source prompt, then tunes the negative embedding step by step so "
                   "that sampling at full cfg gives the photo back. Keeps fine detail that plain DDIM inversion loses "
                   "at cfg 7.5; costs about 10x an inversion.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model (SD1.x/SD2.x/SDXL UNet). Use the same model for "
                                               "the edit."}),
                "positive": ("CONDITIONING", {
                    "tooltip": "The source prompt, describing the photo (e.g. 'a photo of a cat'). It inverts the "
                               "photo and is the source branch's prompt."}),
                "negative": ("CONDITIONING", {
                    "tooltip": "Where the null text starts: an empty prompt (CLIP Text Encode with no text), as the "
                               "official code."}),
                "latent": ("LATENT", {"tooltip": "The encoded photo (FPE VAE Encode (Mean), or VAE Encode); one "
                                                 "image."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                                  "tooltip": "Steps (ignored when sigmas is connected). The edit's sampler must use "
                                             "the same number. Official: 50."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {
                    "default": "ddim_uniform",
                    "tooltip": "Scheduler (ignored when sigmas is connected); the edit's sampler must use the same. "
                               "For the authors' exact timesteps connect FPE Official DDIM Sigmas."}),
                "cfg": ("FLOAT", {"default": OFFICIAL["cfg"], "min": 1.01, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "The guidance the null text is tuned for: the edit's sampler must use the "
                                             "same cfg. Official: 7.5."}),
                "inner_steps": ("INT", {"default": OFFICIAL["inner_steps"], "min": 0, "max": 100,
                                        "tooltip": "Adam iterations per step at most (official 10). Each costs a "
                                                   "forward and backward pass; 0 keeps the starting embedding."}),
                "early_stop": ("FLOAT", {"default": OFFICIAL["early_stop"], "min": 0.0, "max": 1.0, "step": 1e-6,
                                         "round": False,
                                         "tooltip": "A step stops iterating once its loss is below early_stop + "
                                                    "step x 2e-5 (official 1e-5)."}),
                "learning_rate": ("FLOAT", {"default": OFFICIAL["learning_rate"], "min": 0.0, "max": 1.0,
                                            "step": 1e-4, "round": False,
                                            "tooltip": "Adam's learning rate at the first step; step i uses it x "
                                                       "(1 - i/100) (official 0.01)."}),
                **store_inputs("each stored step costs one model evaluation of the source branch."),
            },
            "optional": {
                "sigmas": ("SIGMAS", {"tooltip": "Optional exact schedule (e.g. FPE Official DDIM Sigmas); replaces "
                                                 "steps and scheduler. Sample the edit with SamplerCustom over the "
                                                 "same sigmas."}),
                "vae": ("VAE", {"tooltip": "Optional: decodes the reconstruction for the preview (photo | "
                                           "reconstruction) and its PSNR."}),
                **store_cross_input(),
            },
        }

    def invert(self, model, positive, negative, latent, steps, scheduler, cfg, inner_steps, early_stop,
               learning_rate, store_layers, store_custom_layers, store_end, store_rows, storage, precision,
               sigmas=None, vae=None, store_cross="off"):
        samples = latent["samples"]
        cfg = check_number("cfg", cfg, 0.0, 100.0)
        early_stop = check_number("early_stop", early_stop, 0.0, 1.0)
        learning_rate = check_number("learning_rate", learning_rate, 0.0, 1.0)
        check_latent(samples, "latent")
        if not torch.count_nonzero(samples):
            raise FPEError("latent: it is all zeros (an empty latent?). Connect the encoded photo: Load Image -> "
                           "FPE VAE Encode (Mean) -> latent")
        settings = CaptureSettings.from_inputs(model, store_layers, store_custom_layers, store_end, store_rows, storage,
                                               precision, store_cross)
        sigmas, origin = schedule(model, sigmas, steps, "ddim", scheduler, 1.0)
        n = int(sigmas.shape[-1]) - 1
        first, stop = step_window(n, 0.0, store_end)
        progress = PhasedProgress(model, 3 * n)
        inverted, source, null_negative, result, back = null_text_invert_to_source(
            model, latent=latent, positive=positive, negative=negative, sigmas=sigmas, schedule_origin=origin,
            cfg=cfg, inner_steps=int(inner_steps), early_stop=early_stop, learning_rate=learning_rate,
            settings=settings, progress=progress)
        expected = expected_latent(samples, sigmas)
        rmse = relative_rmse(back, expected)
        images = None
        if vae is None:
            report = ReconstructionReport(back, rmse)
        else:
            original, rebuilt = vae.decode(expected), vae.decode(back)
            report = ReconstructionReport(back, rmse, psnr_db(rebuilt, original))
            images = torch.cat([original, rebuilt], dim=2)  # photo | reconstruction
        text = f"{result.describe()}; {report.describe()} at cfg {cfg:g}"
        log.info("%s: %s (stored steps %d..%d)", "FPE Null-Text Invert", text, first, stop - 1)
        ui = preview_ui(captioned(images, report.describe()), "FPE_reconstruction") if images is not None else {}
        ui["text"] = [text]
        return {"ui": ui, "result": (inverted, source, null_negative, text)}
