"""Settings sweeps: one batched target run, each image with its own edit setting.

``sweep`` text: ``end=0.2,0.4,0.6,0.8; layers=official,all`` names up to three settings (start, end,
layers) with comma-separated values; the images are their cartesian product, the first-named
setting varying slowest (the grid's rows), the last fastest (its columns). A layers value is a
preset name or a quoted custom block list (``layers="in4,in5",all``). Settings the sweep does not
name keep the node's widget values.

The labels travel as a small JSON string (the Inject's ``sweep_labels`` output, type FPE_SWEEP_LABELS, so it
connects only to the sweep nodes and never shows as a text widget) to FPE Sweep Grid
and FPE Sweep Latent.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from . import drawing
from .errors import FPEError
from .heatmaps import MAX_SIDE
from .layers import PRESETS, LayerSelection, choose_layers, model_attn1_layers

AXES = ("start", "end", "layers")
MAX_SETTINGS = 64  # one batched run; more images than this is a pasted mistake, not a sweep
MAX_CHARS = 2000
MAX_TITLE_CHARS = 2 * MAX_CHARS  # a title is parts of the sweep (or a custom block list) with ', ' between
_SYNTAX = "write e.g. end=0.2,0.4,0.6,0.8; layers=official,all (quote custom block lists: layers=\"in4,in5\",all)"


@dataclass(frozen=True)
class SweepAxis:
    name: str  # start, end or layers
    values: tuple[str, ...]  # as written (quotes removed)


def _split(text: str, separators: str) -> list[str]:
    """Split at ``separators`` outside quotes; quotes are kept (the caller strips them)."""
    parts, current, quote = [], [], None
    for char in text:
        if quote:
            current.append(char)
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
            current.append(char)
        elif char in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quote:
        raise FPEError(f"sweep: a quote ({quote}) is not closed: {_SYNTAX}")
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class SweepSetting:
    """One image's setting of a sweep, resolved (``label`` names it in messages and titles)."""

    start: float
    end: float
    selection: LayerSelection
    label: str


@dataclass(frozen=True)
class SweepPlan:
    settings: list[SweepSetting] | None  # None: no sweep, one edit with the node's own setting
    axes: list[SweepAxis]
    end: float  # the node's own setting, the title of the one image without a sweep
    layer_label: str

    @property
    def labels(self) -> str:
        """The FPE_SWEEP_LABELS output (``labels_json``); read it after the Inject has checked ``end``."""
        return labels_json(self.axes, f"end={self.end:g}, layers={self.layer_label}")


def plan_sweep(model, text: str | None, *, selection: LayerSelection, start: float, end: float,
               custom_layers: str) -> SweepPlan:
    """FPE Self-Attn Inject's ``sweep`` resolved against ``model``: one setting per image, every layers
    value checked once (errors name the sweep's value). Settings the sweep leaves out keep the node's."""
    axes = parse_sweep(text if text is not None else "")
    if not axes:
        return SweepPlan(None, axes, end, selection.label)
    available = model_attn1_layers(model)
    chosen: dict[str, LayerSelection] = {}  # each layers value resolved once

    def resolve(value: str) -> LayerSelection:
        if value not in chosen:
            preset, custom = (value, custom_layers) if value in PRESETS else ("custom", value)
            name = f"sweep: layers value {value[:24]!r}"
            chosen[value] = choose_layers(model, preset, custom, name, name, available)
        return chosen[value]

    settings = []
    for combo in combinations(axes):
        layer_value = combo.get("layers")
        settings.append(SweepSetting(
            start=sweep_number("start", combo["start"]) if "start" in combo else start,
            end=sweep_number("end", combo["end"]) if "end" in combo else end,
            selection=resolve(layer_value) if layer_value is not None else selection,
            label=", ".join(value_label(name, value) for name, value in combo.items())))
    return SweepPlan(settings, axes, end, selection.label)


def _unquote(value: str) -> tuple[str, bool]:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].strip(), True
    return value, False


def parse_sweep(text: str) -> list[SweepAxis]:
    """The sweep's axes in the order written; [] for an empty sweep. Syntax errors name ``sweep``."""
    if not isinstance(text, str):
        raise FPEError(f"sweep: expected text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise FPEError(f"sweep: {len(text)} characters (at most {MAX_CHARS}): {_SYNTAX}")
    axes: list[SweepAxis] = []
    for part in _split(text, ";\n"):
        if not part.strip():
            continue
        if "=" not in part:
            raise FPEError(f"sweep: cannot read {part.strip()[:40]!r}: {_SYNTAX}")
        name, _, values = part.partition("=")
        name = name.strip().lower()
        if name not in AXES:
            raise FPEError(f"sweep: unknown setting {name[:24]!r}: sweep {', '.join(AXES)} ({_SYNTAX})")
        if any(axis.name == name for axis in axes):
            raise FPEError(f"sweep: {name} is named twice: list all its values once, e.g. {name}=a,b,c")
        items = []
        for raw in _split(values, ","):
            value, quoted = _unquote(raw)
            if not value:
                raise FPEError(f"sweep: {name} has an empty value: {_SYNTAX}")
            if quoted and name != "layers":
                raise FPEError(f"sweep: {name} takes plain numbers, not quoted text ({value[:24]!r})")
            items.append(value)
        axes.append(SweepAxis(name, tuple(items)))
    count = math.prod(len(axis.values) for axis in axes) if axes else 0
    if count > MAX_SETTINGS:
        raise FPEError(f"sweep: {count} settings (at most {MAX_SETTINGS} images in one batched run): sweep fewer values")
    return axes


def sweep_number(name: str, value: str) -> float:
    """A start/end value of the sweep, finite and in 0..1."""
    try:
        number = float(value)
    except ValueError:
        raise FPEError(f"sweep: {name} value {value[:24]!r} is not a number: {_SYNTAX}") from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise FPEError(f"sweep: {name} value {value[:24]!r} is out of range: give numbers from 0 to 1")
    return number


def combinations(axes: list[SweepAxis]) -> list[dict[str, str]]:
    """The settings of every image, first axis slowest (row-major grid order)."""
    return [dict(zip((a.name for a in axes), values, strict=True))
            for values in itertools.product(*(a.values for a in axes))]


def value_label(name: str, value: str) -> str:
    return f"{name}={value}"


def labels_json(axes: list[SweepAxis], single: str = "") -> str:
    """The grid's titles: rows are the product of all axes but the last, columns the last axis.
    Without a sweep: one image titled ``single``."""
    if not axes:
        return json.dumps({"fpe_sweep": 1, "rows": [""], "columns": [single], "row_setting": "",
                           "column_setting": ""})
    columns = [value_label(axes[-1].name, v) for v in axes[-1].values]
    rows = [", ".join(value_label(a.name, v) for a, v in zip(axes[:-1], values, strict=True))
            for values in itertools.product(*(a.values for a in axes[:-1]))]
    return json.dumps({"fpe_sweep": 1, "rows": rows, "columns": columns,
                       "row_setting": ", ".join(a.name for a in axes[:-1]), "column_setting": axes[-1].name})


def read_labels(text: str, name: str = "sweep_labels") -> tuple[list[str], list[str]]:
    """(row titles, column titles) from an Inject's ``sweep_labels``.

    Only what ``labels_json`` writes is read: a JSON object marked ``"fpe_sweep": 1`` whose rows and columns
    are lists of text (an API prompt's ``"abc"`` or ``[{...}, NaN]`` would otherwise be drawn as titles)."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        data = None

    def titles(key: str) -> list[str] | None:
        value = data.get(key)
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def text_or_absent(key: str) -> bool:  # the Inject writes these; a hand-made label set may leave them out
        return isinstance(data.get(key, ""), str)

    ok = (isinstance(data, dict) and type(data.get("fpe_sweep")) is int and data["fpe_sweep"] == 1
          and text_or_absent("row_setting") and text_or_absent("column_setting"))
    rows, columns = (titles("rows"), titles("columns")) if ok else (None, None)
    if rows is None or columns is None:
        raise FPEError(f"{name}: not the sweep_labels output of FPE Self-Attn Inject: connect that output")
    if not rows or not columns:
        raise FPEError(f"{name}: no rows or columns: connect the sweep_labels output of FPE Self-Attn Inject")
    # An API prompt can hand any text to this input: the Inject's limits hold here too, before a latent
    # or grid of that many images is allocated.
    if len(rows) * len(columns) > MAX_SETTINGS:
        raise FPEError(f"{name}: {len(rows)} x {len(columns)} = {len(rows) * len(columns)} settings (at most "
                       f"{MAX_SETTINGS} images in one batched run): connect the sweep_labels output of FPE Self-Attn "
                       "Inject, and sweep fewer values there")
    longest = max(map(len, rows + columns))
    if longest > MAX_TITLE_CHARS:
        raise FPEError(f"{name}: a title of {longest} characters (at most {MAX_TITLE_CHARS}): connect the "
                       "sweep_labels output of FPE Self-Attn Inject")
    return rows, columns


def sweep_latent(latent: dict, count: int) -> dict:
    """``latent`` (one image) repeated ``count`` times, every copy with the first image's noise.

    ComfyUI draws a batch's noise image by image from ``batch_index`` when the latent has one, so
    repeated indices give every row the noise a batch of 1 gets: each image of the sweep then starts
    where the source did (an Empty Latent Image batch gives every image other noise)."""
    samples = latent["samples"]
    if samples.shape[0] != 1:
        raise FPEError(f"latent: FPE Sweep Latent repeats one image; this latent has {samples.shape[0]}: give it "
                       "the source's latent (Empty Latent Image with batch_size 1, or DDIM Invert's latent)")
    out = dict(latent)
    out["samples"] = samples.repeat(count, *([1] * (samples.ndim - 1)))
    out["batch_index"] = [int(latent.get("batch_index", [0])[0])] * count
    mask = latent.get("noise_mask")
    if isinstance(mask, torch.Tensor) and mask.shape[0] == 1:
        out["noise_mask"] = mask.repeat(count, *([1] * (mask.ndim - 1)))
    return out


# --- the grid -------------------------------------------------------------------------------------


def draw_grid(images: torch.Tensor, rows: list[str], columns: list[str], source: torch.Tensor | None = None):
    """IMAGE [rows*columns, H, W, 3] laid out row-major with titles; ``source`` (one image) as an extra
    first column titled 'source'. Returns an IMAGE [1, H', W', 3]."""
    count, height, width = images.shape[0], images.shape[1], images.shape[2]
    if count != len(rows) * len(columns):
        raise FPEError(f"images: {count} images, but sweep_labels describe {len(rows)} x {len(columns)} = "
                       f"{len(rows) * len(columns)} settings: connect the decoded images of the sampler that used "
                       "this Inject's model (its latent batch must hold one image per setting)")
    font = drawing.font(max(11, min(width, 512) // 20))
    line = int(drawing.text_height(font)) + 4
    extra = 1 if source is not None else 0
    titles = [drawing.wrap_text(font, title, width - 4, 2) for title in (["source"] if extra else []) + columns]
    header = max(len(t) for t in titles) * line + 8
    row_titled = any(rows)
    margin = min(max(width // 2, 96), 240) if row_titled else 0
    pad = 4
    grid_w = margin + (len(columns) + extra) * (width + pad) + pad
    grid_h = header + len(rows) * (height + pad) + pad
    if max(grid_w, grid_h) > MAX_SIDE:
        raise FPEError(f"images: {len(rows)} x {len(columns) + extra} images of {width}x{height} px make a grid "
                       f"{grid_w}x{grid_h} px (width x height; at most {MAX_SIDE} px a side, ComfyUI's largest "
                       "image): scale the images down before the grid (e.g. Upscale Image By 0.5), or sweep fewer "
                       "values of the last setting (the columns)")
    canvas = Image.new("RGB", (grid_w, grid_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def cell_x(column):
        return margin + pad + column * (width + pad)

    for j, lines in enumerate(titles):
        for k, text in enumerate(lines):
            draw.text((cell_x(j) + 2, 4 + k * line), text, fill=(0, 0, 0), font=font)
    src_picture = None
    if source is not None:
        if tuple(source.shape[1:3]) != (height, width):
            source = torch.nn.functional.interpolate(source[:1].movedim(-1, 1).float(), size=(height, width),
                                                     mode="bilinear", align_corners=False).movedim(1, -1)
        src_picture = drawing.to_picture(source[0])
    for i, row in enumerate(rows):
        y = header + pad + i * (height + pad)
        if row_titled:
            for k, text in enumerate(drawing.wrap_text(font, row, margin - 8, max(1, height // line))):
                draw.text((4, y + 2 + k * line), text, fill=(0, 0, 0), font=font)
        if src_picture is not None:
            canvas.paste(src_picture, (cell_x(0), y))
        for j in range(len(columns)):
            canvas.paste(drawing.to_picture(images[i * len(columns) + j]), (cell_x(j + extra), y))
    return drawing.to_image(canvas)

