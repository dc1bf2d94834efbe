"""FPE on MMDiT models (Flux.1, SD3, SD3.5): the edit in the host's joint attention (issue 27).

The source replays (``dit_capture``): in an edited step the source's rows run in the same model call as the
target's (the Inject's UNet wrapper puts them in front, as ``replay`` does for UNets). Two host hooks finish it:

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

import torch

from .ddim_guard import DDIMGuard
from .dit_blocks import DiTBlocks
from .dit_model import DiTLayout, require_dit
from .errors import FPEError
from .evaluations import UNCOND
from .hooks import Shared, add_evaluation_end, add_run_hook
from .inject import BRANCHES, InjectPatch, InjectWrapper
from .joint_attention import MODES, image_map_attention, image_qk_attention, self_attention_fpe
from .local_edit import NoiseMaskHook
from .notify import warn
from .replay import extended_batch
from .source import FPESource, describe_signature, model_signature, reject_chained_inject, weights_fingerprint
from .steps import step_window
from .validate import check_number

STAMP = "fpe_dit_block"  # transformer_options key: the block whose attention runs now
OVERRIDE = "optimized_attention_override"
REPLACE_NAME = {"double": "double_block", "single": "single_block", "joint": "double_block", "self": "double_block"}


class BlockStamp(Shared):
    """A ``dit`` replace patch: runs the block (or the patch found there) with the block's key in its options."""

    def __init__(self, patch: DiTInjectPatch, kind: str, index: int, previous=None):
        self.patch, self.kind, self.index, self.previous = patch, kind, index, previous

    def __call__(self, args, extra):
        options = dict(args.get("transformer_options") or {})
        # SD3's joint blocks: the joint attention first, then (SD3.5-M's MMDiT-X blocks) the image self-attention
        kinds = ["joint", "self"] if self.kind in ("joint", "self") else [self.kind]
        options[STAMP] = {"index": self.index, "kinds": kinds}
        if self.patch.replay_call is not None:
            self.patch.stamped.add((kinds[0], self.index))
        args = dict(args, transformer_options=options)
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


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
        options = kwargs.get("transformer_options") or {}
        stamp = options.get(STAMP)
        if stamp is None or self.patch.replay_call is None or not stamp["kinds"]:
            return self.run(func, args, kwargs)
        key = (stamp["kinds"].pop(0), stamp["index"])  # this block's next attention call
        if key not in self.patch.layers:
            return self.run(func, args, kwargs)
        try:
            return self.patch.edit_attention(key, func, args, kwargs, self.run)
        except BaseException:
            self.patch.close_run()
            raise


class DiTInjectPatch(InjectPatch):
    """The Inject's run logic with the MMDiT edit in place of the attn1 patch."""

    def __init__(self, source: FPESource, layers: frozenset, window: tuple[int, int], kinds: frozenset[int],
                 layout: DiTLayout, mode: str):
        super().__init__(source, layers, window, kinds)
        self.layout = layout
        self.mode = mode
        self.override: JointAttentionOverride | None = None
        self.stamped: set = set()  # the selected blocks that ran in the extended call in progress
        self.edited: set = set()  # ... and those whose attention the override edited
        self._tokens: tuple[int, int] | None = None  # (text, image) tokens of the extended call

    def unet_call(self, apply_model, args):
        options = args["c"].get("transformer_options", {})
        if options.get(OVERRIDE) is None:
            self.close_run()
            raise FPEError("FPE MMDiT Inject: a node applied after it removed ComfyUI's attention override (the "
                           "slot FPE edits through): apply that node before FPE MMDiT Inject")
        self.stamped, self.edited = set(), set()
        try:
            out = super().unet_call(apply_model, args)
        finally:
            self._tokens = None
        # every chosen block that ran in an extended call must have been edited through our override
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
        c = args["c"]
        target = c.get("c_crossattn")
        for _, source_input in inputs:
            text = source_input.cond.get("c_crossattn")
            if text is not None and target is not None and text.shape[1] != target.shape[1]:
                raise FPEError(
                    f"the source prompt encodes to {text.shape[1]} text tokens, the target's to {target.shape[1]}: in "
                    f"an MMDiT the text tokens share the image's softmax, so the two cannot share a model call. Keep "
                    f"both prompts under the text encoder's padded length (shorten the longer one)")
        height, width = int(args["input"].shape[-2]), int(args["input"].shape[-1])
        self._tokens = (int(target.shape[1]) if target is not None else 0, self.layout.image_tokens(height, width))
        return extended_batch(args, call, inputs, self.source.maker)

    def edit_attention(self, key, func, args, kwargs, run):
        """One attention call of an edited block: the target rows take the source rows' queries and keys."""
        replay = self.replay_call
        q, k, v = args[:3]
        kw = {name: value for name, value in kwargs.items() if name != "heads"}
        heads = args[3] if len(args) > 3 else kwargs.get("heads", kwargs.get("num_heads"))
        if kw.get("mask") is not None:
            raise FPEError("FPE MMDiT Inject: this model call carries an attention mask (a masked or regional "
                           "conditioning), which the edit does not support yet: remove the mask from the prompts")
        split = not kw.get("skip_reshape", False)
        if split:  # SD3: [B, L, H·D] -> [B, H, L, D]
            rows, length, width = q.shape
            q, k, v = (t.view(rows, -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        kw.update(skip_reshape=True, skip_output_reshape=True, mask=None)

        def kernel(qq, kk, vv):  # the host's attention (and an override found before ours) on [B, H, L, D]
            return run(func, (qq, kk, vv, qq.shape[1]), kw)

        img = self._image_slice(key, q.shape[2])
        skip = replay.source_rows
        edited = torch.zeros(q.shape[0], dtype=torch.bool)
        pairs = [(slice(skip + t.start, skip + t.stop), s) for t, s in replay.pairs]
        for target, _ in pairs:
            edited[target] = True
        out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=v.dtype, device=v.device)
        plain = (~edited).nonzero().flatten().to(q.device)
        out[plain] = kernel(q[plain], k[plain], v[plain])
        for target, source in pairs:
            q_t, k_t, v_t, q_s, k_s = q[target], k[target], v[target], q[source], k[source]
            if key[0] == "self":
                out[target] = self_attention_fpe(q_s, k_s, v_t, kernel)
            elif self.mode == "image map":
                out[target] = image_map_attention(q_t, k_t, v_t, q_s, k_s, img, kernel)
            else:
                out[target] = image_qk_attention(q_t, k_t, v_t, q_s, k_s, img, kernel)
        self.edited.add(key)
        if kwargs.get("skip_output_reshape", False):
            return out
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)  # the host's [B, L, H·D]

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


def dit_window(source: FPESource, start: float, end: float) -> tuple[int, int]:
    start, end = check_number("start", start, 0.0, 1.0), check_number("end", end, 0.0, 1.0)
    if start > end:
        raise FPEError(f"start ({start}) is after end ({end}): set start below end (start = end turns the edit off)")
    window = step_window(source.steps, start, end)
    first, stop = source.stored_window
    if window[0] < window[1] and not (first <= window[0] and window[1] <= stop):
        raise FPEError(f"end {end} edits steps {window[0]}..{window[1] - 1} of {source.steps}, but {source.maker} "
                       f"kept steps {first}..{stop - 1} (store_end {source.store_end}): raise the capture's store_end "
                       f"to at least {end} or lower the inject's end")
    if window[0] >= window[1] and start < end:
        warn("the edit is off", f"start {start} / end {end} edit no step of {source.steps} (the window truncates to "
                                f"{window})")
    return window


def inject_dit_model(model, source: FPESource, *, blocks: frozenset, start: float, end: float, mode: str = "image map",
                     branches: str = "cond only"):
    """A clone of an MMDiT ``model`` that edits its samples with ``source``; checks everything it can first."""
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
    if source.replay is None:
        raise FPEError(f"fpe_source: {node} needs a replay source (FPE Source Capture on this MMDiT keeps one)")
    if source.weights and weights_fingerprint(model) != source.weights:
        warn("another model than the capture's", f"{node} gets another checkpoint or other LoRAs than {source.maker} "
                                                  f"used (the source rows are re-run with this model); give both the "
                                                  f"same model unless that is what you want")
    if mode not in MODES:
        raise FPEError(f"mode: unknown value {mode!r}; choose one of {', '.join(MODES)}")
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
    unknown = set(blocks) - layout.blocks.keys()
    if not blocks or unknown:
        raise FPEError(f"blocks: {sorted(unknown) if unknown else 'nothing'} selected; this {layout.family} model "
                       f"has {layout.blocks.describe()}")
    window = dit_window(source, start, end)
    patch = DiTInjectPatch(source, frozenset(blocks), window, kinds, layout, mode)
    patched = model.clone()
    patched.set_model_unet_function_wrapper(InjectWrapper(patch, patched.model_options.get("model_function_wrapper")))
    options = dict(patched.model_options.get("transformer_options", {}))
    patch.override = JointAttentionOverride(patch, options.get(OVERRIDE))
    options[OVERRIDE] = patch.override
    patched.model_options["transformer_options"] = options
    found = options.get("patches_replace", {}).get("dit", {})
    for index in sorted({i for _, i in blocks}):
        for kind in {kind for kind, i in blocks if i == index}:
            name = REPLACE_NAME[kind]
            stamp_kind = "joint" if kind == "self" else kind
            if isinstance(found.get((name, index)), BlockStamp):
                continue
            patched.set_model_patch_replace(BlockStamp(patch, stamp_kind, index, found.get((name, index))), "dit",
                                            name, index)
            found = patched.model_options["transformer_options"]["patches_replace"]["dit"]
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
