"""Which self-attention (attn1) layers an edit touches.

A layer is identified as ComfyUI's attention patches see it: ``(block_name, block_id,
block_index)``, e.g. ``("input", 4, 0)``; ``block_index`` is the transformer layer inside one
SpatialTransformer (always 0 in SD1.5, 0..9 in SDXL's deep blocks).

Selections:

* ``official``: every attn1 layer whose query token count is <= 32x32 at the current resolution,
  the rule in the authors' code (it depends on the image size: 11 of 16 SD1.5 layers at 512 px;
  at SDXL 1024 px the 32x32 level only; at SD2 768 px the 24x24 and 12x12 levels only).
* ``official relative``: the levels the official rule keeps for SD1.5 at 512 px, whatever the
  size and model: every attention level but the highest-resolution one (not the authors' code;
  it keeps the paper's setting at 768 px SD2 or 1536 px SDXL, where the absolute rule keeps less).
* ``paper 4-14``: attn1 layers 4..14 of SD1.5's 16, numbered 1..16 in forward order
  (down -> mid -> up), as the paper words it (SD1.x only).
* ``all``: every attn1 layer.
* ``custom``: a block list such as ``in4,in5,mid0,out3-8``, ``in7.0-4`` (transformer layers 0..4
  of input block 7) or ``#4-14`` (forward-order layer numbers, 1-based), validated against the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .architecture import family, transformer_layers, unet_of
from .errors import FPEError

LayerKey = tuple[str, int, int]

PRESETS = ("official", "official relative", "paper 4-14", "all", "custom")
OFFICIAL_MAX_TOKENS = 32 * 32
# The official layers of SD1.5 at 512 px as a block list: the custom-list widgets' default.
OFFICIAL_CUSTOM = "in4,in5,in7,in8,mid0,out3-8"

_BLOCK_ALIASES = {"in": "input", "input": "input", "down": "input", "mid": "middle", "middle": "middle",
                  "out": "output", "output": "output", "up": "output"}
_SHORT = {"input": "in", "middle": "mid", "output": "out"}


@dataclass(frozen=True)
class Attn1Layer:
    key: LayerKey
    number: int  # 1-based forward order among all attn1 layers
    level: int  # number of 2x downsamplings before this layer (token grid = latent / 2**level)
    channels: int = 0  # width of the layer input (heads * dim_head)
    heads: int = 0

    def tokens(self, latent_h: int, latent_w: int) -> int:
        h, w = latent_h, latent_w
        for _ in range(self.level):  # stride-2 conv with padding 1: ceil(x / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        return h * w

    @property
    def name(self) -> str:
        return key_name(self.key)


def key_name(key: LayerKey) -> str:
    """A layer's name in the block list syntax: in4.0, mid0.0, out3.1 (block, index, transformer depth)."""
    block, block_id, index = key
    return f"{_SHORT[block]}{block_id}.{index}"


def model_attn1_layers(model) -> list[Attn1Layer]:
    """The attn1 layers of a ComfyUI MODEL (an FPEError naming the model if it is no UNet)."""
    return unet_attn1_layers(unet_of(model))


def unet_attn1_layers(diffusion_model) -> list[Attn1Layer]:
    """The attn1 layers of a ComfyUI ``UNetModel``, in forward order, read from its modules."""
    if not all(hasattr(diffusion_model, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        raise FPEError(
            f"model: FPE edits the self-attention of UNet models (SD1.x, SD2.x, SDXL); this model's backbone is "
            f"{type(diffusion_model).__name__}")
    layers: list[Attn1Layer] = []
    for key, transformer, level in transformer_layers(diffusion_model):
        attn1 = transformer.attn1
        layers.append(Attn1Layer(key, len(layers) + 1, level, attn1.to_q.in_features, getattr(attn1, "heads", 0)))
    return layers


def layer_key(extra_options: dict) -> LayerKey:
    """The key of the attn1 layer an attention patch is running in."""
    block = extra_options["block"]
    return (block[0], block[1], extra_options["block_index"])


class LayerSelectionError(ValueError):
    pass


_ITEM = re.compile(
    r"^(?:#(?P<n0>\d+)?(?:-(?P<n1>\d+))?"
    r"|(?P<block>[a-z]+)(?P<i0>\d+)?(?:-(?P<i1>\d+))?(?:\.(?P<j0>\d+)?(?:-(?P<j1>\d+))?)?)$"
)
MAX_LIST_CHARS = 1000  # a block list is a few dozen characters; anything longer is a pasted mistake
MAX_ITEM_CHARS = 24


def _shown(item: str) -> str:
    return repr(item) if len(item) <= MAX_ITEM_CHARS else repr(item[:MAX_ITEM_CHARS] + "...")


def _span(item: str, lo: str | None, hi: str | None, what: str, last: int) -> range | None:
    """The numbers ``lo``-``hi`` of an item, checked against the model's ``last`` one."""
    if lo is None and hi is None:
        return None
    if lo is None:
        raise LayerSelectionError(f"layer item {_shown(item)}: a range needs both ends, e.g. 4-8")
    past = (f"this model has attn1 layers #1-#{last} only" if what == "#"
            else f"{what} numbers go up to {last} in this model")
    if len(lo) > 6 or (hi is not None and len(hi) > 6):
        raise LayerSelectionError(f"layer item {_shown(item)}: {past}")
    a, b = int(lo), int(hi) if hi is not None else int(lo)
    if b < a:
        raise LayerSelectionError(f"layer item {_shown(item)}: range {a}-{b} runs backwards")
    if b > last or (what == "#" and a < 1):
        raise LayerSelectionError(f"layer item {_shown(item)}: {past}")
    return range(a, b + 1)


def parse_block_list(text: str, layers: list[Attn1Layer]) -> set[LayerKey]:
    """Resolve a custom block list against the model's layers; every item must select something.
    Every error ends with the model's attention blocks, so the fix is in the message."""
    available = ", ".join(_available_blocks(layers))
    try:
        return _parse_block_list(text, layers, available)
    except LayerSelectionError as exc:
        if "attention blocks are" in str(exc):
            raise
        raise LayerSelectionError(f"{exc}; this model's attention blocks are: {available} "
                                  f"(#1-#{len(layers)} in forward order)") from None


def _parse_block_list(text: str, layers: list[Attn1Layer], available: str) -> set[LayerKey]:
    if len(text) > MAX_LIST_CHARS:
        raise LayerSelectionError(f"the custom layer list is {len(text)} characters long (at most {MAX_LIST_CHARS}): "
                                  f"name blocks such as 'in4,in5,mid0,out3-8'")
    items = [item for item in re.split(r"[\s,;]+", text.strip().lower()) if item]
    if not items:
        raise LayerSelectionError("the custom layer list is empty: name blocks such as 'in4,in5,mid0,out3-8'")
    selected: set[LayerKey] = set()
    for item in items:
        match = _ITEM.match(item) if len(item) <= MAX_ITEM_CHARS else None
        if match is None or (match["n0"] is None and match["n1"] is None and match["block"] is None) or (
                "." in item and match["j0"] is None and match["j1"] is None):
            raise LayerSelectionError(
                f"cannot read layer item {_shown(item)}: use in<N>, mid, out<N>, ranges like out3-8, "
                f"transformer layers like in7.0-4, or forward numbers like #4-14")
        if match["block"] is None:
            numbers = _span(item, match["n0"], match["n1"], "#", len(layers))
            hit = {layer.key for layer in layers if layer.number in numbers}
        else:
            block = _BLOCK_ALIASES.get(match["block"])
            if block is None:
                raise LayerSelectionError(f"unknown block {_shown(match['block'])} in {_shown(item)}: use in, mid or out")
            in_block = [layer for layer in layers if layer.key[0] == block]
            last_id = max((layer.key[1] for layer in in_block), default=0)
            ids = _span(item, match["i0"], match["i1"], f"{_SHORT[block]} block", last_id)
            chosen = [layer for layer in in_block if ids is None or layer.key[1] in ids]
            depth = max((layer.key[2] for layer in chosen), default=0)
            indices = _span(item, match["j0"], match["j1"], "transformer layer", depth)
            hit = {layer.key for layer in chosen if indices is None or layer.key[2] in indices}
            if not hit:
                raise LayerSelectionError(
                    f"layer item {_shown(item)} selects no self-attention layer of this model; "
                    f"its attention blocks are: {available}")
        selected |= hit
    return selected


def _available_blocks(layers: list[Attn1Layer]) -> list[str]:
    seen: dict[tuple[str, int], int] = {}
    for layer in layers:
        seen[layer.key[:2]] = max(seen.get(layer.key[:2], 0), layer.key[2] + 1)
    return [f"{_SHORT[b]}{i}" + (f".0-{n - 1}" if n > 1 else "") for (b, i), n in seen.items()]


@dataclass(frozen=True)
class LayerSelection:
    """A resolved choice of layers; ``official`` stays a token rule evaluated per call. ``label`` is the
    choice as the user wrote it (the preset, or the custom block list), for messages and titles."""

    preset: str
    keys: frozenset[LayerKey] | None  # None: decided by the token rule
    max_tokens: int | None = None
    label: str = ""

    def includes(self, key: LayerKey, tokens: int) -> bool:
        if self.keys is None:
            return tokens <= self.max_tokens
        return key in self.keys

    def resolve(self, layers: list[Attn1Layer], latent_h: int, latent_w: int) -> list[Attn1Layer]:
        return [layer for layer in layers if self.includes(layer.key, layer.tokens(latent_h, latent_w))]


def select_layers(preset: str, custom: str, layers: list[Attn1Layer], family_name: str = "SD1.x") -> LayerSelection:
    """The layers ``preset`` picks from a model's ``layers``; ``family_name`` (``architecture.family``)
    gates the SD1.5-only numbering."""
    if not layers:
        raise LayerSelectionError("this model has no self-attention (attn1) layers that FPE can edit")
    if preset == "official":
        return LayerSelection(preset, None, OFFICIAL_MAX_TOKENS, label=preset)
    if preset == "official relative":
        finest = min(layer.level for layer in layers)
        kept = frozenset(layer.key for layer in layers if layer.level > finest)
        if not kept:
            raise LayerSelectionError("'official relative' keeps every attention level but the highest-resolution "
                                      "one, and this model has a single level: use 'all' or a custom list")
        return LayerSelection(preset, kept, label=preset)
    if preset == "all":
        return LayerSelection(preset, frozenset(layer.key for layer in layers), label=preset)
    if preset == "paper 4-14":
        if family_name != "SD1.x" or len(layers) != 16:
            raise LayerSelectionError(
                f"the 'paper 4-14' preset numbers SD1.5's 16 self-attention layers as the paper does; this model is "
                f"{family_name} with {len(layers)}: use 'official' (the authors' code), 'official relative' (the same "
                f"levels at any size) or a custom list such as '#4-14'")
        return LayerSelection(preset, frozenset(parse_block_list("#4-14", layers)), label=preset)
    if preset == "custom":
        return LayerSelection(preset, frozenset(parse_block_list(custom, layers)), label=custom)
    raise LayerSelectionError(f"unknown layer preset {preset!r}: choose one of {', '.join(PRESETS)}")


def choose_layers(model, preset: str, custom: str, preset_input: str = "layers",
                  custom_input: str = "custom_layers", layers: list[Attn1Layer] | None = None) -> LayerSelection:
    """A node's layer choice resolved against its model. An error names the input that holds the
    problem, as every node does: the block list's input when the preset is 'custom', else the preset's."""
    if layers is None:
        layers = model_attn1_layers(model)  # first: a model without UNet attention is refused by name
    try:
        return select_layers(preset, custom, layers, family(model))
    except LayerSelectionError as exc:
        raise FPEError(f"{custom_input if preset == 'custom' else preset_input}: {exc}") from None
