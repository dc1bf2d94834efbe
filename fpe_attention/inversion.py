"""DDIM inversion in ComfyUI's sigma space, with the official FPE convention.

The authors' ``invert`` walks t = 0, Δ, 2Δ, ... upwards; each step takes the current latent (at
level t_cur) and the noise predicted *at the destination timestep* t from that latent, then
moves it to level t. In ComfyUI's variance-exploding state z = x_VP / sqrt(alpha_bar) that is

    x_in = z * sqrt(1 + σn²) / sqrt(1 + σc²)     (the current x_VP, scaled for a call at σn)
    ε    = (x_in − D(x_in, σn)) / σn             (D: the model's denoised output, so ε- and
                                                  v-prediction models both work)
    z   ← z + (σn − σc) · ε

over the forward schedule reversed. The first value is σ(t = 0) ≈ 0.029 for the official
schedule, so the clean latent is first scaled to that level. Every latent of the way up is
recorded: the trajectory the real-image edit's source branch follows.

``invert_to_source`` then builds the real image's ``FPE_SOURCE``: the official edit overwrites the
source row with the inverted latent of the current step before every UNet call, so the source's
self-attention at step i is the model's on trajectory latent i with the source prompt. A *record
pass* evaluates exactly that, once per stored step (cond rows only unless asked), through the same
attn1 recorder as the generated-image capture; the inject is unchanged. The target later samples
from the top latent with DDIM (``ddim_guard`` checks it does).
"""

from __future__ import annotations

import logging
import math

import torch

from .architecture import check_inputs_fit
from .capture import ROWS, CaptureSettings, attach_recorder, conditioning_rows, context_shapes, new_source
from .errors import FPEError
from .evaluations import UNCOND
from .hooks import all_finite
from .replay import reject_per_call_conditioning
from .run_observers import paused, tagged
from .steps import ScheduleIndex, step_window

log = logging.getLogger("free-prompt-editing")


def inversion_sigmas(forward_sigmas: torch.Tensor) -> torch.Tensor:
    """The inversion walks the forward schedule backwards, ending where sampling starts.

    Forward step i starts at ``forward_sigmas[i]``, which is inversion level ``n - i``. A forward
    schedule ending at 0 (ComfyUI's usual) makes the first inversion step start from the clean
    latent (diffusers' ``set_alpha_to_one=True``); the official schedule ends at σ(0), σ(0), so the
    first step is the identity at σ(0) as in the authors' run (``set_alpha_to_one=False``).
    """
    return forward_sigmas.flip(0).float()


class DDIMInversionSampler:
    """A k-diffusion style sampler function for ``comfy.samplers.KSAMPLER``; records the trajectory."""

    def __init__(self):
        self.trajectory: list[torch.Tensor] = []  # z at every inversion sigma, bottom (index 0) to top

    @torch.no_grad()  # as ComfyUI's own sampler functions: no autograd graph through the steps
    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        self.trajectory = []
        z = x * torch.sqrt(1.0 + sigmas[0] ** 2) if float(sigmas[0]) > 0 else x
        self.trajectory.append(z.detach().clone())
        steps = len(sigmas) - 1
        for i in range(steps):
            sigma_cur, sigma_next = sigmas[i], sigmas[i + 1]
            x_in = z * torch.sqrt(1.0 + sigma_next**2) / torch.sqrt(1.0 + sigma_cur**2)
            denoised = model(x_in, sigma_next * s_in, **extra_args)
            eps = (x_in - denoised) / sigma_next
            z = z + (sigma_next - sigma_cur) * eps
            self.trajectory.append(z.detach().clone())
            if callback is not None:
                callback({"x": z, "i": i, "sigma": sigma_next, "sigma_hat": sigma_next, "denoised": denoised})
        return z


def invert(model, *, latent: torch.Tensor, positive, negative, cfg: float, forward_sigmas: torch.Tensor,
           callback=None, disable_pbar: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Invert ``latent`` (a LATENT's samples) over ``forward_sigmas`` reversed.

    Returns (the top latent as a LATENT's samples, the trajectory in sampler space bottom→top, the
    inversion sigmas). Runs through ComfyUI's own ``sample_custom``, so conditioning, patches,
    progress bar and interruption behave as in any sampler.
    """
    import comfy.sample
    import comfy.samplers

    sigmas = inversion_sigmas(forward_sigmas)
    recorder = DDIMInversionSampler()
    sampler = comfy.samplers.KSAMPLER(recorder)
    noise = torch.zeros_like(latent)
    top = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas.to(model.load_device, copy=True), positive,
                                     negative, latent, callback=callback, disable_pbar=disable_pbar, seed=0)
    return top, recorder.trajectory, sigmas


class TrajectoryReplay:
    """A sampler function that evaluates the model on stored latents (sampler space), one per step.

    Step i calls the model on ``latents[i]`` at ``sigmas[i]``, for i in ``steps``; the outputs are
    discarded (an attn1 recorder on the model keeps what it needs). Returns ``x`` unchanged.
    """

    def __init__(self, latents: list[torch.Tensor], steps: range):
        self.latents = latents
        self.steps = steps

    @torch.no_grad()  # as ComfyUI's own sampler functions: no autograd graph through the steps
    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        for i in self.steps:
            latent = self.latents[i].to(device=x.device, dtype=x.dtype)
            denoised = model(latent, sigmas[i] * s_in, **extra_args)
            if callback is not None:
                callback({"x": latent, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        return x


def trajectory_blend_rows(trajectory: list[torch.Tensor], sigmas: torch.Tensor) -> dict:
    """What a local edit of a DDIM-inverted photo follows outside its mask: at step i the inverted latent
    z_i, and the denoised output D_i with which a DDIM step lands on z_(i+1),
    z_i + (σ_(i+1) − σ_i)·(z_i − D_i)/σ_i = z_(i+1). The background then walks the inverted trajectory
    down to the photo's own latent (its last entry) instead of a reconstruction's drift."""
    index = ScheduleIndex([float(s) for s in sigmas])
    rows, seen = {}, {}
    for i in range(len(trajectory) - 1):
        z, z_next = trajectory[i].float(), trajectory[i + 1].float()
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = z_next.clone() if sigma_next == sigma else z - (z_next - z) * (sigma / (sigma_next - sigma))
        key = index.key(sigma)
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        rows[(key, occurrence)] = (z.clone(), denoised)
    return rows


def same_conditioning(a, b) -> bool:
    """Whether two CONDITIONING lists hold the same tensors (then CFG between them is a no-op)."""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    for (ta, da), (tb, db) in zip(a, b, strict=True):
        if ta.shape != tb.shape or not torch.equal(ta, tb):
            return False
        pa, pb = da.get("pooled_output"), db.get("pooled_output")
        if (pa is None) != (pb is None) or (pa is not None and not torch.equal(pa, pb)):
            return False
    return True


class PhasedProgress:
    """One ComfyUI progress bar (with latent previews) over several sampling runs of one node."""

    def __init__(self, model, total: int):
        import latent_preview

        self.total = max(1, total)
        self.done = 0
        self._callback = latent_preview.prepare_callback(model, self.total)

    def phase(self, steps: int):
        offset = self.done
        self.done += steps

        def callback(step, x0, x, total_steps):
            self._callback(offset + step, x0, x, self.total)

        return callback


def invert_to_source(model, *, latent: dict, positive, negative, cfg: float, sigmas: torch.Tensor,
                     schedule_origin: str, settings: CaptureSettings,
                     progress: PhasedProgress | None = None) -> tuple[dict, object]:
    """DDIM-invert ``latent`` and record the source branch on its trajectory.

    ``negative`` None means the source prompt on both sides, as the official code does (cfg then
    has no effect). Returns (the inverted LATENT, the complete FPESource, whose ``trajectory`` holds
    the inverted latents in sampler space, forward order).
    """
    check_inputs_fit(model, latent["samples"], "latent", {"positive": positive, "negative": negative})
    import comfy.sample
    import comfy.samplers

    samples = latent["samples"]
    kinds = ROWS[settings.rows]  # checked by CaptureSettings
    if UNCOND in kinds and negative is None:
        raise FPEError("store_rows 'cond + uncond' records the source's uncond rows: connect negative (the "
                       "negative prompt the edit will use), or set store_rows to 'cond'")
    record_cfg = 1.0 if UNCOND not in kinds else (cfg if not math.isclose(cfg, 1.0) else 2.0)
    first, stop = step_window(int(sigmas.shape[0]) - 1, 0.0, settings.store_end)
    source, recorder = new_source(model, samples=samples, sigmas=sigmas, schedule_origin=schedule_origin, cfg=cfg,
                                  settings=settings, maker="FPE DDIM Invert", evaluations=stop - first,
                                  rows=conditioning_rows(model, positive, negative, record_cfg, kinds),
                                  contexts=context_shapes(positive, negative if negative is not None else positive,
                                                          record_cfg, kinds, model))
    if source.replay is not None:
        reject_per_call_conditioning((positive, negative), source.maker, source.auto_replay)
    if negative is None:
        negative = positive
    elif not math.isclose(cfg, 1.0) and not same_conditioning(positive, negative):
        log.warning("FPE DDIM Invert: cfg %s with a source prompt that differs from the negative: CFG amplifies the "
                    "inversion's error and the inverted noise will not reconstruct the image well. Use cfg 1, or an "
                    "empty source prompt (the official setting)", cfg)
    steps = int(sigmas.shape[0]) - 1
    if progress is None:
        progress = PhasedProgress(model, steps + (stop - first))
    with paused(model):  # an FPE Attention Record before this node shows the source, not the inversion
        top, inverted, _ = invert(model, latent=samples, positive=positive, negative=negative, cfg=cfg,
                                  forward_sigmas=sigmas, callback=progress.phase(steps))
    if not all_finite(top):
        raise FPEError(
            "FPE DDIM Invert: the inverted latent came out as NaN or infinite values. Likely causes: cfg set to "
            "NaN/Infinity, a latent that is not an encoded photo, or a model running in fp16 that overflows (run it "
            "in fp32 or bf16)")
    trajectory = [z.cpu() for z in reversed(inverted)]  # forward order: entry i sits at sigmas[i]

    # Record pass: cond rows need no uncond evaluation (cfg 1 skips it); uncond rows need cfg != 1.
    patched = attach_recorder(model, recorder)
    replay = comfy.samplers.KSAMPLER(TrajectoryReplay(trajectory, range(first, stop)))
    with tagged(model, top):  # the source's maps on the trajectory answer to the inverted latent
        comfy.sample.sample_custom(patched, torch.zeros_like(samples), record_cfg, replay,
                                   sigmas.to(model.load_device, copy=True), positive, negative, samples,
                                   callback=progress.phase(stop - first), disable_pbar=True, seed=0)
    source.finish(recorder.clock.order, trajectory=trajectory)  # reached only when both passes returned normally
    source.blend_rows = trajectory_blend_rows(trajectory, sigmas)
    out = {key: value for key, value in latent.items() if key == "batch_index"}
    out["samples"] = top
    return out, source
