"""FPE Side by Side: source and edit(s) in one image, for comparing at a glance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
                "image_a": ("IMAGE", {"tooltip": "Left part (e.g. the decoded source); a batch is laid out in order."}),
                "image_b": ("IMAGE", {"tooltip": "Right part (e.g. the decoded edit or edits); resized to image_a's "
                                                 "height if it differs."}),
            },
        }

    def combine(self, image_a, image_b):
        height = image_a.shape[1]
        parts = [image_a[i] for i in range(image_a.shape[0])]
        for i in range(image_b.shape[0]):
            image = image_b[i]
            if image.shape[0] != height:  # [H, W, C]: keep the aspect ratio at image_a's height
                width = max(1, round(image.shape[1] * height / image.shape[0]))
                image = F.interpolate(image.movedim(-1, 0)[None], size=(height, width), mode="bilinear",
                                      align_corners=False)[0].movedim(0, -1)
            parts.append(image.to(image_a.dtype))
        return (torch.cat(parts, dim=1)[None],)
