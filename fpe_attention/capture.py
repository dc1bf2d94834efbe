"""Source capture: sample the source image and record what the edits will need.

An attn1 patch on a clone of the model records, for the selected layers and steps, the layer
input ``n`` of the source's cond rows (and uncond rows if asked), keyed by model evaluation and
conditioning entry (see ``evaluations``). Its run hooks also keep the conditioning's structure and
the run's first model input (to tell a target that starts elsewhere: another seed or latent).
Nothing else about sampling changes: the source LATENT is the stock KSampler's result, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .architecture import check_inputs_fit, transformer_layers, unet_of
from .conditioning import entry_ids, sampler_conds, structure_of
from .dit_capture import attach_dit_recording, check_dit_inputs, dit_source
from .dit_model import dit_layout, is_dit
from .errors import FPEError
from .evaluations import COND, UNCOND, EvaluationClock
from .hooks import Shared, add_evaluation_end, add_run_hook, all_finite, latent_hw
from .layers import LayerSelection, choose_layers, layer_key, model_attn1_layers
from .local_mask import word_mask_layers
from .memory import choose_storage, stored_evaluations
from .recording import context_period, head_mean_map, token_grid
from .replay import InputRecorder, reject_per_call_conditioning
from .sampling import sample_over_sigmas
from .source import FPESource, model_signature, reject_chained_inject, weights_fingerprint
from .steps import step_window
from .validate import check_latent, check_number

ROWS = {"cond": frozenset({COND}), "cond + uncond": frozenset({COND, UNCOND})}
STORAGE = ("auto", "cpu", "replay")
PRECISION = ("exact", "fp16", "bf16")
# store_cross: also record the cross-attention (attn2) inputs and text contexts, for FPE Attention Replace
CROSS = {"off": None, "on": "store layers", "all layers": "all"}


@dataclass(frozen=True)
class CaptureSettings:
    selection: LayerSelection
    store_end: float = 0.8
    rows: str = "cond"
    storage: str = "auto"  # auto: where it fits; cpu: system RAM; replay: no record, the source's inputs only
    precision: str = "exact"  # exact: the dtype the model computes in; fp16/bf16: half the bytes of fp32
    cross: str = "off"  # store_cross: off, on (the store layers' attn2), all layers

    def __post_init__(self):  # every store setting checked here, by the name of its input
        check_number("store_end", self.store_end, 0.0, 1.0)
        for name, value, choices in (("store_rows", self.rows, ROWS), ("storage", self.storage, STORAGE),
                                     ("precision", self.precision, PRECISION), ("store_cross", self.cross, CROSS)):
            if value not in choices:
                raise FPEError(f"{name}: unknown value {value!r}; choose one of {', '.join(choices)}")

    @classmethod
    def from_inputs(cls, model, store_layers: str, store_custom_layers: str, store_end: float, store_rows: str,
                    storage: str, precision: str, store_cross: str = "off") -> CaptureSettings:
        """The store widgets of FPE Source Capture, DDIM Invert and Null-Text Invert, resolved for ``model``."""
        store_end = check_number("store_end", store_end, 0.0, 1.0)
        # An MMDiT source replays its model inputs (no layer record): the UNet layer choice does not apply.
        selection = None if is_dit(model) else choose_layers(model, store_layers, store_custom_layers,
                                                             "store_layers", "store_custom_layers")
        return cls(selection=selection, store_end=store_end, rows=store_rows, storage=storage, precision=precision,
                   cross=store_cross)


class CaptureRecorder(Shared):
    """attn1 patch that stores the source's layer inputs into an ``FPESource``, with its run hooks."""

    def __init__(self, source: FPESource, device: torch.device | None, dtype: torch.dtype | None,
                 word_modules: dict | None = None):
        self.source = source
        self.device = device
        self.dtype = dtype
        self.word_modules = word_modules or {}  # LocalBlend's layers: attn2 module by layer key
        self.clock = EvaluationClock(source.schedule, top_evaluations=None)  # one run: the capture's
        self._logged = None
        self._contexts: dict = {}  # (kind, entry) -> the last text context stored for it
        self._words: dict = {}  # this evaluation's word maps, summed over LocalBlend's layers
        self.attach_extra = None  # an MMDiT's stored record: its hooks, set on the capture's clone

    def __call__(self, n, context, value, extra_options):
        call = self.clock.locate(extra_options, n.shape[0])
        source = self.source
        if call is not self._logged:
            for chunk in call.chunks:
                source.evaluations.setdefault(chunk.key, call.step)
            self._logged = call
        first, stop = source.stored_window
        if source.replay is not None or call.step is None or not first <= call.step < stop:
            return n, context, value  # replay: the UNet wrapper keeps the call's inputs instead
        layer = layer_key(extra_options)
        if layer not in source.stored_layers:
            return n, context, value
        for chunk in call.chunks:
            if chunk.kind in source.stored_kinds:
                stored = self._keep(n[chunk.rows].detach())
                source.entries.setdefault(chunk.key, {})[layer] = stored
        return n, context, value

    def record_cross(self, n, context, value, extra_options):
        """attn2 patch: the stored rows' cross-attention input and their text context (store_cross), and at
        LocalBlend's layers the first cond entry's word maps (every evaluation, for local edits by words)."""
        source = self.source
        layer = layer_key(extra_options)
        if layer in self.word_modules:
            self._record_words(n, context, layer, extra_options)
        if not source.cross_layers or source.replay is not None:
            return n, context, value
        call = self.clock.locate(extra_options, n.shape[0])  # attn1 of this block located the call already
        first, stop = source.stored_window
        if call.step is None or not first <= call.step < stop or layer not in source.cross_layers:
            return n, context, value
        for chunk in call.chunks:
            if chunk.kind not in source.stored_kinds:
                continue
            source.cross_entries.setdefault(chunk.key, {})[layer] = self._keep(n[chunk.rows].detach())
            if chunk.key not in source.cross_context:
                text = context[chunk.rows].detach()
                last = self._contexts.get((chunk.key.kind, chunk.key.entry))
                if last is None or last.shape != text.shape or not torch.equal(last, text.to(last.device, last.dtype)):
                    last = self._keep(text)
                    self._contexts[(chunk.key.kind, chunk.key.entry)] = last
                source.cross_context[chunk.key] = last  # one tensor per entry while its prompt stays the same
        return n, context, value

    def _record_words(self, n, context, layer, extra_options) -> None:
        source = self.source
        call = self.clock.locate(extra_options, n.shape[0])
        grid = source.word_grid
        if grid is None or n.shape[1] != grid[0] * grid[1]:  # an area's crop: not the whole image's map
            return
        chunk = first_cond_chunk(call)
        if chunk is None:
            return
        maps, text = word_maps(self.word_modules[layer], n[chunk.rows], context[chunk.rows])
        if source.word_context is None:
            source.word_context = text.to("cpu", torch.float32, copy=True)
        key = (chunk.key.sigma, chunk.key.occurrence)
        pending = self._words.get(key)  # summed on the model's device, moved once per evaluation
        self._words[key] = maps if pending is None or pending.shape != maps.shape else pending + maps

    def _keep(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.to(device=self.device or rows.device, dtype=self.dtype or rows.dtype, copy=True)

    keep = _keep  # for the MMDiT recorder (``dit_capture``)

    def begin_run(self, guider, noise, latent, sigmas, denoise_mask) -> None:
        """Current ComfyUI, before sampling: entry ids, and the conditioning's structure."""
        conds = getattr(guider, "conds", None)
        self.clock.begin_run(entry_ids(conds))
        lists = sampler_conds(guider)
        if lists is not None:
            self.source.structure = structure_of(*lists, latent_hw(self.source.latent_shape))

    def end_evaluation(self, args):
        """Post-CFG, both hosts: every evaluation's input and result (local edits follow them outside their
        mask); the run's first model input; the structure where no run hook saw it."""
        call = self.clock.current
        for key, maps in self._words.items():
            self.source.word_maps[key] = maps.cpu()
        self._words = {}
        if args["sigma"] is self.clock.sigma_tensor and call is not None:
            self.source.blend_rows[(call.chunks[0].key.sigma, call.chunks[0].key.occurrence)] = (
                args["input"].detach().to("cpu", torch.float32, copy=True),
                args["denoised"].detach().to("cpu", torch.float32, copy=True))
        if args["sigma"] is self.clock.sigma_tensor and self.clock.evaluation_run_start:
            source = self.source
            if source.first_input is None:
                source.first_input = args["input"].detach().to("cpu", copy=True)
            if source.structure is None:
                source.structure = structure_of(args.get("cond"), args.get("uncond"), latent_hw(source.latent_shape))
        return args["denoised"]


class CrossRecorder(Shared):
    """The capture's attn2 patch (store_cross): hands every call to its ``CaptureRecorder``."""

    def __init__(self, recorder: CaptureRecorder):
        self.recorder = recorder

    def __call__(self, n, context, value, extra_options):
        return self.recorder.record_cross(n, context, value, extra_options)


def first_cond_chunk(call):
    """The chunk of a UNet call that runs the first positive entry (its first run in the evaluation), if any."""
    for chunk in call.chunks:
        if chunk.kind == COND and chunk.key.entry[1] == 0 and chunk.key.entry[2] == 0:
            return chunk
    return None


def word_maps(module, n: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One attn2 layer's cross-attention maps of ``n``'s rows, averaged over heads: float32 [rows, tokens,
    context] on the model's device, with the context folded back to the prompt's own length; and row 0's
    text context (a view)."""
    period = context_period(context[0])
    with torch.no_grad():
        q = module.to_q(n)
        k = module.to_k(context[:, :period])
        maps = torch.stack([head_mean_map(q[i], k[i], module.heads) for i in range(n.shape[0])])
    return maps, context[0, :period].detach()


def attach_recorder(model, recorder: CaptureRecorder):
    """A clone of ``model`` that records with ``recorder``."""
    patched = model.clone()
    patched.set_model_attn1_patch(recorder)
    if recorder.source.cross_layers or recorder.word_modules:
        patched.set_model_attn2_patch(CrossRecorder(recorder))
    if recorder.source.replay is not None:
        previous = patched.model_options.get("model_function_wrapper")
        patched.set_model_unet_function_wrapper(InputRecorder(recorder, previous))
    if recorder.attach_extra is not None:
        recorder.attach_extra(patched)
    add_run_hook(patched, recorder.begin_run)
    add_evaluation_end(patched, recorder.end_evaluation)
    return patched


def conditioning_rows(model, positive, negative, cfg: float, kinds) -> int:
    """UNet rows per latent image a stored evaluation keeps: one per stored conditioning entry, and a
    bound for guidance nodes (SAG, PAG, ...) whose post-CFG functions run the model once more."""
    options = getattr(model, "model_options", {}) or {}
    entries = len(positive or [])
    rows = entries if COND in kinds else 0
    # ComfyUI skips the uncond rows at cfg 1, unless a patch asks it not to.
    if UNCOND in kinds and (not math.isclose(cfg, 1.0) or options.get("disable_cfg1_optimization")):
        rows += len(negative or [])
    guidance = [fn for fn in options.get("sampler_post_cfg_function", []) if not getattr(fn, "fpe_record", False)]
    rows += len(guidance) * max(entries, len(negative or []))  # an attention record calls no model
    return max(rows, 1)


def context_shapes(positive, negative, cfg: float, kinds, model=None) -> list[tuple[int, int]]:
    """(tokens, channels) of every text context a store_cross capture keeps once: one per stored entry."""
    options = getattr(model, "model_options", {}) or {}
    lists = [positive] if COND in kinds else []
    if UNCOND in kinds and (not math.isclose(cfg, 1.0) or options.get("disable_cfg1_optimization")):
        lists.append(negative)
    return [(int(entry[0].shape[-2]), int(entry[0].shape[-1])) for items in lists for entry in (items or [])
            if torch.is_tensor(entry[0]) and entry[0].ndim == 3]


def new_source(model, *, samples: torch.Tensor, sigmas: torch.Tensor, schedule_origin: str, cfg: float,
               settings: CaptureSettings, evaluations: int, rows: int,
               maker: str = "FPE Source Capture",
               contexts: list[tuple[int, int]] = ()) -> tuple[FPESource, CaptureRecorder]:
    """An empty ``FPESource`` for a run over ``sigmas`` and the attn1 recorder that fills it.

    ``evaluations``: model evaluations inside the stored steps; ``rows``: stored rows per latent
    image and evaluation. Both size the record, which is checked against free memory here.
    ``contexts``: (tokens, channels) of the text contexts a store_cross record keeps (``context_shapes``).
    """
    signature = model_signature(model)
    reject_chained_inject(model, maker)
    if is_dit(model) and maker not in ("FPE Source Capture", "FPE Flow Invert"):
        raise FPEError(f"model: {maker} inverts UNet models (SD1.x, SD2.x, SDXL) with DDIM; this model is "
                       f"{dit_layout(model).family}, a flow model: invert its photos with FPE Flow Invert and edit them "
                       f"with FPE MMDiT Inject")
    if is_dit(model):  # an MMDiT (``dit_capture``): image queries and keys, or replay; no word maps
        source, plan, dtype = dit_source(model, samples=samples, sigmas=sigmas, schedule_origin=schedule_origin,
                                         cfg=cfg, settings=settings, evaluations=evaluations, rows=rows, maker=maker,
                                         kinds=ROWS[settings.rows])
        recorder = CaptureRecorder(source, plan.device, dtype)
        if source.replay is None:
            recorder.attach_extra = lambda patched: attach_dit_recording(patched, recorder, dit_layout(model))
        return source, recorder
    layers = model_attn1_layers(model)
    check_latent(samples, "latent_image" if maker == "FPE Source Capture" else "latent")
    height, width = samples.shape[-2:]
    stored = settings.selection.resolve(layers, height, width)
    if not stored:
        raise FPEError(
            f"store layers '{settings.selection.label}' select no self-attention layer at {width * 8}x{height * 8} px: "
            f"choose 'official relative' (every level but the finest, at any size), 'all' or a custom list")
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise FPEError("sigmas: the schedule needs at least 2 values (1 step)")
    if not all_finite(sigmas):
        raise FPEError("sigmas: the schedule holds NaN or infinite values")
    rises = [i for i in range(int(sigmas.shape[0]) - 1) if float(sigmas[i + 1]) > float(sigmas[i])]
    if rises:  # one refusal here, by name, rather than an unpaired sigma at every edit
        i = rises[0]
        what = (f"{maker} samples from noise towards the image over falling sigmas. Remove the FlipSigmas (or other "
                "node that reverses the schedule) before it; to start from a real photo, use FPE DDIM Invert, which "
                "climbs the schedule itself") if maker == "FPE Source Capture" else (
                f"{maker} takes the edit's falling schedule and climbs it itself. Remove the FlipSigmas (or other "
                "node that reverses the schedule) before it")
        raise FPEError(f"sigmas: the schedule rises at step {i} (sigma {float(sigmas[i]):.6g} -> "
                       f"{float(sigmas[i + 1]):.6g}), but {what}")
    steps = int(sigmas.shape[0]) - 1
    window = step_window(steps, 0.0, settings.store_end)
    batch = int(samples.shape[0])
    # The plan first (what is stored, how big, where), then the source, built whole.
    dtype = {"exact": None, "fp16": torch.float16, "bf16": torch.bfloat16}[settings.precision]
    item = torch.empty((), dtype=dtype or _compute_dtype(model)).element_size()
    per_evaluation = sum(layer.tokens(height, width) * layer.channels for layer in stored) * batch * rows
    crossed = []
    if CROSS[settings.cross] is not None:
        if settings.storage == "replay":
            raise FPEError("store_cross needs a record, which storage 'replay' does not keep: set storage to 'auto' "
                           "or 'cpu', or store_cross to 'off'")
        crossed = stored if CROSS[settings.cross] == "store layers" else layers
        # the attn2 input has the width of the attn1 input (the block's inner width)
        per_evaluation += sum(layer.tokens(height, width) * layer.channels for layer in crossed) * batch * rows
    estimate = per_evaluation * evaluations * item
    if crossed and evaluations:
        estimate += sum(tokens * channels for tokens, channels in contexts) * batch * item
    what = (f"{len(stored)} layers, {evaluations} evaluations in {window[1] - window[0]} steps, {rows} row{'s' if rows != 1 else ''} per "
            f"image, {str(dtype or _compute_dtype(model)).replace('torch.', '')}")
    if crossed:
        what += f"; store_cross: {len(crossed)} cross-attention layers and the text contexts"
    plan = choose_storage(maker, estimate, settings.storage, getattr(model, "load_device", None), what)
    replay = plan.mode == "replay"  # no layer record: any layer can be edited, the source rows are re-run
    if replay:
        estimate = evaluations * rows * batch * math.prod(samples.shape[1:]) * 4
    source = FPESource(
        signature=signature, layers=layers, latent_shape=tuple(int(x) for x in samples.shape),
        schedule=[float(s) for s in sigmas], schedule_origin=schedule_origin,
        stored_layers=frozenset(layer.key for layer in (layers if replay else stored)), stored_window=window,
        stored_kinds=ROWS[settings.rows],
        layer_setting="all (storage replay)" if replay else settings.selection.label,
        store_end=settings.store_end, cfg=cfg, storage_device=plan.mode, maker=maker,
        weights=weights_fingerprint(model), planned_bytes=estimate,
        replay={} if replay else None,
        auto_replay=settings.storage == "auto" and replay,  # for the messages
        cross_setting=settings.cross if crossed else "off",
        # storage auto fell back to replay: no cross record (the node says so)
        cross_layers=frozenset() if replay else frozenset(layer.key for layer in crossed))
    # LocalBlend's layers: their word maps are kept for every source, so choosing words later re-runs nothing.
    words = word_mask_layers(layers, height, width)
    source.word_layers = words
    if words:
        level = next(layer for layer in layers if layer.key in words)
        tokens = level.tokens(height, width)
        source.word_grid = token_grid(tokens, (int(height), int(width)))
    modules = {key: transformer.attn2 for key, transformer, _ in transformer_layers(unet_of(model))
               if key in words and getattr(transformer, "attn2", None) is not None}
    return source, CaptureRecorder(source, plan.device, dtype, modules)


def _compute_dtype(model) -> torch.dtype:
    inner = model.model
    return getattr(inner, "manual_cast_dtype", None) or inner.get_dtype()


def capture_source(model, *, seed: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
                   latent: dict, sigmas: torch.Tensor, denoise: float, schedule_origin: str,
                   settings: CaptureSettings) -> tuple[dict, FPESource]:
    """Sample the source over ``sigmas`` and return (source LATENT, complete FPESource)."""
    if is_dit(model):
        check_dit_inputs(model, latent["samples"], "latent_image", {"positive": positive, "negative": negative})
    else:
        check_inputs_fit(model, latent["samples"], "latent_image", {"positive": positive, "negative": negative})
    if sampler_name == "dpm_adaptive":
        raise FPEError("sampler_name: dpm_adaptive picks its own steps from the model's output, so a target with "
                       "another prompt never evaluates where the source did: choose another sampler (e.g. dpmpp_2m)")
    window = step_window(int(sigmas.shape[0]) - 1, 0.0, settings.store_end)
    evaluations = stored_evaluations(sampler_name, sigmas, window, model)
    source, recorder = new_source(model, samples=latent["samples"], sigmas=sigmas, schedule_origin=schedule_origin,
                                  cfg=cfg, settings=settings, evaluations=evaluations,
                                  rows=conditioning_rows(model, positive, negative, cfg, ROWS[settings.rows]),
                                  contexts=context_shapes(positive, negative, cfg, ROWS[settings.rows], model))
    if source.replay is not None:
        reject_per_call_conditioning((positive, negative), source.maker, source.auto_replay)
    out, _ = sample_over_sigmas(attach_recorder(model, recorder), seed=seed, cfg=cfg, sampler_name=sampler_name,
                                scheduler=scheduler, positive=positive, negative=negative, latent=latent,
                                sigmas=sigmas, denoise=denoise)
    if not all_finite(out["samples"]):
        raise FPEError(
            "FPE Source Capture: the source image came out as NaN or infinite values. Likely causes: cfg or denoise "
            "set to NaN/Infinity in the workflow, or a model running in fp16 that overflows (try the model in fp32 "
            "or bf16, or a lower cfg)")
    source.finish(recorder.clock.order)  # reached only when sampling returned normally
    return out, source
