"""Node-side previews: images saved the way Preview Image saves them, shown on the node."""

from __future__ import annotations

import torch


def preview_ui(images: torch.Tensor, prefix: str) -> dict:
    """Save ``images`` to ComfyUI's temp folder and return the node's ``ui`` entry that shows them."""
    import nodes  # ComfyUI's own nodes module: only importable once the host runs

    return nodes.PreviewImage().save_images(images, filename_prefix=prefix)["ui"]
