"""A batch's results (issue 15): the per-item CSV, the markdown summary laid out like the paper's
Tables 4 and 5, and contact sheets of source | edit pairs. Plain Python + numpy + PIL; no ComfyUI.

* CSV: one row per item in ``RESULT_COLUMNS`` order (image paths relative to the batch folder). Floats
  are written with 6 significant figures; ``None`` is an empty cell; NaN is written ``nan`` (a metric that
  was computed but is undefined, e.g. PIE-Bench's all-edited mask) so it stays apart from "not computed".
* Summary: means per (method, dataset) over the items that ran ("ok") and have the metric; NaN and
  missing values are skipped and the count of values used is kept, so a mean never hides how many items
  it stands for. Failed items only count in ``items``/``failed``.
* Markdown: one method -> Table 4's layout (rows = datasets); several -> Table 5's (rows = methods, a
  column group per dataset, then seconds per edit per dataset). A metric nobody has is left out.
  PIE-Bench's columns use its scales (structure distance x10^3, LPIPS x10^3, MSE x10^4, SSIM x10^2; PSNR
  and CLIP as they are) so its published numbers compare, and a "Scored with" line names the model of
  each model-based column (the ``*_model`` cells: folder name + SHA-256 fingerprint, see ``metrics``); a
  model-based column that is absent gets a line saying which option fills it.
* Contact sheets: pairs "source | edit", each image fitted into a ``cell`` square, a caption of at most
  two lines under the pair, ``columns`` pairs per row, ``per_sheet`` pairs per PNG.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from ..drawing import CAPTION_LINES, fit_lines, load_font, rgb

# --- the per-item CSV ------------------------------------------------------------------------------------

METRIC_COLUMNS = ("clip_score", "clip_edited", "clip_directional", "edge_ssim", "structure_distance", "bg_psnr",
                  "bg_lpips", "bg_mse", "bg_ssim")
# which model scored a metric: the row's cell names it (metrics' ``label``); weight-free metrics have none
MODEL_COLUMNS = {"clip_model": ("clip_score", "clip_edited", "clip_directional"),
                 "structure_model": ("structure_distance",), "lpips_model": ("bg_lpips",)}
RESULT_COLUMNS = (
    "id", "dataset", "method", "status", "source_prompt", "target_prompt", "seed", "seconds",
    *METRIC_COLUMNS, *MODEL_COLUMNS,
    "source_image", "edit_image", "where", "error",
)
INT_COLUMNS = frozenset({"seed"})
FLOAT_COLUMNS = frozenset({"seconds", *METRIC_COLUMNS})
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_NOT_RUN = "not run"  # an item of the dataset with no result (a stopped batch): counted, not failed


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # a bool is an int to Python; keep it readable
        return str(value).lower()
    if isinstance(value, numbers.Integral):  # numpy integers too: a seed must not become 1.23457e+09
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)  # numpy floats included
        if math.isnan(number):
            return "nan"
        return f"{number:.6g}"  # 6 significant figures; "inf"/"-inf" stay readable and parse back
    return str(value)


def _columns_for(rows: Sequence[dict]) -> list[str]:
    # Keys the batch adds beyond the standard set still reach the file, after the standard columns.
    extra: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in RESULT_COLUMNS:
                extra.setdefault(key, None)
    return [*RESULT_COLUMNS, *extra]


def write_results_csv(rows: list[dict], path: Path) -> None:
    """Write ``rows`` atomically (a temp file beside ``path``, then a rename): a killed batch never leaves
    a half-written CSV behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = _columns_for(rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_cell(row.get(column)) for column in columns])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse(column: str, text: str):
    if text == "":
        return None
    if column in INT_COLUMNS:
        try:
            return int(text)
        except ValueError:
            return float(text)  # a seed someone wrote as 1e+06 still reads
    if column in FLOAT_COLUMNS:
        return float(text)
    return text


def read_results_csv(path: Path) -> list[dict]:
    """The rows ``write_results_csv`` wrote: numbers back as int/float, empty cells as ``None``."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [{column: _parse(column, text) for column, text in row.items()} for row in csv.DictReader(handle)]


# --- summary ---------------------------------------------------------------------------------------------

@dataclass
class Summary:
    dataset: str
    method: str
    items: int  # all items of the group, failed included
    ok: int
    failed: int  # items that ran and failed (``items - ok - not_run``)
    means: dict[str, float] = field(default_factory=dict)  # only metrics with at least one value
    counts: dict[str, int] = field(default_factory=dict)  # every metric: how many values its mean is over
    seconds_per_edit: float | None = None  # mean wall time of the ok items
    # model column -> {label: how many of the means' values it scored} ("unrecorded" for rows without one)
    models: dict[str, dict[str, int]] = field(default_factory=dict)
    not_run: int = 0  # items without a result (status "not run"): in ``items``, not in ``failed``


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


UNRECORDED = "unrecorded"


def _models(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per model column, the labels of the rows that have one of its metrics (a row from before labels were
    recorded counts as "unrecorded")."""
    models: dict[str, dict[str, int]] = {}
    for column, metric_names in MODEL_COLUMNS.items():
        for row in rows:
            if any(_number(row.get(m)) is not None for m in metric_names):
                label = str(row.get(column) or UNRECORDED)
                models.setdefault(column, {}).setdefault(label, 0)
                models[column][label] += 1
    return models


def summarize(rows: Iterable[dict]) -> list[Summary]:
    """One ``Summary`` per (method, dataset), in the order the pairs first appear in ``rows``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        key = (str(row.get("method") or ""), str(row.get("dataset") or ""))
        groups.setdefault(key, []).append(row)
    summaries = []
    for (method, dataset), group in groups.items():
        ok_rows = [row for row in group if row.get("status") == STATUS_OK]
        means, counts = {}, {}
        for metric in METRIC_COLUMNS:
            # finite values only: one identical background (PSNR = inf) would make the whole mean inf
            values = [v for v in (_number(row.get(metric)) for row in ok_rows) if v is not None and math.isfinite(v)]
            counts[metric] = len(values)
            if values:
                means[metric] = _mean(values)
        seconds = [v for v in (_number(row.get("seconds")) for row in ok_rows) if v is not None]
        not_run = sum(1 for row in group if row.get("status") == STATUS_NOT_RUN)
        summaries.append(Summary(
            dataset=dataset, method=method, items=len(group), ok=len(ok_rows),
            failed=len(group) - len(ok_rows) - not_run,
            means=means, counts=counts, seconds_per_edit=_mean(seconds) if seconds else None,
            models=_models(ok_rows), not_run=not_run,
        ))
    return summaries


# --- markdown --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Column:
    metric: str
    header: str
    scale: float
    decimals: int
    legend: str


# The paper prints CS with 2 decimals and CDS with 4; PIE-Bench's columns keep its scales and its 2 decimals
# (its order: structure, PSNR, LPIPS, MSE, SSIM, CLIP whole = CS, CLIP edited).
MARKDOWN_COLUMNS = (
    _Column("clip_score", "CS ↑", 1.0, 2, "CS = 100·max(cos, 0) of the edit image and the target text "
                                           "(PIE-Bench's CLIP Whole)"),
    _Column("clip_edited", "CLIP edited ↑", 1.0, 2,
            "CLIP edited = CS of the edit times the edit mask (PIE-Bench's CLIP Edited)"),
    _Column("clip_directional", "CDS ↑", 1.0, 4,
            "CDS = cos(ΔI, ΔT), ΔI = edit − source image embedding, ΔT = target − source text embedding"),
    _Column("edge_ssim", "Edge SSIM ↑", 1.0, 4,
            "Edge SSIM = SSIM of the Sobel edge maps of source and edit (a weight-free structure figure)"),
    _Column("structure_distance", "Structure ×10³ ↓", 1e3, 2,
            "Structure = MSE of the DINO ViT last-layer key self-similarities of source and edit (PIE-Bench)"),
    _Column("bg_psnr", "BG PSNR ↑", 1.0, 2, "BG = outside the edit mask, PIE-Bench's definition"),
    _Column("bg_lpips", "BG LPIPS ×10³ ↓", 1e3, 2, ""),
    _Column("bg_mse", "BG MSE ×10⁴ ↓", 1e4, 2, ""),
    _Column("bg_ssim", "BG SSIM ×10² ↑", 100.0, 2,
            "BG SSIM = mean over the windows wholly inside the image (torchmetrics ≤ 1.4.1, as PIE-Bench)"),
)
BG_LEGEND = MARKDOWN_COLUMNS[5].legend
SECONDS_HEADER = "s / edit ↓"
SECONDS_LEGEND = "s / edit = mean wall time of a successful edit"
CLIP_HINT = "CS/CDS: give --clip DIR (a transformers CLIP folder) to score the edits."
DINO_HINT = ("Structure ×10³ (PIE-Bench's structure distance): skipped; give --dino DIR (facebook/dino-vitb8 saved "
             "with ViTModel.save_pretrained) to score it.")
LPIPS_HINT = ("BG LPIPS ×10³: skipped; give --lpips DIR (LPIPS' squeeze.pth and torchvision's squeezenet1_1 "
              "checkpoint, as PIE-Bench) to score it.")
MODEL_NAMES = {"clip_model": "CLIP (CS, CLIP edited, CDS)", "structure_model": "Structure",
               "lpips_model": "BG LPIPS"}
MISSING = "-"  # as the paper marks a number it does not have


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _format(value: float | None, column: _Column | None, count: int | None = None, ok: int | None = None) -> str:
    if value is None:
        return MISSING
    scaled = value * (column.scale if column else 1.0)
    text = "∞" if math.isinf(scaled) and scaled > 0 else f"{scaled:.{column.decimals if column else 2}f}"
    if count is not None and ok is not None and count < ok:
        text += f" (n={count})"  # the mean stands for fewer items than ran
    return text


def _metric_cell(summary: Summary | None, column: _Column) -> str:
    if summary is None or column.metric not in summary.means:
        return MISSING
    return _format(summary.means[column.metric], column, summary.counts.get(column.metric), summary.ok)


def _present(summaries: Sequence[Summary]) -> list[_Column]:
    return [c for c in MARKDOWN_COLUMNS if any(s.counts.get(c.metric, 0) for s in summaries)]


def _table(header: list[str], align_left: int, body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if i < align_left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def _table4(summaries: Sequence[Summary]) -> tuple[list[str], list[_Column]]:
    columns = _present(summaries)
    with_seconds = any(s.seconds_per_edit is not None for s in summaries)
    header = ["Dataset", "Items (ok/all)", *(c.header for c in columns)] + ([SECONDS_HEADER] if with_seconds else [])
    body = []
    for s in summaries:
        row = [_escape(s.dataset) or MISSING, f"{s.ok}/{s.items}", *(_metric_cell(s, c) for c in columns)]
        if with_seconds:
            row.append(_format(s.seconds_per_edit, None))
        body.append(row)
    return _table(header, 1, body), columns


def _table5(summaries: Sequence[Summary]) -> tuple[list[str], list[_Column]]:
    methods = list(dict.fromkeys(s.method for s in summaries))
    datasets = list(dict.fromkeys(s.dataset for s in summaries))
    by_key = {(s.method, s.dataset): s for s in summaries}
    # GitHub tables have one header row, so a group's name leads each of its column names.
    groups = {d: _present([s for s in summaries if s.dataset == d]) for d in datasets}
    timed = [d for d in datasets if any(s.seconds_per_edit is not None for s in summaries if s.dataset == d)]
    header = ["Method", "Items (ok/all)"]
    header += [f"{_escape(d)} {c.header}" for d in datasets for c in groups[d]]
    header += [f"{_escape(d)} {SECONDS_HEADER}" for d in timed]
    body = []
    for method in methods:
        mine = [s for s in summaries if s.method == method]
        row = [_escape(method) or MISSING, f"{sum(s.ok for s in mine)}/{sum(s.items for s in mine)}"]
        row += [_metric_cell(by_key.get((method, d)), c) for d in datasets for c in groups[d]]
        row += [_format(getattr(by_key.get((method, d)), "seconds_per_edit", None), None) for d in timed]
        body.append(row)
    used = [c for c in MARKDOWN_COLUMNS if any(c in cols for cols in groups.values())]
    return _table(header, 1, body), used


def _scored_with(summaries: Sequence[Summary], shown: set[str]) -> list[str]:
    """"Scored with: CLIP (...): name (sha256 ...); ..." for the model columns of the metrics shown; a column
    scored by several models lists each with its count."""
    parts = []
    for column, metric_names in MODEL_COLUMNS.items():
        if not shown & set(metric_names):
            continue
        labels: dict[str, int] = {}
        for s in summaries:
            for label, n in s.models.get(column, {}).items():
                labels[label] = labels.get(label, 0) + n
        if not labels:
            continue
        if len(labels) == 1:
            parts.append(f"{MODEL_NAMES[column]}: {_escape(next(iter(labels)))}")
        else:
            mixed = ", ".join(f"{_escape(label)} ×{n}" for label, n in labels.items())
            parts.append(f"{MODEL_NAMES[column]}: MIXED, {mixed} items (`fpe eval --recompute` rescores every item with one model)")
    if not parts:
        return []
    return ["Scored with: " + "; ".join(parts) + ".", ""]


def summary_markdown(summaries: Sequence[Summary], title: str | None = None) -> str:
    """The summary as GitHub markdown: Table 4's layout for one method, Table 5's for several."""
    lines = [f"## {title}", ""] if title else []
    if not summaries:
        return "\n".join(lines + ["_No results._", ""])
    methods = list(dict.fromkeys(s.method for s in summaries))
    if len(methods) == 1:
        if methods[0]:
            lines += [f"Method: {_escape(methods[0])}", ""]
        table, columns = _table4(summaries)
    else:
        table, columns = _table5(summaries)
    lines += table + [""]
    metrics = {c.metric for c in columns}
    if not metrics & {"clip_score", "clip_directional"} and any(s.ok for s in summaries):
        lines += [CLIP_HINT, ""]
    if "structure_distance" not in metrics and any(s.ok for s in summaries):
        lines += [DINO_HINT, ""]
    if "bg_lpips" not in metrics and metrics & {"bg_psnr", "bg_mse", "bg_ssim"}:
        lines += [LPIPS_HINT, ""]
    lines += _scored_with(summaries, metrics)
    legend = [c.legend for c in columns if c.legend]
    if metrics & {"bg_lpips", "bg_ssim", "bg_mse"} and "bg_psnr" not in metrics:
        legend.append(BG_LEGEND)
    if any(s.seconds_per_edit is not None for s in summaries):
        legend.append(SECONDS_LEGEND)
    if any(0 < s.counts.get(c.metric, 0) < s.ok for s in summaries for c in columns):
        legend.append("(n=k): the mean is over the k items with a finite value (an identical background's PSNR "
                      "is infinite; an all-edited mask leaves none)")
    if legend:
        lines += ["; ".join(legend) + ".", ""]
    failed = [s for s in summaries if s.failed]
    if failed:
        total = sum(s.failed for s in failed)
        where = "; ".join(f"{_escape(' on '.join(p for p in (s.method, s.dataset) if p)) or 'all'}: {s.failed}"
                          for s in failed)
        lines += [f"Failed items: {total} of {sum(s.items for s in summaries)} ({where}); "
                  f"their errors are in the CSV's error column.", ""]
    not_run = [s for s in summaries if s.not_run]
    if not_run:
        total = sum(s.not_run for s in not_run)
        where = "; ".join(f"{_escape(' on '.join(p for p in (s.method, s.dataset) if p)) or 'all'}: {s.not_run} "
                          "not run" for s in not_run)
        lines += [f"Not run: {total} of {sum(s.items for s in summaries)} items ({where}); the means stand for the "
                  "items that ran; run the batch again (the same command) to run them.", ""]
    return "\n".join(lines)


# --- contact sheets --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SheetEntry:
    source: Path | None
    edit: Path | None  # None: the item failed (a grey "failed" cell)
    caption: str


SHEET_MARGIN = 12  # around the sheet and between pairs
PAIR_GUTTER = 4  # between the source and the edit of one pair
BACKGROUND = (255, 255, 255)
LETTERBOX = (236, 236, 236)  # the unused part of a cell: light, so a failed cell's grey stands out
FAILED_GREY = (128, 128, 128)
TEXT = (20, 20, 20)


def caption_font_size(cell: int) -> int:
    return max(10, round(cell / 16))


def caption_line_height(cell: int) -> int:
    return caption_font_size(cell) + max(3, caption_font_size(cell) // 3)


def pair_size(cell: int) -> tuple[int, int]:
    """Width and height of one captioned pair (the sheet is a grid of these, margins between)."""
    return 2 * cell + PAIR_GUTTER, cell + CAPTION_LINES * caption_line_height(cell) + PAIR_GUTTER


def _fitted(path: Path | None, cell: int) -> Image.Image | None:
    """The image scaled so its long side is ``cell`` px, or None when it is missing or unreadable."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image = rgb(image)  # a 16-bit PNG scaled, not clipped to white
    except (OSError, ValueError):
        return None
    scale = cell / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS  # tiny outputs stay crisp
    return image.resize(size, resample)


def _draw_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, image: Image.Image | None, x: int, y: int,
               cell: int, font, empty_label: str) -> None:
    if image is None:
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=FAILED_GREY)
        left, top, right, bottom = draw.textbbox((0, 0), empty_label, font=font)
        draw.text((x + (cell - (right - left)) // 2 - left, y + (cell - (bottom - top)) // 2 - top), empty_label,
                  fill=BACKGROUND, font=font)
        return
    draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=LETTERBOX)
    sheet.paste(image, (x + (cell - image.width) // 2, y + (cell - image.height) // 2))


def _draw_pair(sheet: Image.Image, draw: ImageDraw.ImageDraw, entry: SheetEntry, x: int, y: int, cell: int,
               font) -> None:
    _draw_cell(sheet, draw, _fitted(entry.source, cell), x, y, cell, font,
               "missing" if entry.source is None else "unreadable")
    _draw_cell(sheet, draw, _fitted(entry.edit, cell), x + cell + PAIR_GUTTER, y, cell, font,
               "failed" if entry.edit is None else "unreadable")
    line_height = caption_line_height(cell)
    for i, line in enumerate(fit_lines(entry.caption, font, 2 * cell + PAIR_GUTTER, CAPTION_LINES)):
        draw.text((x, y + cell + PAIR_GUTTER + i * line_height), line, fill=TEXT, font=font)


def contact_sheets(entries: Sequence[SheetEntry], out_dir: Path, *, per_sheet: int = 24, cell: int = 256,
                   columns: int = 2, stem: str = "contact_sheet") -> list[Path]:
    """Write ``stem_001.png``, ... (``per_sheet`` pairs each, ``columns`` per row) and return their paths.
    Sheets of the same stem numbered past the new count (from an earlier, longer run) are removed."""
    if per_sheet < 1 or cell < 8 or columns < 1:
        raise ValueError(f"contact sheets need per_sheet >= 1, cell >= 8, columns >= 1 "
                         f"(got {per_sheet}, {cell}, {columns})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    font = load_font(caption_font_size(cell))
    pair_w, pair_h = pair_size(cell)
    paths = []
    for page, start in enumerate(range(0, len(entries), per_sheet), start=1):
        chunk = entries[start:start + per_sheet]
        rows = math.ceil(len(chunk) / columns)
        used_columns = min(columns, len(chunk))
        sheet = Image.new("RGB", (SHEET_MARGIN + used_columns * (pair_w + SHEET_MARGIN),
                                  SHEET_MARGIN + rows * (pair_h + SHEET_MARGIN)), BACKGROUND)
        draw = ImageDraw.Draw(sheet)
        for i, entry in enumerate(chunk):
            row, column = divmod(i, columns)
            _draw_pair(sheet, draw, entry, SHEET_MARGIN + column * (pair_w + SHEET_MARGIN),
                       SHEET_MARGIN + row * (pair_h + SHEET_MARGIN), cell, font)
        path = out_dir / f"{stem}_{page:03d}.png"
        sheet.save(path)
        paths.append(path)
    pattern = re.compile(rf"{re.escape(stem)}_(\d{{3,}})\.png")
    for stale in out_dir.iterdir():
        match = pattern.fullmatch(stale.name)
        if match and int(match.group(1)) > len(paths):
            stale.unlink()
    return paths




def sheet_entries(rows: Iterable[dict], batch_dir: Path) -> list[SheetEntry]:
    """Contact-sheet entries for result rows: caption "id: target prompt", or "id: failed: error" for a
    failed item (its edit cell is then the grey "failed" one)."""
    batch_dir = Path(batch_dir)
    entries = []
    for row in rows:
        source = batch_dir / row["source_image"] if row.get("source_image") else None
        ok = row.get("status") == STATUS_OK
        edit = batch_dir / row["edit_image"] if ok and row.get("edit_image") else None
        label = row.get("id") or ""
        text = (row.get("target_prompt") or "") if ok else f"failed: {row.get('error') or 'no error recorded'}"
        entries.append(SheetEntry(source=source, edit=edit, caption=f"{label}: {text}" if label else text))
    return entries
