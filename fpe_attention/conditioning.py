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

from dataclasses import dataclass

ROLES = ("positive", "negative")


@dataclass(frozen=True)
class EntryShape:
    area: tuple | str | None  # (h, w, y, x) in latent units, "mask bounds", or None (whole image)
    mask: bool
    timestep_range: tuple[float, float]  # (start_percent, end_percent)

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

    def describe(self) -> str:
        text = _count(self.positive, "positive")
        if self.negative is not None:
            text += ", " + _count(self.negative, "negative")
        return text

    def pairs_with(self, other: Structure) -> bool:
        if self.positive != other.positive:
            return False
        return self.negative is None or other.negative is None or self.negative == other.negative


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
    return EntryShape(_area(entry, latent_hw), entry.get("mask") is not None, (round(start, 4), round(end, 4)))


def _entry_dict(entry):
    # A CONDITIONING entry is [tensor, dict]; a sampler's processed entry is the dict itself.
    if isinstance(entry, dict):
        return entry
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) else {}


def structure_of(positive, negative, latent_hw: tuple[int, int]) -> Structure:
    """The structure of a run's positive and negative conditioning (raw or the sampler's entries)."""
    pos = tuple(entry_shape(_entry_dict(e), latent_hw) for e in (positive or []))
    neg = None if negative is None else tuple(entry_shape(_entry_dict(e), latent_hw) for e in negative)
    return Structure(pos, neg)


def entry_ids(conds: dict | None) -> dict | None:
    """Current ComfyUI: entry id -> index of the entry in its list (positive or negative)."""
    if not conds:
        return None
    ids = {}
    for role in conds:
        for index, entry in enumerate(conds[role] or []):
            uid = entry.get("uuid") if isinstance(entry, dict) else None
            if uid is not None:
                ids.setdefault(uid, index)
    return ids or None


def sampler_conds(guider) -> tuple[list | None, list | None] | None:
    """(positive, negative) entry lists of a current-ComfyUI guider, or None if it has none."""
    conds = getattr(guider, "conds", None)
    if not isinstance(conds, dict) or "positive" not in conds:
        return None
    return conds.get("positive"), conds.get("negative")
