"""Which model evaluation an attn1 call belongs to, so a source and a target run pair up.

ComfyUI calls the UNet once per model evaluation with the cond and uncond rows batched, or in
separate calls when memory is short or the conds cannot batch, or with the cond rows only at
cfg 1. Multi-evaluation samplers (heun, dpm_2, ...) evaluate several times per step, some at
intermediate sigmas and some at a schedule sigma that a later step evaluates again.

An evaluation is therefore keyed per chunk kind (0 = cond, 1 = uncond) by its sigma and by how
many times that kind was already evaluated at that sigma in the run (its *occurrence*): heun's
correction at sigma[i+1] is occurrence 0, step i+1's own evaluation there occurrence 1. Two runs
of the same sampler over the same schedule produce the same keys whatever the batching, so the
target's evaluation finds the source's twin. The *step index* used for the edit window is the
sigma's place in the schedule (``steps.step_index``), never a call count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .steps import SIGMA_RTOL, step_index

COND, UNCOND = 0, 1
KIND_NAMES = {COND: "cond", UNCOND: "uncond"}

SigmaKey = tuple  # ("s", schedule position) or ("m", sigma rounded to 7 significant digits)
EvalKey = tuple  # (kind, SigmaKey, occurrence)


def sigma_key(sigma: float, schedule: list[float]) -> SigmaKey:
    for i, value in enumerate(schedule):
        if math.isclose(sigma, value, rel_tol=SIGMA_RTOL, abs_tol=1e-12):
            return ("s", i)
    return ("m", float(f"{sigma:.6e}"))


@dataclass(frozen=True)
class Chunk:
    kind: int  # COND or UNCOND
    rows: slice  # the chunk's rows in the call's batch
    key: EvalKey


@dataclass(frozen=True)
class Call:
    sigma: float
    step: int | None  # None: sigma outside the schedule
    rows: int
    chunks: tuple[Chunk, ...]
    original_shape: tuple[int, ...] | None  # the UNet input shape [rows, C, H, W]
    run_start: bool  # the first UNet call of a sampling run


class EvaluationClock:
    """Numbers the UNet calls of one sampling run; one instance per patched model."""

    def __init__(self, schedule: list[float], top_occurrences: dict[int, int] | None = None):
        self.schedule = [float(s) for s in schedule]
        # How often each kind is evaluated at the first sigma in a full run: seeing it more often
        # means a new run began (an interrupted run leaves no lower sigma behind to compare with).
        self.top_occurrences = top_occurrences or {COND: 1, UNCOND: 1}
        self.reset()

    def reset(self) -> None:
        self._marker = None
        self._call: Call | None = None
        self._counts: dict[tuple[int, SigmaKey], int] = {}
        self._last_sigma: float | None = None

    def locate(self, extra_options: dict, rows: int) -> Call:
        """The evaluation of the UNet call this attn1 call is part of (cached per call)."""
        # ComfyUI builds a fresh ``cond_or_uncond`` list for every UNet call and hands the same
        # object to every layer of that call: its identity marks the call.
        marker = extra_options.get("cond_or_uncond")
        if marker is not None and marker is self._marker and self._call is not None and self._call.rows == rows:
            return self._call
        kinds = list(marker) if marker else [COND]
        sigma = float(extra_options["sigmas"].reshape(-1)[0])
        skey = sigma_key(sigma, self.schedule)
        run_start = self._last_sigma is None or self._new_run(sigma, skey, kinds)
        if run_start:
            self._counts.clear()
        self._last_sigma = sigma
        if rows % len(kinds):
            raise RuntimeError(
                f"FPE: a UNet call has {rows} rows for {len(kinds)} cond/uncond chunks; another patch changed "
                f"the batch inside the model, which FPE cannot pair with its source")
        per_chunk = rows // len(kinds)
        chunks = []
        for j, kind in enumerate(kinds):
            occurrence = self._counts.get((kind, skey), 0)
            self._counts[(kind, skey)] = occurrence + 1
            chunks.append(Chunk(kind, slice(j * per_chunk, (j + 1) * per_chunk), (kind, skey, occurrence)))
        shape = extra_options.get("original_shape")
        self._marker = marker
        self._call = Call(sigma, step_index(sigma, self.schedule), rows, tuple(chunks),
                          tuple(shape) if shape is not None else None, run_start)
        return self._call

    def _new_run(self, sigma: float, skey: SigmaKey, kinds: list[int]) -> bool:
        if self._last_sigma is None:
            return False
        if sigma > self._last_sigma * (1 + SIGMA_RTOL):  # a run's sigmas never increase
            return True
        if skey == ("s", 0):
            return any(self._counts.get((kind, skey), 0) >= self.top_occurrences.get(kind, 1) for kind in kinds)
        return False
