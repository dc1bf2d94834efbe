"""From a recorded run to pictures' data: word heatmaps, self-attention maps per token grid.

Layers of different resolutions are combined as DAAM does for words: each layer's map is upsampled
(bilinear, ``heatmaps.to_image_size``) to the latent grid and the layers are averaged with equal weight. Self-attention maps are
N×N and cannot be resized that way, so the layers are grouped by token grid and averaged within a
group (as Prompt-to-Prompt aggregates the layers of one resolution); each group is one picture row.
"""

from __future__ import annotations

import re

import torch

from .errors import FPEError
from .heatmaps import to_image_size
from .layers import LayerSelectionError, parse_block_list
from .layers import key_name as _name
from .prompt_words import PromptTokens, encodes_alike, plain_word
from .recording import AttentionRecord, RunRecord


def chosen_layers(record: AttentionRecord, run: RunRecord, attention: str, text: str, name: str) -> list:
    """The recorded layers a picture uses: all of them for an empty ``text``, else a block list's."""
    recorded = run.layers(attention)
    what = "cross-attention" if attention == "cross" else "self-attention"
    setting = record.settings.cross_setting if attention == "cross" else record.settings.self_setting
    if not recorded:
        raise FPEError(
            f"fpe_record holds no {what} map for this run: set FPE Attention Record's "
            f"{'cross_layers' if attention == 'cross' else 'self_layers'} (now '{setting}') to record some, and "
            f"check that start_percent..end_percent covers some of the steps")
    if not text.strip():
        return recorded
    try:
        wanted = parse_block_list(text, record.layers)
    except LayerSelectionError as exc:
        raise FPEError(f"{name}: {exc}") from None
    chosen = [key for key in recorded if key in wanted]
    if not chosen:
        held = ", ".join(_name(key) for key in recorded)
        raise FPEError(f"{name}: '{text}' selects none of the {what} layers the record holds: {held}. Leave it "
                       f"empty for all of them, or widen FPE Attention Record's layer setting")
    return chosen




def word_items(tokens: PromptTokens, words: str, name: str = "words") -> list[tuple[str, list[int]]]:
    """(label, context positions) for each comma-separated item of ``words``; an item of several words
    (e.g. 'red car') takes all their tokens. A word not in the prompt is an error listing its words."""
    items = [item.strip() for item in re.split(r"[,;\n]+", words) if item.strip()]
    if not items:
        raise FPEError(f"{name}: name at least one word of the prompt, comma separated; its words are: "
                       f"{tokens.describe()}")
    out = []
    for item in items:
        positions: list[int] = []
        for word in (w for w in item.split() if plain_word(w)):
            found = tokens.find(word)
            if not found:
                raise FPEError(f"{name}: {word!r} is not a word of the prompt (text). Its words are: "
                               f"{tokens.describe()}")
            positions += [p for i in found for p in tokens.positions[i]]
        if not positions:
            raise FPEError(f"{name}: {item!r} holds no word; the prompt's words are: {tokens.describe()}")
        out.append((item, positions))
    return out


def check_text(run: RunRecord, tokens: PromptTokens) -> None:
    if run.context_length is not None and tokens.length != run.context_length:
        raise FPEError(
            f"text: this prompt is {tokens.length} tokens long ({tokens.length // 77} CLIP chunk(s)) but the recorded "
            f"one was {run.context_length}: type the prompt exactly as it was encoded for the recorded sampler")


def text_differs(run: RunRecord, encoded: torch.Tensor) -> bool:
    """Whether ``encoded`` (the CLIP's encoding of the typed text, [1, T, C]) is not the recorded context:
    then the words' token positions may be another prompt's. A custom prompt node (other weighting,
    concatenation, averaging) encodes differently, so this is a warning, not an error."""
    return run.context is not None and not encodes_alike(encoded, run.context)


def word_maps(run: RunRecord, layers: list, items: list[tuple[str, list[int]]]) -> torch.Tensor:
    """[words, H, W] at the latent grid: per layer the attention each query token pays to the word's
    tokens (their columns summed), upsampled, averaged over ``layers``."""
    size = run.latent_hw
    total = torch.zeros((len(items), *size))
    for layer in layers:
        mean = run.mean("cross", layer)
        h, w = run.grids[layer]
        columns = torch.stack([mean[:, positions].sum(dim=1) for _, positions in items])  # [words, N]
        total += to_image_size(columns.reshape(len(items), h, w), *size)
    return total / len(layers)


def self_groups(run: RunRecord, layers: list) -> list[tuple[tuple[int, int], torch.Tensor, list]]:
    """(token grid, the group's mean [N, N] map, its layers) per token grid, finest first."""
    groups: dict[tuple[int, int], list] = {}
    for layer in layers:
        groups.setdefault(run.grids[layer], []).append(layer)
    out = []
    for grid in sorted(groups, key=lambda g: -g[0] * g[1]):
        keys = groups[grid]
        mean = sum(run.mean("self", key) for key in keys) / len(keys)
        out.append((grid, mean, keys))
    return out


def layer_names(keys) -> str:
    names = [_name(key) for key in keys]
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:5])} ... ({len(names)} layers)"
