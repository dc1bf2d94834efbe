"""Target-side checks for real-image edits: start from the inverted latent, take DDIM steps (flow models: Euler
steps, the same update in sampler space).

The inverted noise reconstructs the image only under the inverse of the inversion: DDIM (ComfyUI's
``ddim`` or ``euler``) over the same sigmas, from the inverted latent itself with no noise added.
A post-CFG function (a public, chainable hook present in every ComfyUI) sees each evaluation's
input and final denoised output, so it can check both on any host and whatever the sampler node:

* the first evaluation's input must be the inverted latent (else add_noise is on, or another
  latent is connected);
* every later input must be the previous one advanced by one DDIM step,
  x + (σ_next − σ)·(x − D)/σ; a stochastic sampler (ancestral, SDE), a multistep or higher-order
  solver breaks that. (A latent noise mask does not: the inject turns it into a local edit's mask.)

The step check is exact only when this is the last post-CFG function (one registered after it may
change the denoised output the sampler uses), so it is skipped otherwise.
"""

from __future__ import annotations

import torch

from . import notify
from .errors import FPEError
from .hooks import Shared
from .steps import ScheduleIndex

# Float32 room for re-doing the sampler's own arithmetic (and LATENT in/out scaling), relative to
# the latent's magnitude; a sampler that adds noise or mixes in history is off by orders more.
RELATIVE_TOLERANCE = 1e-4

FIX_START = ("connect FPE DDIM Invert's latent output to the target sampler's latent input and disable its noise "
             "(KSamplerAdvanced: add_noise disable; SamplerCustom: add_noise off)")
FIX_SAMPLER = ("sample the target with sampler ddim (or euler), the inverse of the inversion: stochastic samplers "
               "(ancestral, SDE) and multistep or higher-order solvers do not reconstruct the image; a node that "
               "sets a denoise-mask function after FPE Self-Attn Inject (e.g. Differential Diffusion) must come "
               "before it")

# Flow models (FPE Flow Invert): the inverted noise enters as the sampler's NOISE (a flow model's first sigma, 1,
# keeps nothing of a LATENT), and the inverse of reverse Euler is Euler.
FLOW_MAKER = "FPE Flow Invert"
FIX_FLOW_START = ("connect FPE Flow Invert's inverted_noise output to SamplerCustomAdvanced's noise input, with its "
                  "sigmas output (or the same scheduler and steps) as the sigmas")
FIX_FLOW_SAMPLER = ("sample the target with sampler euler, the inverse of the inversion: stochastic samplers and "
                    "multistep or higher-order solvers do not reconstruct the image")


class DDIMGuard(Shared):
    def __init__(self, source):
        self.source = source
        self.index = ScheduleIndex(source.schedule)
        self._previous = None  # (input, sigma, denoised) of the last evaluation, when checkable

    def __call__(self, args):
        x, denoised = args["input"], args["denoised"]
        sigma = float(args["sigma"].reshape(-1)[0])
        if self.index.key(sigma) == ("s", 0):  # a (new) run starts
            self._previous = None
            self._check_start(x)
            self._check_cfg(args)
        elif self._previous is not None:
            self._check_step(x, sigma)
        functions = [fn for fn in args.get("model_options", {}).get("sampler_post_cfg_function", [])
                     if not getattr(fn, "fpe_record", False)]  # an attention record reads, never changes
        last = bool(functions) and functions[-1] is self
        self._previous = (x.detach(), sigma, denoised.detach()) if last else None
        return denoised

    def _check_start(self, x: torch.Tensor) -> None:
        start = self.source.trajectory[0].to(device=x.device, dtype=x.dtype)
        if start.shape[0] == 1 and x.shape[0] > 1:
            start = start.expand_as(x)
        if start.shape != x.shape or not _close(x, start):
            raise FPEError(
                f"the target sampler does not start from {self.source.maker}'s latent (noise added, or another latent "
                f"connected): {self._fix_start()}")

    def _check_cfg(self, args) -> None:
        """Null-text sources: the embeddings are tuned for one cfg; another one drifts off the photo."""
        tuned = self.source.tuned_cfg
        if tuned is None:
            return
        scale = args.get("cond_scale")  # current ComfyUI; the 2024 host: read it off the guided result
        if scale is None:
            cond, uncond = args.get("cond_denoised"), args.get("uncond_denoised")
            if cond is None or uncond is None:
                return
            gap = (cond - uncond).float()
            norm = float(gap.pow(2).sum())
            if norm == 0.0:
                return
            scale = float(((args["denoised"] - uncond).float() * gap).sum()) / norm
        if abs(float(scale) - tuned) > 1e-3 * max(1.0, tuned):
            notify.warn("the target's cfg is not the null text's",
                        f"{self.source.maker} tuned null_negative for cfg {tuned:g}, the target sampler runs at cfg "
                        f"{float(scale):.4g}: the edit drifts away from the photo. Give the target sampler cfg {tuned:g}")

    def _check_step(self, x: torch.Tensor, sigma: float) -> None:
        x_prev, sigma_prev, denoised_prev = self._previous
        if x_prev.shape != x.shape:
            return
        predicted = x_prev + (x_prev - denoised_prev) / sigma_prev * (sigma - sigma_prev)
        if not _close(x, predicted):
            if self.source.maker == FLOW_MAKER:
                raise FPEError(f"the target sampler does not take Euler steps (at sigma {sigma:.4g}): {FIX_FLOW_SAMPLER}")
            raise FPEError(f"the target sampler does not take DDIM steps (at sigma {sigma:.4g}): {FIX_SAMPLER}")

    def _fix_start(self) -> str:
        if self.source.maker == FLOW_MAKER:
            return FIX_FLOW_START
        return FIX_START.replace("FPE DDIM Invert", self.source.maker)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) + 1e-6
    return float((a - b).abs().max()) <= RELATIVE_TOLERANCE * scale
