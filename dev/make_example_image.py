"""Draw the real-image workflows' example input (self-made: no third-party photo) and its painted mask.

    python dev/make_example_image.py    # writes workflows/fpe_example_apple.png and fpe_example_apple_mask.png

A red apple on a wooden table, drawn with Pillow; 512x512 like the official example's input. The mask
(white: edit, black: keep) covers the apple with a margin, as a user paints it loosely; the local
real-image workflow loads it with Load Image (as Mask), channel red.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parents[1] / "workflows" / "fpe_example_apple.png"
MASK_OUT = OUT.with_name("fpe_example_apple_mask.png")
SIZE = 512
APPLE = (256, 300, 118)  # centre x, centre y, radius (the apple is 0.93 as high as wide)
MASK_MARGIN = 18  # pixels the painted mask reaches past the apple


def draw() -> Image.Image:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    wall = np.stack([0.86 - 0.12 * y, 0.80 - 0.12 * y, 0.70 - 0.10 * y], -1)
    table_top = 0.62
    grain = 0.5 + 0.5 * np.sin(90 * y + 6 * np.sin(9 * x) + 3 * np.sin(23 * x + 2 * y))
    wood = np.stack([0.45 + 0.08 * grain, 0.28 + 0.05 * grain, 0.15 + 0.03 * grain], -1)
    wood *= (0.85 + 0.25 * (y - table_top))[..., None]
    image = np.where((y > table_top)[..., None], wood, wall)
    image += rng.normal(0, 0.012, image.shape)  # a little sensor-like grain
    picture = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))

    draw = ImageDraw.Draw(picture, "RGBA")
    cx, cy, r = APPLE
    draw.ellipse((cx - 150, cy + r - 34, cx + 150, cy + r + 22), fill=(40, 22, 10, 110))  # shadow on the table
    apple = np.zeros((SIZE, SIZE, 4), np.float32)
    dx, dy = (x * SIZE - cx) / r, (y * SIZE - cy) / (r * 0.93)
    inside = dx**2 + dy**2 <= 1.0
    light = np.clip(1.0 - 0.55 * np.hypot(dx + 0.35, dy + 0.4), 0.25, 1.0)
    apple[..., 0] = 0.78 * light + 0.1
    apple[..., 1] = 0.08 * light + 0.03 * (1 - light)
    apple[..., 2] = 0.07 * light
    apple[..., 3] = inside
    highlight = np.exp(-(((dx + 0.38) / 0.16) ** 2 + ((dy + 0.42) / 0.11) ** 2))
    apple[..., :3] += 0.55 * highlight[..., None]
    layer = Image.fromarray((np.clip(apple, 0, 1) * 255).astype(np.uint8), "RGBA")
    picture.paste(layer, (0, 0), layer)
    draw = ImageDraw.Draw(picture, "RGBA")
    draw.line((cx + 2, cy - r * 0.86, cx + 12, cy - r * 1.22), fill=(78, 50, 25, 255), width=9)  # stem
    draw.ellipse((cx + 14, cy - r * 1.28, cx + 84, cy - r * 1.06), fill=(70, 130, 40, 255))  # leaf
    return picture.filter(ImageFilter.GaussianBlur(1.2))


def draw_mask() -> Image.Image:
    """The apple's body (not its stem and leaf) and a margin, white on black, in grey levels."""
    cx, cy, r = APPLE
    rx, ry = r + MASK_MARGIN, 0.93 * r + MASK_MARGIN
    big = Image.new("L", (4 * SIZE, 4 * SIZE), 0)  # drawn 4x and reduced: an anti-aliased edge
    ImageDraw.Draw(big).ellipse((4 * (cx - rx), 4 * (cy - ry), 4 * (cx + rx), 4 * (cy + ry)), fill=255)
    return big.resize((SIZE, SIZE), Image.Resampling.BOX)


if __name__ == "__main__":
    draw().save(OUT, optimize=True)
    draw_mask().save(MASK_OUT, optimize=True)
    for path in (OUT, MASK_OUT):
        print(f"wrote {path.relative_to(path.parents[1])} ({path.stat().st_size // 1024} KiB)")
