"""The two host hooks FPE sets on an MMDiT (current ComfyUI's public model-patch API), shared by the capture and
the edit:

* ``dit`` replace patches (``("double_block", i)``: Flux's double-stream and SD3's joint blocks;
  ``("single_block", i)``: Flux's single-stream blocks), chained with a patch found there, run the block with its
  key stamped into a copy of the transformer options its attention receives (SD3 sets no block index);
* the ``optimized_attention_override`` slot, which sees every attention call with q, k, v whole. It holds one
  function: ours keeps the one it found and calls it for everything it leaves alone.
"""

from __future__ import annotations

from .hooks import Shared

STAMP = "fpe_dit_block"  # transformer_options key: the block whose attention runs now
OVERRIDE = "optimized_attention_override"
REPLACE_NAME = {"double": "double_block", "single": "single_block", "joint": "double_block", "self": "double_block"}


class BlockStamp(Shared):
    """A ``dit`` replace patch: runs the block (or the patch found there) with the block's key in its options;
    ``on_stamp(key)`` hears of every run of the block."""

    def __init__(self, kind: str, index: int, previous=None, on_stamp=None):
        self.kind, self.index, self.previous, self.on_stamp = kind, index, previous, on_stamp

    def __call__(self, args, extra):
        options = dict(args.get("transformer_options") or {})
        # SD3's joint blocks: the joint attention first, then (SD3.5-M's MMDiT-X blocks) the image self-attention
        kinds = ["joint", "self"] if self.kind in ("joint", "self") else [self.kind]
        options[STAMP] = {"index": self.index, "kinds": kinds}
        if self.on_stamp is not None:
            self.on_stamp((kinds[0], self.index))
        args = dict(args, transformer_options=options)
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


def next_block(options: dict):
    """The (kind, index) of the attention call in progress, or None outside a stamped block."""
    stamp = (options or {}).get(STAMP)
    if stamp is None or not stamp["kinds"]:
        return None
    return stamp["kinds"].pop(0), stamp["index"]


def install(patched, blocks, override_of, on_stamp=None):
    """Stamp ``blocks`` ((kind, index) keys) on ``patched`` and put ``override_of(previous override)`` in the slot."""
    options = dict(patched.model_options.get("transformer_options", {}))
    override = override_of(options.get(OVERRIDE))
    options[OVERRIDE] = override
    patched.model_options["transformer_options"] = options
    done = set()
    for kind, index in sorted(blocks):
        name = REPLACE_NAME[kind]
        if (name, index) in done:  # SD3: one stamp serves a block's joint and self-attention
            continue
        found = patched.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        stamp_kind = "joint" if kind == "self" else kind
        patched.set_model_patch_replace(BlockStamp(stamp_kind, index, found.get((name, index)), on_stamp), "dit",
                                        name, index)
        done.add((name, index))
    return override


def to_heads(q, k, v, heads: int, flat: bool):
    """[B, L, H·D] (SD3) -> [B, H, L, D]; Flux's are already per head."""
    if not flat:
        return q, k, v
    rows, _, width = q.shape
    return tuple(t.view(rows, -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))


def heads_of(args, kwargs) -> int:
    return args[3] if len(args) > 3 else kwargs.get("heads", kwargs.get("num_heads"))
