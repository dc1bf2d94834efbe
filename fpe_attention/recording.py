"""Attention recording during ordinary sampling (FPE Attention Record; paper §3, Figure 3).

The record node returns a clone of its MODEL carrying an attn1 and an attn2 *patch* (ComfyUI's public,
chainable ``set_model_attn1_patch`` / ``set_model_attn2_patch``) and a run hook. A patch returns its
inputs untouched, so the sampled output is bit for bit the plain model's. For one row, the chosen
image of the cond (or uncond) chunk, in the chosen layers and sigma band, it projects the layer input
with the layer's own to_q / to_k and accumulates softmax(QKᵀ/√d) averaged over heads, summed over the
band's model evaluations:

* cross-attention (attn2): a [tokens, context] map per layer, the context folded back to the prompt's
  own length where ComfyUI tiled it to batch prompts of different lengths (a tiled key set splits each
  token's weight equally between its copies, so summing the copies is exact);
* self-attention (attn1): a [tokens, tokens] map per chosen layer, built in query slices so no
  [heads, tokens, tokens] tensor ever exists.

A run therefore holds Σ N·T·4 + Σ N²·4 bytes (float32) whatever the number of steps, and the record
keeps the last ``RUNS_KEPT`` runs.

Patches see what the patches before them return: a recording clone placed last, right before the
sampler, shows the maps the sampler used; after FPE Self-Attn Inject that is the source's self-attention
in the injected layers and steps (an Inject's replay rows are skipped: they are the source's own).

Which run a picture shows. One recording model may sample several times (two samplers, or the same graph
queued again with another seed while the record node stays cached), so every run keeps fingerprints of
the recorded image: the latent it started from (when no noise was added) and the one it produced (current
ComfyUI's OUTER_SAMPLE wrapper gives both exactly; everywhere the last evaluation's denoised output, which
equals the sampler's result when the schedule ends at 0). A picture node finds the run that made the
LATENT it is given, or says none did; nothing older is shown silently.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from .architecture import transformer_layers, unet_of
from .errors import FPEError
from .evaluations import COND, UNCOND, kind_name
from .hooks import Shared
from .host_versions import add_outer_sample_wrapper, model_sampling_of
from .layers import LayerKey, LayerSelection, choose_layers, layer_key, model_attn1_layers
from .validate import check_number

KEY = "free-prompt-editing-record"
RUNS_KEPT = 4
MAX_RUN_BYTES = 2 << 30  # one run's maps; past it the layer choice is a mistake at this size (named in the error)
SLICE_BYTES = 16 << 20  # transient score slice of the self-attention map: heads x rows x tokens x 4 bytes
MATCH_RTOL = 1e-3  # relative L2 distance under which a LATENT is the run's own (exact paths give 0)
RISE_RTOL = 1e-3  # a sigma this much above the last one starts a run (2024 host); equal sigmas round below it
MAX_KEPT_BYTES = 4 << 30  # past it the oldest runs are dropped (the newest is always kept)
KINDS = {"cond": COND, "uncond": UNCOND}
ATTENTION = ("self", "cross")


@dataclass(frozen=True)
class RecordSettings:
    cross: LayerSelection | None  # None: no cross-attention maps
    attn_self: LayerSelection | None  # None: no self-attention maps
    start_percent: float
    end_percent: float
    sigma_high: float  # the band's sigmas, from the model's percent_to_sigma
    sigma_low: float
    kind: int  # COND or UNCOND
    image: int  # 0-based image of the chunk's batch

    def describe_rows(self) -> str:
        return f"{kind_name(self.kind)} row, batch index {self.image}"

    @property
    def cross_setting(self) -> str:
        return self.cross.label if self.cross is not None else NONE

    @property
    def self_setting(self) -> str:
        return self.attn_self.label if self.attn_self is not None else NONE


NONE = "none"  # a layer choice of FPE Attention Record: record no map of that kind


def record_settings(model, *, cross_layers: str, cross_custom_layers: str, self_layers: str, self_custom_layers: str,
                    start_percent: float, end_percent: float, rows: str, image: int) -> RecordSettings:
    """FPE Attention Record's inputs checked (each error names its input) and resolved for ``model``."""
    layers = model_attn1_layers(model)  # a model without UNet attention is refused by name
    check_number("start_percent", start_percent, 0.0, 1.0)
    check_number("end_percent", end_percent, 0.0, 1.0)
    if start_percent >= end_percent:
        raise FPEError(f"start_percent ({start_percent}) must be below end_percent ({end_percent}): the band "
                       f"of steps recorded would be empty")
    if cross_layers == NONE and self_layers == NONE:
        raise FPEError("cross_layers and self_layers are both 'none': nothing would be recorded; choose 'all' "
                       "for word heatmaps or 'official' for structure pictures")
    if rows not in KINDS:
        raise FPEError(f"rows: unknown value {rows!r}; choose one of {', '.join(KINDS)}")
    cross = None if cross_layers == NONE else choose_layers(
        model, cross_layers, cross_custom_layers, "cross_layers", "cross_custom_layers", layers)
    attn_self = None if self_layers == NONE else choose_layers(
        model, self_layers, self_custom_layers, "self_layers", "self_custom_layers", layers)
    sampling = model_sampling_of(model)
    return RecordSettings(
        cross=cross, attn_self=attn_self,
        start_percent=float(start_percent), end_percent=float(end_percent),
        sigma_high=float(sampling.percent_to_sigma(start_percent)),
        sigma_low=float(sampling.percent_to_sigma(end_percent)), kind=KINDS[rows], image=int(image))


def head_mean_map(q: torch.Tensor, k: torch.Tensor, heads: int, slice_bytes: int = SLICE_BYTES) -> torch.Tensor:
    """softmax(QKᵀ/√d) averaged over heads, float32 [Nq, Nk], for one row's q [Nq, C] and k [Nk, C].

    Built in slices of queries, so the transient scores hold at most ``slice_bytes``."""
    tokens, channels = q.shape
    dim = channels // heads
    qh = q.float().reshape(tokens, heads, dim).transpose(0, 1)  # [heads, Nq, d]
    kh = k.float().reshape(k.shape[0], heads, dim).transpose(0, 1)
    scale = dim ** -0.5
    out = torch.empty((tokens, k.shape[0]), dtype=torch.float32, device=q.device)
    step = max(1, slice_bytes // max(1, heads * k.shape[0] * 4))
    for first in range(0, tokens, step):
        scores = torch.softmax(qh[:, first:first + step] @ kh.transpose(1, 2) * scale, dim=-1)
        out[first:first + step] = scores.mean(dim=0)
    return out


def context_period(context: torch.Tensor, unit: int = 77) -> int:
    """The prompt's own length inside a context ComfyUI may have tiled (its repeat period, in whole CLIP
    chunks of ``unit`` tokens where the length allows)."""
    length = context.shape[0]
    step = unit if length % unit == 0 else length
    for period in range(step, length, step):
        if length % period == 0 and torch.equal(context, context[:period].repeat(length // period, 1)):
            return period
    return length


def token_grid(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) token grid of a layer with ``tokens`` queries at this latent size (stride-2 halving)."""
    h, w = latent_hw
    while h * w > tokens:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != tokens:
        raise RuntimeError(f"FPE: an attention layer with {tokens} tokens does not fit a {latent_hw} latent")
    return h, w


_releases = 0  # runs freed so far in this process


def release_generation() -> int:
    """Changes whenever a run's maps were freed: FPE Attention Record's IS_CHANGED, so a prompt queued after a
    release records anew instead of reusing a cached sampler output whose maps are gone."""
    return _releases


class RunRecord:
    """What one sampling run left: summed maps per layer, evaluation counts, and its fingerprints."""

    def __init__(self, number: int, settings: RecordSettings):
        self.number = number
        self.settings = settings
        self.cross: dict[LayerKey, torch.Tensor] = {}  # summed [N, T] maps
        self.self_maps: dict[LayerKey, torch.Tensor] = {}  # summed [N, N] maps
        self.counts: Counter = Counter()  # (attention, layer) -> evaluations summed
        self.grids: dict[LayerKey, tuple[int, int]] = {}
        self.context_length: int | None = None
        self.context: torch.Tensor | None = None  # the recorded row's text context (first evaluation)
        self.sigmas: list[float] = []  # the band's evaluated sigmas, in order
        self.latent_hw: tuple[int, int] | None = None
        self.size_known = False  # latent_hw from the whole latent, not from a first call that may be an area's
        self.images: int | None = None  # images per chunk
        # (latent of the recorded image, rank): rank 0 what the run made (or our inversion nodes' tag), 1 its start
        self.fingerprints: list[tuple[torch.Tensor, int]] = []
        self.last_denoised: torch.Tensor | None = None
        self.exact = False  # the host announced the run (and gave its result)
        self.complete = False
        self.started = False
        self.planned = False
        self.skipped: Counter = Counter()  # why calls were not recorded
        self.released_by: str | None = None  # the node that freed the maps (FPE Save Attention Maps' release_run)

    @property
    def evaluations(self) -> int:
        return len(self.sigmas)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.cross.values(), *self.self_maps.values()))

    def mean(self, attention: str, layer: LayerKey) -> torch.Tensor:
        """The layer's map averaged over the run's recorded evaluations (float32, CPU)."""
        maps = self.cross if attention == "cross" else self.self_maps
        return maps[layer].cpu() / self.counts[(attention, layer)]

    def layers(self, attention: str) -> list[LayerKey]:
        return list((self.cross if attention == "cross" else self.self_maps).keys())

    def release(self, by: str) -> None:
        """Free the maps for good (the run stays recognisable, so a later reader is told who freed it)."""
        global _releases
        self.clear_maps()
        self.released_by = by
        _releases += 1


    def clear_maps(self) -> None:
        self.cross.clear()
        self.self_maps.clear()
        self.counts.clear()
        self.grids.clear()
        self.sigmas.clear()

    def describe(self) -> str:
        band = f"{len(self.sigmas)} evaluations"
        if self.sigmas:
            band += f", sigma {self.sigmas[0]:.3g} to {self.sigmas[-1]:.3g}"
        return f"run {self.number}, {self.settings.describe_rows()}, {band}"

    def finish(self) -> None:
        """Move the maps off the sampling device: the run is done, the device memory is the sampler's."""
        for maps in (self.cross, self.self_maps):
            for key, value in maps.items():
                maps[key] = value.cpu()
        if self.last_denoised is not None:
            self.fingerprints.append((self.last_denoised, 0))
            self.last_denoised = None
        self.complete = True

    def match(self, latent: torch.Tensor) -> tuple[float, int]:
        """(relative L2 distance of ``latent`` (one image, [C, H, W]) to the closest fingerprint, its rank)."""
        best = (float("inf"), 2)
        known = self.fingerprints + ([(self.last_denoised, 0)] if self.last_denoised is not None else [])
        for fingerprint, rank in known:
            if fingerprint.shape != latent.shape:
                continue
            scale = max(float(fingerprint.norm()), 1e-12)
            distance = float((latent.float() - fingerprint).norm()) / scale
            if math.isfinite(distance):
                best = min(best, (distance if distance > MATCH_RTOL else 0.0, rank))
        return best


class AttentionRecord:
    """The FPE_ATTENTION_RECORD a record node outputs; filled by sampling with the recording model."""

    def __init__(self, settings: RecordSettings, modules: dict, layers: list, replaced: tuple[str, ...] = ()):
        self.settings = settings
        self.modules = modules  # layer key -> transformer layer (its attn1 / attn2 projections)
        self.layers = layers  # Attn1Layer list, for plans and messages
        self.by_key = {layer.key: layer for layer in layers}
        self.replaced = replaced  # attention another node replaces on the model: the maps are the layer's own
        self.runs: list[RunRecord] = []  # complete runs, oldest first
        self.current: RunRecord | None = None
        self.paused = 0
        self._tags: list[torch.Tensor] = []
        self._number = 0
        self._announced = False
        self._sigma_tensor = None  # the evaluation in progress (ComfyUI hands one sigma tensor to all its calls)
        self._evaluation_open = False  # its post-CFG end not seen yet
        self._last_sigma: float | None = None
        self._seen: set = set()

    # --- run_observers: runs a node samples for itself ---------------------------------------------

    def pause(self) -> None:
        self.paused += 1

    def resume(self) -> None:
        self.paused -= 1

    def begin_tagged(self, latent: torch.Tensor) -> None:
        self._close()  # the tagged pass is a run of its own, whatever sigma it starts at
        if latent.shape[0] > self.settings.image:
            self._tags = [latent[self.settings.image].detach().float().cpu()]

    def end_tagged(self, completed: bool) -> None:
        self._tags = []
        if self.current is not None and not self.current.exact:  # the 2024 host: no run end announced
            if completed:
                self._close()
            else:
                self.current = None

    # --- runs -------------------------------------------------------------------------------------

    def nbytes(self) -> int:
        return sum(run.nbytes() for run in self.runs) + (self.current.nbytes() if self.current else 0)

    def _open(self, announced: bool) -> RunRecord:
        self._close()
        self._number += 1
        self.current = RunRecord(self._number, self.settings)
        self.current.exact = announced
        self.current.fingerprints.extend((tag, 0) for tag in self._tags)
        self._announced = announced
        self._last_sigma = None
        self._sigma_tensor = None
        self._evaluation_open = False
        return self.current

    def _close(self) -> None:
        run, self.current = self.current, None
        if run is not None and run.evaluations:
            run.finish()
            self.runs.append(run)
            while len(self.runs) > RUNS_KEPT or (len(self.runs) > 1 and self.nbytes() > MAX_KEPT_BYTES):
                self.runs.pop(0)

    def begin_run(self, latent_image, noise) -> None:
        """Current ComfyUI, before a run: a fresh run, its size, and its start where no noise is added."""
        if self.paused:
            return
        run = self._open(announced=True)
        b = self.settings.image
        if torch.is_tensor(latent_image) and latent_image.ndim >= 4:
            self._check_image(int(latent_image.shape[0]))
            run.latent_hw, run.size_known = (int(latent_image.shape[-2]), int(latent_image.shape[-1])), True
            if noise is None or not torch.is_tensor(noise) or not torch.count_nonzero(noise[b:b + 1]):
                run.fingerprints.append((latent_image[b].detach().float().cpu(), 1))

    def end_run(self, output) -> None:
        run = self.current
        if self.paused or run is None or not run.exact:
            return
        if torch.is_tensor(output) and output.ndim >= 4 and output.shape[0] > self.settings.image:
            run.fingerprints.append((output[self.settings.image].detach().float().cpu(), 0))
        self._close()

    def abort_run(self) -> None:
        """The run failed: it shows nothing."""
        if not self.paused:
            self.current = None

    def end_evaluation(self, args) -> None:
        """Post-CFG, both hosts: the evaluation ended; the run's size, start and latest denoised image."""
        run = self.current
        if self.paused or run is None:
            return
        if args.get("sigma") is self._sigma_tensor:
            self._evaluation_open = False
        x = args["input"]
        if not run.size_known and x.ndim >= 4:
            run.size_known = True
            size = (int(x.shape[-2]), int(x.shape[-1]))
            if run.latent_hw != size:  # the first call was an area's crop: its maps do not fit the picture
                run.clear_maps()
                run.skipped["area prompts: calls of another size than the latent are not recorded"] += 1
            run.latent_hw = size
        b = self.settings.image
        model = args.get("model")
        out = getattr(model, "process_latent_out", None) or (lambda t: t)
        if args["denoised"].shape[0] > b:
            if not run.exact and not run.started:  # the run's first evaluation: its start, if noise-free
                run.started = True
                run.fingerprints.append((out(x[b:b + 1]).float().cpu()[0], 1))
            run.last_denoised = out(args["denoised"][b:b + 1]).float().cpu()[0]

    def _check_image(self, images: int) -> None:
        if self.settings.image >= images:
            self.current = None  # the failed run shows nothing, and the next one starts afresh
            raise FPEError(
                f"FPE Attention Record: image is {self.settings.image} but the sampled batch has {images} image"
                f"{'s' if images != 1 else ''} (0 to {images - 1}): set image to one of them")

    def _evaluation(self, sigma_tensor) -> RunRecord:
        """The run an attention call belongs to; a new evaluation resets what was recorded in it."""
        if sigma_tensor is self._sigma_tensor and self.current is not None:
            return self.current
        sigma = float(sigma_tensor.reshape(-1)[0])
        if self.current is not None and not self._announced and self._evaluation_open:
            self.current = None  # the last evaluation never ended: its run failed and shows nothing
        # Without the host's announcement a run begins where none is open or where sigma rises (samplers
        # only descend; a new run starts high again); the tolerance is above float32 rounding of equal sigmas.
        if self.current is None or (not self._announced and self._last_sigma is not None
                                    and sigma > self._last_sigma * (1 + RISE_RTOL)):
            self._open(announced=False)
        self._sigma_tensor = sigma_tensor
        self._evaluation_open = True
        self._last_sigma = sigma
        self._seen = set()
        return self.current

    # --- recording --------------------------------------------------------------------------------

    def observe(self, attention: str, n: torch.Tensor, context: torch.Tensor, extra_options: dict) -> None:
        if self.paused:
            return
        selection = self.settings.cross if attention == "cross" else self.settings.attn_self
        if selection is None:
            return
        layer = layer_key(extra_options)
        if layer not in self.modules or layer not in self.by_key:
            return
        run = self._evaluation(extra_options["sigmas"])
        shape = extra_options.get("original_shape")
        if shape is not None and run.latent_hw is None:
            run.latent_hw = (int(shape[-2]), int(shape[-1]))  # provisional on the 2024 host (end_evaluation)
        if run.latent_hw is None:
            return
        if shape is not None and (int(shape[-2]), int(shape[-1])) != run.latent_hw:
            run.skipped["area prompts: calls of another size than the latent are not recorded"] += 1
            return
        tokens = self.by_key[layer].tokens(*run.latent_hw)
        if not selection.includes(layer, tokens):
            return
        if attention == "self":
            self._check_plan(run)  # at the first call, whatever it runs: before the host's own attention
        if n.shape[1] != tokens or (shape is not None and n.shape[0] != int(shape[0])):
            run.skipped["a patch before the record changed the tokens (HyperTile, ToMe, ...): place FPE Attention "
                        "Record before it"] += 1
            return
        sigma = self._last_sigma
        settings = self.settings
        if not settings.sigma_low * (1 - 1e-5) <= sigma <= settings.sigma_high * (1 + 1e-5):
            return
        kinds = list(extra_options.get("cond_or_uncond") or [COND])
        if n.shape[0] % len(kinds):
            run.skipped["a patch changed the batch inside the model"] += 1
            return
        per_chunk = n.shape[0] // len(kinds)
        skip = int(extra_options.get("fpe_source_chunks", 0))  # an Inject's replay rows: the source's own
        chunks = [j for j in range(skip, len(kinds)) if kinds[j] == settings.kind]
        if not chunks:
            return
        if len(chunks) > 1 or (attention, layer) in self._seen:
            run.skipped[f"more than one {kind_name(settings.kind)} chunk per evaluation (several conditioning "
                        f"entries, or a guidance node calling the model again): one is shown"] += 1
            if (attention, layer) in self._seen:
                return
        self._check_image(per_chunk)
        run.images = per_chunk
        row = chunks[0] * per_chunk + settings.image
        self._seen.add((attention, layer))
        if len(self._seen) == 1:  # the evaluation's first recorded map
            run.sigmas.append(sigma)
        run.grids.setdefault(layer, token_grid(tokens, run.latent_hw))
        module = getattr(self.modules[layer], "attn2" if attention == "cross" else "attn1")
        heads = extra_options.get("n_heads") or module.heads
        with torch.no_grad():
            q = module.to_q(n[row:row + 1])[0]
            k = module.to_k(context[row:row + 1])[0]
            if attention == "cross":
                period = context_period(context[row])
                if run.context_length is None:
                    run.context_length = period
                    run.context = context[row, :period].detach().float().cpu()  # to check a heatmap's text
                if period != run.context_length:
                    run.skipped["the prompt's length changed during the run"] += 1
                    return
                maps = head_mean_map(q, k, heads)
                if maps.shape[1] != period:
                    maps = maps.reshape(maps.shape[0], -1, period).sum(dim=1)
                target = run.cross
            else:
                maps = head_mean_map(q, k, heads)
                target = run.self_maps
            if layer in target:
                target[layer] += maps
            else:
                target[layer] = maps
        run.counts[(attention, layer)] += 1

    def _check_plan(self, run: RunRecord) -> None:
        """Refuse, before any map is built, a self-attention choice too large for this size."""
        if run.planned or run.latent_hw is None:
            return
        run.planned = True
        h, w = run.latent_hw
        chosen = [layer.tokens(h, w) for layer in self.layers
                  if self.settings.attn_self.includes(layer.key, layer.tokens(h, w))]
        planned = sum(t * t * 4 for t in chosen)
        if planned > MAX_RUN_BYTES:
            self.current = None
            raise FPEError(
                f"FPE Attention Record: self_layers '{self.settings.self_setting}' at {w * 8}x{h * 8} px needs "
                f"{planned / 2**30:.1f} GiB of self-attention maps per run (a {max(chosen)}-token layer alone is "
                f"{max(chosen) ** 2 * 4 / 2**30:.2f} GiB; at most {MAX_RUN_BYTES / 2**30:.0f} GiB): choose "
                f"coarser layers, e.g. 'official', or a custom list of the 16x16 and 32x32 levels")

    # --- which run a picture shows ------------------------------------------------------------------

    def run_for(self, samples: torch.Tensor) -> RunRecord:
        """The run that made ``samples`` (a LATENT's tensor): what a run produced (or the inverted latent our
        inversion nodes tag their source pass with) before what a run started from, then the newest."""
        b = self.settings.image
        candidates = list(self.runs) + ([self.current] if self.current is not None and self.current.evaluations
                                        else [])
        if not candidates:
            raise FPEError(
                "fpe_record holds no run: sample with the model FPE Attention Record returned (connect it to the "
                "sampler's model input) before this node; a run with no evaluation inside start_percent..end_percent "
                "(or rows 'uncond' at cfg 1) records nothing")
        if samples.ndim < 4 or samples.shape[0] <= b:
            raise FPEError(f"samples: the latent has {samples.shape[0] if samples.ndim >= 4 else 0} image(s) but the "
                           f"record shows batch index {b}: connect the sampler's output LATENT")
        latent = samples[b].detach().float().cpu()
        if not torch.isfinite(latent).all():  # NaN matches nothing (and would compare as "close" to anything)
            raise FPEError("samples: the latent holds NaN or infinite values (the sampler's model overflowed: an fp16 "
                           "model, or a NaN cfg?), so it shows no run: fix the sampler, then queue again")
        (distance, rank), _, run = min(((run.match(latent), -run.number, run) for run in candidates),
                                       key=lambda item: item[:2])
        if distance > MATCH_RTOL:
            raise FPEError(
                f"samples: none of the {len(candidates)} run(s) this record holds made this latent (it keeps the last "
                f"{RUNS_KEPT}). Connect the LATENT output of the sampler that used FPE Attention Record's model (for "
                f"FPE DDIM Invert or Null-Text Invert, its inverted_latent). On ComfyUI before 2025 a run is "
                f"recognised by its last denoised output, which is not the result of a sampler returning leftover "
                f"noise or of dpm_fast / dpm_adaptive")
        if run is self.current:  # the 2024 host never says a run ended: it has, as its picture is asked for
            self._close()
        if run.released_by is not None:
            raise FPEError(
                f"samples: the run that made this latent was recorded, but {run.released_by} freed its maps "
                f"(release_run on) before this node read them; ComfyUI may run that node first. Turn release_run off "
                f"there, or keep it on only where no other node reads the same run, then run the sampler again "
                f"(change its seed) to record it anew")
        return run


@dataclass(eq=False)
class RecordAttention(Shared):
    """attn1 / attn2 patch: hands the call to the record and returns its inputs untouched."""

    record: AttentionRecord
    attention: str
    fpe_record = True

    @property
    def fpe_observer(self) -> AttentionRecord:  # run_observers: nodes that sample for themselves pause it
        return self.record

    def __call__(self, n, context, value, extra_options):
        self.record.observe(self.attention, n, context if context is not None else n, extra_options)
        return n, context, value


@dataclass(eq=False)
class RecordRun(Shared):
    """OUTER_SAMPLE wrapper (current ComfyUI): run boundaries, and the run's exact start and result."""

    record: AttentionRecord

    def __call__(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
        self.record.begin_run(latent_image, noise)
        try:
            out = executor(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)
        except BaseException:
            self.record.abort_run()
            raise
        self.record.end_run(out)
        return out


@dataclass(eq=False)
class RecordEvaluation(Shared):
    """Post-CFG function: the evaluation's fingerprints; returns the result untouched."""

    record: AttentionRecord
    fpe_record = True

    def __call__(self, args):
        self.record.end_evaluation(args)
        return args["denoised"]


def record_model(model, settings: RecordSettings, layers: list) -> tuple[object, AttentionRecord]:
    """A recording clone of ``model`` and the record its sampling runs fill."""
    modules = {key: transformer for key, transformer, _ in transformer_layers(unet_of(model))}
    replaced = model.model_options.get("transformer_options", {}).get("patches_replace", {})
    taken = tuple(f"{name} of {len(replaced.get(name) or {})} block(s)" for name in ("attn1", "attn2")
                  if replaced.get(name))
    record = AttentionRecord(settings, modules, layers, taken)
    patched = model.clone()
    if settings.attn_self is not None:
        patched.set_model_attn1_patch(RecordAttention(record, "self"))
    if settings.cross is not None:
        patched.set_model_attn2_patch(RecordAttention(record, "cross"))
    add_outer_sample_wrapper(patched, KEY, RecordRun(record))  # early 2024: runs told apart by sigma (_evaluation)
    patched.set_model_sampler_post_cfg_function(RecordEvaluation(record))
    return patched, record
