"""Node-side previews: an image with a caption strip, saved the way Preview Image saves it."""

from __future__ import annotations

import numpy as np
import torch


def captioned(images: torch.Tensor, text: str) -> torch.Tensor:
    """IMAGE [B, H, W, 3] with ``text`` on a dark strip below each image (visible in every frontend)."""
    from PIL import Image, ImageDraw

    out = []
    for image in images:
        array = (image.cpu().float().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        picture = Image.fromarray(array)
        font = _font(max(12, picture.width // 48))
        strip = 8 + _text_height(font, text)
        canvas = Image.new("RGB", (picture.width, picture.height + strip), (24, 24, 24))
        canvas.paste(picture, (0, 0))
        ImageDraw.Draw(canvas).text((6, picture.height + 4), text, fill=(235, 235, 235), font=font)
        out.append(torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0))
    return torch.stack(out)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def _text_height(font, text: str) -> int:
    box = font.getbbox(text)
    return int(box[3] - box[1]) + 4


def preview_ui(images: torch.Tensor, prefix: str) -> dict:
    """Save ``images`` to ComfyUI's temp folder and return the node's ``ui`` entry that shows them."""
    import nodes

    return nodes.PreviewImage().save_images(images, filename_prefix=prefix)["ui"]
