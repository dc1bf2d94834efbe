"""fpe_headless.batch.report: the per-item CSV round-trips, summaries equal a direct computation, the markdown
tables have the paper's Table 4 / Table 5 layouts, contact sheets put each image where it belongs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from fpe_headless import drawing
from fpe_headless.batch import report
from fpe_headless.batch.report import SheetEntry

# --- CSV -------------------------------------------------------------------------------------------------


def test_csv_round_trip_keeps_text_numbers_and_empty_cells(tmp_path):
    row = {
        "id": "car-003", "dataset": "Car-fake-edit", "method": "fpe", "status": "ok",
        "source_prompt": 'a "red" car, parked\non two lines', "target_prompt": "a blue car, 'shiny'",
        "seed": 2**40 + 7, "seconds": 6.30125, "clip_score": 26.021937, "clip_directional": -0.26591234,
        "edge_ssim": 0.5, "bg_psnr": float("inf"), "bg_mse": 1.2345678e-5, "bg_ssim": None,
        "source_image": "images/car-003_source.png", "edit_image": "images/car-003_edit.png",
        "where": "in-process", "error": None, "note": "kept",  # a key beyond the standard set
    }
    path = tmp_path / "results.csv"
    report.write_results_csv([row, {"id": "x", "status": "error", "error": "boom"}], path)

    assert path.read_text(encoding="utf-8").splitlines()[0].split(",") == [*report.RESULT_COLUMNS, "note"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no temp file left over
    back, failed = report.read_results_csv(path)
    for key, value in row.items():
        if isinstance(value, float) and math.isfinite(value):
            assert back[key] == float(f"{value:.6g}"), key  # 6 significant figures
            assert math.isclose(back[key], value, rel_tol=5e-6), key
        else:
            assert back[key] == value, key
    assert isinstance(back["seed"], int)
    assert failed["error"] == "boom" and failed["seed"] is None and failed["clip_score"] is None


def test_csv_keeps_nan_apart_from_missing(tmp_path):
    path = tmp_path / "r.csv"
    report.write_results_csv([{"id": "a", "bg_psnr": float("nan"), "bg_mse": np.float32(0.25),
                               "seed": np.int64(3_000_000_123)}], path)
    (back,) = report.read_results_csv(path)
    assert math.isnan(back["bg_psnr"]) and back["bg_ssim"] is None
    assert back["bg_mse"] == 0.25 and back["seed"] == 3_000_000_123


# --- summary ---------------------------------------------------------------------------------------------


def _row(method, dataset, status="ok", **values):
    return {"id": f"{dataset}-{values.pop('n', 0)}", "method": method, "dataset": dataset, "status": status,
            **values}


def test_summarize_means_over_ok_items_that_have_the_metric():
    rng = np.random.default_rng(0)
    cs = rng.uniform(20, 30, 5)
    rows = [_row("fpe", "A", n=i, clip_score=cs[i], seconds=float(i + 1), bg_psnr=float(i) if i < 2 else None)
            for i in range(5)]
    rows[3]["bg_psnr"] = float("nan")  # undefined (all-edited mask): skipped, not a zero
    rows.insert(2, _row("fpe", "A", status="error", clip_score=99.0, seconds=100.0, error="boom"))
    rows.append(_row("p2p", "B", clip_score=1.0))
    rows.insert(0, _row("p2p", "B", status="error"))

    summaries = report.summarize(rows)
    assert [(s.method, s.dataset) for s in summaries] == [("p2p", "B"), ("fpe", "A")]  # first-seen order
    p2p, fpe = summaries
    assert (fpe.items, fpe.ok, fpe.failed) == (6, 5, 1)
    assert fpe.means["clip_score"] == pytest.approx(cs.mean(), rel=1e-12)
    assert fpe.counts["clip_score"] == 5
    assert fpe.means["bg_psnr"] == pytest.approx(0.5) and fpe.counts["bg_psnr"] == 2
    assert fpe.counts["clip_directional"] == 0 and "clip_directional" not in fpe.means
    assert fpe.seconds_per_edit == pytest.approx(3.0)  # the failed item's 100 s is not in it
    assert (p2p.items, p2p.ok, p2p.failed, p2p.means) == (2, 1, 1, {"clip_score": 1.0})
    assert p2p.seconds_per_edit is None


# --- markdown --------------------------------------------------------------------------------------------


def _table_lines(markdown: str) -> list[str]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = {line.replace("\\|", "").count("|") for line in lines}
    assert len(cells) == 1, "every table line has the same number of cells"
    assert set(lines[1]) <= set("|:-"), "the second line is the header separator"
    return lines


def test_table4_layout_one_method_two_datasets():
    rows = [
        _row("fpe", "Car-fake-edit", n=1, clip_score=25.5, clip_directional=0.25, edge_ssim=0.8, bg_psnr=30.0,
             bg_ssim=0.9, bg_mse=0.001, seconds=6.0),
        _row("fpe", "Car-fake-edit", n=2, clip_score=26.54, clip_directional=0.2818, edge_ssim=0.9, bg_psnr=31.0,
             bg_ssim=0.95, bg_mse=0.003, seconds=6.6),
        _row("fpe", "Car-fake-edit", status="error", n=3, error="out of memory"),
        _row("fpe", "Car-real-edit", n=1, clip_score=24.85, clip_directional=0.2605, edge_ssim=0.7, seconds=10.75),
    ]
    markdown = report.summary_markdown(report.summarize(rows), title="Car edits")
    lines = _table_lines(markdown)
    assert lines[0] == ("| Dataset | Items (ok/all) | CS ↑ | CDS ↑ | Edge SSIM ↑ | BG PSNR ↑ | BG MSE ×10⁴ ↓ "
                        "| BG SSIM ×10² ↑ | s / edit ↓ |")  # PIE-Bench's order: PSNR, (LPIPS,) MSE, SSIM
    assert lines[2] == "| Car-fake-edit | 2/3 | 26.02 | 0.2659 | 0.8500 | 30.50 | 20.00 | 92.50 | 6.30 |"
    assert lines[3] == "| Car-real-edit | 1/1 | 24.85 | 0.2605 | 0.7000 | - | - | - | 10.75 |"
    assert markdown.startswith("## Car edits\n")
    assert "Method: fpe" in markdown
    assert "CDS = cos(ΔI, ΔT)" in markdown and "PIE-Bench" in markdown
    assert "Failed items: 1 of 4 (fpe on Car-fake-edit: 1)" in markdown
    assert report.CLIP_HINT not in markdown


def test_table4_leaves_out_columns_nobody_has_and_says_how_to_get_clip():
    rows = [_row("fpe", "Animals", n=i, edge_ssim=0.5 + i / 10, seconds=2.0) for i in range(3)]
    markdown = report.summary_markdown(report.summarize(rows))
    lines = _table_lines(markdown)
    assert lines[0] == "| Dataset | Items (ok/all) | Edge SSIM ↑ | s / edit ↓ |"
    assert lines[2] == "| Animals | 3/3 | 0.6000 | 2.00 |"
    assert report.CLIP_HINT in markdown.splitlines()
    assert "CS =" not in markdown and "Failed" not in markdown and "(n=k)" not in markdown


def test_table5_layout_methods_by_dataset_groups():
    rows = [
        _row("P2P", "Wild-fake", clip_score=27.85, clip_directional=0.2796, seconds=6.41),
        _row("P2P", "Wild-real", n=1, clip_score=28.40, clip_directional=0.1930, seconds=55.0),
        _row("P2P", "Wild-real", n=2, clip_score=28.44, seconds=55.64),  # no CDS: the mean says n=1
        _row("Ours", "Wild-fake", clip_score=27.88, clip_directional=0.3116, seconds=6.30),
        _row("Ours", "Wild-real", clip_score=29.04, clip_directional=0.2234, seconds=10.75),
        _row("Ours", "Wild-real", status="error", error="boom"),
    ]
    markdown = report.summary_markdown(report.summarize(rows))
    lines = _table_lines(markdown)
    assert lines[0] == ("| Method | Items (ok/all) | Wild-fake CS ↑ | Wild-fake CDS ↑ | Wild-real CS ↑ | Wild-real CDS ↑ "
                        "| Wild-fake s / edit ↓ | Wild-real s / edit ↓ |")
    assert lines[2] == "| P2P | 3/3 | 27.85 | 0.2796 | 28.42 | 0.1930 (n=1) | 6.41 | 55.32 |"
    assert lines[3] == "| Ours | 2/3 | 27.88 | 0.3116 | 29.04 | 0.2234 | 6.30 | 10.75 |"
    assert len(lines) == 4
    assert "(n=k): the mean is over the k items" in markdown
    assert "Failed items: 1 of 6 (Ours on Wild-real: 1)" in markdown


def test_table5_group_has_only_its_datasets_metrics_and_escapes_pipes():
    rows = [_row("a|b", "PIE", bg_psnr=20.0, bg_mse=0.01, bg_ssim=0.5), _row("c", "Gen", clip_score=30.0)]
    lines = _table_lines(report.summary_markdown(report.summarize(rows)))
    assert lines[0] == "| Method | Items (ok/all) | PIE BG PSNR ↑ | PIE BG MSE ×10⁴ ↓ | PIE BG SSIM ×10² ↑ | Gen CS ↑ |"
    assert lines[2] == "| a\\|b | 1/1 | 20.00 | 100.00 | 50.00 | - |"


# --- contact sheets --------------------------------------------------------------------------------------

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture()
def red_blue(tmp_path):
    source, edit = tmp_path / "src.png", tmp_path / "edit.png"
    Image.new("RGB", (64, 64), RED).save(source)
    Image.new("RGB", (48, 24), BLUE).save(edit)  # 2:1, letterboxed into its square cell
    return source, edit


def _expected_size(pairs: int, cell: int, columns: int) -> tuple[int, int]:
    m, g, line = report.SHEET_MARGIN, report.PAIR_GUTTER, report.caption_line_height(cell)
    rows = math.ceil(pairs / columns)
    used = min(pairs, columns)
    return m + used * (2 * cell + g + m), m + rows * (cell + g + report.CAPTION_LINES * line + m)


def test_contact_sheets_pages_sizes_and_cell_contents(tmp_path, red_blue):
    source, edit = red_blue
    cell, columns = 40, 3
    entries = [SheetEntry(source, edit, f"item {i}: a blue car") for i in range(25)]
    entries[4] = SheetEntry(source, None, "item 4: failed: CUDA out of memory")
    out = tmp_path / "sheets"
    paths = report.contact_sheets(entries, out, per_sheet=24, cell=cell, columns=columns)

    assert [p.name for p in paths] == ["contact_sheet_001.png", "contact_sheet_002.png"]
    first, second = (Image.open(p).convert("RGB") for p in paths)
    assert first.size == _expected_size(24, cell, columns)
    assert second.size == _expected_size(1, cell, columns)

    pair_w, pair_h = report.pair_size(cell)
    m, half = report.SHEET_MARGIN, cell // 2

    def cell_origin(index: int, side: int) -> tuple[int, int]:  # side 0 = source, 1 = edit
        row, column = divmod(index, columns)
        return m + column * (pair_w + m) + side * (cell + report.PAIR_GUTTER), m + row * (pair_h + m)

    for index in (0, 5, 23):
        x, y = cell_origin(index, 0)
        assert first.getpixel((x + half, y + half)) == RED
        x, y = cell_origin(index, 1)
        assert first.getpixel((x + half, y + half)) == BLUE
        assert first.getpixel((x + half, y + 2)) == report.LETTERBOX  # a wide image leaves bands above/below
    x, y = cell_origin(4, 1)  # the failed edit: a grey cell
    assert first.getpixel((x + 2, y + 2)) == report.FAILED_GREY
    assert first.getpixel((x + cell - 3, y + cell - 3)) == report.FAILED_GREY
    x, y = cell_origin(4, 0)
    assert first.getpixel((x + half, y + half)) == RED
    caption = np.asarray(first.crop((m, m + cell + report.PAIR_GUTTER, m + pair_w, m + pair_h)))
    assert (caption < 128).any(), "the caption is drawn under the pair"

    # a shorter rerun replaces the sheets and removes the page it no longer has
    assert report.contact_sheets(entries[:3], out, cell=cell, columns=columns) == [out / "contact_sheet_001.png"]
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet_001.png"]


def test_captions_fit_two_lines_and_ellipsise():
    font = drawing.load_font(report.caption_font_size(64))
    width = 2 * 64 + report.PAIR_GUTTER
    long = "a photo of a " + "very " * 40 + "long caption with an_extremely_long_unbroken_word_in_it"
    lines = drawing.fit_lines(long, font, width)
    assert len(lines) == 2 and lines[1].endswith("…")
    assert all(drawing.text_width(font, line) <= width for line in lines)
    assert drawing.fit_lines("short", font, width) == ["short"]
    word = drawing.fit_lines("x" * 200, font, width)
    assert len(word) == 2 and word[0].startswith("xxx") and word[1].endswith("…")
    # a newline starts a line; every paragraph keeps one, the ones past the second join the last
    prompt, error = drawing.fit_lines(long + "\nfailed: CUDA out of memory", font, width)
    assert prompt.startswith("a photo of a very") and prompt.endswith("…") and error.startswith("failed: CUDA")
    assert drawing.fit_lines("a\n\nb\nc", font, width) == ["a", "b · c"]


def test_sheet_entries_from_rows(tmp_path):
    rows = [{"id": "a", "status": "ok", "target_prompt": "a cat", "source_image": "s.png", "edit_image": "e.png"},
            {"id": "b", "status": "error", "source_image": "s.png", "edit_image": None, "error": "boom"}]
    ok, failed = report.sheet_entries(rows, tmp_path)
    assert ok == SheetEntry(tmp_path / "s.png", tmp_path / "e.png", "a: a cat")
    assert failed == SheetEntry(tmp_path / "s.png", None, "b: failed: boom")


def test_old_pillow_without_font_sizes_falls_back_to_the_bitmap_font(tmp_path, red_blue, monkeypatch):
    from PIL import ImageFont

    bitmap = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)  # the pre-10.1 font

    def load_default(size=None):  # Pillow < 10.1: no size argument
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap()

    monkeypatch.setattr(ImageFont, "load_default", load_default)
    source, _ = red_blue
    (path,) = report.contact_sheets([SheetEntry(source, None, "x: 猫 → 虎, " + "long " * 30)], tmp_path, cell=32)
    assert Image.open(path).size == _expected_size(1, 32, 2)
    font = drawing.load_font(12)
    assert isinstance(font, ImageFont.ImageFont)
    assert drawing.fit_lines("a 猫 " + "long " * 30, font, 64)[-1].endswith("...")


def test_pie_bench_columns_use_its_units_and_name_each_columns_model():
    dino, lp, clip = "dino-vitb8 (sha256 0123456789ab)", "lpips, squeeze (sha256 ba9876543210)", "clip-l (sha256 1)"
    rows = [_row("fpe", "PIE", n=i, structure_distance=0.01 + i * 0.002, bg_psnr=27.0 + i, bg_lpips=0.05 + i * 0.01,
                 bg_mse=0.003 + i * 0.001, bg_ssim=0.84 + i * 0.01, clip_score=25.0 + i, clip_edited=22.0 + i,
                 structure_model=dino, lpips_model=lp, clip_model=clip) for i in range(2)]
    markdown = report.summary_markdown(report.summarize(rows))
    lines = _table_lines(markdown)
    assert lines[0] == ("| Dataset | Items (ok/all) | CS ↑ | CLIP edited ↑ | Structure ×10³ ↓ | BG PSNR ↑ "
                        "| BG LPIPS ×10³ ↓ | BG MSE ×10⁴ ↓ | BG SSIM ×10² ↑ |")
    # means x PIE-Bench's scales: structure 0.011 -> 11.00, LPIPS 0.055 -> 55.00, MSE 0.0035 -> 35.00, SSIM 84.50
    assert lines[2] == "| PIE | 2/2 | 25.50 | 22.50 | 11.00 | 27.50 | 55.00 | 35.00 | 84.50 |"
    assert f"Scored with: CLIP (CS, CLIP edited, CDS): {clip}; Structure: {dino}; BG LPIPS: {lp}." in markdown
    assert report.DINO_HINT not in markdown and report.LPIPS_HINT not in markdown
    # the CSV keeps the model cells as text
    assert {"structure_model", "lpips_model", "clip_model"} <= set(report.RESULT_COLUMNS)

    # two models behind one column (a later run with another --dino, without --recompute): said, with counts
    rows[1]["structure_model"] = "other-dino (sha256 ffffffffffff)"
    del rows[0]["lpips_model"]  # a row scored before models were recorded
    mixed = report.summary_markdown(report.summarize(rows))
    assert (f"Structure: MIXED, {dino} ×1, other-dino (sha256 ffffffffffff) ×1 items "
            "(`fpe eval --recompute` rescores every item with one model)") in mixed
    assert f"BG LPIPS: MIXED, unrecorded ×1, {lp} ×1 items" in mixed

    # background metrics without LPIPS, no structure: both skipped with the option that fills them
    plain = [_row("fpe", "PIE", bg_psnr=20.0, bg_mse=0.01, bg_ssim=0.5, clip_score=20.0)]
    text = report.summary_markdown(report.summarize(plain))
    assert report.DINO_HINT in text.splitlines() and report.LPIPS_HINT in text.splitlines()
    assert "Scored with: CLIP (CS, CLIP edited, CDS): unrecorded." in text
