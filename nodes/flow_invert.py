"""FPE Flow Invert: a real photo's source branch and inverted noise on Flux / SD3 (flow models)."""

from __future__ import annotations

import logging

import comfy.samplers
import torch

from ..fpe_attention.capture import ROWS, STORAGE, CaptureSettings
from ..fpe_attention.drawing import captioned
from ..fpe_attention.errors import FPEError
from ..fpe_attention.flow_inversion import MAKER, flow_invert_to_source, reconstruct_flow
from ..fpe_attention.inversion import PhasedProgress
from ..fpe_attention.reconstruction import ReconstructionReport, psnr_db, relative_rmse
from ..fpe_attention.run_observers import paused
from ..fpe_attention.steps import step_window
from ..fpe_attention.validate import check_latent, check_number
from .common import REAL_PHOTOS
from .preview import preview_ui
from .store import schedule

log = logging.getLogger("free-prompt-editing")


class FPEFlowInvert:
    DISPLAY_NAME = "FPE Flow Invert"
    CATEGORY = REAL_PHOTOS
    FUNCTION = "invert"
    OUTPUT_NODE = True  # shows the reconstruction preview
    RETURN_TYPES = ("NOISE", "FPE_SOURCE", "SIGMAS", "STRING")
    RETURN_NAMES = ("inverted_noise", "fpe_source", "sigmas", "report")
    OUTPUT_TOOLTIPS = (
        "The photo's inverted noise: connect it to SamplerCustomAdvanced's noise input (the target starts exactly "
        "there), with sampler euler and the sigmas output.",
        "The source branch (the photo's attention along its inversion): connect it to FPE MMDiT Inject.",
        "The schedule the inversion walked: the target sampler's sigmas.",
        "The reconstruction check's figures as text (empty when the check is off).",
    )
    DESCRIPTION = ("Inverts a real photo on a flow model (Flux.1, SD3, SD3.5) with reverse Euler on the model's own "
                   "sigmas, so FPE MMDiT Inject can edit it: outputs the inverted noise, the source branch and the "
                   "schedule, and optionally shows how well the noise reconstructs the photo.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The Flux.1 / SD3 / SD3.5 model; use the same model for the edit."}),
                "positive": ("CONDITIONING", {
                    "tooltip": "The source prompt (Flux: through FluxGuidance, whose guidance the inversion uses as "
                               "the source does). A prompt that describes the photo inverts best."}),
                "latent": ("LATENT", {"tooltip": "The encoded photo (VAE Encode with this model's VAE)."}),
                "steps": ("INT", {"default": 28, "min": 1, "max": 10000,
                                  "tooltip": "Inversion steps (ignored when sigmas is connected); the edit samples the "
                                             "same schedule (the sigmas output)."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {
                    "default": "simple", "tooltip": "Scheduler (ignored when sigmas is connected); it must end at 0."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance of the inversion. 1 (the prompt alone) inverts "
                                             "best; Flux dev's guidance is the conditioning's (FluxGuidance)."}),
                "store_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Keep the source for the first store_end of the steps: at least "
                                                   "FPE MMDiT Inject's end (lower it to make a record fit)."}),
                "storage": (list(STORAGE), {
                    "default": "auto",
                    "tooltip": "'auto': a record of every block's image queries and keys where it fits (VRAM, else "
                               "system RAM; the fastest edits), else replay. 'cpu': the record in system RAM. "
                               "'replay': the source's model inputs only (a few MB); each edit re-runs them."}),
                "store_rows": (list(ROWS), {
                    "default": "cond", "tooltip": "'cond': what the edit needs for branches 'cond only'. 'cond + "
                                                  "uncond' also keeps the unconditional rows (needs negative)."}),
                "reconstruction_check": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Sample the inverted noise back with Euler and the source prompt and show how close it "
                               "comes to the photo (preview and figures) before you edit. One more sampling pass."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt for cfg above 1 (SD3) and store_rows 'cond "
                                                         "+ uncond'. Unconnected: the source prompt on both sides."}),
                "sigmas": ("SIGMAS", {"tooltip": "Optional exact schedule ending at 0; replaces steps and scheduler."}),
                "vae": ("VAE", {"tooltip": "Optional: decodes the reconstruction check's preview and gives its PSNR."}),
            },
        }

    def invert(self, model, positive, latent, steps, scheduler, cfg, store_end, storage, store_rows,
               reconstruction_check, negative=None, sigmas=None, vae=None):
        samples = latent["samples"]
        cfg = check_number("cfg", cfg, 0.0, 100.0)
        check_latent(samples, "latent")
        if not torch.count_nonzero(samples):
            raise FPEError("latent: it is all zeros (an empty latent?). Connect the encoded photo: Load Image -> VAE "
                           "Encode -> latent")
        settings = CaptureSettings.from_inputs(model, "all", "", store_end, store_rows, storage, "exact")
        sigmas, origin = schedule(model, sigmas, steps, "euler", scheduler, 1.0)
        n = int(sigmas.shape[-1]) - 1
        first, stop = step_window(n, 0.0, store_end)
        progress = PhasedProgress(model, n + (stop - first) + (n if reconstruction_check else 0))
        noise, source = flow_invert_to_source(model, latent=latent, positive=positive, negative=negative, cfg=cfg,
                                              sigmas=sigmas, schedule_origin=origin, settings=settings,
                                              progress=progress)
        if not reconstruction_check:
            return {"ui": {}, "result": (noise, source, sigmas, "")}
        with paused(model):
            back = reconstruct_flow(model, noise=noise, latent=samples, positive=positive, negative=negative, cfg=cfg,
                                    sigmas=sigmas, callback=progress.phase(n))
        rmse = relative_rmse(back, samples)
        images = None
        report = ReconstructionReport(back, rmse)
        if vae is not None:
            original, rebuilt = vae.decode(samples), vae.decode(back)
            report = ReconstructionReport(back, rmse, psnr_db(rebuilt, original))
            images = torch.cat([original, rebuilt], dim=2)  # photo | reconstruction, per image
        if not report.finite:
            raise FPEError(f"{MAKER}: the reconstruction check came out NaN or infinite ({report.describe()}): the "
                           f"inverted noise does not sample back to a picture (a model in fp16 that overflows?)")
        log.info("%s: %s", MAKER, report.describe())
        ui = preview_ui(captioned(images, report.describe()), "FPE_reconstruction") if images is not None else {}
        ui["text"] = [report.describe()]
        return {"ui": ui, "result": (noise, source, sigmas, report.describe())}
