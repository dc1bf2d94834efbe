"""Which model evaluation an attn1 call belongs to, so a source and a target run pair up.

ComfyUI calls the UNet once per model evaluation with the cond and uncond rows batched, or in
separate calls when memory is short or the conds cannot batch, or with the cond rows only at
cfg 1. Multi-evaluation samplers (heun, heunpp2, dpm_2, ...) evaluate several times per step,
some at intermediate sigmas and some at a schedule sigma that another step evaluates again.

Two identities mark the structure: ComfyUI builds a fresh ``cond_or_uncond`` list for every UNet
call (shared by all layers of that call), and the sampler hands one fresh ``sigma`` tensor to all
calls of one evaluation (split cond/uncond calls, and guidance nodes such as SAG/PAG that call the
model again at the same point, share it). An evaluation is keyed by its sigma (a schedule position,
or "between positions i and i+1") and by how many evaluations at that sigma came before it in the
run (its *occurrence*): heun's correction at sigma[i+1] is occurrence 0, step i+1's own evaluation
there occurrence 1. Two runs of the same sampler over the same schedule produce the same keys
whatever the batching, so the target's evaluation finds the source's twin. The *step index* used
for the edit window is the sigma's place in the schedule (``steps.step_index``), never a count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .steps import SIGMA_RTOL, step_index

COND, UNCOND = 0, 1


def kind_name(kind: int) -> str:
    return {COND: "cond", UNCOND: "uncond"}.get(kind, f"cond #{kind}")


SigmaKey = tuple  # ("s", schedule position i) or ("m", i): strictly between positions i and i + 1
EvalKey = tuple  # (kind, SigmaKey, occurrence)


def sigma_key(sigma: float, schedule: list[float]) -> SigmaKey | None:
    for i, value in enumerate(schedule):
        if math.isclose(sigma, value, rel_tol=SIGMA_RTOL, abs_tol=1e-12):
            return ("s", i)
    for i in range(len(schedule) - 1):
        if schedule[i + 1] < sigma < schedule[i]:
            return ("m", i)
    return None  # outside the schedule


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
    """Numbers the model evaluations of one sampling run; one instance per patched model.

    ``top_evaluations``: how many evaluations a full run makes at the first schedule sigma (1 for
    every sampler in ComfyUI). One more there means a new run began; the inject also resets the
    clock explicitly before sampling where the host allows it. ``None`` disables that detection
    (the capture owns its single run).
    """

    def __init__(self, schedule: list[float], top_evaluations: int | None = 1):
        self.schedule = [float(s) for s in schedule]
        self.top_evaluations = top_evaluations
        self.reset()

    def reset(self) -> None:
        self._marker = None
        self._call: Call | None = None
        self._sigma_tensor = None  # held, so its identity cannot be reused by a new tensor
        self._occurrence = 0
        self._counts: dict[SigmaKey, int] = {}
        self._fresh = True

    def locate(self, extra_options: dict, rows: int) -> Call:
        """The evaluation of the UNet call this attn1 call is part of (cached per call)."""
        marker = extra_options.get("cond_or_uncond")
        if marker is not None and marker is self._marker and self._call is not None and self._call.rows == rows:
            return self._call
        kinds = list(marker) if marker else [COND]
        sigma_tensor = extra_options["sigmas"]
        sigma = float(sigma_tensor.reshape(-1)[0])
        skey = sigma_key(sigma, self.schedule)
        run_start = self._fresh
        if sigma_tensor is not self._sigma_tensor:  # a new evaluation
            if (not run_start and skey == ("s", 0) and self.top_evaluations is not None
                    and self._counts.get(skey, 0) >= self.top_evaluations):
                self.reset()
                run_start = True
            self._sigma_tensor = sigma_tensor
            self._occurrence = self._counts.get(skey, 0)
            self._counts[skey] = self._occurrence + 1
        self._fresh = False
        if rows % len(kinds):
            raise RuntimeError(
                f"FPE: a UNet call has {rows} rows for {len(kinds)} cond/uncond chunks; another patch changed "
                f"the batch inside the model, which FPE cannot pair with its source")
        per_chunk = rows // len(kinds)
        chunks = tuple(Chunk(kind, slice(j * per_chunk, (j + 1) * per_chunk), (kind, skey, self._occurrence))
                       for j, kind in enumerate(kinds))
        shape = extra_options.get("original_shape")
        self._marker = marker
        self._call = Call(sigma, step_index(sigma, self.schedule), rows, chunks,
                          tuple(shape) if shape is not None else None, run_start)
        return self._call
