"""Encode an image with the VAE posterior's mean, as the official real-image code does.

The authors encode with ``latent_dist.mean``. ComfyUI's VAE Encode takes the mean in current
ComfyUI, but the ComfyUI of early 2024 draws a sample from the posterior (a different latent on
every run, so the inversion is not reproducible). ``encode_mean`` asks the VAE's Gaussian
regulariser for its mode for the length of one encode, whichever the host; a deterministic VAE
(TAESD) has no regulariser and is encoded as is. Everything else (device handling, batching,
tiled fallback) stays the host's own ``VAE.encode``.
"""

from __future__ import annotations

import torch

from .errors import FPEError

SIDES = ("crop to a multiple of 8", "error")


def check_sides(pixels: torch.Tensor, ratio: int, sides: str) -> None:
    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    if sides not in SIDES:
        raise FPEError(f"sides: unknown value {sides!r}; choose one of {', '.join(SIDES)}")
    if sides == "error" and (height % ratio or width % ratio):
        raise FPEError(
            f"pixels: the image is {width}x{height} px, and its sides must be multiples of {ratio} for the VAE. "
            f"Resize or crop it (e.g. ImageScale to {width - width % ratio}x{height - height % ratio}), or set sides "
            f"to 'crop to a multiple of 8' (the center is kept, as VAE Encode does)")


def encode_mean(vae, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE posterior mean of ``pixels`` (IMAGE [B, H, W, C] in 0..1) as a LATENT's samples."""
    regulariser = getattr(getattr(vae, "first_stage_model", None), "regularization", None)
    sampling = getattr(regulariser, "sample", False)
    if sampling:
        regulariser.sample = False  # mode() = mean for a diagonal Gaussian; restored below
    try:
        return vae.encode(pixels[:, :, :, :3])
    finally:
        if sampling:
            regulariser.sample = True
