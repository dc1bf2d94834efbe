"""Which MMDiT blocks an edit acts in: a DiT's block table, the presets and the block-list syntax
(issue 27, host-free so far; the host integration will build the table from the loaded model).

Block kinds, named as ComfyUI's ``dit`` replace patches name them:

* ``double`` – Flux's double-stream blocks (text and image streams, one joint attention);
* ``single`` – Flux's single-stream blocks (one stream, [text | image] tokens);
* ``joint`` – SD3 / SD3.5's joint blocks;
* ``self`` – SD3.5-Medium's image-only self-attention inside its first joint blocks (MMDiT-X), where
  FPE is the UNet operation.

A list reads like the UNet one: ``double3``, ``double0-18``, ``single10-20``, ``joint5``, ``self0-12``, a
kind alone for all of its blocks, items separated by commas or spaces.

The default step window follows the published evidence for MMDiT editing (Shin et al., ICCV 2025: the
source's image queries and keys for the first 20 % of the steps, ``replace_steps=0.2``); FPE's 80 % on
UNets has no counterpart there, so it is not carried over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .layers import LayerSelectionError

KINDS = ("double", "single", "joint", "self")
DEFAULT_WINDOW = (0.0, 0.2)  # start, end: Shin et al.'s replace_steps
# The published block choices: "all" is Shin et al.'s (every joint attention; SD3.5-M's image-only attn2 left
# alone), "single-stream only" ConsistEdit's on Flux, "late single-stream" RF-Solver-Edit's (Flux single blocks
# 20-37; they inject V there, FPE the map).
PRESETS = ("all", "double-stream only", "single-stream only", "late single-stream", "image self-attention", "custom")
MAX_LIST_CHARS = 1000
_ITEM = re.compile(r"^(?P<kind>[a-z]+)(?:(?P<a>\d{1,6})(?:-(?P<b>\d{1,6}))?)?$")

BlockKey = tuple[str, int]  # (kind, index): the key of ComfyUI's dit replace patch ("double_block", i) etc.


@dataclass(frozen=True)
class DiTBlocks:
    """A DiT's attention blocks by kind: kind -> the block indices that hold one."""

    family: str
    blocks: dict

    def keys(self, kinds=KINDS) -> frozenset:
        return frozenset((kind, i) for kind in kinds for i in self.blocks.get(kind, ()))

    def describe(self) -> str:
        parts = []
        for kind in KINDS:
            indices = sorted(self.blocks.get(kind, ()))
            if indices:
                parts.append(f"{kind}{indices[0]}-{indices[-1]}" if len(indices) > 1 else f"{kind}{indices[0]}")
        return ", ".join(parts)


def flux_blocks(double: int = 19, single: int = 38) -> DiTBlocks:
    return DiTBlocks("Flux", {"double": tuple(range(double)), "single": tuple(range(single))})


def sd3_blocks(depth: int, self_attention: tuple[int, ...] = ()) -> DiTBlocks:
    """SD3 / SD3.5 (``depth`` joint blocks; SD3.5-Medium's MMDiT-X image self-attention in ``self_attention``)."""
    blocks = {"joint": tuple(range(depth))}
    if self_attention:
        blocks["self"] = tuple(self_attention)
    return DiTBlocks("SD3.5-M" if self_attention else "SD3", blocks)


def preset_blocks(preset: str, table: DiTBlocks, custom: str = "") -> frozenset:
    """The block keys of a preset (or of the custom list); an error names what this model has."""
    if preset == "all":  # every joint attention; the MMDiT-X self-attention is its own choice
        keys = table.keys(("double", "single", "joint"))
    elif preset == "double-stream only":
        keys = table.keys(("double", "joint"))  # SD3's joint blocks are double-stream blocks
    elif preset == "single-stream only":
        keys = table.keys(("single",))
    elif preset == "late single-stream":  # the last 18 of Flux's 38 (blocks 20-37)
        singles = table.blocks.get("single", ())
        keys = frozenset(("single", i) for i in singles if i >= len(singles) - 18)
    elif preset == "image self-attention":
        keys = table.keys(("self",))
    elif preset == "custom":
        return parse_dit_blocks(custom, table)
    else:
        raise LayerSelectionError(f"unknown block preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not keys:
        raise LayerSelectionError(f"preset {preset!r} selects no block of this {table.family} model (its blocks: "
                                  f"{table.describe()})")
    return keys


def parse_dit_blocks(text: str, table: DiTBlocks) -> frozenset:
    """Resolve a block list such as 'double3, single10-20' against ``table``; every item must select something."""
    if len(text) > MAX_LIST_CHARS:
        raise LayerSelectionError(f"the block list is {len(text)} characters long (at most {MAX_LIST_CHARS}): name "
                                  f"blocks such as 'double0-18' or 'joint5'")
    items = [item for item in re.split(r"[\s,;]+", text.strip().lower()) if item]
    if not items:
        raise LayerSelectionError(f"the block list is empty: name blocks such as {table.describe()}")
    selected: set = set()
    for item in items:
        shown = repr(item if len(item) <= 24 else item[:24] + "...")
        match = _ITEM.match(item)
        if match is None:
            raise LayerSelectionError(f"cannot read block item {shown}: use a kind and numbers, e.g. double3, "
                                      f"single10-20, joint5 (this model: {table.describe()})")
        kind, a, b = match["kind"], match["a"], match["b"]
        if kind not in table.blocks:
            raise LayerSelectionError(f"block item {shown}: this {table.family} model has no {kind!r} blocks (its "
                                      f"blocks: {table.describe()})")
        available = table.blocks[kind]
        if a is None:
            selected |= {(kind, i) for i in available}
            continue
        lo, hi = int(a), int(b) if b is not None else int(a)
        if hi < lo:
            raise LayerSelectionError(f"block item {shown}: range {lo}-{hi} runs backwards")
        hit = {(kind, i) for i in available if lo <= i <= hi}
        if hi > max(available) or not hit:
            raise LayerSelectionError(f"block item {shown}: this model's {kind} blocks are "
                                      f"{min(available)}-{max(available)} ({table.describe()})")
        selected |= hit
    return frozenset(selected)
