"""Reconstruction check: how well the inverted noise gives the input back.

Sampling the inverted latent back with DDIM (ComfyUI's ``ddim``/``euler`` step, the inverse of
the inversion) and the inversion's own prompt and cfg is what a real-image edit does on its
untouched parts; its distance to the input is the inversion's error, which every edit inherits.
Reported as the latent RMSE relative to the input latent's RMS and, with a VAE, as the PSNR of the
decoded reconstruction against the decoded input (the VAE's own loss left out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ReconstructionReport:
    latent: torch.Tensor  # the reconstruction, a LATENT's samples
    relative_rmse: list[float]  # per image: RMSE / RMS of the input latent
    psnr_db: list[float] | None = None  # per image, decoded reconstruction vs decoded input

    @property
    def finite(self) -> bool:
        values = self.relative_rmse + (self.psnr_db or [])
        return all(math.isfinite(v) for v in values)

    def describe(self) -> str:
        parts = []
        for i, rmse in enumerate(self.relative_rmse):
            text = f"latent RMSE {rmse * 100:.3g}%"
            if self.psnr_db is not None:
                text += f", PSNR {self.psnr_db[i]:.1f} dB"
            parts.append(text if len(self.relative_rmse) == 1 else f"image {i + 1}: {text}")
        return "reconstruction " + "; ".join(parts)


def reconstruct(model, *, inverted: torch.Tensor, positive, negative, cfg: float, sigmas: torch.Tensor,
                callback=None) -> torch.Tensor:
    """Sample ``inverted`` (a LATENT's samples) back over ``sigmas`` with ComfyUI's ddim, no noise."""
    import comfy.sample
    import comfy.samplers

    sampler = comfy.samplers.sampler_object("ddim")
    return comfy.sample.sample_custom(model, torch.zeros_like(inverted), cfg, sampler,
                                      sigmas.to(model.load_device, copy=True), positive, negative, inverted,
                                      callback=callback, disable_pbar=True, seed=0)


def expected_latent(latent: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Where a perfect round trip lands: the input at the schedule's last level.

    A schedule ending at 0 returns the clean latent; the official one ends at σ(0) ≈ 0.029, where
    ComfyUI's sampler space holds the latent scaled by sqrt(1 + σ(0)²) (+0.04 %).
    """
    return latent * math.sqrt(1.0 + float(sigmas[-1]) ** 2)


def relative_rmse(reconstruction: torch.Tensor, expected: torch.Tensor) -> list[float]:
    err = (reconstruction.float().cpu() - expected.float().cpu()).flatten(1)
    ref = expected.float().cpu().flatten(1)
    return [float(e.pow(2).mean().sqrt() / r.pow(2).mean().sqrt().clamp_min(1e-12)) for e, r in zip(err, ref,
                                                                                                     strict=True)]


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """PSNR per image of two IMAGE batches in [0, 1]; 100 dB stands for identical, NaN for non-finite images."""
    mse = (a.float().cpu() - b.float().cpu()).pow(2).flatten(1).mean(1)
    return [math.nan if not math.isfinite(float(m)) else 100.0 if float(m) == 0
            else min(100.0, -10.0 * math.log10(float(m))) for m in mse]
