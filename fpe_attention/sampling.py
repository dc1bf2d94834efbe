"""Run a sampler the way ComfyUI's KSampler does, but over given sigmas (thin host adapter).

The capture node must know its schedule to number steps, so it computes the sigmas first and
samples over exactly those; with the KSampler's own sigmas the result is bit-identical to the
stock KSampler (same noise, same progress bar and previews).
"""

from __future__ import annotations

import torch

from .host_versions import fix_empty_latent_channels


def sample_over_sigmas(model, *, seed: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
                       latent: dict, sigmas: torch.Tensor, denoise: float) -> tuple[dict, torch.Tensor]:
    import comfy.sample
    import comfy.utils
    import latent_preview

    latent_image = fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    steps = int(sigmas.shape[-1]) - 1
    callback = latent_preview.prepare_callback(model, steps)
    samples = comfy.sample.sample(
        model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
        denoise=denoise, noise_mask=latent.get("noise_mask"), sigmas=sigmas.to(model.load_device, copy=True),  # samplers may edit it in place
        callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = latent.copy()
    out["samples"] = samples
    return out, noise
