"""Self-attention injection: the target's edited rows attend with the source's queries and keys.

Replacing the target's softmax(QKᵀ) map by the source's and multiplying by the target's V is
Attention(Q_src, K_src, V_tgt). ComfyUI's ``attn1_patch`` runs before the projections and
returns (n, context, value), which become the inputs of to_q, to_k and to_v; handing it
(n_src, n_src, n_tgt) on the edited rows therefore reproduces the map replacement on the host's
own attention kernel, without building an N×N map. Rows, layers and steps outside the edit pass
through untouched, so a model with an empty edit samples bit-identically to the plain model.

The patched model is an ordinary cached output, so one patch serves many sampling runs (and
prompts). Everything it learns about a run lives in that run: the evaluation clock and the
warnings start afresh with every run (``evaluations`` explains how runs are told apart), and an
error closes the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import notify
from .conditioning import entry_ids, sampler_conds, structure_of
from .ddim_guard import DDIMGuard
from .errors import FPEError
from .evaluations import COND, UNCOND, EvaluationClock
from .hooks import Shared, add_evaluation_end, add_run_hook, all_finite, latent_hw
from .layers import LayerSelection, layer_key
from .local_edit import LocalRun, NoiseMaskHook, settings_of
from .replay import ChainedWrapper, ReplayCall, extended_batch, run_unet, unet_call_view
from .source import FPESource, describe_signature, model_signature, reject_chained_inject, weights_fingerprint
from .sweep import SweepSetting
from .validate import check_number

BRANCHES = {"cond only": frozenset({COND}), "cond + uncond": frozenset({COND, UNCOND})}


@dataclass(frozen=True)
class RowEdit:
    """One image's edit in a settings sweep (image k of every conditioning chunk takes row edit k)."""

    window: tuple[int, int]
    layers: frozenset
    label: str


@dataclass
class RunState:
    """What the inject knows about the sampling run in progress."""

    structure_checked: bool = False
    warned: set = field(default_factory=set)
    local: LocalRun | None = None  # the run's local edit (FPE Local Edit's settings, or a real photo's noise mask)
    local_ready: bool = False


class InjectPatch(Shared):
    """attn1 patch replacing the edited rows' Q/K input by the source's, with its run hooks."""

    fpe_inject = True  # marks an FPE edit on a model (a second FPE node on it is refused)
    node_name = "FPE Self-Attn Inject"  # for messages (FPE MMDiT Inject's subclass says its own)

    def __init__(self, source: FPESource, layers: frozenset, window: tuple[int, int], kinds: frozenset[int],
                 rows: tuple[RowEdit, ...] | None = None):
        self.source = source
        self.layers = layers  # a sweep: the union of its rows' layers
        self.window = window
        self.kinds = kinds
        self.rows = rows  # a settings sweep (2+ settings), else None: every image gets the same edit
        self.clock = EvaluationClock(source.schedule, source.top_evaluations())
        self._checked = None
        self._run = RunState()
        self._next_run: RunState | None = None  # prepared by the run hook for the run it announces
        self._pending: list[tuple[str, str, str]] = []  # warnings of the evaluation in progress
        self._warned_context = False
        self.by_order = True  # entries pair in ComfyUI's order, unless a run hook gives their ids
        self.previous_wrapper = None  # a UNet wrapper another pack set before ours
        self._replay: ReplayCall | None = None  # storage replay: the extended UNet call in progress
        self.host_mask = None  # real photos: (sigma, noise mask) of the evaluation in progress, from NoiseMaskHook

    @property
    def local_run(self) -> LocalRun | None:
        return self._run.local

    @property
    def replay_call(self) -> ReplayCall | None:
        return self._replay

    def close_run(self) -> None:
        """A hook riding on this edit (FPE Local Edit's word recorder) failed: end the run."""
        self._close()

    # --- run hooks ---------------------------------------------------------------------------

    def begin_run(self, guider, noise, latent, sigmas, denoise_mask) -> None:
        """Current ComfyUI, before sampling: check schedule, latent, mask and conditioning, then start."""
        try:
            if getattr(latent, "ndim", 0) == 4:
                self.source.check_latent(latent.shape)
                self._check_sweep_rows(latent.shape[0])
            self.source.check_schedule(sigmas.detach().cpu())
            lists = sampler_conds(guider)
            if lists is not None:
                self.source.check_structure(structure_of(*lists, latent_hw(self.source.latent_shape)))
        except BaseException:
            self._close()
            raise
        self.clock.begin_run(entry_ids(getattr(guider, "conds", None)))
        self._pending = []
        if denoise_mask is None:  # an interrupted run's noise mask is not this run's
            self.host_mask = None
        self._next_run = RunState(structure_checked=lists is not None)

    def end_evaluation(self, args):
        """Post-CFG, both hosts: run boundary, first-evaluation checks, finite result, warnings."""
        if args["sigma"] is not self.clock.sigma_tensor:
            return args["denoised"]  # no UNet call of this evaluation reached the patch
        try:
            call = self.clock.current
            if self.clock.end_evaluation(args.get("cond")):  # a new run the clock took for the last one's continuation
                if call.step == 0:  # it did start at the schedule's first sigma, after an interrupted run
                    raise FPEError(f"{self.node_name} lost track of the runs after an interrupted one (this "
                                   "schedule repeats its first sigma): queue the prompt again")
                self._reject_start(call)
            if self.clock.evaluation_run_start:
                self._first_evaluation_checks(args)
            if not all_finite(args["denoised"]):
                raise FPEError(
                    f"{self.node_name}: the target sampler's model prediction is NaN or infinite at step {call.step} "
                    f"(sigma {call.sigma:.6g}). Likely causes: the target sampler's cfg or denoise is NaN/Infinity in "
                    f"the workflow, or a model running in fp16 overflows (run it in fp32/bf16, or lower cfg)")
            denoised = self._blend_denoised(args, call)
        except BaseException:
            self._close()
            raise
        self._flush()
        return denoised

    def _blend_denoised(self, args, call):
        """Local edits: the denoised output outside the mask is the source's (before the DDIM guard checks it)."""
        host_mask, self.host_mask = self._host_mask(call), None  # one evaluation's
        settings = settings_of(args.get("model_options", {}).get("transformer_options"))
        local = self._run.local
        if (settings is not None or host_mask is not None) and (
                local is None or local.settings is not settings or not local.blended_input):
            raise FPEError(
                f"FPE Local Edit: {self.node_name}'s UNet wrapper did not run (a node applied after the Inject "
                "replaced the model's function wrapper, e.g. tiled diffusion), so the mask cannot act on the model's "
                f"input: apply that node before {self.node_name}")
        if local is None:
            return args["denoised"]
        local.blended_input = False
        return local.blend_denoised(args, call, host_mask)

    def _first_evaluation_checks(self, args) -> None:
        source = self.source
        if not self._run.structure_checked:  # hosts without a run hook see the run's conditioning here
            source.check_structure(structure_of(args.get("cond"), args.get("uncond"), latent_hw(source.latent_shape)),
                                   by_order=self.by_order)
            self._run.structure_checked = True
        if not source.inverted and not source.same_start(args["input"]):  # real sources: the DDIM guard's job
            self._defer("start", "the target starts from other noise than the source",
                        f"the target sampler starts from other noise than {source.maker} (a different seed, or "
                        "another latent or denoise?): give both the same seed and latent, or the edit will not keep "
                        "the source's layout")
        elif self.rows is not None and source.batch == 1 and not source.same_start(args["input"], every_row=True):
            self._defer("sweep start", "the sweep's images start from other noise than the source",
                        "images 2 and later of the settings sweep start from other noise than the source (an Empty "
                        "Latent Image batch gives each image its own), so image k is not the edit with setting k: "
                        "connect the target's latent through FPE Sweep Latent (with the Inject's sweep_labels)")

    # --- attn1 patch -------------------------------------------------------------------------

    def __call__(self, n, context, value, extra_options):
        try:
            return self._edit(n, context, value, extra_options)
        except BaseException:
            self._close()
            raise

    # --- storage replay: the source rows run in the target's UNet call ----------------------

    def unet_call(self, apply_model, args):
        """UNet wrapper: a local edit's input blend; replay sources: in edited steps, put the source's rows in
        front of the batch."""
        try:
            x = args["input"]
            if x.shape[0] == 0:
                raise FPEError("the target latent batch is empty (0 images): give the target sampler a latent with "
                               "at least one image")
            options = args["c"].get("transformer_options", {})
            call = self.clock.locate(unet_call_view(options, x), x.shape[0])
            self._enter(call, options)
            local = self._local(options)
            if local is not None:
                args = local.blend_input(args, call, self._host_mask(call))
            if self.source.replay is None or not self._edits(call):
                return run_unet(self.previous_wrapper, apply_model, args)
            inputs = []
            for chunk in call.chunks:
                if chunk.kind in self.kinds:
                    key = self._source_key(chunk, call)
                    inputs.append((chunk, self.source.source_input(key, call.step)))
            if not inputs:  # e.g. an uncond-only call (split batches, SAG) with branches 'cond only'
                return run_unet(self.previous_wrapper, apply_model, args)
            extended, replay = self._extended(args, call, inputs)
            self._replay = replay
            try:
                out = run_unet(self.previous_wrapper, apply_model, extended)
            finally:
                self._replay = None
            return out[replay.source_rows:]
        except BaseException:
            self._close()
            raise

    def _extended(self, args, call, inputs):
        """The UNet call's arguments with the source rows in front (an MMDiT edit checks its token layout here)."""
        return extended_batch(args, call, inputs, self.source.maker)

    def _local(self, options) -> LocalRun | None:
        """The run's local edit, set up at its first UNet call (settings of this clone, or a noise mask)."""
        run = self._run
        if not run.local_ready:
            settings = settings_of(options)
            host_mask = self._host_mask(self.clock.current)
            if settings is not None or host_mask is not None:
                if settings is not None and host_mask is None and settings.mask is None and settings.words is None:
                    raise FPEError(
                        "FPE Local Edit has no region: connect a MASK to its mask input, name words (with clip, "
                        "source_text and target_text), or put a Set Latent Noise Mask on the target latent")
                run.local = LocalRun(settings, self.source)
            run.local_ready = True
        return run.local

    def _host_mask(self, call):
        """The noise mask NoiseMaskHook saw for this evaluation (one left by an interrupted run is another
        sigma's, or was cleared by the run hook)."""
        if self.host_mask is None or call is None:
            return None
        sigma, mask = self.host_mask
        return mask if math.isclose(sigma, call.sigma, rel_tol=1e-6, abs_tol=1e-9) else None

    def _edit_replayed(self, n, context, value, extra_options, replay: ReplayCall):
        """attn1 in an extended call: the target rows (after the source's) take the source rows' input."""
        layer = layer_key(extra_options)
        if layer not in self.layers:
            return n, context, value
        picked = self._rows_at(replay.call.step, layer)
        if picked is not None and not picked:
            return n, context, value
        edited = n.clone()
        skip = replay.source_rows
        targets = [slice(skip + rows.start, skip + rows.stop) for rows, _ in replay.pairs]
        sources = [source for _, source in replay.pairs]
        if picked is not None:  # a sweep: only the images whose setting edits this step and layer
            targets = [[t.start + r for r in picked] for t in targets]
            sources = [[s.start + r for r in picked] for s in sources]
        for target, source in zip(targets, sources, strict=True):
            edited[target] = n[source]
        if context is n:
            return edited, edited, value
        if context.shape == n.shape:  # another patch's keys: the edited rows still take the source's
            keys = context.clone()
            for target in targets:
                keys[target] = edited[target]
            return edited, keys, value
        return edited, context, value

    # --- attn1 patch -------------------------------------------------------------------------

    def _enter(self, call, extra_options) -> None:
        """Once per UNet call: run boundaries and the checks of what the host let us see."""
        if call is self._checked:
            return
        if call.new_evaluation:
            if call.run_start:  # an earlier run's unfinished evaluation warns nothing
                self._pending = []
                self._run, self._next_run = self._next_run or RunState(), None
            else:
                self._flush()  # the last evaluation's end was not reported (a guider without post-CFG)
                if self._run.local is not None and self._run.local.blended_input:
                    raise FPEError(
                        "FPE Local Edit: the sampler's guider does not call ComfyUI's post-CFG functions, so the "
                        "denoised output outside the mask would not be the source's: use a sampler node that "
                        "does (KSampler, KSamplerAdvanced, SamplerCustom with CFG)")
            self._check_pattern(call)
        self._check_call(call, extra_options)
        self._checked = call

    def _edits(self, call) -> bool:
        """Whether the edit acts in this call's step (an error for a sigma the schedule lacks)."""
        if self.rows is not None:
            return self._row_edits(call)
        first, stop = self.window
        if first >= stop:
            return False
        if call.step is None:
            self.source.reject_sigma(call.sigma)
        return first <= call.step < stop

    def _row_edits(self, call) -> bool:
        """A sweep: whether any image's setting edits this call's step."""
        if all(first >= stop for first, stop in (row.window for row in self.rows)):
            return False
        if call.step is None:
            self.source.reject_sigma(call.sigma)
        return any(row.window[0] <= call.step < row.window[1] for row in self.rows)

    def _rows_at(self, step: int, layer) -> list[int] | None:
        """A sweep: the images (within a chunk) whose setting edits ``step`` at ``layer``; None: no sweep."""
        if self.rows is None:
            return None
        return [k for k, row in enumerate(self.rows) if row.window[0] <= step < row.window[1] and layer in row.layers]

    def _check_sweep_rows(self, images: int) -> None:
        if self.rows is not None and images != len(self.rows):
            raise FPEError(
                f"sweep: {self.node_name}'s sweep has {len(self.rows)} settings, but the target sampler's latent "
                f"has {images} image{'s' if images != 1 else ''}: each image takes one setting. Connect the target "
                f"latent through FPE Sweep Latent (it repeats the source's latent {len(self.rows)} times, each with "
                f"the source's noise), or set the Empty Latent Image batch_size to {len(self.rows)}")

    def _check_pattern(self, call) -> None:
        """The target's n-th evaluation must be at the sigma of the source's n-th: samplers that evaluate once per
        step at the schedule's sigmas (euler, ddim, dpmpp_2m, euler_ancestral, ...) pair one to one whichever each
        side uses; a sampler with correction evaluations (heun, dpm_2, ...) on one side only pairs those with the
        other side's steps."""
        order, n = self.source.evaluation_order, len(self.clock.order) - 1
        if n < 0 or n >= len(order) or order[n] == self.clock.order[n] or "pattern" in self._run.warned:
            return
        self._defer("pattern", "the target's sampler evaluates the model in another pattern than the source's",
                    f"the target sampler's model evaluation #{n} is at {self.source.describe_sigma(self.clock.order[n])}"
                    f", {self.source.maker}'s was at {self.source.describe_sigma(order[n])} (step {call.step}): a "
                    f"sampler with correction evaluations (heun, dpm_2, ...) on one side only pairs those with the "
                    f"other side's steps, so this is not the FPE edit. Give both sides the same sampler (samplers "
                    f"that evaluate once per step, such as euler, ddim, dpmpp_2m or euler_ancestral, pair exactly "
                    f"with each other)")

    def _source_key(self, chunk, call):
        key, stand_in = self.source.resolve(chunk.key, call.step)
        pattern = "pattern" in self._run.warned or any(pending[0] == "pattern" for pending in self._pending)
        if stand_in and not pattern:  # the pattern's warning says it already
            self._defer("stand-in", "extra model evaluations reuse the source's",
                        f"the target evaluates the model more often than the source run did (sigma {call.sigma:.6g}, "
                        f"step {call.step}): another sampler, or a guidance node (SAG, PAG, ...) on one side only? "
                        "Those evaluations reuse the source's latest one there; for an exact edit give both sides "
                        "the same sampler and model patches")
        return key

    def _edit(self, n, context, value, extra_options):
        if n.shape[0] == 0:
            raise FPEError("the target latent batch is empty (0 images): give the target sampler a latent with at "
                           "least one image")
        replay = self._replay
        if replay is not None and n.shape[0] == replay.source_rows + replay.call.rows:
            return self._edit_replayed(n, context, value, extra_options, replay)
        call = self.clock.locate(extra_options, n.shape[0])
        self._enter(call, extra_options)
        if not self._edits(call):
            return n, context, value
        layer = layer_key(extra_options)
        if layer not in self.layers:
            return n, context, value
        picked = self._rows_at(call.step, layer)
        if picked is not None and not picked:
            return n, context, value
        if self.source.replay is not None and any(chunk.kind in self.kinds for chunk in call.chunks):
            raise FPEError(
                "FPE Self-Attn Inject's UNet wrapper did not run (a node applied after the Inject replaced the model's "
                "function wrapper, e.g. tiled diffusion), so the replayed source rows are missing: apply that node "
                "before FPE Self-Attn Inject, or capture with storage 'auto' or 'cpu'")
        edited = None
        targets = []  # the edited rows of each edited chunk
        for chunk in call.chunks:
            if chunk.kind not in self.kinds:
                continue
            key = self._source_key(chunk, call)
            src = self.source.stored(key, layer, call.step)
            target_rows = chunk.rows.stop - chunk.rows.start
            if src.shape[1:] != n.shape[1:]:
                raise FPEError(
                    f"the target's self-attention at layer {'.'.join(map(str, layer))} has {n.shape[1]} tokens x "
                    f"{n.shape[2]} channels, the source's {src.shape[1]} x {src.shape[2]}: the target latent's size "
                    f"differs from the capture's ({self.source.latent_shape[-1] * 8}x{self.source.latent_shape[-2] * 8} "
                    f"px), or a conditioning entry restricted to an area (Conditioning (Set Area)) differs between the "
                    f"sides, or a patch that changes token counts (HyperTile, ToMe) acts on one side only")
            if src.shape[0] == 1:
                src = src.expand(target_rows, -1, -1)
            elif src.shape[0] != target_rows:
                self.source.check_latent((target_rows, 0) + tuple(self.source.latent_shape[2:]))
            if edited is None:
                edited = n.clone()
            if picked is None:
                targets.append(chunk.rows)
                edited[chunk.rows] = src.to(device=n.device, dtype=n.dtype)
            else:  # a sweep: image k of the chunk takes the source only where setting k edits
                targets.append([chunk.rows.start + r for r in picked])
                edited[targets[-1]] = src[picked].to(device=n.device, dtype=n.dtype)
        if edited is None:
            return n, context, value
        # Keys come from the source too (the map is the source's); values stay the target's own.
        if context is n:
            context = edited
        elif context.shape == n.shape:
            context = context.clone()
            for rows in targets:
                context[rows] = edited[rows]
        elif not self._warned_context:
            notify.warn("another attn1 patch changes self-attention's keys",
                        f"it gives layer {layer} its own keys ({context.shape[1]} tokens); FPE replaces the queries only")
            self._warned_context = True
        return edited, context, value

    def _check_call(self, call, extra_options) -> None:
        if call.run_start and call.new_evaluation:
            sample_sigmas = extra_options.get("sample_sigmas")  # current ComfyUI: the whole schedule
            if sample_sigmas is not None:
                self.source.check_schedule(sample_sigmas.cpu())
            self._reject_start(call)
        self._check_sweep_rows(call.rows // len(call.chunks))
        shape = call.original_shape
        if shape is not None and len(shape) == 4:
            rows, channels, height, width = shape
            _, _, src_h, src_w = self.source.latent_shape
            # A chunk restricted to an area is a crop of the latent: only a whole latent shows its size.
            if (height, width) == (src_h, src_w) or height > src_h or width > src_w:
                self.source.check_latent((rows // len(call.chunks), channels, height, width))

    def _reject_start(self, call) -> None:
        if call.step is None:
            self.source.reject_sigma(call.sigma, first=True)
        if call.step != 0:
            self.source.reject_start(call.step, call.sigma)

    # --- warnings and errors ----------------------------------------------------------------

    def _defer(self, kind: str, summary: str, detail: str) -> None:
        """Warn once per run, when the evaluation ends (a run found invalid there warns nothing)."""
        if kind not in self._run.warned and all(kind != pending[0] for pending in self._pending):
            self._pending.append((kind, summary, detail))

    def _flush(self) -> None:
        for kind, summary, detail in self._pending:
            self._run.warned.add(kind)
            notify.warn(summary, detail)
        self._pending = []

    def _close(self) -> None:
        """An error ends the run: the next one starts clean."""
        self.clock.reset()
        self._pending = []
        self._next_run = None
        self._checked = None
        self.host_mask = None


class InjectWrapper(ChainedWrapper):
    """The Inject's ``model_function_wrapper``: local edits' input blend, replay sources' extended calls (see
    ``InjectPatch.unet_call``)."""

    def __init__(self, patch: InjectPatch, previous=None):
        super().__init__(previous)
        patch.previous_wrapper = previous
        self.patch = patch

    def __call__(self, apply_model, args):
        return self.patch.unet_call(apply_model, args)


def inject_model(model, source: FPESource, *, selection: LayerSelection, start: float, end: float,
                 branches: str = "cond only", sweep: list[SweepSetting] | None = None):
    """A clone of ``model`` that edits its samples with ``source``; checks everything it can first.

    ``sweep``: one setting per target image (a batch of len(sweep) images); a sweep of one setting is
    the plain edit with that setting."""
    if not isinstance(source, FPESource):
        raise FPEError("fpe_source: connect the FPE_SOURCE output of FPE Source Capture, FPE DDIM Invert or FPE "
                       "Null-Text Invert")
    source.require_complete()
    signature = model_signature(model)
    reject_chained_inject(model, "FPE Self-Attn Inject")
    if signature != source.signature:
        raise FPEError(
            f"model: fpe_source was captured with {describe_signature(source.signature)}, but this model is "
            f"{describe_signature(signature)}: give FPE Self-Attn Inject the model the capture used")
    if source.weights and weights_fingerprint(model) != source.weights:
        replayed = " (with storage replay the source rows are re-run with this model)" if source.replay is not None else ""
        notify.warn("another model than the capture's",
                    f"FPE Self-Attn Inject gets another checkpoint or other LoRAs than {source.maker} used{replayed}; "
                    "give both the same model unless that is what you want")
    start, end = check_number("start", start, 0.0, 1.0), check_number("end", end, 0.0, 1.0)
    if start > end:
        raise FPEError(f"start ({start}) is after end ({end}): set start below end (start = end turns the edit off)")
    kinds = branch_kinds(source, branches)
    rows = None
    if sweep:
        rows = tuple(RowEdit(*_edit_of(source, s.selection, s.start, s.end, f"sweep: {s.label}: ",
                                       warn=len(sweep) == 1), s.label) for s in sweep)
        layers = frozenset().union(*(row.layers for row in rows))
        window = (min(row.window[0] for row in rows), max(row.window[1] for row in rows))
        if len(rows) == 1:  # exactly the plain edit with that setting
            rows = None
    else:
        window, layers = _edit_of(source, selection, start, end)
    patch = InjectPatch(source, layers, window, kinds, rows)
    patched = model.clone()
    patched.set_model_attn1_patch(patch)
    # The UNet wrapper: replay sources run their rows beside the target's in the stored steps; local edits
    # (FPE Local Edit, a real photo's noise mask) blend the model input.
    patched.set_model_unet_function_wrapper(InjectWrapper(patch, patched.model_options.get("model_function_wrapper")))
    announced = add_run_hook(patched, patch.begin_run)
    patch.by_order = not announced
    add_evaluation_end(patched, patch.end_evaluation)
    if source.inverted:  # a real image: the target must sample its inverted latent back with DDIM
        # A noise mask on the target latent becomes the local edit's mask (the host's own inpainting would
        # blend towards the inverted noise).
        patched.set_model_denoise_mask_function(
            NoiseMaskHook(patch, patched.model_options.get("denoise_mask_function")))
        add_evaluation_end(patched, DDIMGuard(source))  # last: it checks the denoised result the sampler uses
    return patched


def branch_kinds(source: FPESource, branches: str) -> frozenset[int]:
    """The chunk kinds ``branches`` edits, checked against what the source kept and evaluated."""
    if branches not in BRANCHES:
        raise FPEError(f"branches: unknown value {branches!r}; choose one of {', '.join(BRANCHES)}")
    kinds = BRANCHES[branches]
    if UNCOND in kinds:
        if UNCOND not in source.stored_kinds:
            raise FPEError(f"branches 'cond + uncond' needs the source's uncond rows: set {source.maker}'s "
                           "store_rows to 'cond + uncond' (or use branches 'cond only')")
        if UNCOND not in source.evaluated_kinds:
            raise FPEError(f"branches 'cond + uncond' needs the source's uncond rows, but the capture ran at cfg "
                           f"{source.cfg}, where ComfyUI skips them: capture at cfg > 1 or use branches 'cond only'")
    return kinds


def _edit_of(source: FPESource, selection: LayerSelection, start: float, end: float,
             prefix: str = "", warn: bool = True) -> tuple[tuple[int, int], frozenset]:
    """The step window and layer keys of one edit setting, checked against what the source stored."""
    if start > end:
        raise FPEError(f"{prefix}start ({start}) is after end ({end}): set start below end (start = end turns the "
                       f"edit off)")
    window, layers = source.covered_edit(selection, start, end, prefix=prefix)
    if window[0] >= window[1] and start < end and warn:
        notify.warn("the edit is off",
                    f"start {start} / end {end} edit no step of {source.steps} (the window truncates to {window})")
    return window, layers
