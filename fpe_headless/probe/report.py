"""Probe results as the paper shows them (Tables 1-3, supplement Tables 6-9), as a picture, and as the
paper's claim measured on the user's checkpoint. Plain numpy + PIL; no ComfyUI, no matplotlib.

* Tables (markdown and CSV): a row per class, a column per layer ("Layer 1" ... in forward order, as the
  paper numbers its 16 SD1.5 layers), "Avg." last (the class's mean over layers), and a final "Avg." row
  (each layer's mean over classes). Markdown rounds to 2 decimals like the paper and names the UNet layer
  behind each "Layer k" in a legend line; CSV keeps 6 significant figures so it reads back unchanged.
* Heatmap: one panel per result, classes x layers, coloured on a fixed 0..1 scale (viridis: perceptually
  even and readable in grey) with the value printed in each cell; the colour bar under each panel marks
  that result's chance level.
* Summary: cross- vs self-attention accuracy per layer, side by side with chance, and whether the paper's
  claim holds (see ``claim_verdict``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from ..drawing import ink_width, load_font
from .train import ProbeResult

AVG = "Avg."

# --- tables ------------------------------------------------------------------------------------------------


def layer_label(k: int) -> str:
    """The paper's column name of the k-th layer (0-based k)."""
    return f"Layer {k + 1}"


def class_table(result: ProbeResult) -> np.ndarray:
    """[C + 1, L + 1]: per-class accuracy by layer, the class's mean over layers last, the layers' mean over
    classes as the last row (its last cell the mean of all cells). NaN cells (a class missing from an
    out-of-distribution test set) are left out of the means."""
    per_class = np.asarray(result.per_class, dtype=float).T  # [C, L]
    n_classes, n_layers = per_class.shape
    table = np.full((n_classes + 1, n_layers + 1), math.nan)
    table[:n_classes, :n_layers] = per_class
    with np.errstate(all="ignore"):
        if n_layers:
            table[:n_classes, n_layers] = _nanmean(per_class, axis=1)
        if n_classes:
            table[n_classes, :n_layers] = _nanmean(per_class, axis=0)
            table[n_classes, n_layers] = _nanmean(per_class.ravel(), axis=0)
    return table


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray | float:
    # np.nanmean warns on all-NaN slices; an all-NaN slice simply stays NaN here.
    counts = np.sum(~np.isnan(values), axis=axis)
    sums = np.nansum(values, axis=axis)
    return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)


def default_title(result: ProbeResult) -> str:
    """E.g. "Cross-attention, set 'color_car', word 'color'" (plus the test set out of distribution)."""
    meta = result.dataset or {}
    kind = {"cross": "Cross-attention", "self": "Self-attention"}.get(meta.get("kind"), "Attention")
    title = f"{kind}, set '{meta.get('set', '?')}', word '{meta.get('word', '?')}'"
    if result.ood:
        title += f", tested on set '{(result.test_dataset or {}).get('set', '?')}'"
    if result.settings.shuffled_labels:
        title += " (shuffled labels)"
    return title


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _two_decimals(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _probe_line(result: ProbeResult) -> str:
    settings = result.settings
    per_class = sorted(set(result.test_per_class))
    counts = f"{per_class[0]} per class" if len(per_class) == 1 else f"{min(per_class)}-{max(per_class)} per class"
    line = (f"Test samples: {result.n_test} ({counts}), trained on {result.n_train}; chance {result.chance:.2f}. "
            f"Probe: MLP hidden {settings.hidden}, Adam lr {settings.lr:g}, {settings.epochs} epochs, "
            f"batch {settings.batch_size}, seed {settings.seed}")
    return line + (", labels shuffled (control)." if settings.shuffled_labels else ".")


def result_markdown(title: str, result: ProbeResult, layers: Sequence[int] | None = None,
                    classes: Sequence[str] | None = None) -> str:
    """One sub-table: title, the class x layer table, the layer legend, the probe's settings. ``layers``
    (0-based, kept in their numbering) and ``classes`` pick a part, as Tables 1-3 show Layers 3, 6, 9, 10,
    12, 14, 16 of five classes; the Avg. column and row are then over what is shown."""
    columns = list(layers) if layers is not None else list(range(len(result.layers)))
    rows = [result.classes.index(c) for c in classes] if classes is not None else list(range(len(result.classes)))
    part = np.asarray(result.per_class, dtype=float)[np.ix_(columns, rows)]  # [L', C']
    shown = replace(result, classes=[result.classes[i] for i in rows], layers=[result.layers[k] for k in columns],
                    per_class=part)
    table = class_table(shown)
    header = ["Class", *(layer_label(k) for k in columns), AVG]
    lines = [f"### {_md(title)}", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|"]
    for name, row in zip([*shown.classes, AVG], table, strict=True):
        lines.append("| " + " | ".join([_md(name), *(_two_decimals(v) for v in row)]) + " |")
    legend = ", ".join(f"{layer_label(k)}: {result.layers[k]}" for k in columns)
    lines += ["", f"Layers (forward order): {_md(legend)}.", "", _probe_line(result)]
    return "\n".join(lines)


def tables_markdown(results: Sequence[tuple[str, ProbeResult]], layers: Sequence[int] | None = None,
                    classes: Sequence[str] | None = None) -> str:
    """Sub-tables like the paper's Tables 1-3 / 6-9, one per (title, result); see ``result_markdown``."""
    return "\n\n".join(result_markdown(title, result, layers, classes if classes is None else
                                       [c for c in classes if c in result.classes])
                         for title, result in results) + "\n"


def write_csv(result: ProbeResult, path: str | os.PathLike) -> None:
    """The class x layer table (with the Avg. column and row) as CSV, 6 significant figures, NaN as "nan"."""
    table = class_table(result)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Class", *(layer_label(k) for k in range(len(result.layers))), AVG])
        for name, row in zip([*result.classes, AVG], table, strict=True):
            writer.writerow([name, *(f"{v:.6g}" for v in row)])


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """A table ``write_csv`` wrote: row names (classes, then "Avg."), column names, values [rows, columns]."""
    with open(path, newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    return [row[0] for row in rows], header[1:], np.array([[float(v) for v in row[1:]] for row in rows])


# --- heatmap -----------------------------------------------------------------------------------------------

# matplotlib's viridis sampled at 0, 0.1, ..., 1, linearly interpolated between.
_VIRIDIS = ("440154", "482475", "414487", "355f8d", "2a788e", "21918c", "22a884", "44bf70", "7ad151", "bddf26",
            "fde725")
_ANCHORS = np.array([[int(c[i:i + 2], 16) for i in (0, 2, 4)] for c in _VIRIDIS], dtype=float)
NAN_COLOUR = (160, 160, 160)
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)

CELL_W, CELL_H = 44, 22
MARGIN = 12
TITLE_H = 24
HEADER_H = 18
BAR_W, BAR_H = 220, 12
LEGEND_H = 44  # gap, colour bar, tick labels
FONT_SIZE = 12


def accuracy_colour(value: float) -> tuple[int, int, int]:
    """The heatmap colour of an accuracy (0..1, clamped; NaN grey)."""
    if math.isnan(value):
        return NAN_COLOUR
    place = min(max(value, 0.0), 1.0) * (len(_ANCHORS) - 1)
    low = min(int(place), len(_ANCHORS) - 2)
    frac = place - low
    colour = _ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac
    return tuple(int(round(c)) for c in colour)


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    # Black on the light end of the scale, white on the dark end (Rec. 601 luma).
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return INK if luma > 140 else BACKGROUND


@dataclass
class HeatmapPanel:
    title: str
    top: int  # the panel's first pixel row
    grid_left: int  # the cells' top-left corner
    grid_top: int
    rows: int  # classes
    columns: int  # layers

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), right/bottom exclusive; the last pixel row and column are grid lines."""
        left = self.grid_left + column * CELL_W
        top = self.grid_top + row * CELL_H
        return left, top, left + CELL_W, top + CELL_H


@dataclass
class HeatmapLayout:
    size: tuple[int, int]
    panels: list[HeatmapPanel]


def accuracy_heatmap(results: Sequence[tuple[str, ProbeResult]], path: str | os.PathLike) -> HeatmapLayout:
    """A PNG of accuracy by class (rows) and layer (columns, numbered 1..L), one titled panel per result."""
    font = load_font(FONT_SIZE)
    title_font = load_font(FONT_SIZE + 2)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max((ink_width(measure, name, font) for _, r in results for name in [*r.classes, "Layer"]),
                  default=0) + 8
    panels, top, width = [], MARGIN, 0
    for title, result in results:
        rows, columns = len(result.classes), len(result.layers)
        panels.append(HeatmapPanel(title, top, MARGIN + label_w, top + TITLE_H + HEADER_H, rows, columns))
        width = max(width, MARGIN + label_w + columns * CELL_W + MARGIN,
                    MARGIN + label_w + BAR_W + 8 + ink_width(measure, _chance_label(result.chance), font) + MARGIN,
                    MARGIN + ink_width(measure, title, title_font) + MARGIN)
        top += TITLE_H + HEADER_H + rows * CELL_H + LEGEND_H
    layout = HeatmapLayout((max(width, 1), top), panels)  # the last legend's own gap is the bottom margin

    image = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    for panel, (_, result) in zip(panels, results, strict=True):
        draw.text((MARGIN, panel.top), panel.title, fill=INK, font=title_font)
        draw.text((panel.grid_left - 6, panel.grid_top - 3), "Layer", fill=INK, font=font, anchor="rs")
        for column in range(panel.columns):
            left, _, right, _ = panel.cell_box(0, column)
            draw.text(((left + right) / 2, panel.grid_top - 3), str(column + 1), fill=INK, font=font, anchor="ms")
        for row, name in enumerate(result.classes):
            _, upper, _, lower = panel.cell_box(row, 0)
            draw.text((panel.grid_left - 6, (upper + lower) / 2), name, fill=INK, font=font, anchor="rm")
            for column in range(panel.columns):
                value = float(result.per_class[column][row])
                fill = accuracy_colour(value)
                left, upper, right, lower = panel.cell_box(row, column)
                draw.rectangle((left, upper, right - 2, lower - 2), fill=fill)
                draw.text(((left + right - 1) / 2, (upper + lower - 1) / 2), _two_decimals(value),
                          fill=_text_colour(fill), font=font, anchor="mm")
        _colour_bar(draw, panel, result.chance, font)
    image.save(path)
    return layout


def _colour_bar(draw: ImageDraw.ImageDraw, panel: HeatmapPanel, chance: float, font) -> None:
    left = panel.grid_left
    top = panel.grid_top + panel.rows * CELL_H + 8
    for x in range(BAR_W):
        draw.line((left + x, top, left + x, top + BAR_H - 1), fill=accuracy_colour(x / (BAR_W - 1)))
    draw.rectangle((left - 1, top - 1, left + BAR_W, top + BAR_H), outline=INK)
    for value in (0.0, 0.5, 1.0):
        draw.text((left + value * (BAR_W - 1), top + BAR_H + 2), f"{value:g}", fill=INK, font=font, anchor="ma")
    chance_x = left + chance * (BAR_W - 1)
    draw.line((chance_x, top - 4, chance_x, top + BAR_H + 3), fill=(255, 0, 0), width=2)
    draw.text((left + BAR_W + 8, top + BAR_H / 2), _chance_label(chance), fill=INK, font=font, anchor="lm")


def _chance_label(chance: float) -> str:
    return f"accuracy; red line: chance {chance:.2f}"


# --- cross vs self -------------------------------------------------------------------------------------------

# The claim "cross maps classify the word well, self maps much less", as numbers. Accuracy is measured as
# lift over chance, (accuracy - chance) / (1 - chance): 0 at chance, 1 when perfect, comparable across class
# counts. "Well": at least halfway from chance to perfect. "Much less": at most half of the cross lift.
# The paper's own numbers pass easily: colour cross ~0.8-0.9 (lift ~0.8), self ~0.1 (lift ~0); animals
# cross ~0.95 (lift ~0.94), self ~0.39 (lift ~0.33).
WELL_LIFT = 0.5
MUCH_LESS_RATIO = 0.5


def lift(accuracy: float, chance: float) -> float:
    return (accuracy - chance) / (1.0 - chance)


def claim_verdict(cross: ProbeResult, self_: ProbeResult) -> str:
    """"holds", "cross-weak" (cross maps do not classify well) or "self-strong" (self maps come close)."""
    chance = cross.chance
    cross_lift = lift(float(np.mean(cross.accuracy)), chance)
    self_lift = lift(float(np.mean(self_.accuracy)), chance)
    if cross_lift < WELL_LIFT:
        return "cross-weak"
    if self_lift > MUCH_LESS_RATIO * cross_lift:
        return "self-strong"
    return "holds"


def pair_layers(cross_layers: Sequence[str], self_layers: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """Rows of (cross layer, self layer) for the side-by-side table.

    By name when the lists share names: the builder names a layer by its transformer block (e.g. "in4.0"),
    and a block's attn1 (self) and attn2 (cross) belong on one row; a layer only one list has gets a row
    of its own, in forward order. Lists without a shared name are paired by position instead.
    """
    if not set(cross_layers) & set(self_layers):
        n = max(len(cross_layers), len(self_layers))
        return [(cross_layers[k] if k < len(cross_layers) else None, self_layers[k] if k < len(self_layers) else None)
                for k in range(n)]
    rows, next_self = [], 0
    for name in cross_layers:
        if name not in self_layers:
            rows.append((name, None))
            continue
        position = self_layers.index(name)
        rows += [(None, s) for s in self_layers[next_self:position] if s not in cross_layers]
        rows.append((name, name))
        next_self = max(next_self, position + 1)
    rows += [(None, s) for s in self_layers[next_self:] if s not in cross_layers]
    return rows


def summary_markdown(cross: ProbeResult, self_: ProbeResult) -> str:
    """Cross- vs self-attention accuracy per layer (overall test accuracy), chance, and the verdict."""
    if cross.classes != self_.classes:
        raise ValueError(f"cross and self results have different classes ({cross.classes} vs {self_.classes})")
    chance = cross.chance
    cross_acc = dict(zip(cross.layers, cross.accuracy, strict=True))
    self_acc = dict(zip(self_.layers, self_.accuracy, strict=True))
    meta = cross.dataset or {}
    heading = f"### Cross- vs self-attention, set '{meta.get('set', '?')}', word '{meta.get('word', '?')}'"
    if meta.get("checkpoint"):
        heading += f", {meta['checkpoint']}"
    lines = [_md(heading), "",
             "| Layer | Cross-attention | Self-attention | Cross - self | Chance |",
             "|:---|---:|---:|---:|---:|"]

    def cell(value):
        return "—" if value is None else f"{value:.2f}"

    for cross_name, self_name in pair_layers(cross.layers, self_.layers):
        both = cross_name and self_name and cross_name != self_name  # paired by position
        name = f"{cross_name} / {self_name}" if both else cross_name or self_name
        c = float(cross_acc[cross_name]) if cross_name else None
        s = float(self_acc[self_name]) if self_name else None
        difference = c - s if c is not None and s is not None else None
        lines.append(f"| {_md(name)} | {cell(c)} | {cell(s)} | {cell(difference)} | {chance:.2f} |")
    cross_mean, self_mean = float(np.mean(cross.accuracy)), float(np.mean(self_.accuracy))
    lines.append(f"| Mean | {cross_mean:.2f} | {self_mean:.2f} | {cross_mean - self_mean:.2f} | {chance:.2f} |")
    lines += ["", _verdict_sentence(claim_verdict(cross, self_), cross, self_, cross_mean, self_mean, chance)]
    return "\n".join(lines) + "\n"


def _verdict_sentence(verdict: str, cross: ProbeResult, self_: ProbeResult, cross_mean: float, self_mean: float,
                      chance: float) -> str:
    counts = f"{len(cross.layers)} cross and {len(self_.layers)} self layers"
    if verdict == "holds":
        return (f"The paper's claim holds on this checkpoint: cross-attention maps classify the word well "
                f"(mean accuracy {cross_mean:.2f}) and self-attention maps much less ({self_mean:.2f}); "
                f"chance {chance:.2f}, {counts}.")
    if verdict == "cross-weak":
        needed = chance + WELL_LIFT * (1 - chance)
        return (f"The paper's claim does not hold on this checkpoint: cross-attention maps classify the word only "
                f"weakly (mean accuracy {cross_mean:.2f}, below {needed:.2f}, halfway from chance to 1); "
                f"self-attention maps {self_mean:.2f}; chance {chance:.2f}, {counts}.")
    return (f"The paper's claim does not hold on this checkpoint: self-attention maps classify the word nearly as "
            f"well as cross-attention maps (mean accuracy {self_mean:.2f} vs {cross_mean:.2f}); "
            f"chance {chance:.2f}, {counts}.")
