"""Which model evaluation an attn1 call belongs to, so a source and a target run pair up.

ComfyUI calls the UNet once per model evaluation with the cond and uncond rows batched, or in
separate calls when memory is short or the conds cannot batch, or with the cond rows only at
cfg 1. A conditioning with several entries (Conditioning (Combine), areas, masks) runs each entry
as a chunk of its own. Multi-evaluation samplers (heun, heunpp2, dpm_2, ...) evaluate several times
per step, some at intermediate sigmas and some at a schedule sigma that another step evaluates again.

Identities mark the structure: ComfyUI builds a fresh ``cond_or_uncond`` list for every UNet call
(shared by all layers of that call), and the sampler hands one fresh ``sigma`` tensor to all calls
of one evaluation (split cond/uncond calls, and guidance nodes such as SAG/PAG that call the model
again at the same point, share it). A chunk of an evaluation is keyed by

* its kind (the ``cond_or_uncond`` value) and its *entry*: the conditioning entry it runs, read from
  the per-entry ids current ComfyUI passes (``uuids``, mapped to the entry's index by the run hook),
  else its place among the evaluation's chunks of that kind (ComfyUI's order, the same on both
  sides when their conditioning has the same structure, which the edit checks);
* its sigma: a schedule position, or "between positions i and i+1";
* its *occurrence*: how many evaluations at that sigma came before it in the run (heun's
  correction at sigma[i+1] is occurrence 0, step i+1's own evaluation there occurrence 1).

Two runs of the same sampler over the same schedule give the same keys whatever the batching, so
the target's chunk finds the source's twin. The *step index* used for the edit window is the
sigma's place in the schedule (``steps.step_index``), never a count.

Runs. The occurrence count belongs to one sampling run, so the clock must know where runs begin.
A run of the capture's schedule starts at its first sigma, and no ComfyUI sampler evaluates that
sigma twice, so an evaluation there begins a run on every host. Current ComfyUI also announces
every run (the inject's OUTER_SAMPLE wrapper calls ``begin_run``). Where a run starts elsewhere
(KSamplerAdvanced ``start_at_step`` > 0) without notice, the first evaluation's end tells: the
post-CFG hook sees the run's own conditioning list, a fresh object per run on both hosts
(``end_evaluation``). An error inside a run closes it (``reset``), so the next one starts clean.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from .steps import ScheduleIndex

COND, UNCOND = 0, 1


def kind_name(kind: int) -> str:
    return {COND: "cond", UNCOND: "uncond"}.get(kind, f"cond #{kind}")


SigmaKey = tuple  # ("s", schedule position i) or ("m", i): strictly between positions i and i + 1


class EvalKey(NamedTuple):
    kind: int  # 0 positive, 1 negative (the entry's role where the host tells it, else cond_or_uncond)
    entry: tuple  # ("entry", index, repeat) from the host's entry ids, or ("order", n, 0): n-th chunk of the kind
    sigma: SigmaKey | None
    occurrence: int


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
    run_start: bool  # part of the first evaluation of a sampling run
    new_evaluation: bool  # the first UNet call of its evaluation


class EvaluationClock:
    """Numbers the model evaluations of sampling runs; one instance per patched model.

    ``top_evaluations``: how many evaluations a run makes at the schedule's first sigma (1 for every
    ComfyUI sampler, 2 where a schedule repeats its first sigma); one more there means a new run began.
    ``None``: the clock serves one run only (the capture's), nothing there starts another.
    """

    def __init__(self, schedule: list[float], top_evaluations: int | None = 1):
        self.schedule = [float(s) for s in schedule]
        self.index = ScheduleIndex(self.schedule)
        self.top_evaluations = top_evaluations
        self.reset()

    # --- runs -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Close the run: the next evaluation begins a new one."""
        self._open = False
        self._announced = False
        self._entries: dict | None = None
        self._marker = None
        self._call: Call | None = None
        self._sigma_tensor = None  # held, so its identity cannot be reused by a new tensor
        self._occurrence = 0
        self._counts: dict[SigmaKey, int] = {}
        self._token = None  # the run's conditioning list (post-CFG), held for its identity
        self._evaluation_run_start = False
        self._seen_kind: Counter = Counter()
        self._seen_entry: Counter = Counter()
        self.order: list[SigmaKey | None] = []  # the run's evaluations, in order: its sampler's pattern

    def begin_run(self, entries: dict | None = None) -> None:
        """The host announces a run (current ComfyUI); ``entries`` maps entry ids to entry indices."""
        self.reset()
        self._announced = True
        self._entries = entries

    @property
    def current(self) -> Call | None:
        """The last UNet call located."""
        return self._call

    @property
    def sigma_tensor(self):
        return self._sigma_tensor

    @property
    def evaluation_run_start(self) -> bool:
        """Whether the evaluation in progress is the first of its run."""
        return self._evaluation_run_start

    def end_evaluation(self, token) -> bool:
        """The post-CFG hook saw the end of the evaluation in progress, run with conditioning ``token``.

        Returns True when that evaluation began a run the clock had taken for the previous one's
        continuation (a run that does not start at the schedule's first sigma, on a host that does
        not announce runs). The caller decides; the clock keeps the new run's token.
        """
        if token is None:
            return False
        if self._token is None or self._evaluation_run_start:
            self._token = token
            return False
        if token is self._token:
            return False
        self._token = token
        return True

    # --- calls ----------------------------------------------------------------------------

    def locate(self, extra_options: dict, rows: int) -> Call:
        """The evaluation and chunks of the UNet call this attn1 call is part of (cached per call)."""
        marker = extra_options.get("cond_or_uncond")
        if marker is not None and marker is self._marker and self._call is not None and self._call.rows == rows:
            return self._call
        kinds = list(marker) if marker else [COND]
        sigma_tensor = extra_options["sigmas"]
        sigma = float(sigma_tensor.reshape(-1)[0])
        skey = self.index.key(sigma)
        new_evaluation = sigma_tensor is not self._sigma_tensor
        if new_evaluation:
            self._begin_evaluation(sigma_tensor, skey)
        if rows % len(kinds):
            raise RuntimeError(
                f"FPE: a UNet call has {rows} rows for {len(kinds)} cond/uncond chunks; another patch changed "
                f"the batch inside the model, which FPE cannot pair with its source")
        per_chunk = rows // len(kinds)
        uuids = extra_options.get("uuids") if self._entries is not None else None
        chunks = []
        for j, kind in enumerate(kinds):
            known = self._entries.get(uuids[j]) if uuids is not None and j < len(uuids) else None
            index = None
            if known is not None:  # the entry's own role and index (current ComfyUI)
                kind, index = known
            order = self._seen_kind[kind]
            self._seen_kind[kind] += 1
            ident = ("entry", index) if index is not None else ("order", order)
            repeat = self._seen_entry[(kind, ident)]
            self._seen_entry[(kind, ident)] += 1
            key = EvalKey(kind, ident + (repeat,), skey, self._occurrence)
            chunks.append(Chunk(kind, slice(j * per_chunk, (j + 1) * per_chunk), key))
        shape = extra_options.get("original_shape")
        self._marker = marker
        self._call = Call(sigma, self.index.step(sigma), rows, tuple(chunks),
                          tuple(shape) if shape is not None else None, self._evaluation_run_start, new_evaluation)
        return self._call

    def _begin_evaluation(self, sigma_tensor, skey) -> None:
        if self._announced:
            run_start = True
        elif (skey == ("s", 0) and self.top_evaluations is not None
              and self._counts.get(skey, 0) >= self.top_evaluations):
            run_start = True  # the schedule's first sigma once more: a new run
        else:
            run_start = not self._open  # nothing open: a run begins here, wherever that is
        if run_start:
            entries = self._entries if self._announced else None
            self.reset()
            self._entries = entries
            self._open = True
        self._evaluation_run_start = run_start
        self._sigma_tensor = sigma_tensor
        self._occurrence = self._counts.get(skey, 0)
        self._counts[skey] = self._occurrence + 1
        self.order.append(skey)
        self._seen_kind = Counter()
        self._seen_entry = Counter()
