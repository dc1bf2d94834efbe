"""``storage = replay``: keep the source's model inputs, recompute its attention inputs in the edit.

A stored record holds, per stored evaluation and layer, the source rows' attn1 input: 150 MiB per
step for SDXL at 1024 px. A replay record holds what the source's UNet call got instead, per stored
evaluation and conditioning entry: the latent rows x and the entry's conditioning tensors (text
embedding, SDXL's pooled/size vector, ...), kilobytes to a few MB in all. The edit then runs the
source's rows in the same UNet call as the target's (the official code's [source, target] batch,
for the stored steps only) and hands the source rows' layer inputs to the target rows on the spot.

The source rows see the same model, inputs and patches as in the capture, so their layer inputs
are the stored ones up to the rounding a different batch layout gives (the tests bound it). The
price is the extra rows: at most about 1.4x a plain generation per edit at cfg > 1 (three rows instead of
two for 80% of the steps), against no record at all.

ComfyUI runs every UNet call through its ``model_function_wrapper`` slot with the batched inputs;
the recorder and the edit both sit there (chained with a wrapper another pack set before).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import FPEError
from .hooks import Shared

# Conditioning entries that are per-call objects, not per-row tensors: their rows cannot be re-run.
_NOT_REPLAYABLE = {"control": "a ControlNet / T2I-Adapter", "gligen": "GLIGEN"}


@dataclass(frozen=True)
class SourceInput:
    """What one chunk of a source evaluation fed the UNet."""

    x: torch.Tensor  # the chunk's latent rows, as the sampler passed them (sampler space)
    cond: dict[str, torch.Tensor]  # the chunk's conditioning tensors (c_crossattn, y, c_concat, ...)

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size() + sum(t.numel() * t.element_size() for t in self.cond.values())


def _fix(maker: str, fallback: bool) -> str:
    if fallback:  # auto chose replay because no record fits
        return (f"{maker}'s record does not fit in memory (auto storage fell back to replay): store less (lower "
                f"store_end, fewer store_layers, precision fp16, fewer steps, a smaller image)")
    return f"Set {maker}'s storage to 'auto' or 'cpu' (a stored record)"


def reject_per_call_conditioning(conditionings, maker: str, fallback: bool = False) -> None:
    """Before sampling: a replay source cannot carry conditioning that is computed per call."""
    for conditioning in conditionings:
        for _, options in conditioning or []:
            for key, what in _NOT_REPLAYABLE.items():
                if options.get(key) is not None:
                    raise FPEError(f"storage 'replay' cannot re-run a source made with {what}: its output is "
                                   f"computed per call. {_fix(maker, fallback)}")


def per_row_conditioning(c: dict, rows: int, maker: str, fallback: bool = False,
                         target: bool = False) -> dict[str, torch.Tensor]:
    """The batched conditioning tensors of a UNet call (all ``rows`` rows); refuses per-call objects.
    ``target``: the call is the edit's (the source's own was checked at the capture)."""
    out = {}
    for key, value in c.items():
        if key == "transformer_options" or value is None:
            continue
        what = _NOT_REPLAYABLE.get(key, f"the conditioning '{key}' ({type(value).__name__})")
        if key in _NOT_REPLAYABLE or not torch.is_tensor(value) or value.ndim == 0 or value.shape[0] != rows:
            if target:
                raise FPEError(f"storage 'replay': the target sampler carries {what}, which cannot share a UNet call "
                               f"with the replayed source rows: capture with storage 'auto' or 'cpu' for this edit")
            raise FPEError(f"storage 'replay' cannot re-run a source made with {what}: its output is computed per "
                           f"call. {_fix(maker, fallback)}")
        out[key] = value
    return out


class ChainedWrapper(Shared):
    """A ``model_function_wrapper`` that runs another pack's earlier one inside it; ComfyUI's device
    moves and model lists (``to``, ``models``) reach that one too."""

    def __init__(self, previous=None):
        self.previous = previous

    def to(self, device):
        if hasattr(self.previous, "to"):
            self.previous.to(device)
        return self

    def models(self):
        return self.previous.models() if hasattr(self.previous, "models") else []


class InputRecorder(ChainedWrapper):
    """Capture side: keeps each stored chunk's x and conditioning, keyed like the attn1 record."""

    def __init__(self, recorder, previous=None):
        super().__init__(previous)
        self.recorder = recorder  # the CaptureRecorder: its clock numbers the evaluations
        self._last: dict = {}  # the latest conditioning per entry, to share equal tensors step to step

    def __call__(self, apply_model, args):
        x, c = args["input"], args["c"]
        options = c.get("transformer_options", {})
        recorder = self.recorder
        source = recorder.source
        call = recorder.clock.locate(unet_call_view(options, x), x.shape[0])
        for chunk in call.chunks:  # (a UNet's attn1 recorder notes them too; an MMDiT has only this hook)
            source.evaluations.setdefault(chunk.key, call.step)
        first, stop = source.stored_window
        if call.step is not None and first <= call.step < stop:
            cond = per_row_conditioning(c, x.shape[0], source.maker, source.auto_replay)
            for chunk in call.chunks:
                if chunk.kind not in source.stored_kinds:
                    continue
                kept = {key: self._shared(chunk.key, key, value[chunk.rows]) for key, value in cond.items()}
                source.replay[chunk.key] = SourceInput(x[chunk.rows].detach().to("cpu", copy=True), kept)
        return run_unet(self.previous, apply_model, args)

    def _shared(self, key, name, value):
        value = value.detach()
        last = self._last.get((key.kind, key.entry, name))
        if last is not None and last.shape == value.shape and torch.equal(last, value.to(last.device)):
            return last
        kept = value.to("cpu", copy=True)
        self._last[(key.kind, key.entry, name)] = kept
        return kept


@dataclass(frozen=True)
class ReplayCall:
    """A target UNet call running with source rows in front: ``pairs`` maps each edited target
    chunk's rows (in the target's own batch) to its source rows (in the extended batch)."""

    call: object  # the target's evaluations.Call
    source_rows: int
    pairs: tuple[tuple[slice, slice], ...]


def extended_batch(args, call, inputs: list[tuple[object, SourceInput]], maker: str):
    """The UNet arguments with the source rows ``inputs`` [(target chunk, its source input)] in front.

    Returns (args for the extended call, ReplayCall)."""
    x, t, c = args["input"], args["timestep"], args["c"]
    options = c.get("transformer_options", {})
    per_chunk = call.rows // len(call.chunks)
    xs, conds, pairs, kinds, uuids = [], [], [], [], []
    target_uuids = options.get("uuids")
    target_kinds = list(options.get("cond_or_uncond") or [0] * len(call.chunks))
    start = 0
    for chunk, source_input in inputs:
        rows = chunk.rows.stop - chunk.rows.start
        src_x = source_input.x.to(device=x.device, dtype=x.dtype)
        if src_x.shape[0] != rows:  # a source batch of 1 serves every target image
            src_x = src_x[:1].expand(rows, *src_x.shape[1:])
        if src_x.shape[1:] != x.shape[1:]:
            raise FPEError(
                f"the target's UNet input is {tuple(x.shape[1:])} per image, the replayed source's "
                f"{tuple(src_x.shape[1:])}: give the target sampler a latent of the capture's size (and the same "
                f"areas on both sides)")
        xs.append(src_x)
        conds.append({key: (value[:1].expand(rows, *value.shape[1:]) if value.shape[0] != rows else value)
                      for key, value in source_input.cond.items()})
        pairs.append((chunk.rows, slice(start, start + rows)))
        index = chunk.rows.start // per_chunk  # the source rows run as their target twin's entry
        kinds.append(target_kinds[index])
        if target_uuids is not None:
            uuids.append(target_uuids[index] if index < len(target_uuids) else None)
        start += rows
    control = c.get("control")
    target_cond = per_row_conditioning({k: v for k, v in c.items() if k != "control"}, x.shape[0], maker,
                                       target=True)
    if set(target_cond) != set().union(*(cond.keys() for cond in conds)):
        raise FPEError(
            f"the replayed source was conditioned with {sorted(set().union(*(c.keys() for c in conds)))}, the "
            f"target with {sorted(target_cond)}: use the same kind of model and prompt nodes on both sides")
    extended = dict(c)
    for key, value in target_cond.items():
        extended[key] = _cat([cond[key] for cond in conds] + [value], x.device)
    extended_options = dict(options)
    extended_options["cond_or_uncond"] = kinds + target_kinds
    extended_options["fpe_source_chunks"] = len(kinds)  # the chunks in front are the source's (an attention record skips them)
    if target_uuids is not None:
        extended_options["uuids"] = uuids + list(target_uuids)
    extended["transformer_options"] = extended_options
    if control is not None:  # a ControlNet on the target only (a replay source has none): zero residuals
        extended["control"] = _pad_control(control, start, x.shape[0])
    timestep = torch.cat([t[:1].expand(start)] + [t])
    new_args = dict(args, input=torch.cat(xs + [x]), timestep=timestep, c=extended,
                    cond_or_uncond=extended_options["cond_or_uncond"])
    return new_args, ReplayCall(call, start, tuple(pairs))


def _pad_control(control: dict, source_rows: int, rows: int) -> dict:
    """A ControlNet's residuals for the extended batch: zero for the source rows in front, as the
    source ran without one (a replay capture refuses it)."""
    out = {}
    for where, residuals in control.items():
        padded = []
        for residual in residuals or []:
            if residual is None:
                padded.append(None)
                continue
            if residual.shape[0] not in (1, rows):
                raise FPEError("storage 'replay': the target's ControlNet gives residuals for another batch than "
                               "the target's: use storage 'auto' or 'cpu' for this edit")
            residual = residual.expand(rows, *residual.shape[1:])
            padded.append(torch.cat([residual.new_zeros((source_rows, *residual.shape[1:])), residual]))
        out[where] = padded
    return out


MAX_TOKEN_REPEAT = 4  # as ComfyUI: prompts whose lengths need more repeats to batch are not batched


def _cat(tensors: list[torch.Tensor], device) -> torch.Tensor:
    """Concatenate along the batch; token sequences of different lengths are repeated to a common
    length as ComfyUI batches prompts (attention over repeated tokens is unchanged)."""
    tensors = [t.to(device) for t in tensors]
    if tensors[0].ndim == 3 and len({t.shape[1] for t in tensors}) > 1:
        common = math.lcm(*(t.shape[1] for t in tensors))
        if common > MAX_TOKEN_REPEAT * max(t.shape[1] for t in tensors):
            raise FPEError(
                f"storage 'replay': the source and target prompts' lengths ({sorted({t.shape[1] for t in tensors})} "
                f"tokens) cannot share a UNet call: keep the prompts' lengths closer, or use storage 'auto' or 'cpu'")
        tensors = [t.repeat(1, common // t.shape[1], 1) for t in tensors]
    return torch.cat(tensors)


def unet_call_view(options: dict, x: torch.Tensor) -> dict:
    """What an attn1 patch of this UNet call will see of it, for locating it before it runs."""
    view = {key: options.get(key) for key in ("cond_or_uncond", "sigmas", "uuids", "sample_sigmas")}
    view["original_shape"] = list(x.shape)
    return view


def run_unet(previous, apply_model, args):
    if previous is not None:
        return previous(apply_model, args)
    return apply_model(args["input"], args["timestep"], **args["c"])

