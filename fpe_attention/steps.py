"""When an edit acts: the step window and the step index of a model call.

The official code edits step ``i`` (0-based) iff ``int(n * start) <= i < int(n * end)``, with
Python's truncating ``int`` (float artefacts included: ``int(100 * 0.29) == 28``).

The step index of a model call comes from the current sigma's place in the sampling schedule,
never from a call counter: ComfyUI may split cond and uncond into separate calls, skips uncond
at cfg 1, and multi-evaluation samplers (heun, dpm2, ...) call the model at intermediate sigmas
between two schedule entries; such a call belongs to the step whose interval contains it.
"""

from __future__ import annotations

import bisect
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


class ScheduleIndex:
    """Where a sigma sits in one decreasing schedule, in O(log n) per lookup (runs of 10000 steps)."""

    def __init__(self, schedule: torch.Tensor | list[float]):
        self.values = [float(s) for s in schedule]
        self._ascending = [-v for v in self.values]

    def _equal(self, sigma: float, last: int) -> int | None:
        """The first position i < ``last`` whose value is ``sigma`` (within SIGMA_RTOL)."""
        j = bisect.bisect_left(self._ascending, -sigma)
        for i in range(max(0, j - 2), min(last, j + 2)):
            if math.isclose(sigma, self.values[i], rel_tol=SIGMA_RTOL, abs_tol=1e-12):
                while i > 0 and math.isclose(sigma, self.values[i - 1], rel_tol=SIGMA_RTOL, abs_tol=1e-12):
                    i -= 1
                return i
        return None

    def _between(self, sigma: float) -> int | None:
        """The position i with values[i + 1] < sigma < values[i]."""
        j = bisect.bisect_left(self._ascending, -sigma)  # first position whose value is <= sigma
        i = j - 1
        if 0 <= i < len(self.values) - 1 and self.values[i + 1] < sigma < self.values[i]:
            return i
        return None

    def step(self, sigma: float) -> int | None:
        """Index i of the step whose interval [values[i], values[i+1]) holds ``sigma`` (None: outside).

        A sigma strictly inside an interval belongs to it even when it lies within the tolerance of the
        interval's lower end (an intermediate evaluation of step i, e.g. dpm_2_ancestral's)."""
        if len(self.values) < 2:
            return None
        i = self._between(sigma)
        return i if i is not None else self._equal(sigma, len(self.values) - 1)

    def key(self, sigma: float) -> tuple | None:
        """("s", i) at schedule position i, ("m", i) strictly between positions i and i + 1, else None."""
        i = self._equal(sigma, len(self.values))
        if i is not None:
            return ("s", i)
        i = self._between(sigma)
        return ("m", i) if i is not None else None


def step_index(sigma: float, schedule: torch.Tensor | list[float]) -> int | None:
    """Index i of the step whose interval [schedule[i], schedule[i+1]) holds ``sigma``.

    ``schedule`` is the sampler's sigma list (decreasing, ``steps + 1`` entries). Returns None
    when ``sigma`` lies outside the schedule (a different schedule: the caller decides).
    """
    return ScheduleIndex(schedule).step(sigma)
