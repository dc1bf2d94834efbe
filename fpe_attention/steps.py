"""When an edit acts: the step window and the step index of a model call.

The official code edits step ``i`` (0-based) iff ``int(n * start) <= i < int(n * end)``, with
Python's truncating ``int`` (float artefacts included: ``int(100 * 0.29) == 28``).

The step index of a model call comes from the current sigma's place in the sampling schedule,
never from a call counter: ComfyUI may split cond and uncond into separate calls, skips uncond
at cfg 1, and multi-evaluation samplers (heun, dpm2, ...) call the model at intermediate sigmas
between two schedule entries; such a call belongs to the step whose interval contains it.
"""

from __future__ import annotations

import math

import torch

# Relative tolerance for "this sigma is that schedule entry": sigmas of one schedule are
# bit-identical between runs; the slack only absorbs float32 <-> float64 round trips.
SIGMA_RTOL = 1e-5


def step_window(steps: int, start: float, end: float) -> tuple[int, int]:
    """[first, stop) step indices edited for ``steps`` steps, with the official truncation."""
    if not 0.0 <= start <= 1.0 or not 0.0 <= end <= 1.0:
        raise ValueError(f"start ({start}) and end ({end}) must lie in 0..1")
    if start > end:
        raise ValueError(f"start ({start}) is after end ({end}): set start <= end")
    return int(steps * start), int(steps * end)


def step_index(sigma: float, schedule: torch.Tensor | list[float]) -> int | None:
    """Index i of the step whose interval [schedule[i], schedule[i+1]) holds ``sigma``.

    ``schedule`` is the sampler's sigma list (decreasing, ``steps + 1`` entries). Returns None
    when ``sigma`` lies outside the schedule (a different schedule: the caller decides).
    """
    values = [float(s) for s in schedule]
    if len(values) < 2:
        return None
    for i in range(len(values) - 1):
        hi, lo = values[i], values[i + 1]
        if math.isclose(sigma, hi, rel_tol=SIGMA_RTOL, abs_tol=1e-12):
            return i
        if lo < sigma < hi:
            return i
    return None
