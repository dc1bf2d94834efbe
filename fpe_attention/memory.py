"""What a capture will store, and whether that fits where it is to be kept, decided before sampling.

The size is counted, not guessed: the chosen sampler is dry-run over the capture's sigmas with a
stand-in model (a zero tensor per call, no UNet), which gives exactly the evaluations it will make
(heun and dpm_2 evaluate about twice per step). Each evaluation inside the stored steps keeps, per
stored layer, tokens x channels values for every stored row: latent batch x conditioning entries.

Where: ``cpu`` keeps the record in system RAM; ``replay`` keeps no record, only the source's model
inputs (``replay``); ``auto`` keeps it beside the model (VRAM) unless it would take more than
``AUTO_VRAM_SHARE`` of the free VRAM, then in system RAM, and where that cannot hold it either,
replays. System RAM is never planned past ``RAM_SHARE`` of what is free. A ``cpu`` record that
cannot fit stops the node with the size, what is free, and the fixes, before any step runs.
"""

from __future__ import annotations

import logging
import os
import types
from dataclasses import dataclass

import torch

from .errors import FPEError
from .host_versions import model_sampling_of
from .steps import ScheduleIndex

log = logging.getLogger("free-prompt-editing")

AUTO_VRAM_SHARE = 0.25  # "auto" keeps a record beside the model only up to this share of the free VRAM
RAM_SHARE = 0.8  # never plan to fill more of the free system RAM than this


def planned_sigmas(sampler_name: str, sigmas: torch.Tensor, model_sampling=None, patcher=None) -> list[float] | None:
    """The sigma of every model evaluation ``sampler_name`` makes over ``sigmas`` (None if unknown).

    A dry run of the host's own sampler function with a stand-in model that returns zeros: the
    evaluations of ComfyUI's samplers depend on the schedule, not on the model's output.
    """
    import comfy.samplers

    calls: list[float] = []

    def stand_in(x, sigma, **kwargs):
        calls.append(float(sigma.reshape(-1)[0]))
        return torch.zeros_like(x)

    stand_in.inner_model = types.SimpleNamespace(  # what some samplers read off the model they get
        inner_model=types.SimpleNamespace(model_sampling=model_sampling), model_sampling=model_sampling,
        model_patcher=patcher)
    try:
        sampler = comfy.samplers.sampler_object(sampler_name)
        x = torch.zeros(1, 4, 1, 1)
        sampler.sampler_function(stand_in, x, sigmas.detach().float().cpu().clone(),
                                 extra_args={"seed": 0, "model_options": {}}, callback=None, disable=True,
                                 **getattr(sampler, "extra_options", {}))
    except Exception as exc:  # an unusual sampler: fall back to a bound
        log.debug("FPE: could not dry-run sampler %s (%s); assuming 2 evaluations per step", sampler_name, exc)
        return None
    return calls


def stored_evaluations(sampler_name: str, sigmas: torch.Tensor, window: tuple[int, int], model=None) -> int:
    """How many model evaluations fall into the stored steps ``window`` of the schedule ``sigmas``."""
    first, stop = window
    if stop <= first:
        return 0
    model_sampling = model_sampling_of(model) if model is not None else None
    calls = planned_sigmas(sampler_name, sigmas, model_sampling, model)
    if calls is None:
        return 2 * (stop - first)
    index = ScheduleIndex(sigmas)
    return sum(1 for sigma in calls if (i := index.step(sigma)) is not None and first <= i < stop)


def free_ram() -> int:
    try:
        import psutil  # ships with ComfyUI; optional here all the same

        return int(psutil.virtual_memory().available)
    except Exception:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def free_vram(device) -> int:
    import comfy.model_management

    return int(comfy.model_management.get_free_memory(device))


def _fmt(nbytes: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} bytes"


@dataclass(frozen=True)
class StoragePlan:
    mode: str  # "model" (beside the model), "cpu" (system RAM) or "replay" (no record)
    device: torch.device | None  # where stored rows are copied to (None: where the model computes them)


def choose_storage(maker: str, estimate: int, storage: str, load_device, what: str) -> StoragePlan:
    """Where a record of ``estimate`` bytes lives, or an FPEError if ``storage`` cannot hold it.

    ``what`` describes the record for the message (layers, steps, rows, dtype).
    """
    if storage == "replay":
        log.info("%s: storage replay: keeping the source's model inputs only (a stored record would take about %s); "
                 "each edit re-runs the source rows beside the target's in the stored steps", maker, _fmt(estimate))
        return StoragePlan("replay", None)
    device = torch.device(load_device) if load_device is not None else torch.device("cpu")
    if storage == "auto" and device.type != "cpu":
        vram = free_vram(device)
        if estimate <= AUTO_VRAM_SHARE * vram:
            log.info("%s: storing about %s (%s) beside the model on %s", maker, _fmt(estimate), what, device)
            return StoragePlan("model", None)
        log.info("%s: the record (about %s) exceeds %d%% of the free VRAM (%s): keeping it in system RAM",
                 maker, _fmt(estimate), round(AUTO_VRAM_SHARE * 100), _fmt(vram))
    ram = free_ram()
    if estimate > RAM_SHARE * ram:
        if storage == "auto":
            log.info("%s: auto storage: the record (about %s, %s) exceeds %d%% of the free system RAM (%s): replaying "
                     "the source instead (no record; each edit re-runs the source rows, about 1.2-1.4x a plain "
                     "generation)", maker, _fmt(estimate), what, round(RAM_SHARE * 100), _fmt(ram))
            return StoragePlan("replay", None)
        raise FPEError(
            f"{maker} would store about {_fmt(estimate)} ({what}), but the system RAM has {_fmt(ram)} free. "
            f"Set storage to 'replay' (no record; each edit re-runs the source, about 1.2-1.4x a plain generation), or "
            f"store less: lower store_end, choose fewer store_layers (e.g. 'official' instead of 'all'), "
            f"precision fp16, fewer steps or a smaller image or batch")
    log.info("%s: storing about %s (%s) in system RAM", maker, _fmt(estimate), what)
    if storage == "cpu" or device.type != "cpu":
        return StoragePlan("cpu", torch.device("cpu"))
    return StoragePlan("model", None)
