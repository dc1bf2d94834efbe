"""The probing data of one recorded run (paper §3.3, supplement §7.1): per-layer maps of one word.

* Cross-attention: for each recorded attn2 layer, the attention every image token pays to the word's
  tokens (their columns summed, as the word heatmaps do), averaged over heads and over the run's recorded
  evaluations: an [h, w] map at the layer's token grid. The supplement: "the cross-attention maps of the
  target word ... averaging the steps ... 16 attention maps corresponding to the 16 attention layers".
* Self-attention: each recorded attn1 layer's [N, N] map (averaged the same way); maps of N >= 256 are
  resized to 256 x 256 as the supplement does ("we resized the layers with dimensions larger than or equal
  to 256x256 to 256x256"). The method is not stated; we use area averaging (``adaptive_avg_pool2d``: for
  4096 -> 256 each value is the mean of a 16 x 16 block of the map), which keeps every entry's mass and is
  what a resize of a larger matrix to an exact divisor means without aliasing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import key_name
from .recording import RunRecord

SELF_SIDE = 256  # the supplement's size for self-attention maps of >= 256 x 256


def cross_word_maps(run: RunRecord, layers: list, positions: list[int]) -> dict[str, torch.Tensor]:
    """Per layer (forward order): the word's [h, w] map, float32."""
    out = {}
    for key in layers:
        h, w = run.grids[key]
        out[key_name(key)] = run.mean("cross", key)[:, positions].sum(dim=1).reshape(h, w).contiguous()
    return out


def resized_self_map(attention: torch.Tensor, side: int = SELF_SIDE) -> torch.Tensor:
    """An [N, N] map as [side, side] by area averaging when N >= side; smaller maps as they are."""
    n = attention.shape[0]
    if n <= side:
        return attention.contiguous()
    return F.adaptive_avg_pool2d(attention[None, None].float(), (side, side))[0, 0]


def self_maps(run: RunRecord, layers: list, side: int = SELF_SIDE) -> dict[str, torch.Tensor]:
    """Per layer (forward order): the [min(N, side)]^2 self-attention map, float32."""
    return {key_name(key): resized_self_map(run.mean("self", key), side) for key in layers}
