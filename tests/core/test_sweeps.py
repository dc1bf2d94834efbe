"""Settings sweeps: one batched target run, image k edited with setting k; the labelled grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, TGT, capture, encoded_photo, invert, ksampler, latent, max_abs, sample_back
from fpe_harness.host import pack_submodule
from fpe_harness.shipped import shrink, use_tiny_checkpoints
from fpe_headless.comfy.workflow import load_workflow, to_api

W, H = 64, 48  # an 8x6 latent: fast; 'official relative' drops the finest level, 'all' keeps it
STEPS = 6
WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "fpe_settings_sweep.json"


def _inject(model, source, sweep="", **settings):
    values = {"layers": "official", "custom_layers": "in4", "start": 0.0, "end": 0.8, "branches": "cond only",
              **settings}
    return call_node("FPESelfAttnInject", model=model, fpe_source=source, sweep=sweep, **values)


def _sweep_latent(labels, batch_index=None):
    one = latent(W, H)
    if batch_index is not None:
        one = dict(one, batch_index=[batch_index])
    return call_node("FPESweepLatent", latent=one, sweep_labels=labels)[0]


def _error():
    return pack_submodule("fpe_attention.errors").FPEError


SWEEP = "layers=official relative,all; end=0.2,0.5,0.8"
SINGLES = [dict(layers=layers, end=end) for layers in ("official relative", "all") for end in (0.2, 0.5, 0.8)]


@pytest.mark.parametrize("storage", ["auto", "replay"])
def test_each_image_of_a_sweep_is_the_single_edit_with_its_setting(tiny_sd15, storage):
    model, clip, _ = tiny_sd15
    _, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=STEPS, storage=storage)
    patched, labels = _inject(model, source, SWEEP)
    batch = _sweep_latent(labels)
    assert batch["samples"].shape[0] == 6 and batch["batch_index"] == [0] * 6
    swept = ksampler(patched, clip, TGT, latent_image=batch, steps=STEPS)
    # The batch-layout floor: plain sampling of the same 6 identical rows against one row.
    plain_batch = ksampler(model, clip, TGT, latent_image=batch, steps=STEPS)
    plain = ksampler(model, clip, TGT, latent_image=latent(W, H), steps=STEPS)
    floor = max(max_abs(plain_batch[k], plain[0]) for k in range(6))
    scale = float(plain.abs().max())
    singles = [ksampler(_inject(model, source, **setting)[0], clip, TGT, latent_image=latent(W, H), steps=STEPS)
               for setting in SINGLES]
    errors = [max_abs(swept[k], single[0]) for k, single in enumerate(singles)]
    effects = [max_abs(single[0], plain[0]) for single in singles]
    # how far row k is from the single edits of the other settings (the closest: end 0.2 with and
    # without the finest level, which differ in one step's 2 layers only)
    others = [min(max_abs(swept[k], singles[j][0]) for j in range(6) if j != k) for k in range(6)]
    print(f"{storage}: |sweep row - single| max {max(errors):.3g}, batch floor {floor:.3g}, edit effects "
          f"{min(effects):.3g}..{max(effects):.3g}, row to the closest other setting {min(others):.3g}, latent "
          f"scale {scale:.3g}")
    # Row k runs the single edit's computation in a batch of 6: equal up to the rounding that a batch of
    # 6 gives plain sampling too (1e-4 to 3e-4 of the latent scale on CPU, by host: the UNet's kernels take
    # other paths for 12 rows than for 2), and each row is the edit of its own setting, not a neighbour's
    # (measured: 6-11x closer to its own single edit than to the closest other one).
    # Replay's calls hold the source's rows too (7 to 14 rows): a third batch layout, with its own rounding.
    assert max(errors) <= (3 if storage == "replay" else 2) * floor + 1e-6 * scale
    assert all(other > 3 * err for other, err in zip(others, errors, strict=True))
    assert min(effects) > 100 * max(errors)


def test_a_real_photo_sweep_gives_each_image_its_single_edit(tiny_sd15):
    model, clip, _ = tiny_sd15
    inverted, source, _ = invert(model, clip, encoded_photo(W, H), steps=STEPS)
    patched, labels = _inject(model, source, "end=0.2,0.8")
    batch = call_node("FPESweepLatent", latent=inverted, sweep_labels=labels)[0]
    swept = sample_back(patched, clip, batch, steps=STEPS)
    singles = [sample_back(_inject(model, source, end=end)[0], clip, inverted, steps=STEPS) for end in (0.2, 0.8)]
    floor = max_abs(sample_back(model, clip, batch, steps=STEPS)[1], sample_back(model, clip, inverted, steps=STEPS)[0])
    errors = [max_abs(swept[k], singles[k][0]) for k in range(2)]
    effect = max_abs(singles[0], singles[1])
    print(f"real: |sweep row - single| {max(errors):.3g}, batch floor {floor:.3g}, end 0.2 vs 0.8 {effect:.3g}")
    # as for generated sources: within the batch floor (the inverted latents here are ~20x larger), and
    # far below what the setting changes (measured 140-190x)
    assert max(errors) <= 2 * floor + 1e-6 * float(singles[1].abs().max()) and effect > 50 * max(errors)


def test_a_sweep_of_one_setting_is_the_plain_edit_bit_for_bit(tiny_sd15):
    model, clip, _ = tiny_sd15
    _, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=STEPS)
    one, labels = _inject(model, source, "end=0.5; layers=all")
    plain_edit, plain_labels = _inject(model, source, end=0.5, layers="all")
    assert json.loads(labels)["columns"] == ["layers=all"] and json.loads(labels)["rows"] == ["end=0.5"]
    assert json.loads(plain_labels)["columns"] == ["end=0.5, layers=all"]
    a = ksampler(one, clip, TGT, latent_image=latent(W, H), steps=STEPS)
    b = ksampler(plain_edit, clip, TGT, latent_image=latent(W, H), steps=STEPS)
    assert torch.equal(a, b)


def test_sweep_size_must_match_the_target_batch(tiny_sd15):
    model, clip, _ = tiny_sd15
    _, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=STEPS)
    patched, _ = _inject(model, source, "end=0.2,0.4,0.6,0.8")
    with pytest.raises(_error(), match=r"sweep: FPE Self-Attn Inject's sweep has 4 settings, but the target sampler's "
                                       r"latent has 3 images: .*FPE Sweep Latent.*batch_size to 4"):
        ksampler(patched, clip, TGT, latent_image=latent(W, H, batch=3), steps=STEPS)


def test_sweep_rows_with_their_own_noise_are_warned(tiny_sd15, caplog):
    model, clip, _ = tiny_sd15
    _, source = capture(model, clip, SRC, latent_image=latent(W, H), steps=STEPS)
    patched, _ = _inject(model, source, "end=0.2,0.8")
    with caplog.at_level("WARNING"):
        ksampler(patched, clip, TGT, latent_image=latent(W, H, batch=2), steps=STEPS)  # Empty Latent: new noise
    assert "start from other noise than the source" in caplog.text and "FPE Sweep Latent" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        ksampler(patched, clip, TGT, latent_image=_sweep_latent(_inject(model, source, "end=0.2,0.8")[1]),
                 steps=STEPS)
    assert "other noise" not in caplog.text


@pytest.mark.parametrize("sweep, message", [
    ("end 0.2", r"sweep: cannot read 'end 0.2'"),
    ("ends=0.2,0.4", r"sweep: unknown setting 'ends': sweep start, end, layers"),
    ("end=0.2,abc", r"sweep: end value 'abc' is not a number"),
    ("end=0.2,nan", r"sweep: end value 'nan' is out of range"),
    ("end=1.5", r"sweep: end value '1.5' is out of range"),
    ("end=0.2,,0.4", r"sweep: end has an empty value"),
    ("end=0.2; end=0.4", r"sweep: end is named twice"),
    ('layers="in4,in5', r"sweep: a quote \(\"\) is not closed"),
    ("end=0.9", r"sweep: end=0.9: end 0.9 edits steps 0..4 of 6, but FPE Source Capture stored steps 0..3"),
    ("start=0.5; end=0.2,0.8", r"sweep: start=0.5, end=0.2: start \(0.5\) is after end \(0.2\)"),
    ("layers=all,official", r"sweep: layers=all: layers 'all' include in1.0, .*which FPE Source Capture did not store"),
    ('layers="in4,in99"', r"sweep: layers value 'in4,in99': layer item 'in99': in block numbers go up to"),
    ("end=" + ",".join(["0.5"] * 65), r"sweep: 65 settings \(at most 64"),
])
def test_sweep_mistakes_name_the_input_before_sampling(tiny_sd15, sweep, message):
    model, clip, _ = tiny_sd15
    _, source = _source_official_relative(model, clip)
    with pytest.raises(_error(), match=message):
        _inject(model, source, sweep, layers="official relative")


_SOURCES: dict = {}


def _source_official_relative(model, clip):
    if "relative" not in _SOURCES:  # stores less than 'all': the sweep's layers are checked against it
        _SOURCES["relative"] = capture(model, clip, SRC, latent_image=latent(W, H), steps=STEPS,
                                       store_layers="official relative")
    return _SOURCES["relative"]


def test_grid_lays_out_the_images_with_titles_and_checks_the_count():
    rows, columns = ["layers=official relative", "layers=all"], ["end=0.2", "end=0.5", "end=0.8"]
    labels = json.dumps({"fpe_sweep": 1, "rows": rows, "columns": columns})
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 48, 64, 3, generator=g)
    source = torch.rand(1, 48, 64, 3, generator=g)
    grid = call_node("FPESweepGrid", images=images, sweep_labels=labels, source=source)[0]
    plain = call_node("FPESweepGrid", images=images, sweep_labels=labels)[0]
    assert grid.shape[0] == 1 and grid.shape[-1] == 3
    assert grid.shape[2] - plain.shape[2] == 64 + 4  # one more column: the source
    assert grid.shape[1] == plain.shape[1] > 2 * 48  # two rows and a title strip
    # every image is pasted unchanged (up to 8-bit), in row-major order: find each one in the grid
    pixels = (grid[0] * 255).round()
    expected = (images * 255).round()
    width_left = plain.shape[2] - 3 * (64 + 4) - 4  # the row-title margin
    header = grid.shape[1] - 2 * (48 + 4) - 4
    for k in range(6):
        i, j = divmod(k, 3)
        y, x = header + 4 + i * (48 + 4), width_left + 4 + (j + 1) * (64 + 4)
        assert torch.equal(pixels[y:y + 48, x:x + 64], expected[k])
    assert torch.equal(pixels[header + 4:header + 52, width_left + 4:width_left + 68], (source[0] * 255).round())
    assert (pixels[:header, width_left:] < 100).any()  # column titles drawn in black
    assert (pixels[header:, :width_left] < 100).any()  # row titles drawn in black
    with pytest.raises(_error(), match=r"images: 5 images, but sweep_labels describe 2 x 3 = 6 settings"):
        call_node("FPESweepGrid", images=images[:5], sweep_labels=labels)
    with pytest.raises(_error(), match=r"sweep_labels: not the sweep_labels output of FPE Self-Attn Inject"):
        call_node("FPESweepGrid", images=images, sweep_labels="end=0.2")


def _labels(rows, columns):
    return json.dumps({"fpe_sweep": 1, "rows": rows, "columns": columns})


@pytest.mark.parametrize("node", ["FPESweepLatent", "FPESweepGrid"])
def test_the_64_setting_limit_holds_on_every_sweep_path(node):
    """An API prompt can give sweep_labels any text: 5000 labels would be a 5000-image latent (328 MB at 512 px)."""
    def call(labels):
        if node == "FPESweepLatent":
            return _sweep_latent(labels)["samples"]
        return call_node(node, images=torch.rand(64, 8, 8, 3), sweep_labels=labels)[0]

    for rows, columns, message in [
        ([""], [f"end={k}" for k in range(5000)], r"1 x 5000 = 5000 settings"),
        ([f"start={k}" for k in range(8)], [f"end={k}" for k in range(9)], r"8 x 9 = 72 settings"),
    ]:
        with pytest.raises(_error(), match=r"sweep_labels: " + message + r" \(at most 64 images in one batched "
                                           r"run\): connect the sweep_labels output of FPE Self-Attn Inject"):
            call(_labels(rows, columns))
    with pytest.raises(_error(), match=r"sweep_labels: a title of 5000 characters \(at most 4000\)"):
        call(_labels([""], ["x" * 5000] + [f"end={k}" for k in range(63)]))
    out = call(_labels([f"start={k}" for k in range(8)], [f"end={k}" for k in range(8)]))  # 64: allowed
    assert out.shape[0] == (64 if node == "FPESweepLatent" else 1)


@pytest.mark.parametrize("node", ["FPESweepLatent", "FPESweepGrid"])
def test_malformed_sweep_labels_are_refused_not_misread(node):
    """An API prompt's sweep_labels that the Inject never writes: strings where lists belong ('abc' would be read
    as 3 rows), rows that are objects, NaN or numbers, no fpe_sweep mark, a non-object. Each is the error naming
    the input; the Inject's own labels (for 2 x 3 settings) still work."""
    def call(labels, count=6):
        if node == "FPESweepLatent":
            return _sweep_latent(labels)["samples"]
        return call_node(node, images=torch.rand(count, 8, 8, 3), sweep_labels=labels)[0]

    good = {"fpe_sweep": 1, "rows": ["start=0", "start=0.1"], "columns": ["end=0.2", "end=0.5", "end=0.8"]}
    malformed = [
        json.dumps({"rows": "abc", "columns": "xy"}),
        json.dumps({**good, "rows": "ab"}),
        json.dumps({**good, "columns": "xyz"}),
        json.dumps({**good, "rows": [{"a": 1}, {"b": 2}]}),
        json.dumps({**good, "rows": [float("nan"), "start=0.1"]}),  # JSON's NaN
        json.dumps({**good, "columns": [0.2, 0.5, 0.8]}),
        json.dumps({**good, "columns": ["end=0.2", None, "end=0.8"]}),
        json.dumps({**good, "rows": {"start=0": 1, "start=0.1": 2}}),
        json.dumps({key: value for key, value in good.items() if key != "fpe_sweep"}),
        json.dumps({**good, "fpe_sweep": True}),
        json.dumps({**good, "fpe_sweep": 2}),
        json.dumps({**good, "row_setting": ["start"]}),
        json.dumps([good]),
        "[" * 100_000,  # too deep for the JSON reader
        "",
    ]
    for labels in malformed:
        with pytest.raises(_error(), match=r"^sweep_labels: not the sweep_labels output of FPE Self-Attn Inject: "
                                           r"connect that output$"):
            call(labels)
    for labels in (good, {**good, "row_setting": "start", "column_setting": "end"}):  # as the Inject writes it
        assert call(json.dumps(labels)).shape[0] == (6 if node == "FPESweepLatent" else 1)


def test_grid_larger_than_comfyui_makes_is_refused():
    """64 columns of 300 px images are a 19,400 px wide grid: refused, naming the images and the fix."""
    images = torch.full((1, 1, 1, 3), 0.5).expand(64, 48, 300, 3)  # no memory: the bound holds before drawing
    with pytest.raises(_error(), match=r"images: 1 x 64 images of 300x48 px make a grid \d+x\d+ px \(width x "
                                       r"height; at most 16384 px a side.*scale the images down"):
        call_node("FPESweepGrid", images=images, sweep_labels=_labels([""], [f"end={k / 64:.3f}" for k in range(64)]))
    grid = call_node("FPESweepGrid", images=images[:, :, :200], sweep_labels=_labels([""], [f"e{k}" for k in range(64)]))
    assert grid[0].shape[2] == 64 * (200 + 4) + 4  # 13,060 px: within the bound


def test_sweep_workflow_saves_a_grid_of_every_setting(executor, tiny_for_shipped, comfy_host):
    api = shrink(to_api(use_tiny_checkpoints(load_workflow(WORKFLOW), tiny_for_shipped)))
    inject = next(n for n in api.values() if n["class_type"] == "FPESelfAttnInject")["inputs"]
    axes = [part.split("=")[1].split(",") for part in inject["sweep"].split(";")]
    count = int(np.prod([len(a) for a in axes]))
    result = executor.run(api)
    assert result.success
    saved = [image for out in result.outputs.values() for image in out.get("images", [])]
    grids = [np.asarray(Image.open(comfy_host.workdir / "output" / s["subfolder"] / s["filename"]))
             for s in saved if "grid" in s["filename"]]
    assert len(grids) == 1
    columns = len(axes[-1]) + 1  # the source first
    assert grids[0].shape[1] >= columns * 64 and grids[0].shape[0] >= (count // len(axes[-1])) * 64
