"""Draw the pack's registry icon, docs/icon.png (400x400), from code: no third-party art.

    python dev/make_icon.py

Two small grids stand for the source's and the target's self-attention maps; the arrow between
them is FPE handing the source's map to the target. Deterministic: the same bytes every run.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "docs" / "icon.png"
SIZE = 400
BACKGROUND = (28, 32, 44)
SOURCE, TARGET, ARROW = (96, 196, 255), (255, 176, 72), (235, 235, 235)


def attention_map(draw: ImageDraw.ImageDraw, left: int, top: int, cell: int, colour: tuple) -> None:
    """A 6x6 map whose weight falls off from the diagonal, as a self-attention map's does."""
    for row in range(6):
        for col in range(6):
            weight = max(0.12, 1.0 - 0.3 * abs(row - col))
            fill = tuple(round(BACKGROUND[i] + (colour[i] - BACKGROUND[i]) * weight) for i in range(3))
            x, y = left + col * cell, top + row * cell
            draw.rounded_rectangle([x + 2, y + 2, x + cell - 2, y + cell - 2], radius=4, fill=fill)


def main() -> Path:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell, top, margin = 22, 100, 40
    right = SIZE - margin - 6 * cell
    attention_map(draw, margin, top, cell, SOURCE)
    attention_map(draw, right, top, cell, TARGET)
    middle = top + 3 * cell
    tip = right - 10
    draw.line([(margin + 6 * cell + 12, middle), (tip - 20, middle)], fill=ARROW, width=8)
    draw.polygon([(tip, middle), (tip - 24, middle - 17), (tip - 24, middle + 17)], fill=ARROW)
    draw.rounded_rectangle([12, 12, SIZE - 12, SIZE - 12], radius=36, outline=(70, 78, 100), width=6)
    for i, bar in enumerate((0.9, 0.55, 0.75)):  # a caption bar: the prompt that changes
        y = 300 + i * 22
        draw.rounded_rectangle([60, y, 60 + round(280 * bar), y + 12], radius=6,
                               fill=TARGET if i == 1 else (120, 128, 150))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    image.save(OUT, optimize=True)
    return OUT


if __name__ == "__main__":
    print(main())
