"""FPE Side by Side: source and edit(s) in one image, for comparing at a glance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fpe_attention.errors import FPEError
from . import CATEGORY


class FPESideBySide:
    CATEGORY = CATEGORY
    FUNCTION = "combine"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("One image: every image of image_a, then every image of image_b, left to right.",)
    DESCRIPTION = "Places images left to right (e.g. the source and its edits) in one picture."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image_a": ("IMAGE", {"tooltip": "Left part (e.g. the decoded source); a batch is laid out in order. RGBA or grey images are shown as RGB."}),
                "image_b": ("IMAGE", {"tooltip": "Right part (e.g. the decoded edit or edits); resized to image_a's "
                                                 "height if it differs."}),
            },
        }

    def combine(self, image_a, image_b):
        image_a, image_b = _rgb(image_a, "image_a"), _rgb(image_b, "image_b").to(image_a.device)
        height = image_a.shape[1]
        parts = [image_a[i] for i in range(image_a.shape[0])]
        for i in range(image_b.shape[0]):
            image = image_b[i]
            if image.shape[0] != height:  # [H, W, C]: keep the aspect ratio at image_a's height
                width = max(1, round(image.shape[1] * height / image.shape[0]))
                image = F.interpolate(image.movedim(-1, 0)[None], size=(height, width), mode="bilinear",
                                      align_corners=False)[0].movedim(0, -1)
            parts.append(image)
        return (torch.cat(parts, dim=1)[None],)


def _rgb(images, name: str) -> torch.Tensor:
    """An IMAGE as float RGB: an alpha channel is dropped, a grey image repeated to three channels."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0 or min(images.shape[1:3]) == 0:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise FPEError(f"{name}: expected an IMAGE batch [images, height, width, channels] with at least one image; "
                       f"got {shape}")
    channels = images.shape[-1]
    if channels == 1:
        images = images.expand(-1, -1, -1, 3)
    elif channels in (2, 4):  # grey + alpha, RGBA: the picture without its transparency
        images = images[..., :1].expand(-1, -1, -1, 3) if channels == 2 else images[..., :3]
    elif channels != 3:
        raise FPEError(f"{name}: an image with {channels} channels; FPE Side by Side shows grey, RGB or RGBA images")
    return images.float()
