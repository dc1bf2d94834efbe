"""Pictures on the command line's side (plain PIL): reading 8- and 16-bit pictures as RGB, the default font at a size, text widths, captions fitted
into lines, and the titled grid ``fpe edit`` writes for an output node's batch of pictures. The batch's
contact sheets (``batch.report``) and the probe's heatmap (``probe.report``) are drawn with these.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAPTION_LINES = 2  # a caption's lines unless told otherwise (a contact sheet's pair)
# A batch's grid (issue 23, item 15): one file per output node; tests read the layout from tile_layout.
TILE_PAD, TILE_FONT = 4, 12
TILE_LINE = TILE_FONT + 6  # one line of caption text


# --- reading pictures ---------------------------------------------------------------------------------


class PictureError(ValueError):
    """A picture this package cannot read as 8-bit RGB; the message says why and what to save it as."""


def eight_bit(image):
    """A PIL image with 8 bits a channel. Pillow's ``convert`` clips the wide greyscale modes (a 16-bit PNG
    opens as I;16, I;16B or I; a float TIFF as F) at 255, so a 16-bit picture would read as almost white:
    these are scaled instead (16-bit: value / 257; F: 0..1 when every value is, else the 16-bit range).
    Values outside that range are refused by name; other modes are returned as they are."""
    mode = image.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return image
    arr = np.asarray(image, dtype=np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise PictureError(f"a {mode} image holds NaN or infinite values; save it as an 8- or 16-bit PNG")
    low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode == "F" and low >= 0 and high <= 1:
        scale = 255.0
    elif low >= 0 and high <= 65535:
        scale = 255.0 / 65535.0
    else:
        raise PictureError(f"a {mode} image with values {low:g}..{high:g}: only 8-bit, 16-bit (0..65535) and "
                           "0..1 float pictures are read; save it as an 8- or 16-bit PNG")
    return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")


def rgb(image):
    """A PIL image as 8-bit RGB, 16-bit greyscale scaled (``eight_bit``), not clipped as ``convert`` does."""
    return eight_bit(image).convert("RGB")


# --- fonts and text -----------------------------------------------------------------------------------


def load_font(size: int):
    """PIL's built-in font at ``size`` px: Pillow >= 10.1 scales it (FreeType); older ones only have the
    small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def drawable(font, text: str) -> str:
    """``text`` as ``font`` can draw it: the bitmap font encodes text as latin-1, so anything else would raise
    and becomes "?"."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.replace("…", "...").encode("latin-1", "replace").decode("latin-1")


def text_width(font, text: str) -> float:
    """How far ``text`` advances in ``font`` (what a line of text takes)."""
    return font.getlength(text) if hasattr(font, "getlength") else font.getsize(text)[0]


def ink_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    """The width of the pixels ``text`` inks in ``font``, rounded up (what a label needs)."""
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(math.ceil(right - left))


def wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Word-wrap one paragraph into ``max_lines`` lines of at most ``width`` px; what does not fit ends in '…'."""
    words = re.sub(r"\s+", " ", text).strip().split(" ")
    lines: list[str] = []
    current = ""
    index = 0
    while index < len(words) and len(lines) < max_lines:
        word = words[index]
        candidate = f"{current} {word}" if current else word
        if text_width(font, candidate) <= width:
            current, index = candidate, index + 1
        elif current:
            lines.append(current)
            current = ""
        else:  # a single word wider than the line: cut it
            cut = len(word)
            while cut > 1 and text_width(font, word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            words[index] = word[cut:]
    if current and len(lines) < max_lines:
        lines.append(current)
        current = ""
    if index < len(words) or current:
        last = lines[-1] if lines else ""
        ellipsis = drawable(font, "…")
        while last and text_width(font, last + ellipsis) > width:
            last = last[:-1]
        lines[-1:] = [last.rstrip() + ellipsis]
    return [line for line in lines if line] or [""]


def fit_lines(text: str, font, width: int, max_lines: int = CAPTION_LINES) -> list[str]:
    """The caption as at most ``max_lines`` lines. A newline in ``text`` starts a line of its own, and every
    paragraph keeps at least one line (e.g. "id: prompt" and "failed: error" both show); paragraphs
    beyond ``max_lines`` join the last one."""
    paragraphs = [p for p in drawable(font, text).splitlines() if p.strip()] or [""]
    if len(paragraphs) > max_lines:
        paragraphs[max_lines - 1:] = [" · ".join(p.strip() for p in paragraphs[max_lines - 1:])]
    lines: list[str] = []
    for index, paragraph in enumerate(paragraphs):
        budget = max_lines - len(lines) - (len(paragraphs) - index - 1)  # one line left for each that follows
        lines += wrap(paragraph, font, width, budget)
    return lines


# --- a batch of pictures as one titled grid ------------------------------------------------------------


def tile_layout(sizes: list[tuple[int, int]]) -> tuple[int, int, list[tuple[int, int]]]:
    """A batch's grid: (width, height, top-left corner of each picture) for pictures of ``sizes`` (w, h),
    row-major in about square rows and columns of cells as large as the largest picture, under a title
    line, each picture over its index line."""
    columns = math.ceil(math.sqrt(len(sizes)))
    rows = math.ceil(len(sizes) / columns)
    top = TILE_LINE + 2 * TILE_PAD
    cell_w = max(w for w, _ in sizes) + TILE_PAD
    cell_h = max(h for _, h in sizes) + TILE_LINE + TILE_PAD
    corners = [(TILE_PAD + (k % columns) * cell_w, top + (k // columns) * cell_h) for k in range(len(sizes))]
    return TILE_PAD + columns * cell_w, top + rows * cell_h, corners


def tile_images(files: list[Path], title: str) -> Image.Image:
    """The pictures of one output node as one PIL image: ``title`` above, each picture unchanged in its
    cell with its index (1-based, the batch order) below it."""
    font = load_font(TILE_FONT)
    pictures = []
    for path in files:
        with Image.open(path) as opened:
            pictures.append(opened.convert("RGB"))
    width, height, corners = tile_layout([p.size for p in pictures])
    width = max(width, 2 * TILE_PAD + 4 + math.ceil(text_width(font, title)))  # the title is never cut
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((TILE_PAD + 2, TILE_PAD), title, fill=(235, 235, 235), font=font)
    for k, (picture, (x, y)) in enumerate(zip(pictures, corners, strict=True)):
        canvas.paste(picture, (x, y))
        draw.text((x + 2, y + picture.height + 2), f"{k + 1} of {len(pictures)}", fill=(235, 235, 235), font=font)
    return canvas
