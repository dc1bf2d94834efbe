"""Flow-model inversion (Flux, SD3): a real photo's source branch for FPE MMDiT Inject (issue 27).

ComfyUI samples a flow model in the interpolant x_σ = (1 − σ)·x₀ + σ·ε with the model's denoised output
D(x, σ) = x − σ·v; its Euler step is x ← x + (σ_next − σ)·(x − D(x, σ))/σ. The inversion walks the forward
schedule backwards with the same step, evaluating the model *at the destination level* on the current latent,
as FPE's DDIM inversion does (the official convention):

    v ← (x − D(x, σ_next)) / σ_next,      x ← x + (σ_next − σ)·v

which is defined from the clean latent on (σ = 0), where the velocity at the current level is not (D = x there).
The guidance is what the prompt carries: Flux's distilled guidance rides on the conditioning (FluxGuidance), SD3's
CFG is the cfg given (1: the prompt alone, the usual choice). Every latent of the way up is kept: the trajectory
the source branch follows, exactly as ``inversion.invert_to_source`` forces a UNet's source onto DDIM's.

A flow model's schedule starts at σ = 1, where ComfyUI's noise scaling keeps nothing of a LATENT; so the target
starts from the inverted latent as its *noise*: ``InvertedNoise`` is a NOISE for SamplerCustomAdvanced (the
inverse of its noise scaling at the first sigma), and the DDIM guard checks the target then takes Euler steps.
"""

from __future__ import annotations

import copy

import torch

from .capture import ROWS, CaptureSettings, attach_recorder, conditioning_rows, new_source
from .dit_capture import check_dit_inputs
from .dit_model import require_dit
from .errors import FPEError
from .evaluations import UNCOND
from .hooks import all_finite
from .inversion import PhasedProgress, TrajectoryReplay, inversion_sigmas, trajectory_blend_rows
from .run_observers import paused
from .steps import step_window

MAKER = "FPE Flow Invert"


class FlowInversionSampler:
    """A k-diffusion style sampler function for ``comfy.samplers.KSAMPLER``: reverse Euler, destination level."""

    def __init__(self):
        self.trajectory: list[torch.Tensor] = []  # x at every inversion sigma, bottom (index 0) to top

    @torch.no_grad()  # as ComfyUI's own sampler functions: no autograd graph through the steps
    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        self.trajectory = [x.detach().clone()]
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = model(x, sigma_next * s_in, **extra_args)
            x = x + (sigma_next - sigma) * (x - denoised) / sigma_next
            self.trajectory.append(x.detach().clone())
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigma_next, "sigma_hat": sigma_next, "denoised": denoised})
        return x


class InvertedNoise:
    """A NOISE (SamplerCustomAdvanced's noise input) that starts the sampler on the inverted latent: the sampler's
    first state is noise_scaling(σ₀, noise, latent), so the noise is that map inverted for the latent the sampler
    gets (at σ₀ = 1 the inverted latent itself, bit for bit; below 1, to float rounding)."""

    def __init__(self, top: torch.Tensor, sigma0: float, model):
        self.top = top.detach().cpu()  # sampler space
        self.sigma0 = float(sigma0)
        self.seed = 0
        self._latent_format = copy.copy(model.model.latent_format)  # its LATENT -> sampler-space map, not the model

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if tuple(samples.shape[-2:]) != tuple(self.top.shape[-2:]):
            raise FPEError(f"the target latent is {samples.shape[-1] * 8}x{samples.shape[-2] * 8} px but {MAKER} "
                           f"inverted a {self.top.shape[-1] * 8}x{self.top.shape[-2] * 8} px photo: give the target "
                           f"sampler the photo's latent (or an empty latent of its size)")
        top = self.top.expand(samples.shape[0], *self.top.shape[1:]) if self.top.shape[0] == 1 else self.top
        if self.sigma0 >= 1.0:
            return top.clone()
        # the host leaves an all-zero latent as it is (no latent-format shift), any other one it maps in
        latent = samples.to(top.dtype)
        if torch.count_nonzero(latent):
            latent = self._latent_format.process_in(latent).cpu()
        return (top - (1.0 - self.sigma0) * latent) / self.sigma0


def flow_invert(model, *, latent: torch.Tensor, positive, negative, cfg: float, forward_sigmas: torch.Tensor,
                callback=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Invert ``latent`` (a LATENT's samples) over ``forward_sigmas`` reversed; (top latent, trajectory bottom→top),
    both in sampler space. Runs through ComfyUI's ``sample_custom`` (conditioning, patches, interruption)."""
    import comfy.sample
    import comfy.samplers

    sigmas = inversion_sigmas(forward_sigmas)
    recorder = FlowInversionSampler()
    sampler = comfy.samplers.KSAMPLER(recorder)
    # The sampler's own return is unscaled by 1/(1 − σ) at the top (σ = 1): the trajectory is the result.
    comfy.sample.sample_custom(model, torch.zeros_like(latent), cfg, sampler, sigmas.to(model.load_device, copy=True),
                               positive, negative, latent, callback=callback, disable_pbar=True, seed=0)
    return recorder.trajectory[-1], recorder.trajectory


def flow_invert_to_source(model, *, latent: dict, positive, negative, cfg: float, sigmas: torch.Tensor,
                          schedule_origin: str, settings: CaptureSettings,
                          progress: PhasedProgress | None = None) -> tuple[InvertedNoise, object]:
    """Invert a photo's latent on an MMDiT and record its source branch (replay: the trajectory latents and the
    prompt). Returns (the inverted noise for the target sampler, the complete FPESource)."""
    require_dit(model, MAKER, instead="FPE DDIM Invert")
    check_dit_inputs(model, latent["samples"], "latent", {"positive": positive, "negative": negative}, MAKER)
    import comfy.sample
    import comfy.samplers

    samples = latent["samples"]
    kinds = ROWS[settings.rows]
    if UNCOND in kinds and negative is None:
        raise FPEError("store_rows 'cond + uncond' records the source's uncond rows: connect negative (the negative "
                       "prompt the edit will use), or set store_rows to 'cond'")
    if float(sigmas[-1]) != 0.0:
        raise FPEError(f"sigmas: the schedule ends at {float(sigmas[-1]):.4g}, not 0: {MAKER} starts from the photo "
                       f"itself (sigma 0); use a scheduler that ends at 0 (simple, normal, beta)")
    if negative is None:
        negative = positive
    first, stop = step_window(int(sigmas.shape[0]) - 1, 0.0, settings.store_end)
    record_cfg = 1.0 if UNCOND not in kinds else cfg
    source, recorder = new_source(model, samples=samples, sigmas=sigmas, schedule_origin=schedule_origin, cfg=cfg,
                                  settings=settings, maker=MAKER, evaluations=stop - first,
                                  rows=conditioning_rows(model, positive, negative, record_cfg, kinds))
    steps = int(sigmas.shape[0]) - 1
    if progress is None:
        progress = PhasedProgress(model, steps + (stop - first))
    with paused(model):
        top, inverted = flow_invert(model, latent=samples, positive=positive, negative=negative, cfg=cfg,
                                    forward_sigmas=sigmas, callback=progress.phase(steps))
    if not all_finite(top):
        raise FPEError(f"{MAKER}: the inverted latent came out as NaN or infinite values. Likely causes: cfg set to "
                       f"NaN/Infinity, a latent that is not an encoded photo, or a model in fp16 that overflows")
    trajectory = [x.cpu() for x in reversed(inverted)]  # forward order: entry i sits at sigmas[i]
    # Record pass: the source's model inputs on the trajectory (replay keeps them; the edit re-runs them).
    patched = attach_recorder(model, recorder)
    replay = comfy.samplers.KSAMPLER(TrajectoryReplay(trajectory, range(first, stop)))
    comfy.sample.sample_custom(patched, torch.zeros_like(samples), record_cfg, replay,
                               sigmas.to(model.load_device, copy=True), positive, negative, samples,
                               callback=progress.phase(stop - first), disable_pbar=True, seed=0)
    source.finish(recorder.clock.order, trajectory=trajectory)
    source.blend_rows = trajectory_blend_rows(trajectory, sigmas)
    return InvertedNoise(trajectory[0], float(sigmas[0]), model), source


def reconstruct_flow(model, *, noise: InvertedNoise, latent: torch.Tensor, positive, negative, cfg: float,
                     sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """Sample the inverted noise back with Euler over ``sigmas`` (what the edit does on its untouched parts)."""
    import comfy.sample
    import comfy.samplers

    sampler = comfy.samplers.sampler_object("euler")
    return comfy.sample.sample_custom(model, noise.generate_noise({"samples": latent}), cfg, sampler,
                                      sigmas.to(model.load_device, copy=True), positive,
                                      negative if negative is not None else positive, latent, callback=callback,
                                      disable_pbar=True, seed=0)
