"""FPE on MMDiT models (Flux.1, SD3, SD3.5): the edit in the host's joint attention (issue 27).

The source's queries and keys come from its record (``dit_capture``: every block's image queries and keys of the
stored steps) or, replayed, from its rows run in the same model call as the target's (the Inject's UNet wrapper puts
them in front, as ``replay`` does for UNets). Two host hooks (``dit_hooks``) do the rest:

* ``dit`` replace patches on the chosen blocks (``("double_block", i)`` for Flux's double-stream and SD3's joint
  blocks, ``("single_block", i)`` for Flux's single-stream blocks) stamp the block into the transformer options
  the block's attention sees, chained with a replace patch another pack set there before;
* ComfyUI's ``optimized_attention_override`` slot then sees every attention call with q, k, v whole (Flux's after
  RoPE): in a stamped block of an edited step the target's rows attend with the source rows' queries and keys as
  the chosen mode defines it (``joint_attention``), everything else runs the host's kernel unchanged (through an
  override set before ours, e.g. a Sage/flash patch). The slot holds one function: ours calls the one it found,
  and one set after ours that drops ours is caught (the stamped blocks then see no edit) and named.

The run clock, run boundaries, schedule/latent/conditioning pairing checks and page warnings are the UNet
Inject's (``inject.InjectPatch``), unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ddim_guard import DDIMGuard
from .dit_blocks import PRESETS, DiTBlocks, preset_blocks
from .dit_hooks import OVERRIDE, heads_of, install, next_block, to_heads
from .dit_model import DiTLayout, require_dit
from .errors import FPEError
from .hooks import Shared, add_evaluation_end, add_run_hook
from .inject import InjectPatch, InjectWrapper, RowEdit, branch_kinds
from .joint_attention import MODES, image_map_attention, image_qk_attention, self_attention_fpe
from .layers import LayerSelectionError
from .local_edit import NoiseMaskHook
from .notify import warn
from .replay import extended_batch, unet_call_view
from .source import FPESource, describe_signature, model_signature, reject_chained_inject, weights_fingerprint
from .steps import step_window
from .sweep import combinations, labels_json, parse_sweep, sweep_number, value_label
from .validate import check_number


class JointAttentionOverride(Shared):
    """The ``optimized_attention_override``: FPE in the stamped blocks of edited steps, the host's kernel elsewhere."""

    fpe_inject = True  # marks an FPE edit on a model (a second FPE node on it is refused)

    def __init__(self, patch: DiTInjectPatch, previous=None):
        self.patch, self.previous = patch, previous

    def run(self, func, args, kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        key = next_block(kwargs.get("transformer_options"))  # this block's next attention call
        if key is None or key not in self.patch.layers:
            return self.run(func, args, kwargs)
        if self.patch.model_call is None:  # the Inject's model wrapper, which numbers the calls, did not run
            self.patch.close_run()
            raise FPEError("FPE MMDiT Inject's model wrapper did not run (a node applied after it replaced the "
                           "model's function wrapper, e.g. tiled diffusion), so the edit cannot tell its steps: "
                           "apply that node before FPE MMDiT Inject")
        try:
            return self.patch.edit_attention(key, func, args, kwargs, self.run)
        except BaseException:
            self.patch.close_run()
            raise


class DiTInjectPatch(InjectPatch):
    """The Inject's run logic with the MMDiT edit in place of the attn1 patch. The source's queries and keys come
    from its rows in the same model call (replay), or from its record (stored: image tokens only)."""

    def __init__(self, source: FPESource, layers: frozenset, window: tuple[int, int], kinds: frozenset[int],
                 layout: DiTLayout, mode: str, rows: tuple[RowEdit, ...] | None = None):
        super().__init__(source, layers, window, kinds, rows)
        self.layout = layout
        self.mode = mode
        self.override: JointAttentionOverride | None = None
        self.stamped: set = set()  # the chosen blocks that ran in an edited model call
        self.edited: set = set()  # ... and those whose attention the override saw
        self._tokens: tuple[int, int] | None = None  # (text, image) tokens of the model call in progress
        self._call = None  # the model call in progress (its evaluation and chunks)

    node_name = "FPE MMDiT Inject"

    @property
    def model_call(self):
        """The model call in progress (set by the Inject's model wrapper), None outside one."""
        return self.replay_call.call if self.replay_call is not None else self._call

    def note_stamp(self, key) -> None:
        if self._call is not None and self._call.step is not None and self._edits(self._call):
            self.stamped.add(key)

    def unet_call(self, apply_model, args):
        options = args["c"].get("transformer_options", {})
        if options.get(OVERRIDE) is None:
            self.close_run()
            raise FPEError("FPE MMDiT Inject: a node applied after it removed ComfyUI's attention override (the "
                           "slot FPE edits through): apply that node before FPE MMDiT Inject")
        x = args["input"]
        text = args["c"].get("c_crossattn")
        self._tokens = (int(text.shape[1]) if text is not None else 0,
                        self.layout.image_tokens(int(x.shape[-2]), int(x.shape[-1])))
        self.stamped, self.edited = set(), set()
        try:
            if x.shape[0] > 0:  # (an empty batch: the Inject's own check names it)
                self._call = self.clock.locate(unet_call_view(options, x), x.shape[0])
            out = super().unet_call(apply_model, args)
        except BaseException:  # (the Inject closes on its own errors; locating the call may fail first)
            self.close_run()
            raise
        finally:
            self._tokens, self._call = None, None
        # every chosen block that ran in an edited call must have been seen by our override
        if self.stamped - {("joint" if kind == "self" else kind, i) for kind, i in self.edited}:
            self.close_run()
            raise FPEError(
                "FPE MMDiT Inject: the edited blocks ran without FPE's attention override: a node applied after FPE "
                "MMDiT Inject replaced it (e.g. a Sage / flash attention patch). Apply that node before FPE MMDiT "
                "Inject (FPE then runs its kernel for everything it does not edit)")
        return out

    def _extended(self, args, call, inputs):
        """Source rows in front; MMDiT text tokens are keys of the joint softmax, so both sides' prompts must encode
        to the same token count (the host's repeat-to-a-common-length batching would reweight them)."""
        target = args["c"].get("c_crossattn")
        for _, source_input in inputs:
            text = source_input.cond.get("c_crossattn")
            if text is not None and target is not None and text.shape[1] != target.shape[1]:
                raise FPEError(
                    f"the source prompt encodes to {text.shape[1]} text tokens, the target's model call holds "
                    f"{target.shape[1]} (ComfyUI pads the prompts of one call, positive and negative, to a common "
                    f"length): in an MMDiT the text tokens share the image's softmax, so a replayed source cannot share "
                    f"that call. Keep every prompt under the text encoder's padded length (shorten the longest), or "
                    f"let the capture keep a record (storage auto with a lower store_end, or cpu)")
        return extended_batch(args, call, inputs, self.source.maker)

    def edit_attention(self, key, func, args, kwargs, run):
        """One attention call of a chosen block: in an edited step the target rows take the source's queries and
        keys (the source rows of this call, or the record); everything else runs the host's kernel."""
        call = self.replay_call.call if self.replay_call is not None else self._call
        if call is None or not self._edits(call):
            return run(func, args, kwargs)
        self.edited.add(key)
        q, k, v = args[:3]
        kw = {name: value for name, value in kwargs.items() if name not in ("heads", "num_heads")}
        if kw.get("mask") is not None:
            raise FPEError("FPE MMDiT Inject: this model call carries an attention mask (a masked or regional "
                           "conditioning), which the edit does not support yet: remove the mask from the prompts")
        q, k, v = to_heads(q, k, v, heads_of(args, kwargs), not kw.get("skip_reshape", False))
        kw.update(skip_reshape=True, skip_output_reshape=True, mask=None)

        def kernel(qq, kk, vv):  # the host's attention (and an override found before ours) on [B, H, L, D]
            return run(func, (qq, kk, vv, qq.shape[1]), kw)

        img = self._image_slice(key, q.shape[2])
        targets, q_s, k_s = (self._replayed(key, q, k) if self.replay_call is not None
                             else self._stored(key, call, q, k, img))
        if not targets:
            return run(func, args, kwargs)
        edited = torch.zeros(q.shape[0], dtype=torch.bool)
        edited[targets] = True
        target_rows = torch.tensor(targets, device=q.device)
        out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=v.dtype, device=v.device)
        plain = (~edited).nonzero().flatten().to(q.device)
        if plain.numel():
            out[plain] = kernel(q[plain], k[plain], v[plain])
        q_t, k_t, v_t = q[target_rows], k[target_rows], v[target_rows]
        if key[0] == "self":
            out[target_rows] = self_attention_fpe(q_s, k_s, v_t, kernel)
        elif self.mode == "image map":
            out[target_rows] = image_map_attention(q_t, k_t, v_t, q_s, k_s, img, kernel)
        else:
            out[target_rows] = image_qk_attention(q_t, k_t, v_t, q_s, k_s, img, kernel)
        if kwargs.get("skip_output_reshape", False):
            return out
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)  # the host's [B, L, H·D]

    def _replayed(self, key, q, k):
        """Replay: (edited target rows, the source rows' q and k) of this extended call."""
        replay = self.replay_call
        picked = self._rows_at(replay.call.step, key)  # a sweep: the images whose setting edits here
        pairs = []
        for t, s in replay.pairs:
            rows = range(t.stop - t.start) if picked is None else picked
            pairs += [(replay.source_rows + t.start + r, s.start + r) for r in rows]
        sources = torch.tensor([s for _, s in pairs], dtype=torch.long, device=q.device)
        return [t for t, _ in pairs], q[sources], k[sources]

    def _stored(self, key, call, q, k, img):
        """Stored: (edited target rows, their q and k with the recorded source's in the image tokens)."""
        picked = self._rows_at(call.step, key)
        targets, q_s, k_s = [], [], []
        for chunk in call.chunks:
            if chunk.kind not in self.kinds:
                continue
            record = self.source.stored(self._source_key(chunk, call), key, call.step)  # [2, rows, H, image, D]
            count = chunk.rows.stop - chunk.rows.start
            rows = list(range(count)) if picked is None else picked
            if record.shape[1] not in (1, count):
                self.source.check_latent((count, 0) + tuple(self.source.latent_shape[2:]))
            if record.shape[2:] != (q.shape[1], img.stop - img.start, q.shape[3]):
                raise FPEError(f"the target's attention at block {key[0]}{key[1]} has {q.shape[1]} heads x "
                               f"{img.stop - img.start} image tokens, the source's record {record.shape[2]} x "
                               f"{record.shape[3]}: give the target sampler a latent of the capture's size")
            for r in rows:
                targets.append(chunk.rows.start + r)
                q_row, k_row = q[chunk.rows.start + r].clone(), k[chunk.rows.start + r].clone()
                src = record[:, 0 if record.shape[1] == 1 else r].to(device=q.device, dtype=q.dtype)
                q_row[:, img], k_row[:, img] = src[0], src[1]
                q_s.append(q_row)
                k_s.append(k_row)
        if not targets:
            return [], None, None
        return targets, torch.stack(q_s), torch.stack(k_s)

    def _image_slice(self, key, length: int) -> slice:
        """Where the image tokens sit in this block's sequence: Flux [text | image | references], SD3 [registers |
        text | image]; MMDiT-X's self-attention sees the image alone."""
        text, image = self._tokens
        if key[0] == "self":
            return slice(0, length)
        if self.layout.flux:
            if length < text + image:
                raise FPEError(f"FPE MMDiT Inject: block {key[0]}{key[1]} attends over {length} tokens, fewer than the "
                               f"prompt's {text} and the image's {image}: a patch changes the token layout")
            return slice(text, text + image)
        if length != self.layout.registers + text + image:
            raise FPEError(f"FPE MMDiT Inject: block {key[0]}{key[1]} attends over {length} tokens, not the "
                           f"{self.layout.registers} registers, {text} text and {image} image tokens SD3 lays out: a "
                           f"patch changes the token layout")
        return slice(length - image, length)


@dataclass(frozen=True)
class DiTSweepSetting:
    """One image's setting of an MMDiT sweep."""

    start: float
    end: float
    blocks: frozenset
    label: str


def plan_dit_sweep(table: DiTBlocks, text: str, *, blocks: frozenset, blocks_label: str, start: float, end: float,
                   custom_blocks: str) -> tuple[list[DiTSweepSetting] | None, str]:
    """The ``sweep`` text (the UNet Inject's syntax: start, end and layers, here block presets or quoted block lists
    such as layers="double0-18",all) -> (one setting per image or None, the FPE_SWEEP_LABELS output)."""
    axes = parse_sweep(text or "")
    single = f"end={end:g}, blocks={blocks_label}"
    if not axes:
        return None, labels_json(axes, single)
    chosen: dict[str, frozenset] = {}

    def resolve(value: str) -> frozenset:
        if value not in chosen:
            preset, custom = (value, custom_blocks) if value in PRESETS else ("custom", value)
            try:
                chosen[value] = preset_blocks(preset, table, custom)
            except LayerSelectionError as exc:
                raise FPEError(f"sweep: layers value {value[:24]!r}: {exc}") from None
        return chosen[value]

    settings = []
    for combo in combinations(axes):
        settings.append(DiTSweepSetting(
            start=sweep_number("start", combo["start"]) if "start" in combo else start,
            end=sweep_number("end", combo["end"]) if "end" in combo else end,
            blocks=resolve(combo["layers"]) if "layers" in combo else blocks,
            label=", ".join(value_label(name, value) for name, value in combo.items())))
    return settings, labels_json(axes, single)


def dit_window(source: FPESource, start: float, end: float, prefix: str = "", warn_off: bool = True) -> tuple[int, int]:
    start, end = check_number("start", start, 0.0, 1.0), check_number("end", end, 0.0, 1.0)
    if start > end:
        raise FPEError(f"{prefix}start ({start}) is after end ({end}): set start below end (start = end turns the "
                       f"edit off)")
    window = step_window(source.steps, start, end)
    first, stop = source.stored_window
    if window[0] < window[1] and not (first <= window[0] and window[1] <= stop):
        raise FPEError(f"{prefix}end {end} edits steps {window[0]}..{window[1] - 1} of {source.steps}, but "
                       f"{source.maker} kept steps {first}..{stop - 1} (store_end {source.store_end}): raise the "
                       f"capture's store_end to at least {end} or lower the inject's end")
    if window[0] >= window[1] and start < end and warn_off:
        warn("the edit is off", f"start {start} / end {end} edit no step of {source.steps} (the window truncates to "
                                f"{window})")
    return window


def inject_dit_model(model, source: FPESource, *, blocks: frozenset, start: float, end: float, mode: str = "image map",
                     branches: str = "cond only", sweep: list[DiTSweepSetting] | None = None):
    """A clone of an MMDiT ``model`` that edits its samples with ``source``; checks everything it can first.
    ``sweep``: one setting per target image (a batch of len(sweep) images), as FPE Self-Attn Inject's."""
    node = "FPE MMDiT Inject"
    layout = require_dit(model, node)
    if not isinstance(source, FPESource):
        raise FPEError("fpe_source: connect the FPE_SOURCE output of FPE Source Capture or FPE Flow Invert")
    source.require_complete()
    reject_chained_inject(model, node)
    signature = model_signature(model)
    if signature != source.signature:
        raise FPEError(f"model: fpe_source was captured with {describe_signature(source.signature)}, but this model is "
                       f"{describe_signature(signature)}: give {node} the model the capture used")
    if source.weights and weights_fingerprint(model) != source.weights:
        warn("another model than the capture's", f"{node} gets another checkpoint or other LoRAs than {source.maker} "
                                                  f"used (the source rows are re-run with this model); give both the "
                                                  f"same model unless that is what you want")
    if mode not in MODES:
        raise FPEError(f"mode: unknown value {mode!r}; choose one of {', '.join(MODES)}")
    kinds = branch_kinds(source, branches)
    unknown = set(blocks) - layout.blocks.keys()
    if not blocks or unknown:
        raise FPEError(f"blocks: {sorted(unknown) if unknown else 'nothing'} selected; this {layout.family} model "
                       f"has {layout.blocks.describe()}")
    rows = None
    if sweep:
        rows = tuple(RowEdit(dit_window(source, s.start, s.end, f"sweep: {s.label}: ", warn_off=len(sweep) == 1),
                             frozenset(s.blocks), s.label) for s in sweep)
        blocks = frozenset().union(*(row.layers for row in rows))
        window = (min(row.window[0] for row in rows), max(row.window[1] for row in rows))
        if len(rows) == 1:  # exactly the plain edit with that setting
            rows = None
    else:
        window = dit_window(source, start, end)
    patch = DiTInjectPatch(source, frozenset(blocks), window, kinds, layout, mode, rows)
    patched = model.clone()
    patched.set_model_unet_function_wrapper(InjectWrapper(patch, patched.model_options.get("model_function_wrapper")))
    patch.override = install(patched, blocks, lambda previous: JointAttentionOverride(patch, previous),
                             on_stamp=patch.note_stamp)
    announced = add_run_hook(patched, patch.begin_run)
    patch.by_order = not announced
    add_evaluation_end(patched, patch.end_evaluation)
    if source.inverted:  # a real photo (FPE Flow Invert): the target must start on its noise and take Euler steps
        patched.set_model_denoise_mask_function(
            NoiseMaskHook(patch, patched.model_options.get("denoise_mask_function")))
        add_evaluation_end(patched, DDIMGuard(source))  # last: it checks the denoised result the sampler uses
    return patched


def table_of(model) -> DiTBlocks:
    return require_dit(model, "FPE MMDiT Inject").blocks


def choose_blocks(model, preset: str, custom: str) -> tuple[frozenset, str]:
    """FPE MMDiT Inject's block choice resolved for ``model``: (block keys, its label for titles). An error names
    the input that holds the problem: ``custom_blocks`` for 'custom', else ``blocks``."""
    try:
        keys = preset_blocks(preset, table_of(model), custom)
    except LayerSelectionError as exc:
        raise FPEError(f"{'custom_blocks' if preset == 'custom' else 'blocks'}: {exc}") from None
    return keys, (custom if preset == "custom" else preset)
