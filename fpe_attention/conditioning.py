"""The structure of a sampling run's conditioning, so a target's entries can pair with the source's.

A CONDITIONING is a list of entries (Conditioning (Combine) concatenates lists; Set Area / Set Mask /
Set Timestep Range restrict an entry). ComfyUI runs every entry as a chunk of its own, and FPE pairs
the target's i-th entry of each kind with the source's i-th. That needs the two sides to have the
same structure: the same number of positive and negative entries, each restricted the same way
(area, mask, timestep range). The prompts themselves may differ (that is the edit), and so may
ControlNets, which act per side.

Both sides are read at the same point of a run: on current ComfyUI before sampling (the run hook
sees the sampler's conditioning lists), on ComfyUI of early 2024 at the end of the run's first model
evaluation (the post-CFG hook sees them). ``entry_ids`` maps current ComfyUI's per-entry ids to the
entry's index, which makes the pairing independent of how ComfyUI batches the chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .host_versions import entry_uuid

ROLES = ("positive", "negative")

# FPE Null-Text Invert's per-step negative carries this key in each entry's options: the fingerprint of
# the embeddings it was tuned to, which its source records too, so another photo's null text cannot pair.
NULL_TEXT_KEY = "fpe_null_text"


@dataclass(frozen=True)
class EntryShape:
    area: tuple | str | None  # (h, w, y, x) in latent units, "mask bounds", or None (whole image)
    mask: bool
    timestep_range: tuple[float, float]  # (start_percent, end_percent)
    null_text: str | None = None  # NULL_TEXT_KEY's value: which FPE Null-Text Invert run tuned it

    def describe(self) -> str:
        parts = []
        if self.area == "mask bounds":
            parts.append("area from its mask")
        elif self.area is not None:
            h, w, y, x = self.area
            parts.append(f"area {w * 8}x{h * 8} px at ({x * 8}, {y * 8})")
        if self.mask:
            parts.append("mask")
        if self.timestep_range != (0.0, 1.0):
            parts.append(f"steps {self.timestep_range[0]:g}-{self.timestep_range[1]:g}")
        return " + ".join(parts) if parts else "whole image"


@dataclass(frozen=True)
class Structure:
    positive: tuple[EntryShape, ...]
    negative: tuple[EntryShape, ...] | None  # None: the run had no negative (a guider without one)
    # Which entries (positive, then negative) ComfyUI may run in one batch: that decides the order in
    # which it runs them, which is what pairs entries on a host that gives them no ids.
    batching: tuple[tuple[bool, ...], ...] = ()

    def describe(self) -> str:
        text = _count(self.positive, "positive")
        if self.negative is not None:
            text += ", " + _count(self.negative, "negative")
        return text

    def pairs_with(self, other: Structure) -> bool:
        if self.positive != other.positive:
            return False
        return self.negative is None or other.negative is None or self.negative == other.negative

    def null_texts(self) -> set[str]:
        """The null-text fingerprints its negative entries carry (FPE Null-Text Invert's null_negative)."""
        return {e.null_text for e in self.negative or () if e.null_text is not None}

    def runs_in_the_same_order(self, other: Structure) -> bool:
        """Whether ComfyUI runs both sides' entries in the same order (only matters with several entries)."""
        several = len(self.positive) > 1 or len(self.negative or ()) > 1
        return not several or not self.batching or not other.batching or self.batching == other.batching


def _count(entries, role: str) -> str:
    return (f"{len(entries)} {role} entr{'y' if len(entries) == 1 else 'ies'} "
            f"({', '.join(e.describe() for e in entries)})")


def _area(entry: dict, latent_hw: tuple[int, int]):
    if entry.get("set_area_to_bounds"):
        return "mask bounds"
    area = entry.get("area")
    if area is None:
        return None
    if isinstance(area, (tuple, list)) and area and area[0] == "percentage":  # as ComfyUI resolves it
        h, w = latent_hw
        _, ah, aw, ay, ax = area
        return (max(1, round(ah * h)), max(1, round(aw * w)), round(ay * h), round(ax * w))
    try:
        return tuple(int(v) for v in area)
    except (TypeError, ValueError):
        return str(area)


def entry_shape(entry: dict, latent_hw: tuple[int, int]) -> EntryShape:
    start = float(entry.get("start_percent", 0.0))
    end = float(entry.get("end_percent", 1.0))
    tag = entry.get(NULL_TEXT_KEY)
    return EntryShape(_area(entry, latent_hw), entry.get("mask") is not None, (round(start, 4), round(end, 4)),
                      tag if isinstance(tag, str) else None)


def _entry_dict(entry):
    # A CONDITIONING entry is [tensor, dict]; a sampler's processed entry is the dict itself.
    if isinstance(entry, dict):
        return entry
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) else {}


def structure_of(positive, negative, latent_hw: tuple[int, int]) -> Structure:
    """The structure of a run's positive and negative conditioning (the sampler's entries)."""
    pos = tuple(entry_shape(_entry_dict(e), latent_hw) for e in (positive or []))
    neg = None if negative is None else tuple(entry_shape(_entry_dict(e), latent_hw) for e in negative)
    entries = [_entry_dict(e) for e in list(positive or []) + list(negative or [])]
    shapes = pos + (neg or ())
    batching = tuple(tuple(_batch_together(a, b, sa, sb) for b, sb in zip(entries, shapes, strict=True))
                     for a, sa in zip(entries, shapes, strict=True))
    return Structure(pos, neg, batching)


def _tokens(entry: dict) -> int | None:
    cond = getattr((entry.get("model_conds") or {}).get("c_crossattn"), "cond", None)
    return int(cond.shape[1]) if cond is not None and cond.ndim == 3 else None


def _batch_together(a: dict, b: dict, shape_a: EntryShape, shape_b: EntryShape) -> bool:
    """ComfyUI's rule for running two entries in one UNet call: same area, the same ControlNet object
    (or none), no GLIGEN, prompt lengths whose least common multiple is at most 4x the shorter."""
    if shape_a.area != shape_b.area or a.get("control") is not b.get("control") or "gligen" in a or "gligen" in b:
        return False
    ta, tb = _tokens(a), _tokens(b)
    return ta is None or tb is None or ta == tb or math.lcm(ta, tb) // min(ta, tb) <= 4


ROLE_KINDS = {"positive": 0, "negative": 1}  # the cond_or_uncond values of CFG's two lists


def entry_ids(conds: dict | None) -> dict | None:
    """Current ComfyUI: entry id -> (kind, index of the entry in its list). The kind comes from the
    entry's role, so a guider that lists its conds in another order (DualCFGGuider) pairs by role."""
    if not conds:
        return None
    ids = {}
    others = [role for role in conds if role not in ROLE_KINDS]
    for role in conds:
        kind = ROLE_KINDS.get(role, 2 + others.index(role) if role in others else 2)
        for index, entry in enumerate(conds[role] or []):
            uid = entry_uuid(entry)
            if uid is not None:
                ids.setdefault(uid, (kind, index))
    return ids or None


def sampler_conds(guider) -> tuple[list | None, list | None] | None:
    """(positive, negative) entry lists of a current-ComfyUI guider, or None if it has none."""
    conds = getattr(guider, "conds", None)
    if not isinstance(conds, dict) or "positive" not in conds:
        return None
    return conds.get("positive"), conds.get("negative")
