"""The demo model's drawn world: one or two flat shapes on a plain or textured ground, and its reader.

Every scene is drawn from a seed (Pillow, 4x supersampled, so edges are anti-aliased) and comes with
its caption from a small grammar ("a red circle on grass", "a blue square and a yellow star on
sand") and each object's ground truth: its coverage mask, colour and shape. The grounds are kept
desaturated and the object colours saturated and far apart in hue, so the reader can take a picture
back apart without any model: objects by saturation, colour by hue, shape by how much of its box the
object fills and where its centroid sits. The reader is what the demo's measurements and semantic
tests score with.
"""

from __future__ import annotations

import colorsys
import math
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128  # pixels; the demo model's native size (a 16 x 16 latent)
SUPERSAMPLE = 4

# Six colours of the paper's colour list, far apart in hue (degrees) so a reader cannot confuse them.
COLOURS = {
    "red": (214, 32, 32),
    "orange": (240, 136, 16),
    "yellow": (232, 212, 24),
    "green": (36, 164, 52),
    "blue": (32, 72, 222),
    "purple": (144, 48, 196),
}
SHAPES = ("circle", "square", "triangle", "star")
# Grounds: plain or textured, all of low saturation (an object is what is saturated).
GROUNDS = ("grass", "sand", "sky", "stone")
_GROUND_BASE = {"grass": (104, 124, 96), "sand": (200, 188, 160), "sky": (168, 184, 204), "stone": (128, 128, 128)}

SATURATED = 0.42  # HSV saturation above this (and value above DARK) is object, below it ground
DARK = 0.2


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the final picture

    @property
    def size(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    ground: str
    seed: int

    @property
    def caption(self) -> str:
        return caption(self.things, self.ground)

    def with_colour(self, index: int, colour: str) -> Scene:
        """The same scene with one object recoloured (the edit's ground truth)."""
        things = list(self.things)
        things[index] = Thing(colour, things[index].shape, things[index].box)
        return Scene(tuple(things), self.ground, self.seed)

    def with_shape(self, index: int, shape: str) -> Scene:
        things = list(self.things)
        things[index] = Thing(things[index].colour, shape, things[index].box)
        return Scene(tuple(things), self.ground, self.seed)


def caption(things, ground: str) -> str:
    return " and ".join(t.phrase for t in things) + f" on {ground}"


def caption_words(text: str) -> str | None:
    """The words a word heatmap should show for a caption of this world ("a red circle on grass" ->
    "red, circle"; two objects: both colours and shapes), or None for any other text."""
    match = _CAPTION.fullmatch(text.strip().lower())
    if match is None:
        return None
    found = [w for w in match.group("things").split() if w in COLOURS or w in SHAPES]
    return ", ".join(dict.fromkeys(found))


_THING = rf"a (?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})"
_CAPTION = re.compile(rf"(?P<things>{_THING}(?: and {_THING})?) on (?:{'|'.join(GROUNDS)})")


def random_scene(seed: int, *, objects: int | None = None, colour: str | None = None, shape: str | None = None,
                 ground: str | None = None) -> Scene:
    """A seeded scene. One object (large, anywhere) or two (smaller, left and right, named left to right);
    ``colour``/``shape`` fix the first object's."""
    rng = random.Random(seed)
    n = objects or (1 if rng.random() < 0.7 else 2)
    ground = ground or rng.choice(GROUNDS)
    things = []
    if n == 1:
        size = rng.uniform(0.38, 0.62) * SIZE
        x0 = rng.uniform(6, SIZE - 6 - size)
        y0 = rng.uniform(6, SIZE - 6 - size)
        things.append(Thing(colour or rng.choice(list(COLOURS)), shape or rng.choice(SHAPES), (x0, y0, x0 + size, y0 + size)))
    else:
        half = SIZE / 2
        for i in range(2):
            size = rng.uniform(0.28, 0.40) * SIZE
            x0 = i * half + rng.uniform(3, half - 3 - size)
            y0 = rng.uniform(6, SIZE - 6 - size)
            pick_colour = colour if (i == 0 and colour) else rng.choice(list(COLOURS))
            pick_shape = shape if (i == 0 and shape) else rng.choice(SHAPES)
            things.append(Thing(pick_colour, pick_shape, (x0, y0, x0 + size, y0 + size)))
    return Scene(tuple(things), ground, seed)


def _polygon(shape: str, box, scale: float):
    x0, y0, x1, y1 = (v * scale for v in box)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "star":  # five points, the first straight up; inner radius 0.45 of the outer
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * 1.05 * math.sin(angle) + 0.05 * r))
        return points
    raise ValueError(shape)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, scale: float, fill) -> None:
    scaled = [v * scale for v in box]
    if shape == "circle":
        draw.ellipse(scaled, fill=fill)
    elif shape == "square":
        draw.rectangle(scaled, fill=fill)
    else:
        draw.polygon(_polygon(shape, box, scale), fill=fill)


def _ground(name: str, rng: random.Random, size: int) -> Image.Image:
    base = _GROUND_BASE[name]
    image = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(image)
    if name == "grass":  # short darker and lighter blades
        for _ in range(size * 3):
            x, y = rng.uniform(0, size), rng.uniform(0, size)
            shade = rng.choice((-18, 14))
            draw.line([(x, y), (x + rng.uniform(-2, 2) * size / 128, y - rng.uniform(3, 7) * size / 128)],
                      fill=tuple(c + shade for c in base), width=max(1, size // 128))
    elif name == "sand":  # speckles
        for _ in range(size * 4):
            x, y = rng.uniform(0, size), rng.uniform(0, size)
            r = rng.uniform(0.4, 1.2) * size / 128
            shade = rng.choice((-22, 16))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(c + shade for c in base))
    elif name == "sky":  # a vertical gradient, lighter toward the horizon
        for y in range(size):
            t = y / size
            draw.line([(0, y), (size, y)], fill=tuple(int(c + 36 * t) for c in base))
    return image  # stone: plain


def render(scene: Scene, size: int = SIZE) -> tuple[np.ndarray, list[np.ndarray]]:
    """(RGB uint8 H x W x 3, one float coverage mask per object, in [0, 1])."""
    big = size * SUPERSAMPLE
    scale = big / SIZE
    rng = random.Random(scene.seed * 7919 + 1)
    image = _ground(scene.ground, rng, big)
    draw = ImageDraw.Draw(image)
    masks = []
    for thing in scene.things:
        mask = Image.new("L", (big, big), 0)
        _draw_shape(ImageDraw.Draw(mask), thing.shape, thing.box, scale, 255)
        _draw_shape(draw, thing.shape, thing.box, scale, COLOURS[thing.colour])
        masks.append(np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0)
    picture = np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)
    return picture, masks


def draw(scene: Scene, size: int = SIZE) -> Image.Image:
    return Image.fromarray(render(scene, size)[0])


# --------------------------------------------------------------------------------------------
# The reader


@dataclass(frozen=True)
class Seen:
    colour: str
    shape: str
    mask: np.ndarray  # bool H x W
    centroid: tuple[float, float]  # x, y in pixels
    size: float  # the side of the mask's bounding box (the larger one)


_HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for name, rgb in COLOURS.items()}
# Shape descriptors of the drawn shapes: (share of the bounding box filled, centroid's drop below the
# box centre as a share of the box height).
_SHAPE_FEATURES = {"circle": (math.pi / 4, 0.0), "square": (1.0, 0.0), "triangle": (0.5, 1 / 6), "star": (0.36, 0.04)}


def hsv(picture: np.ndarray) -> np.ndarray:
    rgb = picture.astype(np.float32) / 255.0
    top, bottom = rgb.max(-1), rgb.min(-1)
    span = top - bottom
    saturation = np.where(top > 0, span / np.maximum(top, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(span, 1e-6)
    hue = np.where(top == r, ((g - b) / safe) % 6, np.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    return np.stack([hue, saturation, top], -1)


GROUND_DISTANCE = 60.0  # RGB distance from the ground's colour below which a pixel is ground


def ground_colour(picture: np.ndarray, ring: int = 3) -> np.ndarray:
    """The median colour of the picture's border ring: the ground (objects never touch the border)."""
    p = np.asarray(picture, dtype=np.float32)
    border = np.concatenate([p[:ring].reshape(-1, 3), p[-ring:].reshape(-1, 3),
                             p[:, :ring].reshape(-1, 3), p[:, -ring:].reshape(-1, 3)])
    return np.median(border, axis=0)


def object_mask(picture: np.ndarray) -> np.ndarray:
    """Every object's pixels (bool H x W): saturated, and away from the ground's colour. A drawn ground is
    never saturated; the second test keeps a generated ground that came out saturated (a model's
    green 'grass') from being read as one big object."""
    h = hsv(picture)
    away = np.linalg.norm(np.asarray(picture, dtype=np.float32) - ground_colour(picture), axis=-1) > GROUND_DISTANCE
    return (h[..., 1] > SATURATED) & (h[..., 2] > DARK) & away


def name_hue(hues: np.ndarray) -> str:
    """The named colour nearest the circular mean of ``hues`` (degrees)."""
    angle = np.deg2rad(hues)
    mean = math.degrees(math.atan2(np.sin(angle).mean(), np.cos(angle).mean())) % 360
    return min(_HUES, key=lambda name: min(abs(mean - _HUES[name]), 360 - abs(mean - _HUES[name])))


def name_shape(mask: np.ndarray) -> tuple[str, float]:
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    fill = mask.sum() / max(1, (x1 - x0) * (y1 - y0))
    drop = (ys.mean() + 0.5 - (y0 + y1) / 2) / max(1, y1 - y0)
    scores = {name: abs(fill - f) + 2 * abs(drop - d) for name, (f, d) in _SHAPE_FEATURES.items()}
    best = min(scores, key=scores.get)
    return best, float(max(x1 - x0, y1 - y0))


def read(picture: np.ndarray, objects: int = 1, min_pixels: int = 12) -> list[Seen]:
    """The ``objects`` largest saturated blobs, left to right, each named by colour and shape."""
    from scipy import ndimage  # ComfyUI installs scipy; only the reader needs it

    picture = np.asarray(picture)
    saturated = object_mask(picture)
    labels, count = ndimage.label(saturated)
    if count == 0:
        return []
    sizes = ndimage.sum(saturated, labels, index=range(1, count + 1))
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:objects] if sizes[i] >= min_pixels]
    hues = hsv(picture)[..., 0]
    seen = []
    for label in keep:
        mask = ndimage.binary_fill_holes(labels == label)
        shape, size = name_shape(mask)
        ys, xs = np.nonzero(mask)
        seen.append(Seen(name_hue(hues[labels == label]), shape, mask, (float(xs.mean()), float(ys.mean())), size))
    return sorted(seen, key=lambda s: s.centroid[0])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
