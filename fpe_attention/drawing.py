"""Drawing helpers the pictures share: Pillow's built-in font, text fitting, captions, tensor <-> picture.

Every picture the nodes draw (sweep grids, the layer overview, captioned previews) uses these, so a
font or a fitting rule changes in one place. No font file is read or downloaded: Pillow's own default
font, scalable where the installed Pillow can (>= 10.1).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def text_width(font, text: str) -> float:
    if hasattr(font, "getlength"):
        return font.getlength(text)
    box = font.getbbox(text)
    return box[2] - box[0]


def text_height(font, text: str = "Ag") -> float:
    """Ink height of ``text`` (by default of a tall and a descending letter: one line's height)."""
    box = font.getbbox(text)
    return box[3] - box[1]


def fit_text(font, text: str, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if text_width(font, text) <= width:
        return text
    low, high = 0, len(text)  # the longest fitting prefix, by bisection: a long title costs log(n) measures
    while low < high:
        middle = (low + high + 1) // 2
        if text_width(font, text[:middle] + "…") <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "…" if low else ""


def wrap_text(font, text: str, width: int, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of ``width`` px, broken after commas or spaces."""
    words, out = text.replace(", ", ",\u0000").replace(" ", " \u0000").split("\u0000"), []
    current = ""
    for word in words:
        if current and text_width(font, current + word) > width:
            out.append(current.rstrip())
            current = word
        else:
            current += word
    out.append(current.rstrip())
    if len(out) > lines:
        out = out[:lines - 1] + [" ".join(out[lines - 1:])]
    return [fit_text(font, line, width) for line in out]


def to_picture(image: torch.Tensor) -> Image.Image:
    """One IMAGE [H, W, 3] (0..1 floats) as an RGB picture."""
    array = (image.detach().cpu().float().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def to_image(picture: Image.Image) -> torch.Tensor:
    """An RGB picture as an IMAGE [1, H, W, 3]."""
    return torch.from_numpy(np.asarray(picture).astype(np.float32) / 255.0)[None]


def captioned(images: torch.Tensor, text: str) -> torch.Tensor:
    """IMAGE [B, H, W, 3] with ``text`` on a dark strip below each image (visible in every frontend)."""
    out = []
    for image in images:
        picture = to_picture(image)
        face = font(max(12, picture.width // 48))
        strip = 8 + int(text_height(face, text)) + 4
        canvas = Image.new("RGB", (picture.width, picture.height + strip), (24, 24, 24))
        canvas.paste(picture, (0, 0))
        ImageDraw.Draw(canvas).text((6, picture.height + 4), text, fill=(235, 235, 235), font=face)
        out.append(to_image(canvas)[0])
    return torch.stack(out)
