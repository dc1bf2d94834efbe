"""The node menu: the pack's category and one sub-category per task."""

from __future__ import annotations

# The pack's place in ComfyUI's node menu, one sub-category per task. Saved workflows store node ids
# only, so moving a node between sub-categories never breaks them.
_ROOT = "Free Prompt Editing"
EDIT = f"{_ROOT}/edit"
REAL_PHOTOS = f"{_ROOT}/real photos"
COMPARE = f"{_ROOT}/compare"
ATTENTION_MAPS = f"{_ROOT}/attention maps"
PROBING = f"{_ROOT}/probing"

