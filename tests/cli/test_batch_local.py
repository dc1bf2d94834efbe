"""fpe batch --local (issue 26): each edit limited to a region by FPE Local Edit. The words each item uses
(PIE-Bench's blended_word, else the words its prompts differ by), PIE-Bench's run-length mask decoded against
a hand-made one, both modes end to end on the tiny model (the mask each run used saved, the record and the
summary saying what was used), a changed --local refused on resume, --local annotation on a dataset without
masks refused before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpe_headless.batch import batch, datasets, local, report
from fpe_headless.batch.batch import BatchError, BatchSettings
from fpe_headless.batch.datasets import EditItem
from fpe_headless.comfy.jobs import InProcessRunner

REPO = Path(__file__).resolve().parents[2]


def quiet(_line):
    pass


class NoRunner:
    """A runner that must not be reached (the batch stops before any sampling)."""

    def run(self, jobs, on_result):
        raise AssertionError("an item ran")


def settings(ckpt, **kw):
    return BatchSettings(checkpoint=ckpt, **{"steps": 2, "size": 64, "dataset": "local", **kw})


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


# --- which words, which mask ------------------------------------------------------------------------------

def test_the_words_of_an_item():
    words = local.item_words
    # PIE-Bench's blended_word (source word, target word): both looked up in the prompts the branches encode
    pie = EditItem("1", "a cat sitting on a bench", "a dog sitting on a bench", blended_words=("cat", "dog"))
    assert words(pie, pie.source_prompt, pie.target_prompt) == ("cat, dog", "blended_word", [])
    # a photo inverted with an empty prompt has no source words: the target's alone (no warning)
    assert words(pie, "", pie.target_prompt) == ("dog", "blended_word", [])
    # a blend word in neither of the item's prompts: left out, and said
    typo = EditItem("2", "a cat", "a dog", blended_words=("kitten", "dog"))
    assert words(typo, "a cat", "a dog") == ("dog", "blended_word", ["kitten"])
    assert local.record_of("words", typo, {"n": {"class_type": "FPELocalEdit", "inputs": {
        "source_text": "a cat", "target_text": "a dog"}}})[1] == [
        "--local words: 'kitten' (blended_word) is in neither of the item's prompts: left out"]
    # no blend words: the words the prompts differ by, as CLIP splits words (case and punctuation ignored)
    diff = EditItem("3", "A photo of green ducks, walking", "a photo of rubber ducks walking")
    assert words(diff, diff.source_prompt, diff.target_prompt) == ("green, rubber", "prompt diff", [])
    assert local.differing_words("a red circle on grass", "a orange circle on grass") == (["red"], ["orange"])
    # an insertion: its words, less those both prompts hold ('of' would mark the source's 'of' too)
    style = EditItem("4", "a photo of a cat", "a photo of a cat in the style of van gogh")
    assert words(style, style.source_prompt, style.target_prompt)[0] == "in, the, style, van, gogh"
    assert local.clip_words("T-shirt's 3D, cat!") == ["t", "shirt", "'s", "3", "d", "cat"]
    # nothing differs: the item is named (it fails alone, the batch goes on)
    same = EditItem("same", "a cat.", "A cat")
    with pytest.raises(local.LocalItemError, match=r"item 'same': --local words: its source and target prompts have "
                                                   r"the same words .* --local off"):
        words(same, same.source_prompt, same.target_prompt)
    only_source = EditItem("5", "a cat", "a dog", blended_words=("cat",))
    with pytest.raises(local.LocalItemError, match=r"item '5': .*none of its blended_word words \(cat\).*inverted "
                                                   r"with an empty prompt.*--invert-prompt source"):
        words(only_source, "", "a dog")


def test_pie_bench_mask_decodes_as_drawn_by_hand(tmp_path):
    """PIE-Bench's mask: (start, length) runs over the 512x512 picture flattened row by row."""
    runs = (3 * 512 + 10, 4,  # row 3, columns 10..13
            100 * 512 + 500, 12 + 512 + 12,  # row 100 from column 500, across row 101, into row 102 to column 11
            511 * 512 + 511, 1)  # the last pixel
    drawn = np.zeros((512, 512), dtype=bool)
    drawn[3, 10:14] = True
    drawn[100, 500:] = True
    drawn[101, :] = True
    drawn[102, :12] = True
    drawn[511, 511] = True
    assert np.array_equal(datasets.decode_mask(runs, border=False), drawn)
    framed = drawn.copy()  # PIE-Bench's metrics count the outermost pixels as edited
    framed[0, :] = framed[-1, :] = framed[:, 0] = framed[:, -1] = True
    assert np.array_equal(datasets.decode_mask(runs), framed)
    assert datasets.encode_mask(drawn) == runs
    # the PNG FPE Local Edit gets: the annotation as drawn (no border), white = edit, read as LoadImageMask reads it
    item = EditItem("7", "a", "b", image="x.png", mask=runs)
    png = local.mask_png(item, tmp_path)
    assert png.parent == tmp_path and local.mask_png(item, tmp_path) == png  # one file per mask
    with Image.open(png) as picture:
        assert picture.mode == "L" and picture.size == (512, 512)
        red = np.asarray(picture.convert("RGBA").getchannel("R")).astype(np.float32) / 255.0
    assert np.array_equal(red, drawn.astype(np.float32))
    with pytest.raises(local.LocalItemError, match=r"item '8': --local annotation: the item has no mask annotation"):
        local.mask_png(EditItem("8", "a", "b", image="x.png"), tmp_path)


# --- end to end ---------------------------------------------------------------------------------------------

def test_local_words_batch(executor, tiny_sd15_ckpt, tmp_path):
    items = [EditItem("0", "a red car", "a blue car"),
             EditItem("1", "a red car", "a red truck", blended_words=("car", "truck")),
             EditItem("same", "a red car", "a red car.")]
    jobs = batch.make_jobs(items, settings(tiny_sd15_ckpt, local="words"))
    prompt = jobs[0].prompt
    (node_id,) = [k for k, n in prompt.items() if n["class_type"] == "FPELocalEdit"]
    node = prompt[node_id]["inputs"]
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    assert sampler["inputs"]["model"] == [node_id, 0]
    assert prompt[node["model"][0]]["class_type"] == "FPESelfAttnInject"
    assert (node["words"], node["source_text"], node["target_text"]) == ("red, blue", "a red car", "a blue car")
    assert (node["start"], node["threshold"]) == (0.2, 0.3)  # LocalBlend's
    assert prompt[node["clip"][0]]["class_type"] == "CheckpointLoaderSimple"
    assert jobs[2].error is not None and "item 'same'" in jobs[2].error

    out = tmp_path / "words"
    outcome = batch.run_batch(items, settings(tiny_sd15_ckpt, local="words"), out, InProcessRunner(executor), say=quiet)
    assert outcome.failed == ["same"]
    entries = batch.read_manifest(out)
    assert entries["0"]["status"] == entries["1"]["status"] == "ok", entries
    assert (entries["0"]["local"], entries["0"]["local_words"], entries["0"]["local_words_from"]) == (
        "words", "red, blue", "prompt diff")
    assert (entries["1"]["local_words"], entries["1"]["local_words_from"]) == ("car, truck", "blended_word")
    assert entries["same"]["status"] == "error" and entries["same"]["local"] == "words"
    for key in ("0", "1"):  # the mask the edit used, at the picture's size
        mask = pixels(out / entries[key]["mask_image"])
        assert mask.shape == pixels(out / entries[key]["edit_image"]).shape == (64, 64, 3)
    recorded = json.loads((out / batch.SETTINGS_FILE).read_text())
    assert (recorded["local"], recorded["local_start"], recorded["local_threshold"]) == ("words", 0.2, 0.3)
    rows = {row["id"]: row for row in report.read_results_csv(out / "results.csv")}
    assert rows["0"]["local_words"] == "red, blue" and rows["1"]["mask_image"] == "images/1_mask.png"
    assert "Local edit: words" in (out / "summary.md").read_text()
    (out / "summary.md").unlink()
    batch.evaluate_folder(out, batch.Scoring())  # fpe eval rewrites it, still saying so
    assert "Local edit: words" in (out / "summary.md").read_text()

    # a resume must be the same run: another --local (or its start) is refused, the same one runs nothing new
    for other in (dict(local="off"), dict(local="words", local_start=0.5), dict(local="words", local_threshold=0.5)):
        with pytest.raises(BatchError, match=r"other settings .*local.*--restart"):
            batch.run_batch(items[:2], settings(tiny_sd15_ckpt, **other), out, NoRunner(), say=quiet)
    again = batch.run_batch(items[:2], settings(tiny_sd15_ckpt, local="words"), out, NoRunner(), say=quiet)
    assert again.ran == []


def test_a_workflows_own_local_edit_takes_the_items_region():
    """A workflow with its own FPE Local Edit (its grow, feather, soft kept): --local sets its words, texts, start
    and threshold (its painted mask gives way to the words); with --local off it is refused."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog", "clip": ["1", 1]}},
        "4": {"class_type": "FPESelfAttnInject", "inputs": {"model": ["1", 0], "fpe_source": ["9", 0]}},
        "5": {"class_type": "FPELocalEdit", "inputs": {
            "model": ["4", 0], "start": 0.0, "grow": 2, "feather": 3, "soft": "thresholds", "words": "green rubber",
            "source_text": "ducks", "target_text": "ducks", "threshold": 0.5, "composite": False,
            "mask": ["8", 0], "clip": ["1", 1]}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["3", 0], "negative": ["2", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
    }
    with pytest.raises(local.LocalSetupError, match=r"its FPE Local Edit limits the edit to the words 'green rubber' "
                                                    r"of the workflow's own prompts; batch it with --local words"):
        local.check_own(prompt, "off", "mine.json")
    local.check_own(prompt, "words", "mine.json")
    site = local.find_site(prompt, "7", "mine.json")
    assert (site.sampler, site.samples, site.clip, site.own) == ("6", ("6", 0), ("1", 1), "5")
    outputs = local.apply(prompt, site, mode="words", start=0.2, threshold=0.3, words="cat, dog", source_text="a cat",
                          target_text="a dog", stem="x")
    inputs = prompt["5"]["inputs"]
    assert {k: inputs[k] for k in ("words", "source_text", "target_text", "start", "threshold", "grow", "soft")} == {
        "words": "cat, dog", "source_text": "a cat", "target_text": "a dog", "start": 0.2, "threshold": 0.3, "grow": 2,
        "soft": "thresholds"}
    assert "mask" not in inputs and prompt["6"]["inputs"]["model"] == ["5", 0] and local.LOCAL_NODE not in prompt
    assert outputs == {local.MASK_NODE: "mask"}
    assert prompt[local.SHOW_NODE]["inputs"] == {"local_edit": ["5", 1], "samples": ["6", 0]}
    del prompt["4"]  # no Inject above the sampler: nothing to limit
    prompt["5"]["inputs"]["model"] = ["1", 0]
    with pytest.raises(local.LocalSetupError, match="does not come from FPE Self-Attn Inject"):
        local.find_site(prompt, "7", "mine.json")


@pytest.mark.parametrize("name", ["fpe_local_edit", "fpe_real_image_local_edit"])
def test_the_shipped_local_workflows_batch(name, executor, tiny_sd15_ckpt, tmp_path):
    """The shipped local-edit workflows: their FPE Local Edit takes each item's region (the painted mask and its
    loader gone), and with --local off they are refused."""
    real = "real" in name
    mapping = pie_bench(tmp_path / "pie", REPO / "workflows" / "fpe_example_apple.png")
    items = batch.load_items(str(mapping))[1][:1] if real else [EditItem("0", "a red car", "a blue car")]
    images = mapping.parent / "annotation_images"
    with pytest.raises(BatchError, match=rf"--workflow {name}.json: its FPE Local Edit limits the edit to"):
        batch.make_jobs(items, settings(tiny_sd15_ckpt, workflow=name, images=images, staging=tmp_path / "in"))
    for mode in ("words", "annotation") if real else ("words",):
        made = settings(tiny_sd15_ckpt, workflow=name, local=mode, images=images)
        (job,) = batch.make_jobs(items, BatchSettings(**{**made.__dict__, "staging": tmp_path / "in"}))
        kinds = [node["class_type"] for node in job.prompt.values()]
        assert kinds.count("FPELocalEdit") == 1 and kinds.count("LoadImageMask") == (mode == "annotation")
        own = next(node["inputs"] for node in job.prompt.values() if node["class_type"] == "FPELocalEdit")
        assert own["feather"] == (2 if real else 0) and ("mask" in own) == (mode == "annotation")
        out = tmp_path / f"{mode}"
        assert batch.run_batch(items, made, out, InProcessRunner(executor), say=quiet).failed == []
        entry = batch.read_manifest(out)[items[0].id]
        assert entry["local"] == mode and (out / entry["mask_image"]).is_file()
        assert entry.get("local_words") == ({"words": "apple" if real else "red, blue"}.get(mode))


def pie_bench(folder: Path, photo: Path) -> Path:
    """A PIE-Bench mapping of two edits of one photo, its mask the photo's left half."""
    (folder / "annotation_images").mkdir(parents=True)
    Image.open(photo).convert("RGB").resize((512, 512)).save(folder / "annotation_images" / "apple.jpg")
    left = np.zeros((512, 512), dtype=bool)
    left[:, :256] = True
    runs = list(datasets.encode_mask(left))
    entry = {"image_path": "apple.jpg", "original_prompt": "a [red] apple on a table", "editing_type_id": "6",
             "blended_word": "apple apple", "mask": runs}
    mapping = {"000000000001": {**entry, "editing_prompt": "a [green] apple on a table"},
               "000000000002": {**entry, "editing_prompt": "a [purple] apple on a table"}}
    path = folder / "mapping_file.json"
    path.write_text(json.dumps(mapping))
    return path


def test_local_annotation_batch(executor, tiny_sd15_ckpt, tmp_path):
    mapping = pie_bench(tmp_path / "pie", REPO / "workflows" / "fpe_example_apple.png")
    name, items, images = batch.load_items(str(mapping))
    edits = {}
    for mode in ("annotation", "off", "words"):
        out = tmp_path / mode
        made = settings(tiny_sd15_ckpt, local=mode, images=images, dataset=name, steps=4)
        assert batch.run_batch(items, made, out, InProcessRunner(executor), say=quiet).failed == []
        entries = batch.read_manifest(out)
        edits[mode] = [pixels(out / entries[item.id]["edit_image"]) for item in items]
        # PIE-Bench's background metrics (outside its mask) whatever the edit's region was
        assert all(isinstance(row["bg_psnr"], float) for row in report.read_results_csv(out / "results.csv"))
    # words on a photo DDIM-inverted with an empty prompt: the blended_word 'apple' found in the target's prompt
    words = batch.read_manifest(tmp_path / "words")
    assert [(words[i.id]["local_words"], words[i.id]["local_words_from"]) for i in items] == [
        ("apple", "blended_word")] * 2
    del edits["words"]
    out = tmp_path / "annotation"
    entries = batch.read_manifest(out)
    assert [entries[i.id]["local"] for i in items] == ["annotation", "annotation"]
    mask = pixels(out / entries[items[0].id]["mask_image"])[..., 0] / 255.0
    assert mask.shape == (64, 64)
    # the annotation, as the edit's 8x8 latent took it, at the picture's size (its edge interpolated)
    assert mask[:, :24].min() == 1.0 and mask[:, 40:].max() == 0.0 and abs(mask.mean() - 0.5) < 0.01
    recorded = json.loads((out / batch.SETTINGS_FILE).read_text())
    assert (recorded["local"], recorded["local_start"], recorded["local_threshold"]) == ("annotation", 0.0, None)
    assert "Local edit: annotation" in (out / "summary.md").read_text()
    assert "local" not in report.read_results_csv(tmp_path / "off" / "results.csv")[0]  # off: as before
    # outside the mask both edits follow the photo's inverted trajectory: the two targets (green, purple) part
    # on the left as much as without the mask, on the right far less (the decoder spreads the left a little)
    parted = {mode: np.abs(green - purple) for mode, (green, purple) in edits.items()}
    left, right = (slice(None), slice(0, 24)), (slice(None), slice(40, None))
    means = {mode: (d[left].mean(), d[right].mean()) for mode, d in parted.items()}
    assert parted["annotation"][right].mean() < 0.4 * parted["off"][right].mean(), means
    assert parted["annotation"][left].mean() > 0.6 * parted["off"][left].mean(), means


def test_local_annotation_needs_a_dataset_with_masks(tiny_sd15_ckpt, tmp_path):
    items = [EditItem("0", "a red car", "a blue car")]
    with pytest.raises(BatchError, match=r"--local annotation: dataset local has no mask annotation.*--local words"):
        batch.run_batch(items, settings(tiny_sd15_ckpt, local="annotation"), tmp_path / "b", NoRunner(), say=quiet)
    assert not (tmp_path / "b").exists()
    # a batch.json from before --local: its edits were local-less, so it resumes with --local off only
    old = tmp_path / "old"
    old.mkdir()
    wanted = batch.wanted_settings(settings(tiny_sd15_ckpt), items)
    (old / batch.SETTINGS_FILE).write_text(json.dumps({k: v for k, v in wanted.items() if not k.startswith("local")}))
    batch.check_folder(old, wanted)
    with pytest.raises(BatchError, match=r"local: 'off' -> 'words'"):
        batch.check_folder(old, batch.wanted_settings(settings(tiny_sd15_ckpt, local="words"), items))


def fpe(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO), FPE_PROG="fpe", TMPDIR=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "fpe_headless", *map(str, args)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_local_mistakes_are_one_line_before_comfyui_starts(tmp_path):
    data = json.loads((REPO / "workflows" / "fpe_generated_edit.json").read_text())
    for node in data["nodes"]:
        if node["type"] == "FPESelfAttnInject":
            node["mode"] = 4  # bypassed: the KSampler samples the plain model, there is no edit to limit
    bypassed = tmp_path / "bypassed.json"
    bypassed.write_text(json.dumps(data))
    cases = [
        (("batch", "demo-colours", "--local", "annotation"),
         "--local annotation: dataset demo-colours has no mask annotation"),
        (("batch", "demo-colours", "--local", "words", "--local-start", "nan"), "--local-start nan: must be a number "
                                                                                "from 0 to 1"),
        (("batch", "demo-colours", "--local", "words", "--local-threshold", "1.5"), "--local-threshold 1.5: must be"),
        (("batch", "demo-colours", "--local-start", "0.3"), "--local-start: only with --local words or annotation"),
        (("batch", "demo-colours", "--local", "annotation", "--local-threshold", "0.3"),
         "--local-threshold: only with --local words"),
        (("batch", "demo-colours", "--local", "words", "--workflow", bypassed), "--local words: --workflow "
                                                                                 "bypassed.json has no FPE Self-Attn Inject"),
    ]
    for n, (args, message) in enumerate(cases):
        done = fpe(tmp_path, *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert done.stderr.strip().count("\n") == 0, done.stderr
        if n == 0:  # refused before the batch folder is made, before ComfyUI starts
            assert not list(tmp_path.glob("fpe_batch_*")) and not list(tmp_path.glob("fpe-batch-*"))
