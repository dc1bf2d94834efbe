"""Sampling schedules: the official FPE DDIM timesteps as ComfyUI sigmas.

The authors' notebooks run diffusers' DDIM with ``steps_offset=0`` and ``set_alpha_to_one=False``:
timesteps 980, 960, ..., 20, 0 for 50 steps (stride 1000 // steps), each step going to the next
timestep and the last one (t = 0) mapping alpha_bar_0 to itself. In ComfyUI's sigma space DDIM is
Euler, so that run is the sigma list ``sigma(980), ..., sigma(20), sigma(0), sigma(0)``: ``steps``
model calls, the last a zero-length step, ending at sigma(0) ~ 0.0292 (not at a clean x0), as the
official run does. ComfyUI's ``ddim_uniform`` instead gives 981 ... 1 then sigma = 0.
"""

from __future__ import annotations

import torch

from .host_versions import ksampler_model


def official_ddim_timesteps(steps: int, train_steps: int = 1000) -> list[int]:
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must lie in 1..{train_steps}, got {steps}")
    stride = train_steps // steps
    return [stride * (steps - 1 - i) for i in range(steps)]


def official_ddim_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """``steps + 1`` sigmas reproducing the official DDIM run (see module docstring)."""
    timesteps = official_ddim_timesteps(steps)
    t = torch.tensor(timesteps + [0], dtype=torch.float32)
    return model_sampling.sigma(t).float().cpu()


def sampler_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The sigmas the stock KSampler would use for these settings (float32, on CPU).

    Built by ComfyUI's own ``comfy.samplers.KSampler`` so scheduler handlers, ``denoise`` and the
    samplers that drop the penultimate sigma (dpm_2, uni_pc) behave exactly as in the host.
    """
    import comfy.samplers

    ksampler = comfy.samplers.KSampler(ksampler_model(model), steps=steps, device="cpu", sampler=sampler_name,
                                       scheduler=scheduler, denoise=denoise)
    return ksampler.sigmas.float().cpu()
