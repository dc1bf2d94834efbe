"""FPE Side by Side: source and edit(s) in one image, for comparing at a glance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fpe_attention.errors import FPEError
from ..fpe_attention.heatmaps import MAX_SIDE
from .common import COMPARE


class FPESideBySide:
    DISPLAY_NAME = "FPE Side by Side"
    CATEGORY = COMPARE
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
        count_a, height, width_a = image_a.shape[:3]
        # image_b at image_a's height, aspect kept: the widths are known before anything is resized, so an
        # extreme shape (1 px high beside 64 px: 64x wider) is refused before it allocates.
        b_height, b_width = image_b.shape[1:3]
        width_b = b_width if b_height == height else max(1, round(b_width * height / b_height))
        total = count_a * width_a + image_b.shape[0] * width_b
        if max(total, height) > MAX_SIDE:
            if count_a * width_a > MAX_SIDE or height > MAX_SIDE:
                name, what = "image_a", f"{count_a} image(s) of {width_a}x{height} px"
            else:
                name, what = "image_b", (f"{image_b.shape[0]} image(s) of {b_width}x{b_height} px"
                                         + (f", {width_b} px wide at image_a's height of {height} px"
                                            if b_height != height else ""))
            raise FPEError(f"{name}: side by side, {what} make a picture {total}x{height} px (width x height; at "
                           f"most {MAX_SIDE} px a side, ComfyUI's largest image): give images of similar shape "
                           "(scale or crop them alike), fewer images, or lay a batch out with FPE Sweep Grid")
        parts = [image_a[i] for i in range(count_a)]
        for i in range(image_b.shape[0]):
            image = image_b[i]
            if image.shape[0] != height:  # [H, W, C]: keep the aspect ratio at image_a's height
                image = F.interpolate(image.movedim(-1, 0)[None], size=(height, width_b), mode="bilinear",
                                      align_corners=False)[0].movedim(0, -1)
            parts.append(image)
        return (torch.cat(parts, dim=1)[None],)


def finite_pixels(images: torch.Tensor) -> bool:
    """No NaN or infinite pixel (min and max propagate NaN: no mask of the image's size is made)."""
    low, high = torch.aminmax(images.float() if not images.is_floating_point() else images)
    return bool(torch.isfinite(low) and torch.isfinite(high))


def _rgb(images, name: str) -> torch.Tensor:
    """An IMAGE as float RGB: an alpha channel is dropped, a grey image repeated to three channels."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0 or min(images.shape[1:3]) == 0:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise FPEError(f"{name}: expected an IMAGE batch [images, height, width, channels] with at least one image; "
                       f"got {shape}")
    if not finite_pixels(images):  # would be saved as black without a word
        raise FPEError(f"{name}: the image holds NaN or infinite pixels (a VAE decode of a broken latent, e.g. an "
                       "fp16 VAE overflowing): fix the node that made it (run that VAE in fp32 or bf16)")
    channels = images.shape[-1]
    if channels == 1:
        images = images.expand(-1, -1, -1, 3)
    elif channels in (2, 4):  # grey + alpha, RGBA: the picture without its transparency
        images = images[..., :1].expand(-1, -1, -1, 3) if channels == 2 else images[..., :3]
    elif channels != 3:
        raise FPEError(f"{name}: an image with {channels} channels; FPE Side by Side shows grey, RGB or RGBA images")
    return images.float()
