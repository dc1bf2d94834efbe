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
"""

from __future__ import annotations

import torch


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
