"""Self-attention injection: the target's edited rows attend with the source's queries and keys.

Replacing the target's softmax(QKᵀ) map by the source's and multiplying by the target's V is
Attention(Q_src, K_src, V_tgt). ComfyUI's ``attn1_patch`` runs before the projections and
returns (n, context, value), which become the inputs of to_q, to_k and to_v; handing it
(n_src, n_src, n_tgt) on the edited rows therefore reproduces the map replacement on the host's
own attention kernel, without building an N×N map. Rows, layers and steps outside the edit pass
through untouched, so a model with an empty edit samples bit-identically to the plain model.
"""

from __future__ import annotations

import logging

import torch

from .ddim_guard import DDIMGuard
from .errors import FPEError
from .evaluations import COND, UNCOND, EvaluationClock
from .layers import LayerSelection, layer_key
from .source import FPESource, describe_signature, model_signature, weights_fingerprint
from .steps import step_window

BRANCHES = {"cond only": frozenset({COND}), "cond + uncond": frozenset({COND, UNCOND})}
WRAPPER_KEY = "free-prompt-editing"

log = logging.getLogger("free-prompt-editing")


class InjectPatch:
    """attn1 patch replacing the edited rows' Q/K input by the source's."""

    def __init__(self, source: FPESource, layers: frozenset, window: tuple[int, int], kinds: frozenset[int]):
        self.source = source
        self.layers = layers
        self.window = window
        self.kinds = kinds
        self.clock = EvaluationClock(source.schedule, source.top_evaluations())
        self._checked = None
        self._warned_context = False
        self._warned_stand_in = False

    def __deepcopy__(self, memo):  # clones of the patched model share the patch (and the source)
        return self

    def begin_run(self, sigmas=None, latent_shape=None) -> None:
        """Called before sampling where the host allows (current ComfyUI): check, then reset."""
        if sigmas is not None:
            self.source.check_schedule(sigmas)
        if latent_shape is not None:
            self.source.check_latent(latent_shape)
        self.clock.reset()

    def _check_call(self, call, extra_options) -> None:
        if call.original_shape is not None and len(call.original_shape) == 4:
            rows, channels, height, width = call.original_shape
            self.source.check_latent((rows // len(call.chunks), channels, height, width))
        if call.run_start:
            sample_sigmas = extra_options.get("sample_sigmas")  # current ComfyUI: the whole schedule
            if sample_sigmas is not None:
                self.source.check_schedule(sample_sigmas.cpu())
            elif call.step != 0:
                self.source.reject_sigma(call.sigma, first=True)

    def __call__(self, n, context, value, extra_options):
        call = self.clock.locate(extra_options, n.shape[0])
        if call is not self._checked:  # once per UNet call: check what the host let us see
            self._check_call(call, extra_options)
            self._checked = call
        first, stop = self.window
        if first >= stop:
            return n, context, value
        if call.step is None:
            self.source.reject_sigma(call.sigma)
        if not first <= call.step < stop:
            return n, context, value
        layer = layer_key(extra_options)
        if layer not in self.layers:
            return n, context, value
        edited = None
        for chunk in call.chunks:
            if chunk.kind not in self.kinds:
                continue
            key, stand_in = self.source.resolve(chunk.key, call.step)
            if stand_in and not self._warned_stand_in:
                log.warning("FPE: the target evaluates the model more often than the source run did (sigma %.6g, "
                            "step %s): another sampler, or a guidance node (SAG, PAG, ...) on one side only? Those "
                            "evaluations reuse the source's latest one there; for an exact edit give both sides the "
                            "same sampler and model patches", call.sigma, call.step)
                self._warned_stand_in = True
            src = self.source.stored(key, layer, call.step)
            target_rows = chunk.rows.stop - chunk.rows.start
            if src.shape[1:] != n.shape[1:]:
                raise FPEError(
                    f"layer {layer}: the target has {n.shape[1]} tokens x {n.shape[2]} channels, the source "
                    f"{src.shape[1]} x {src.shape[2]}: the latent sizes (or an area/token-changing patch) differ")
            if src.shape[0] == 1:
                src = src.expand(target_rows, -1, -1)
            elif src.shape[0] != target_rows:
                self.source.check_latent((target_rows, 0) + tuple(self.source.latent_shape[2:]))
            if edited is None:
                edited = n.clone()
            edited[chunk.rows] = src.to(device=n.device, dtype=n.dtype)
        if edited is None:
            return n, context, value
        # Keys come from the source too (the map is the source's); values stay the target's own.
        if context is n:
            context = edited
        elif context.shape == n.shape:
            context = context.clone()
            for chunk in call.chunks:
                if chunk.kind in self.kinds:
                    context[chunk.rows] = edited[chunk.rows]
        elif not self._warned_context:
            log.warning("FPE: another attn1 patch gives self-attention its own keys (%s tokens); FPE replaces "
                        "the queries only on layer %s", context.shape[1], layer)
            self._warned_context = True
        return edited, context, value


def inject_model(model, source: FPESource, *, selection: LayerSelection, layer_setting: str, start: float,
                 end: float, branches: str = "cond only"):
    """A clone of ``model`` that edits its samples with ``source``; checks everything it can first."""
    if not isinstance(source, FPESource):
        raise FPEError("fpe_source: connect the FPE_SOURCE output of FPE Source Capture or FPE DDIM Invert")
    source.require_complete()
    signature = model_signature(model)
    if signature != source.signature:
        raise FPEError(
            f"model: fpe_source was captured with {describe_signature(source.signature)}, but this model is "
            f"{describe_signature(signature)}: give FPE Self-Attn Inject the model the capture used")
    if source.weights and weights_fingerprint(model) != source.weights:
        log.warning("FPE: FPE Self-Attn Inject gets another checkpoint or other LoRAs than %s used; "
                    "give both the same model unless that is what you want", source.maker)
    if start > end:
        raise FPEError(f"start ({start}) is after end ({end}): set start below end (start = end turns the edit off)")
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
    _, _, height, width = source.latent_shape
    layers = frozenset(layer.key for layer in selection.resolve(source.layers, height, width))
    if not layers:
        raise FPEError(f"layers '{layer_setting}' select no self-attention layer at the capture's size "
                       f"({width * 8}x{height * 8} px): choose 'all' or a custom list")
    missing = sorted(layers - source.stored_layers)
    if missing:
        names = ", ".join(layer.name for layer in source.layers if layer.key in missing)
        raise FPEError(
            f"layers '{layer_setting}' include {names}, which {source.maker} did not store (its store_layers: "
            f"'{source.layer_setting}'): widen the capture's store_layers or narrow the inject's layers")
    window = step_window(source.steps, start, end)
    stored_first, stored_stop = source.stored_window
    if window[0] < window[1] and not (stored_first <= window[0] and window[1] <= stored_stop):
        raise FPEError(
            f"end {end} edits steps {window[0]}..{window[1] - 1} of {source.steps}, but {source.maker} stored steps "
            f"{stored_first}..{stored_stop - 1} (store_end {source.store_end}): raise the capture's store_end to at "
            f"least {end} or lower the inject's end")
    if window[0] >= window[1] and start < end:
        log.warning("FPE: start %s / end %s edit no step of %s (the window truncates to %s): the edit is off",
                    start, end, source.steps, window)
    patch = InjectPatch(source, layers, window, kinds)
    patched = model.clone()
    patched.set_model_attn1_patch(patch)
    _add_pre_sampling_check(patched, patch)
    if source.inverted:  # a real image: the target must sample its inverted latent back with DDIM
        patched.set_model_sampler_post_cfg_function(DDIMGuard(source))
    return patched


def _add_pre_sampling_check(patched, patch: InjectPatch) -> None:
    """On current ComfyUI, check schedule and latent before the first UNet call (keyed wrapper)."""
    add_wrapper = getattr(patched, "add_wrapper_with_key", None)
    if add_wrapper is None:  # ComfyUI of early 2024: the patch checks at the first UNet call instead
        return
    import comfy.patcher_extension

    add_wrapper(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _PreSamplingCheck(patch))


class _PreSamplingCheck:
    def __init__(self, patch: InjectPatch):
        self.patch = patch

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        shape = latent_image.shape if getattr(latent_image, "ndim", 0) == 4 else None
        self.patch.begin_run(sigmas=sigmas.cpu(), latent_shape=shape)
        if torch.count_nonzero(noise) and not self.patch.source.same_noise(noise):
            log.warning("FPE: the target sampler starts from other noise than FPE Source Capture (a different "
                        "seed?): give both the same seed, or the edit will not keep the source's layout")
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
