"""``FPE_SOURCE``: what a source run leaves for the edits that follow it.

The capture stores, for the selected attn1 layers and steps, the layer *input* ``n`` of the
source rows (the tensor ComfyUI projects to Q, K and V). The target later computes its edited
rows' queries and keys from it with the same weights, so Attention(Q_src, K_src, V_tgt) equals
the official map replacement. Why inputs and not Q/K or maps: ``n`` is half the bytes of Q+K,
~9x fewer than the maps at 512 px, and replaying it needs no extra UNet pass, so a re-edit costs
one plain generation (measured by ``dev/benchmark.py``; docs/DESIGN.md).

An ``FPESource`` is planned whole before its run (``capture.new_source``), filled by the run's recorder,
and sealed by ``finish``; from then on it is immutable: ComfyUI caches it as the capture node's output,
so changing only the target prompt re-runs only the target side.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .architecture import unet_of
from .conditioning import Structure
from .dit_model import dit_layout, dit_signature
from .errors import FPEError
from .evaluations import EvalKey, kind_name
from .layers import Attn1Layer, LayerKey, LayerSelection, unet_attn1_layers
from .replay import SourceInput
from .steps import SIGMA_RTOL, step_window

_FIX_SCHEDULE = ("give the target sampler the same steps, scheduler and denoise as {maker} "
                 "(or the same sigmas), and the same sampler")


def model_signature(model) -> tuple:
    """What must agree between the capture's and the inject's model for the pairing to hold."""
    inner = model.model
    layout = dit_layout(model)
    if layout is not None:  # an MMDiT: its block table
        return dit_signature(model, layout)
    layers = unet_attn1_layers(unet_of(model))
    return (type(inner).__name__, type(inner.latent_format).__name__,
            tuple((layer.key, layer.channels, layer.heads) for layer in layers))


_SAMPLES_PER_TENSOR = 64  # values read from each weight (strided over the tensor)


def _sampled(t: torch.Tensor) -> torch.Tensor | None:
    """A fixed, strided sample of ``t``'s values as float32 (None for a tensor type that cannot be read so)."""
    if t.device.type == "meta":  # not loaded (yet): nothing to read
        return None
    try:
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        return flat[::step][:_SAMPLES_PER_TENSOR].float()
    except Exception:  # a quantised / GGUF tensor type: its identity is all we can compare cheaply
        return None


def _digest_into(digest, obj, depth: int = 0) -> None:
    """Hash what a weight patch holds: tensors (sampled), numbers, and the nested tuples or adapters."""
    if depth > 6:
        return
    if torch.is_tensor(obj):
        sample = _sampled(obj)
        digest.update(repr((tuple(obj.shape), str(obj.dtype))).encode())
        digest.update(sample.cpu().numpy().tobytes() if sample is not None else repr(id(obj)).encode())
    elif isinstance(obj, (tuple, list)):
        digest.update(b"(")
        for item in obj:
            _digest_into(digest, item, depth + 1)
        digest.update(b")")
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        digest.update(repr(obj).encode())
    else:  # current ComfyUI's weight adapters keep their tensors in .weights
        digest.update(type(obj).__name__.encode())
        _digest_into(digest, getattr(obj, "weights", None), depth + 1)


def weights_fingerprint(model) -> str:
    """What weights a model samples with, by content: a strided sample of every weight of its UNet and every
    weight patch (LoRA) on it. Two loaders of one checkpoint file give the same fingerprint (ComfyUI of
    early 2024 makes two module objects), another checkpoint or LoRA another. Costs one small copy per model."""
    digest = hashlib.sha256()
    # The UNet's weights as loaded from the file: a model loaded for sampling holds its patched weights (LoRA)
    # in the modules and the originals in the patcher's backup (shared by its clones), so read those there.
    # model_sampling's buffers are left out: an object patch (ModelSamplingDiscrete) swaps them, not the weights.
    backup = getattr(model, "backup", None) or {}
    tensors = []
    for key, t in sorted(model.model.state_dict().items()):
        if key.startswith("diffusion_model."):
            saved = backup.get(key)
            tensors.append(t if saved is None else getattr(saved, "weight", saved))
    samples = [_sampled(t) for t in tensors]
    readable = [x for x in samples if x is not None]
    if readable:
        device = readable[0].device
        digest.update(torch.cat([x.to(device) for x in readable]).cpu().numpy().tobytes())
    digest.update(repr([(tuple(t.shape), str(t.dtype)) for t in tensors]).encode())
    digest.update(repr([id(t) for t, x in zip(tensors, samples, strict=True) if x is None]).encode())
    patches = getattr(model, "patches", {}) or {}
    for key in sorted(patches):
        digest.update(key.encode())
        _digest_into(digest, patches[key])
    return digest.hexdigest()


def describe_signature(signature: tuple) -> str:
    model_type, latent_format, widths = signature
    if widths and isinstance(widths[0][0], str):  # an MMDiT's (kind, count) blocks
        blocks = ", ".join(f"{count} {kind}" for kind, count in widths)
        return f"{model_type} ({latent_format} latents, blocks: {blocks})"
    return f"{model_type} ({latent_format} latents, {len(widths)} self-attention layers)"


def reject_chained_inject(model, node: str) -> None:
    """A model that already carries an FPE edit cannot take another FPE node: say what to connect."""
    options = getattr(model, "model_options", {}).get("transformer_options", {})
    patches = options.get("patches", {})
    if any(getattr(patch, "fpe_inject", False) for patch in patches.get("attn1_patch", [])):
        inject, loader = "FPE Self-Attn Inject", "Load Checkpoint's"
    elif getattr(options.get("optimized_attention_override"), "fpe_inject", False):
        inject, loader = "FPE MMDiT Inject", "Load Diffusion Model's"
    else:
        return
    raise FPEError(
        f"model: this model already carries an {inject} edit, so {node} would not run as asked (a second Inject "
        f"would be overridden by the first; a capture or inversion would record an edited run). Connect {node}'s "
        f"model input to the model before {inject} (e.g. {loader} MODEL); for several edits, give each target "
        f"sampler its own Inject from that model")


@dataclass
class FPESource:
    signature: tuple
    layers: list[Attn1Layer]
    latent_shape: tuple[int, int, int, int]  # source LATENT batch, channels, height, width
    schedule: list[float]  # the capture's sigmas (steps + 1 values)
    schedule_origin: str  # how the capture got them, for error messages
    stored_layers: frozenset[LayerKey]
    stored_window: tuple[int, int]  # [first, stop) step indices stored
    stored_kinds: frozenset[int]  # chunk kinds (cond/uncond) stored
    layer_setting: str  # the capture's layer setting, for error messages
    store_end: float
    cfg: float
    storage_device: str
    entries: dict[EvalKey, dict[LayerKey, torch.Tensor]] = field(default_factory=dict)
    evaluations: dict[EvalKey, int | None] = field(default_factory=dict)  # every evaluation chunk seen -> step
    weights: str = ""  # weights_fingerprint of the capture's model, to warn about another checkpoint/LoRA
    first_input: torch.Tensor | None = None  # the run's first model input x, to warn about another seed/latent
    structure: Structure | None = None  # the conditioning's entries, for pairing them one by one
    planned_bytes: int = 0  # the size the capture planned for (memory check)
    maker: str = "FPE Source Capture"  # the node that made it, for messages
    # Real-image sources: the DDIM-inverted latents in sampler space, forward order (entry i sits at
    # schedule[i]); the target must start from entry 0 and take DDIM steps.
    trajectory: list[torch.Tensor] | None = None
    tuned_cfg: float | None = None  # null-text sources: the cfg the per-step null embeddings are tuned for
    # storage replay: no layer record; each stored evaluation chunk's UNet inputs, re-run in the edit
    replay: dict[EvalKey, SourceInput] | None = None
    auto_replay: bool = False  # storage auto chose replay, as no record fit
    # store_cross: the attn2 (cross-attention) inputs of the stored rows for ``cross_layers`` (keyed like
    # ``entries``) and each stored chunk's text context (equal contexts of one entry shared between steps)
    cross_setting: str = "off"
    cross_layers: frozenset[LayerKey] = frozenset()
    cross_entries: dict[EvalKey, dict[LayerKey, torch.Tensor]] = field(default_factory=dict)
    cross_context: dict[EvalKey, torch.Tensor] = field(default_factory=dict)
    # The capture's evaluations in order (their SigmaKeys): its sampler's pattern, which a target pairs with
    # one to one only if its sampler evaluates the same sigmas in the same order.
    evaluation_order: tuple = ()
    # Local edits (``local_edit``): the source branch at every model evaluation, (sigma key, occurrence) ->
    # (x, denoised) as its sampler saw them (float32, CPU). Real photos: DDIM Invert's trajectory and the
    # denoised outputs that step along it; Null-Text Invert's reconstruction run.
    blend_rows: dict = field(default_factory=dict)
    # LocalBlend word masks: the first cond entry's cross-attention at ``word_layers`` (one token grid,
    # ``word_grid``), averaged over heads and summed over those layers, per evaluation: [images, tokens, context]
    word_layers: frozenset = frozenset()
    word_grid: tuple[int, int] | None = None
    word_maps: dict = field(default_factory=dict)
    word_context: torch.Tensor | None = None  # that entry's text context [tokens, channels], to check source_text
    complete: bool = False

    def finish(self, evaluation_order, trajectory: list[torch.Tensor] | None = None,
               tuned_cfg: float | None = None) -> None:
        """Seal the source after its run returned normally: the sampler's evaluation pattern, and for a real
        photo the inverted trajectory (and the cfg a null text was tuned for)."""
        self.evaluation_order = tuple(evaluation_order)
        self.trajectory = trajectory
        self.tuned_cfg = tuned_cfg
        self.complete = True

    @property
    def inverted(self) -> bool:
        return self.trajectory is not None

    @property
    def fix_schedule(self) -> str:
        if self.inverted:  # the inverse of DDIM inversion is DDIM: one evaluation per schedule sigma
            return _FIX_SCHEDULE.format(maker=self.maker).replace("the same sampler", "sampler ddim (or euler)")
        return _FIX_SCHEDULE.format(maker=self.maker)

    @property
    def steps(self) -> int:
        return len(self.schedule) - 1

    @property
    def batch(self) -> int:
        return self.latent_shape[0]

    @property
    def evaluated_kinds(self) -> frozenset[int]:
        return frozenset(key.kind for key in self.evaluations)

    @property
    def local_nbytes(self) -> int:
        """Bytes kept for local edits: the source's latent and denoised output per evaluation, its word maps."""
        rows = sum(t.numel() * t.element_size() for pair in self.blend_rows.values() for t in pair)
        return rows + sum(t.numel() * t.element_size() for t in self.word_maps.values())

    def blend_pair(self, key: tuple, call_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The source's (x, denoised) at the evaluation ``key`` = (sigma key, occurrence): that evaluation, else
        the latest one at the same sigma (a target that evaluates there more often); a sigma the source never
        visited is an error."""
        pair = self.blend_rows.get(key)
        if pair is None:
            here = [k for k in self.blend_rows if k[0] == key[0]]
            if not here:
                self.reject_sigma(call_sigma)
            pair = self.blend_rows[max(here, key=lambda k: k[1])]
        return pair

    @property
    def nbytes(self) -> int:
        """Bytes the record holds (replay: the model inputs, conditioning shared between steps counted once)."""
        if self.replay is not None:
            seen, total = set(), 0
            for item in self.replay.values():
                for t in (item.x, *item.cond.values()):
                    if id(t) not in seen:
                        seen.add(id(t))
                        total += t.numel() * t.element_size()
            return total
        total = sum(t.numel() * t.element_size() for layer_map in self.entries.values() for t in layer_map.values())
        return total + self.cross_nbytes

    @property
    def cross_nbytes(self) -> int:
        """Bytes of the store_cross record: attn2 inputs, and the text contexts counted once each."""
        total = sum(t.numel() * t.element_size() for layer_map in self.cross_entries.values()
                    for t in layer_map.values())
        unique = {id(t): t for t in self.cross_context.values()}
        return total + sum(t.numel() * t.element_size() for t in unique.values())

    def bytes_per_step(self) -> float:
        steps = {self.evaluations[k] for k in (self.replay if self.replay is not None else self.entries)}
        return self.nbytes / max(1, len(steps))

    def top_evaluations(self) -> int:
        """How many evaluations the source run made at its first sigma (1 for ComfyUI's samplers)."""
        return 1 + max((key.occurrence for key in self.evaluations if key.sigma == ("s", 0)), default=0)

    # --- checks the inject makes -------------------------------------------------------------

    def require_complete(self) -> None:
        if not self.complete:
            raise FPEError(
                "fpe_source comes from a capture that did not finish (interrupted or failed): "
                f"queue the graph again so {self.maker} runs to the end")

    def check_schedule(self, sigmas) -> None:
        """Raise unless the target's sigmas are the capture's, or their first steps (end_at_step).

        A run that stops early (KSamplerAdvanced end_at_step, with or without the final jump to
        sigma 0) edits its steps exactly as the full run does; a run that starts later does not pair.
        """
        target, mine = _final_zero([float(s) for s in sigmas]), _final_zero(self.schedule)
        if _same(target, mine):
            return
        n = len(target) - 1
        if 1 <= n < len(mine) - 1 and (_same(target, mine[:n + 1]) or (_same(target[:-1], mine[:n])
                                                                      and target[-1] == 0.0)):
            return  # the first n steps
        for k in range(1, len(mine) - 1):
            if _close(target[0], mine[k]) and _same(target[:-1], mine[k:k + n]):
                self.reject_start(k, target[0])
        raise FPEError(
            f"the target sampler's schedule differs from the capture's: the target runs {n} steps over sigmas "
            f"{_fmt(target)}, {self.maker} ran {self.steps} steps over {_fmt(mine)} ({self.schedule_origin}). "
            f"Fix: {self.fix_schedule}.")

    def reject_start(self, step: int, sigma: float) -> None:
        """A target run that starts at ``step`` > 0 of the capture's schedule cannot pair with it."""
        partial = (" (for a partly denoised photo, give FPE DDIM Invert that denoise and start the target at its "
                   "first step)" if self.inverted else "")
        raise FPEError(
            f"the target sampler starts at step {step} of the {self.steps} steps {self.maker} ran (sigma "
            f"{sigma:.6g}), not at the first: FPE pairs each step with the source's from the first one. Fix: set "
            f"KSamplerAdvanced's start_at_step to 0 (end_at_step may stop early){partial}, and {self.fix_schedule}.")

    def covered_edit(self, selection: LayerSelection, start: float, end: float, *, cross: bool = False,
                     prefix: str = "") -> tuple[tuple[int, int], frozenset[LayerKey]]:
        """The step window and layer keys of one edit, checked against what this source stored: the
        self-attention record (the Inject), or with ``cross`` the cross-attention record (Attention Replace)."""
        _, _, height, width = self.latent_shape
        layers = frozenset(layer.key for layer in selection.resolve(self.layers, height, width))
        size = f"the capture's size ({width * 8}x{height * 8} px)"
        if cross:
            if not layers:
                raise FPEError(f"{prefix}cross_layers '{selection.label}' select no cross-attention layer at {size}: "
                               f"choose 'all' or a custom list")
            missing = layers - self.cross_layers
            if missing:
                raise FPEError(f"{prefix}cross_layers '{selection.label}' include {self._names(missing)}, whose "
                               f"cross-attention {self.maker} did not store (store_cross '{self.cross_setting}'): set "
                               f"store_cross to 'all layers' or narrow cross_layers")
        else:
            if not layers:
                raise FPEError(f"{prefix}layers '{selection.label}' select no self-attention layer at {size}: choose "
                               f"'official relative' (every level but the finest, at any size), 'all' or a custom list")
            missing = layers - self.stored_layers
            if missing:
                raise FPEError(f"{prefix}layers '{selection.label}' include {self._names(missing)}, which {self.maker} "
                               f"did not store (its store_layers: '{self.layer_setting}'): widen the capture's "
                               f"store_layers or narrow the inject's layers")
        window = step_window(self.steps, start, end)
        first, stop = self.stored_window
        if window[0] < window[1] and not (first <= window[0] and window[1] <= stop):
            end_name, verb, fix = ("cross_end", "replaces", "lower cross_end") if cross else (
                "end", "edits", "lower the inject's end")
            raise FPEError(f"{prefix}{end_name} {end} {verb} steps {window[0]}..{window[1] - 1} of {self.steps}, but "
                           f"{self.maker} stored steps {first}..{stop - 1} (store_end {self.store_end}): raise the "
                           f"capture's store_end to at least {end} or {fix}")
        return window, layers

    def _names(self, keys) -> str:
        return ", ".join(layer.name for layer in self.layers if layer.key in keys)

    def reject_sigma(self, sigma: float, first: bool = False) -> None:
        where = "starts" if first else "evaluates the model"
        raise FPEError(
            f"the target sampler {where} at sigma {sigma:.6g}, which is not where {self.maker}'s schedule "
            f"puts it ({self.steps} steps over {_fmt(self.schedule)}, {self.schedule_origin}). Fix: {self.fix_schedule}.")

    def check_latent(self, shape) -> None:
        """Raise unless a target latent of ``shape`` [B, C, H, W] can pair with this source."""
        batch, _, height, width = (int(x) for x in shape[:4])
        _, _, src_h, src_w = self.latent_shape
        if batch == 0:
            raise FPEError("the target latent batch is empty (0 images): give the target sampler a latent with at "
                           "least one image")
        if (height, width) != (src_h, src_w):
            raise FPEError(
                f"the target latent is {width * 8}x{height * 8} px ({width}x{height} latent) but the source was captured "
                f"at {src_w * 8}x{src_h * 8} px ({src_w}x{src_h}): give the target sampler a latent of the capture's size")
        if self.batch != 1 and batch != self.batch:
            raise FPEError(
                f"batch sizes do not pair: the target latent has {batch} images, the source {self.batch}. Use a source "
                f"batch of 1 (shared by every target) or equal batch sizes (paired image by image)")

    def check_structure(self, target: Structure, by_order: bool = False) -> None:
        """Raise unless the target's conditioning entries pair one by one with the source's.

        ``by_order``: the host gives entries no ids (ComfyUI of early 2024), so entries pair in the order
        ComfyUI runs them, which must then be the same on both sides."""
        if self.structure is None:
            return
        if by_order and self.structure.pairs_with(target) and not self.structure.runs_in_the_same_order(target):
            raise FPEError(
                "the target's conditioning entries would run in another order than the source's, so they would "
                "not pair: this ComfyUI gives entries no ids and FPE pairs them in the order it runs them, which "
                "follows which entries can share a batch (the same ControlNet, prompts of similar length). Give "
                "every entry the same ControlNet setup on both sides and keep each prompt's length close to its "
                "twin's, or use a current ComfyUI, which pairs entries by id")
        if self.structure.pairs_with(target):
            return
        tuned, given = self.structure.null_texts(), target.null_texts()
        if self.maker == "FPE Null-Text Invert" and given and given != tuned:
            # the same shape of negative, tuned by another run: another photo, prompt or setting
            raise FPEError(
                f"the target sampler's negative is the null text of another FPE Null-Text Invert run (tuned "
                f"{'/'.join(sorted(given))}; this source's is {'/'.join(sorted(tuned))}), so it was tuned for another "
                f"photo, prompt or settings: connect the null_negative output of the same {self.maker} node whose "
                f"fpe_source goes to this FPE Self-Attn Inject")
        if self.maker == "FPE Null-Text Invert" and target.negative != self.structure.negative:
            # its negative is one entry per step, tuned for this photo
            raise FPEError(
                f"the target sampler's negative is not the null text: {self.maker} sampled the source with its "
                f"per-step null embeddings. Connect {self.maker}'s null_negative output to the target sampler's "
                f"negative (the target has {target.describe()}; the source had {self.structure.describe()})")
        raise FPEError(
            f"the target's conditioning does not pair with the source's entry by entry: the target sampler has "
            f"{target.describe()}; {self.maker} had {self.structure.describe()}. FPE pairs the i-th entry of each "
            f"side with the other's i-th: build both sides the same way (the same Conditioning (Combine) / Set Area / "
            f"Set Mask / timestep-range nodes; the prompt texts may differ)")

    def same_start(self, x: torch.Tensor, every_row: bool = False) -> bool:
        """Whether a target run's first model input is the source's (row 0, or row by row; with
        ``every_row`` a batch-1 source's row must start every target row, as in a settings sweep)."""
        mine = self.first_input
        if mine is None or x.ndim != mine.ndim or x.shape[1:] != mine.shape[1:]:
            return True  # nothing to compare: do not cry wolf
        if every_row and self.batch == 1:
            return torch.equal(x.detach().to("cpu"), mine[:1].expand_as(x))
        rows = min(x.shape[0], mine.shape[0]) if self.batch > 1 else 1
        return torch.equal(x[:rows].detach().to("cpu"), mine[:rows])

    def resolve(self, key: EvalKey, step: int) -> tuple[EvalKey, bool]:
        """The source evaluation chunk that pairs with the target's ``key``; True if it is a stand-in.

        A target that evaluates the model more often at one sigma than the source did (another
        multi-evaluation sampler, or a guidance node calling the model again) reuses the source's
        latest evaluation of the same entry there (else of the closest entry); the caller warns.
        Entries the source never had are caught by ``check_structure``. A sigma the source never
        visited is an error.
        """
        if key in self.evaluations:
            return key, False
        here = [k for k in self.evaluations if k.kind == key.kind and k.sigma == key.sigma]
        if here:
            def preference(k):
                return (k.entry == key.entry, k.entry[:2] == key.entry[:2], k.occurrence <= key.occurrence,
                        k.occurrence, k.entry[1])

            return max(here, key=preference), True
        raise FPEError(
            f"the target sampler evaluates the model ({kind_name(key.kind)} rows, step {step}) at "
            f"{self.describe_sigma(key.sigma)}, where the source run never did. Fix: {self.fix_schedule}.")

    def describe_sigma(self, skey) -> str:
        if skey is None:
            return "outside the schedule"
        if skey[0] == "s":
            return f"sigma #{skey[1]} ({self.schedule[skey[1]]:.6g})"
        return f"between sigmas #{skey[1]} and #{skey[1] + 1}"

    def source_input(self, key: EvalKey, step: int) -> SourceInput:
        """storage replay: the UNet inputs of the source evaluation chunk ``key``."""
        item = self.replay.get(key)
        if item is not None:
            return item
        raise FPEError(
            f"fpe_source holds no replay input for step {step}: raise {self.maker}'s store_end "
            f"({self.store_end}) to cover the inject's end")

    def stored(self, key: EvalKey, layer: LayerKey, step: int) -> torch.Tensor:
        layer_map = self.entries.get(key)
        if layer_map is not None and layer in layer_map:
            return layer_map[layer]
        raise FPEError(
            f"fpe_source holds no capture for layer {layer} at step {step}: raise {self.maker}'s "
            f"store settings (layers '{self.layer_setting}', store_end {self.store_end}) to cover the inject's")


def _final_zero(values: list[float]) -> list[float]:
    # uni_pc replaces a final sigma of 0 by 0.001 in place (current ComfyUI): the same schedule.
    if values and 0.0 < values[-1] <= 1.001e-3:
        return values[:-1] + [0.0]
    return values


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= SIGMA_RTOL * max(abs(a), abs(b)) + 1e-12


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))


def _fmt(values: list[float]) -> str:
    if len(values) > 6:
        head = ", ".join(f"{v:.4g}" for v in values[:3])
        tail = ", ".join(f"{v:.4g}" for v in values[-2:])
        return f"[{head}, ..., {tail}]"
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
