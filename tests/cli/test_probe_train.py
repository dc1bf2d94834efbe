"""The probing toolkit without ComfyUI (issue 16): shards that survive a kill, a probe that finds a planted
signal and nothing in noise or shuffled labels, the out-of-distribution path, and the paper-style reports."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fpe_headless.probe import report as probe_report
from fpe_headless.probe.store import MANIFEST_FILE, ProbeData, ProbeWriter, shard_name
from fpe_headless.probe.train import ProbeResult, ProbeSettings, probe, stratified_split

COLOURS = ["red", "blue", "green", "yellow", "brown", "pink", "purple", "black", "white", "orange"]
SIDE = 8  # planted maps are 8 x 8


def _meta(classes, **extra):
    return {"kind": "cross", "set": "planted", "word": "color", "classes": classes,
            "layers": [{"name": "in1.0", "shape": [SIDE, SIDE]}, {"name": "in2.0", "shape": [SIDE, SIDE]}],
            "checkpoint": "synthetic", "steps": 10, "seeds": [0, 1], **extra}


def _planted_set(folder, per_class, *, seed, shift=0.0, noise=0.5, classes=COLOURS):
    """Layer 0 carries the class as a bright 2x2 blob at a class-specific place, plus Gaussian noise;
    layer 1 is the same noise without the blob."""
    generator = torch.Generator().manual_seed(seed)
    with ProbeWriter(folder, _meta(classes)) as writer:
        for index in range(per_class * len(classes)):
            label = index % len(classes)
            planted = torch.randn(SIDE, SIDE, generator=generator) * noise + shift
            row, column = divmod(label, 4)
            planted[2 * row:2 * row + 2, 2 * column:2 * column + 2] += 1.0
            writer.add(index, label, seed * 10_000 + index,
                       [planted, torch.randn(SIDE, SIDE, generator=generator) * noise + shift])
    return ProbeData(folder)


def _chance_band(n_classes, n_test):
    """Two-sided 99.9 % band of the accuracy of predictions unrelated to the labels: Binomial(n_test, 1/C)
    by its normal approximation. (A stratified test set makes the true spread a little narrower.)"""
    p = 1.0 / n_classes
    z = NormalDist().inv_cdf(1 - 0.001 / 2)  # 3.29
    half = z * math.sqrt(p * (1 - p) / n_test)
    return p - half, p + half


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _planted_set(tmp_path_factory.mktemp("planted"), per_class=100, seed=1)


# --- probes ------------------------------------------------------------------------------------------------


def test_planted_signal_is_found_and_noise_stays_at_chance(planted):
    result = probe(planted)
    assert result.n_test == 200 and result.test_per_class == [20] * 10 and result.n_train == 800
    assert result.layers == ["in1.0", "in2.0"] and not result.ood
    low, high = _chance_band(10, result.n_test)
    assert high == pytest.approx(0.1 + 3.29 * math.sqrt(0.1 * 0.9 / 200), abs=1e-3)  # ~0.17
    assert result.accuracy[0] >= 0.95, result.accuracy
    assert low <= result.accuracy[1] <= high, result.accuracy
    # per-class accuracy and the confusion matrix agree with the overall accuracy
    confusion = result.confusion[0]
    assert confusion.sum() == 200 and confusion.sum(axis=1).tolist() == [20] * 10
    np.testing.assert_allclose(result.per_class[0], confusion.diagonal() / 20)
    assert result.accuracy[0] == pytest.approx(confusion.trace() / 200)


def test_shuffled_labels_leave_the_planted_layer_at_chance(planted):
    result = probe(planted, ProbeSettings(shuffled_labels=True), layers=["in1.0"])
    low, high = _chance_band(10, result.n_test)
    assert result.layers == ["in1.0"] and result.settings.shuffled_labels
    assert low <= result.accuracy[0] <= high, result.accuracy


def test_probe_repeats_with_its_seed(planted):
    first = probe(planted, ProbeSettings(epochs=3), layers=[1])
    again = probe(planted, ProbeSettings(epochs=3), layers=[1])
    np.testing.assert_array_equal(first.confusion, again.confusion)


def test_stratified_split_takes_a_fifth_of_every_class():
    labels = torch.arange(1000) % 10
    train, test = stratified_split(labels, 0.2, torch.Generator().manual_seed(0), 10)
    assert torch.bincount(labels[test]).tolist() == [20] * 10
    assert sorted(train.tolist() + test.tolist()) == list(range(1000))


def test_out_of_distribution_trains_on_one_set_and_tests_on_another(planted, tmp_path):
    shifted = _planted_set(tmp_path / "shifted", per_class=20, seed=2, shift=0.2, noise=0.6)
    result = probe(planted, test=shifted, layers=[0])
    assert result.ood and result.n_train == 1000 and result.n_test == 200
    assert result.test_dataset["set"] == "planted"
    assert result.accuracy[0] >= 0.9, result.accuracy


def test_out_of_distribution_needs_the_same_classes_and_shapes(planted, tmp_path):
    other = _planted_set(tmp_path / "other", per_class=2, seed=3, classes=COLOURS[::-1])
    with pytest.raises(ValueError, match="classes"):
        probe(planted, test=other)
    reshaped = tmp_path / "reshaped"
    with ProbeWriter(reshaped, {**_meta(COLOURS), "layers": [{"name": "in1.0", "shape": [4, 4]},
                                                             {"name": "in2.0", "shape": [SIDE, SIDE]}]}) as writer:
        writer.add(0, 0, 0, [torch.zeros(4, 4), torch.zeros(SIDE, SIDE)])
    with pytest.raises(ValueError, match="shapes"):
        probe(planted, test=ProbeData(reshaped))


def test_result_json_round_trip_keeps_nan_and_settings(tmp_path):
    result = _toy_result([[0.5, math.nan], [1.0, 0.25]], ["in1.0", "in2.0"], ["a", "b"])
    path = tmp_path / "result.json"
    result.save(path)
    json.loads(path.read_text())  # strict JSON: NaN stored as null
    back = ProbeResult.load(path)
    np.testing.assert_array_equal(back.per_class, result.per_class)
    assert back.settings == result.settings and back.layers == result.layers and back.dataset == result.dataset


# --- storage -----------------------------------------------------------------------------------------------

STORE_META = {"kind": "self", "set": "toy", "word": "color", "classes": ["a", "b", "c"],
              "layers": [{"name": "in1.0", "shape": [4, 4]}, {"name": "mid0.0", "shape": [2, 3]}],
              "checkpoint": "tiny", "steps": 4, "_started": "monday"}


def _store_sample(index):
    generator = torch.Generator().manual_seed(index)
    return index, index % 3, 1000 + index, [torch.rand(4, 4, generator=generator) * 3,
                                            torch.rand(2, 3, generator=generator) / 4096]


def test_writer_resumes_after_a_kill(tmp_path):
    folder = tmp_path / "set"
    killed = ProbeWriter(folder, STORE_META, shard_size=64)
    for index in range(150):
        killed.add(*_store_sample(index))
    # killed here: two shards are complete, 22 samples were only in memory. The kill also left the third
    # shard's file without its manifest line and a manifest line cut short.
    save_file({"index": torch.tensor([7])}, str(folder / shard_name(2)))
    with open(folder / MANIFEST_FILE, "a") as manifest:
        manifest.write('{"shard": "shards/00002.safetensors", "inde')
    assert len(ProbeData(folder)) == 128  # the finished shards only

    writer = ProbeWriter(folder, {**STORE_META, "_started": "tuesday"}, shard_size=64)  # bookkeeping may change
    assert writer.done() == set(range(128))
    for index in reversed(range(150)):  # replaying everything: the stored ones are skipped
        writer.add(*_store_sample(index))
    writer.close()

    lines = (folder / MANIFEST_FILE).read_text().splitlines()
    assert [json.loads(line)["shard"] for line in lines] == [shard_name(n) for n in range(3)]
    assert sorted(json.loads(lines[2])["indexes"]) == list(range(128, 150))  # the orphan was overwritten
    data = ProbeData(folder)
    samples = [_store_sample(index) for index in range(150)]
    assert data.indexes.tolist() == list(range(150)) and data.layers == ["in1.0", "mid0.0"]
    assert data.labels.tolist() == [s[1] for s in samples] and data.seeds.tolist() == [s[2] for s in samples]
    for j, width in enumerate((16, 6)):
        expected = torch.stack([s[3][j] for s in samples]).half().float().reshape(150, width)
        assert data.layer(j).dtype == torch.float32
        torch.testing.assert_close(data.layer(j), expected, rtol=0, atol=0)
        torch.testing.assert_close(data.layer(j), torch.stack([s[3][j] for s in samples]).reshape(150, width),
                                   rtol=1e-3, atol=1e-7)  # float16 rounding only


def test_writer_refuses_other_settings(tmp_path):
    ProbeWriter(tmp_path, STORE_META).close()
    with pytest.raises(ValueError, match="checkpoint, steps"):
        ProbeWriter(tmp_path, {**STORE_META, "steps": 5, "checkpoint": "other"})
    with pytest.raises(ValueError, match="sampler"):
        ProbeWriter(tmp_path, {**STORE_META, "sampler": "euler"})  # a key the stored set lacks
    writer = ProbeWriter(tmp_path, STORE_META)
    with pytest.raises(ValueError, match="shape"):
        writer.add(0, 0, 0, [torch.zeros(4, 4), torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="label"):
        writer.add(0, 3, 0, [torch.zeros(4, 4), torch.zeros(2, 3)])


# --- reports -----------------------------------------------------------------------------------------------


def _toy_result(per_class_by_layer, layers, classes, kind="cross", accuracy=None):
    per_class = np.array(per_class_by_layer, dtype=float)
    return ProbeResult(
        classes=classes, layers=layers, per_class=per_class,
        accuracy=np.array(accuracy if accuracy is not None else np.nanmean(per_class, axis=1)),
        confusion=np.zeros((len(layers), len(classes), len(classes)), dtype=np.int64),
        settings=ProbeSettings(), n_train=160, n_test=40, test_per_class=[40 // len(classes)] * len(classes),
        ood=False, dataset={"kind": kind, "set": "color_car", "word": "color", "checkpoint": "toy.safetensors"})


TOY = _toy_result([[0.9, 0.5, 0.125], [0.8, 0.25, 0.0], [0.7, 1.0, 0.5]], ["in1.0", "mid0.0", "out3.2"],
                  ["red", "blue", "green"])


def test_markdown_table_has_the_papers_layout():
    text = probe_report.tables_markdown([("Cross-attention, 'a <color> car', word 'color'", TOY)])
    lines = text.splitlines()
    assert lines[0] == "### Cross-attention, 'a <color> car', word 'color'"
    assert "| Class | Layer 1 | Layer 2 | Layer 3 | Avg. |" in lines
    red = [0.9, 0.8, 0.7]
    assert f"| red | 0.90 | 0.80 | 0.70 | {sum(red) / 3:.2f} |" in lines
    layer_means = [(0.9 + 0.5 + 0.125) / 3, (0.8 + 0.25 + 0.0) / 3, (0.7 + 1.0 + 0.5) / 3]
    overall = sum(layer_means) / 3
    assert "| Avg. | " + " | ".join(f"{v:.2f}" for v in [*layer_means, overall]) + " |" in lines
    assert "Layers (forward order): Layer 1: in1.0, Layer 2: mid0.0, Layer 3: out3.2." in lines
    rows = [line for line in lines if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows] == ["Class", "red", "blue", "green", "Avg."]


def test_csv_round_trip(tmp_path):
    path = tmp_path / "table.csv"
    probe_report.write_csv(TOY, path)
    rows, columns, values = probe_report.read_csv(path)
    assert rows == ["red", "blue", "green", "Avg."]
    assert columns == ["Layer 1", "Layer 2", "Layer 3", "Avg."]
    np.testing.assert_allclose(values, probe_report.class_table(TOY), rtol=1e-5)
    assert values[0, 3] == pytest.approx(0.8, rel=1e-6)


def test_heatmap_panels_and_cell_colours(tmp_path):
    second = _toy_result([[0.3, 0.6], [0.05, 0.95]], ["in1.0", "in2.0"], ["dog", "cat"], kind="self")
    path = tmp_path / "heat.png"
    layout = probe_report.accuracy_heatmap([("cross", TOY), ("self", second)], path)
    image = Image.open(path).convert("RGB")
    assert image.size == layout.size and len(layout.panels) == 2
    assert [(p.rows, p.columns) for p in layout.panels] == [(3, 3), (2, 2)]
    assert layout.panels[0].top < layout.panels[1].top
    for panel, result in zip(layout.panels, (TOY, second), strict=True):
        right, bottom = panel.cell_box(panel.rows - 1, panel.columns - 1)[2:]
        assert right <= image.size[0] and bottom <= image.size[1]
        for row in range(panel.rows):
            for column in range(panel.columns):
                left, top, _, _ = panel.cell_box(row, column)
                value = result.per_class[column][row]
                assert image.getpixel((left + 2, top + 2)) == probe_report.accuracy_colour(value), (row, column)
    assert probe_report.accuracy_colour(0.0) == (0x44, 0x01, 0x54)  # viridis' ends
    assert probe_report.accuracy_colour(1.0) == (0xfd, 0xe7, 0x25)


def test_summary_states_whether_the_claim_holds():
    cross = _toy_result([[0.95] * 3, [0.9] * 3, [0.92] * 3], ["in1.0", "mid0.0", "out3.2"], ["red", "blue", "green"])
    weak_self = _toy_result([[0.3] * 3, [0.4] * 3], ["in1.0", "out3.2"], ["red", "blue", "green"], kind="self")
    text = probe_report.summary_markdown(cross, weak_self)
    assert "The paper's claim holds on this checkpoint" in text
    assert "| in1.0 | 0.95 | 0.30 | 0.65 | 0.33 |" in text
    assert "| mid0.0 | 0.90 | — | — | 0.33 |" in text  # a layer the self list lacks
    cross_mean, self_mean = (0.95 + 0.9 + 0.92) / 3, (0.3 + 0.4) / 2
    assert f"| Mean | {cross_mean:.2f} | {self_mean:.2f} | {cross_mean - self_mean:.2f} | 0.33 |" in text

    strong_self = _toy_result([[0.9] * 3, [0.85] * 3, [0.88] * 3], ["in1.0", "mid0.0", "out3.2"],
                              ["red", "blue", "green"], kind="self")
    assert probe_report.claim_verdict(cross, strong_self) == "self-strong"
    assert "does not hold" in probe_report.summary_markdown(cross, strong_self)
    weak_cross = _toy_result([[0.4] * 3] * 3, ["in1.0", "mid0.0", "out3.2"], ["red", "blue", "green"])
    assert probe_report.claim_verdict(weak_cross, weak_self) == "cross-weak"
    assert "does not hold" in probe_report.summary_markdown(weak_cross, weak_self)


def test_summary_pairs_by_position_when_names_differ():
    pairs = probe_report.pair_layers(["a.attn2", "b.attn2"], ["a.attn1", "b.attn1", "c.attn1"])
    assert pairs == [("a.attn2", "a.attn1"), ("b.attn2", "b.attn1"), (None, "c.attn1")]
    assert probe_report.pair_layers(["in1", "mid", "out1"], ["in0", "in1", "out1"]) == [
        (None, "in0"), ("in1", "in1"), ("mid", None), ("out1", "out1")]


# --- the command's output and input mistakes: one line, exit 2, before any training -----------------------


def _probe_command(capsys, *argv):
    from fpe_headless.probe import cli as probe_cli

    code = probe_cli.main([str(a) for a in argv], "fpe probe")
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


def test_probe_train_and_report_outputs_are_checked_before_any_work(tmp_path, capsys):
    data = tmp_path / "data"
    _planted_set(data, per_class=2, seed=3, classes=COLOURS[:2])
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    err = _probe_command(capsys, "train", data, "--out", tmp_path / "folder")
    assert "--out" in err and "is a folder; give a file name" in err and "layer" not in err  # no training ran
    err = _probe_command(capsys, "train", data, "--out", tmp_path / "afile" / "x.json")
    assert "afile/x.json: cannot write there" in err
    result = tmp_path / "r.json"
    _toy_result([[0.5, 1.0], [1.0, 0.25]], ["in1.0", "in2.0"], ["a", "b"]).save(result)
    err = _probe_command(capsys, "report", result, "--out", tmp_path / "afile")
    assert "--out" in err and "afile: is a file; give a folder" in err
    err = _probe_command(capsys, "report", result, "--out", tmp_path / "afile" / "sub")
    assert "afile/sub: cannot write there" in err
    (tmp_path / "list.json").write_text("[1, 2]")
    err = _probe_command(capsys, "report", tmp_path / "list.json", "--out", tmp_path / "rep")
    assert "list.json: not a result of `fpe probe train`" in err


def test_probe_build_word_and_template_files_that_are_not_utf8_are_one_line(tmp_path, capsys):
    latin = tmp_path / "words.csv"
    latin.write_bytes("caf\xe9\nchair\n".encode("latin-1"))
    png = tmp_path / "words.png"
    Image.new("RGB", (4, 4)).save(png)
    for option, probe_set, file in (("--words", "color-object", latin), ("--words", "color-object", png),
                                    ("--templates", "complex", latin)):
        err = _probe_command(capsys, "build", probe_set, option, file, "--out", tmp_path / "out")
        assert f"{option} {file}: not UTF-8 text" in err and "give a UTF-8 text file" in err
