"""Input checks shared by the nodes: numbers a workflow file can carry that no widget would allow.

ComfyUI validates a widget's min/max, but NaN compares false with both, so a shared workflow JSON
can deliver NaN to any FLOAT input (and direct API calls can deliver anything). Each check names
the input and the fix, before any sampling.
"""

from __future__ import annotations

import math

import torch

from .errors import FPEError


def check_number(name: str, value, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float, or an FPEError naming ``name`` if it is not a finite number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FPEError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise FPEError(f"{name}: {value} is not a finite number (a workflow file can carry NaN or Infinity): set a "
                       f"number{_bounds(low, high)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise FPEError(f"{name}: {value} is out of range: set a number{_bounds(low, high)}")
    return float(value)


def _bounds(low, high) -> str:
    if low is not None and high is not None:
        return f" from {low:g} to {high:g}"
    if low is not None:
        return f" of at least {low:g}"
    return f" of at most {high:g}" if high is not None else ""


def check_latent(samples, name: str) -> None:
    """A LATENT's samples FPE can work on: [batch, channels, height, width], at least one image, finite."""
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        shape = list(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise FPEError(f"{name}: FPE edits image latents [batch, channels, height, width]; got {shape}")
    if samples.shape[0] == 0:
        raise FPEError(f"{name}: the latent batch is empty (0 images): connect a latent with at least one image "
                       f"(e.g. Empty Latent Image with batch_size 1)")
    if not bool(torch.isfinite(samples).all()):
        raise FPEError(f"{name}: the latent holds NaN or infinite values: connect a valid latent")
