"""fpe batch in this process: prompts made from the shipped workflows, a killed batch resumed without
recomputing, a failing item recorded while the rest finish, the shared source paid once, the reports;
fpe eval of a batch folder (CLIP added later) and of pairs made elsewhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpe_harness.shipped import host_has_mmdit, tiny_mmdit_models
from fpe_harness.tiny_clip import write_tiny_clip
from fpe_headless.batch import batch, metrics, report
from fpe_headless.batch.batch import BatchError, BatchSettings, Scoring
from fpe_headless.batch.cli import evaluate_pairs
from fpe_headless.batch.datasets import DatasetError, EditItem
from fpe_headless.comfy.jobs import InProcessRunner
from fpe_headless.fingerprint import file_fingerprint

REPO = Path(__file__).resolve().parents[2]
SIX = [EditItem(str(i), src, tgt) for i, (src, tgt) in enumerate(
    [("a red car", "a blue car"), ("a red car", "a green car"), ("a cat", "a dog"),
     ("a red car", "a gold car"), ("a cat", "a tiger"), ("a cat", "a lion")])]


class Killed(BaseException):
    """What a kill looks like to the batch: the run stops in the middle of an item."""


class CountingRunner(InProcessRunner):
    """The in-process runner, remembering what ComfyUI executed per item; ``kill_at``: the item at which
    the process 'dies' (inside its run, before a result)."""

    def __init__(self, executor, kill_at: int | None = None):
        super().__init__(executor)
        self.ran: list[str] = []
        self.executed: dict[str, list[str]] = {}
        self.kill_at = kill_at

    def run_one(self, job):
        if self.kill_at is not None and len(self.ran) == self.kill_at:
            raise Killed
        self.ran.append(job.key)
        original = self.executor.run

        def spy(prompt, **kw):
            result = original(prompt, **kw)
            self.executed[job.key] = [prompt[n]["class_type"] for n in result.executed]
            return result

        self.executor.run = spy
        try:
            return super().run_one(job)
        finally:
            del self.executor.run


def settings(ckpt, **kw):
    return BatchSettings(checkpoint=ckpt, steps=2, size=64, dataset="six", **kw)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_jobs_group_sources_and_seed_per_source(tiny_sd15_ckpt):
    jobs = batch.make_jobs(SIX, settings(tiny_sd15_ckpt))
    assert [j.key for j in jobs] == ["0", "1", "3", "2", "4", "5"]  # a source's edits follow each other
    seeds = {j.key: batch._seed_of(j) for j in jobs}
    assert seeds["0"] == seeds["1"] == seeds["3"] == batch.seed_for(0, "prompt:a red car")
    assert seeds["2"] == seeds["4"] != seeds["0"]
    edit = jobs[0].prompt
    kinds = sorted(n["class_type"] for n in edit.values())
    assert kinds.count("SaveImage") == 2 and "FPESideBySide" not in kinds  # only the batch's own saves run
    assert edit[batch.EDIT_NODE]["inputs"]["filename_prefix"] == "fpe_batch/0_edit"
    texts = {n["inputs"].get("text") for n in edit.values() if n["class_type"] == "CLIPTextEncode"}
    assert {"a red car", "a blue car"} <= texts
    same = batch.make_jobs(SIX, settings(tiny_sd15_ckpt, same_seed=True, seed=7))
    assert {batch._seed_of(j) for j in same} == {7}


def test_killed_batch_resumes_without_recomputing(executor, tiny_sd15_ckpt, tmp_path):
    out = tmp_path / "batch"
    first = CountingRunner(executor, kill_at=3)
    with pytest.raises(Killed):
        batch.run_batch(SIX, settings(tiny_sd15_ckpt), out, first, say=lambda s: None)
    assert first.ran == ["0", "1", "3"]
    # what finished is reported even so, counted against every item (3 not run)
    assert [row["status"] for row in report.read_results_csv(out / "results.csv")].count("ok") == 3
    assert "| six | 3/6 |" in (out / "summary.md").read_text()
    done = batch.read_manifest(out)
    assert sorted(done) == ["0", "1", "3"] and all(e["status"] == "ok" for e in done.values())
    before = {k: (out / e["edit_image"]).read_bytes() for k, e in done.items()}
    with (out / batch.MANIFEST).open("a") as handle:  # a kill in the middle of writing item 2's line
        handle.write('{"id": "2", "status": "o')

    second = CountingRunner(executor)
    outcome = batch.run_batch(SIX, settings(tiny_sd15_ckpt), out, second, say=lambda s: None)
    assert second.ran == ["2", "4", "5"] and outcome.failed == []
    assert {k: (out / done[k]["edit_image"]).read_bytes() for k in done} == before
    # the shared source ran once per source: the later edits of 'a cat' found its capture in the cache
    assert "FPESourceCapture" in second.executed["2"]
    assert "FPESourceCapture" not in second.executed["4"] and "FPESourceCapture" not in second.executed["5"]

    straight = CountingRunner(executor)
    batch.run_batch(SIX, settings(tiny_sd15_ckpt), tmp_path / "straight", straight, say=lambda s: None)
    assert straight.ran == ["0", "1", "3", "2", "4", "5"]
    for item in SIX:  # a resumed batch makes the same pictures as one that ran through
        for role in ("source", "edit"):
            name = f"images/{item.id}_{role}.png"
            assert np.array_equal(pixels(out / name), pixels(tmp_path / "straight" / name)), name

    rows = report.read_results_csv(out / "results.csv")
    assert [r["id"] for r in rows] == [i.id for i in SIX] and {r["status"] for r in rows} == {"ok"}
    for row in rows:  # the structure figure is the metric of the saved pictures
        expect = metrics.edge_ssim(Image.open(out / row["source_image"]), Image.open(out / row["edit_image"]))
        assert row["edge_ssim"] == pytest.approx(expect, rel=1e-5)
    assert "| six | 6/6 |" in (out / "summary.md").read_text()
    assert sorted(p.name for p in out.glob("contact_sheet_*.png")) == ["contact_sheet_001.png"]

    third = CountingRunner(executor)  # all finished: nothing runs
    batch.run_batch(SIX, settings(tiny_sd15_ckpt), out, third, say=lambda s: None)
    assert third.ran == []
    with pytest.raises(BatchError, match="other settings .*steps: 2 -> 3.*--restart"):
        batch.run_batch(SIX, BatchSettings(checkpoint=tiny_sd15_ckpt, steps=3, size=64, dataset="six"), out,
                        CountingRunner(executor), say=lambda s: None)


def test_failing_item_is_recorded_and_the_rest_finish(executor, tiny_sd15_ckpt, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(REPO / "workflows" / "fpe_example_apple.png").convert("RGB").resize(
        (64, 64)).save(photos / "apple.png")
    (photos / "broken.png").write_bytes(b"not a png")
    items = [EditItem("a", "a red apple", "a green apple", image="apple.png"),
             EditItem("b", "a thing", "another thing", image="broken.png"),
             EditItem("c", "a red apple", "a golden apple", image="apple.png"),
             EditItem("d", "", "x", image="missing.png")]
    runner = CountingRunner(executor)
    outcome = batch.run_batch(items, settings(tiny_sd15_ckpt, images=photos), tmp_path / "real", runner,
                              say=lambda s: None)
    assert runner.ran == ["a", "c"] and sorted(outcome.failed) == ["b", "d"]
    assert "FPEDDIMInvert" not in runner.executed["c"]  # the photo's inversion was paid once
    rows = {r["id"]: r for r in report.read_results_csv(tmp_path / "real" / "results.csv")}
    assert rows["b"]["status"] == "error" and "not an image Pillow can read" in rows["b"]["error"]
    assert rows["d"]["status"] == "error" and "no such file" in rows["d"]["error"]
    assert rows["a"]["status"] == rows["c"]["status"] == "ok"
    source = pixels(tmp_path / "real" / rows["a"]["source_image"])  # the photo as the workflow was given it
    assert source.shape == pixels(tmp_path / "real" / rows["a"]["edit_image"]).shape == (64, 64, 3)
    assert "| six | 2/4 |" in (tmp_path / "real" / "summary.md").read_text()


def test_eval_adds_clip_to_a_batch_folder_and_scores_pairs(executor, tiny_sd15_ckpt, tmp_path):
    out = tmp_path / "batch"
    items = SIX[:2]
    batch.run_batch(items, settings(tiny_sd15_ckpt), out, InProcessRunner(executor), say=lambda s: None)
    assert report.read_results_csv(out / "results.csv")[0]["clip_score"] is None
    clip = metrics.ClipScorer(write_tiny_clip(tmp_path / "clip"))
    rows = batch.evaluate_folder(out, Scoring(clip))
    for row, item in zip(rows, items, strict=True):
        src, edit = Image.open(out / row["source_image"]), Image.open(out / row["edit_image"])
        assert row["clip_score"] == pytest.approx(clip.clip_score([edit], [item.target_prompt])[0], rel=1e-5)
        assert row["clip_directional"] == pytest.approx(clip.directional_similarity(
            [src], [edit], [item.source_prompt], [item.target_prompt])[0], rel=1e-5, abs=1e-7)
    assert "CS ↑" in (out / "summary.md").read_text()

    # pairs made elsewhere, with a mask PNG: the background metrics are PIE-Bench's outside it
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
    b = a.copy()
    b[8:20, 10:30] = 255 - b[8:20, 10:30]  # edited inside the box only
    b[25, 35] = 0  # and one pixel outside it
    mask = np.zeros((32, 40), dtype=bool)
    mask[8:20, 10:30] = True
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    (tmp_path / "pairs.csv").write_text("source_image,edit_image,source_prompt,target_prompt,mask\n"
                                        "a.png,b.png,a box,a bright box,m.png\n")
    rows = evaluate_pairs(tmp_path / "pairs.csv", tmp_path / "eval", Scoring(), "other")
    expect = metrics.background_metrics(a, b, mask)
    assert expect.mse > 0 and rows[0]["bg_psnr"] == pytest.approx(expect.psnr)
    assert rows[0]["bg_mse"] == pytest.approx(expect.mse) and rows[0]["bg_ssim"] == pytest.approx(expect.ssim)
    assert rows[0]["edge_ssim"] == pytest.approx(metrics.edge_ssim(a, b))


SHIPPED = {"fpe_generated_edit": "sd15", "fpe_generated_edit_official_schedule": "sd15",
           "fpe_sdxl_generated_edit": "sdxl", "fpe_attention_maps": "sd15", "fpe_real_image_edit": "sd15",
           "fpe_real_image_edit_nulltext": "sd15", "fpe_sdxl_real_image_edit": "sdxl"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_edit_workflow_batches(name, executor, tiny_sd15_ckpt, tiny_sdxl_ckpt, tmp_path, comfy_host):
    """Each shipped edit workflow becomes valid batch prompts: its saves and side-by-sides gone, the items'
    prompts in, the source prompt kept out of a DDIM inversion and put into a null-text one."""
    real = "real" in name
    ckpt = tiny_sdxl_ckpt if SHIPPED[name] == "sdxl" else tiny_sd15_ckpt
    Image.open(REPO / "workflows" / "fpe_example_apple.png").convert("RGB").save(tmp_path / "apple.png")
    items = [EditItem("x", "a red apple", "a green apple", image="apple.png" if real else None)]
    jobs = batch.make_jobs(items, settings(ckpt, workflow=name, images=tmp_path, staging=tmp_path / "in"))
    prompt = jobs[0].prompt
    kinds = [node["class_type"] for node in prompt.values()]
    assert kinds.count("SaveImage") == (1 if real else 2) and "FPESideBySide" not in kinds
    assert "FPEWordHeatmap" not in kinds  # output nodes the decodes do not need
    texts = [v for node in prompt.values() for k, v in node["inputs"].items() if k in ("text", "text_g", "text_l")]
    assert "a green apple" in texts
    assert ("a red apple" in texts) == (not real or "nulltext" in name)
    for upload, local in jobs[0].uploads.items():  # what the runner does before it queues the prompt
        shutil.copy2(local, comfy_host.workdir / "input" / upload)
    valid = executor.validate(prompt)
    assert valid[0], valid[1:]
    if name == "fpe_real_image_edit_nulltext":  # and it runs: the inversion node is the edit's ancestor
        result = InProcessRunner(executor).run_one(jobs[0])
        assert result.ok, result.error
        assert set(result.images) == {"edit"}


def test_a_sweep_workflow_is_refused(tiny_sd15_ckpt):
    with pytest.raises(BatchError, match="settings sweep makes several edits per item"):
        batch.make_jobs(SIX, settings(tiny_sd15_ckpt, workflow="fpe_settings_sweep"))


def test_folder_mistakes_and_leftovers(executor, tiny_sd15_ckpt, tmp_path):
    out = tmp_path / "b"
    batch.run_batch(SIX[:3], settings(tiny_sd15_ckpt), out, InProcessRunner(executor), say=lambda s: None)
    assert batch.pending_items(out, SIX[:3]) == []
    (out / "images" / "1_edit.png").unlink()  # a picture deleted since: the item is redone
    assert [i.id for i in batch.pending_items(out, SIX[:3])] == ["1"]
    runner = CountingRunner(executor)
    batch.run_batch(SIX[:2], settings(tiny_sd15_ckpt), out, runner, say=lambda s: None)  # a smaller --limit
    assert runner.ran == ["1"]
    assert [r["id"] for r in report.read_results_csv(out / "results.csv")] == ["0", "1", "2"]  # nothing hidden

    refused = tmp_path / "refused.json"  # a workflow ComfyUI refuses: one error before any item runs
    data = json.loads((REPO / "workflows" / "fpe_generated_edit.json").read_text())
    for node in data["nodes"]:
        if node["type"] == "KSampler":
            node["widgets_values"][4] = "no_such_sampler"
    refused.write_text(json.dumps(data))
    with pytest.raises(BatchError, match="ComfyUI refuses the batch's prompt.*sampler_name"):
        batch.run_batch(SIX[:1], settings(tiny_sd15_ckpt, workflow=refused), tmp_path / "r",
                        CountingRunner(executor), say=lambda s: None)


def test_item_checks_before_comfyui_starts(tmp_path):
    assert batch.safe_name("a/b") != batch.safe_name("a_b") and batch.safe_name("a_b") == "a_b"
    with pytest.raises(BatchError, match="empty target prompt"):
        batch.check_items([EditItem("0", "a cat", " ")], None)
    (tmp_path / "one.png").write_bytes(b"x")
    photos = [EditItem(str(i), "a", "b", image=f"p{i}.png") for i in range(3)]
    with pytest.raises(BatchError, match="3 of the 3 photos are not there.*pass --images DIR"):
        batch.check_items(photos, tmp_path)
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_bytes("\ufeffimage,source_prompt,target_prompt\none.png,a,b\n".encode())  # Excel's BOM
    assert batch.load_items(str(csv_file))[1][0].image == "one.png"
    csv_file.write_bytes("image,source_prompt,target_prompt\none.png,caf\xe9,b\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        batch.load_items(str(csv_file))
    csv_file.write_text("image,prompt\none.png,a\n")
    with pytest.raises(DatasetError, match="header lacks source_prompt, target_prompt"):
        batch.load_items(str(csv_file))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DatasetError, match="not a JSON file"):
        batch.load_items(str(tmp_path / "bad.json"))


def other_weights(source: Path, copy: Path) -> Path:
    """A checkpoint like a fine-tune of ``source``: the same tensors (the same safetensors header), other values."""
    import safetensors.torch
    from safetensors import safe_open

    with safe_open(str(source), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no iter
        meta = handle.metadata()
    copy.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}, str(copy),
                                metadata=meta)
    return copy


def test_resume_checks_the_checkpoint_by_content(executor, tiny_sd15_ckpt, comfy_host, tmp_path):
    weights = comfy_host.workdir / "models" / "checkpoints" / tiny_sd15_ckpt
    same = tmp_path / "copy" / tiny_sd15_ckpt
    same.parent.mkdir()
    shutil.copy2(weights, same)
    other = other_weights(weights, tmp_path / "other" / tiny_sd15_ckpt)
    def header(path):
        data = path.read_bytes()
        return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])

    assert header(other) == header(weights)  # the same tensors at the same places: only the sampled blocks differ
    assert file_fingerprint(same) == file_fingerprint(weights) != \
        file_fingerprint(other)

    def made_with(path):
        return settings(tiny_sd15_ckpt, checkpoint_file=str(path), checkpoint_content=file_fingerprint(path))

    out = tmp_path / "b"
    batch.run_batch(SIX[:2], made_with(weights), out, InProcessRunner(executor), say=lambda s: None)
    recorded = json.loads((out / batch.SETTINGS_FILE).read_text())
    assert recorded["checkpoint_content"] == file_fingerprint(weights)
    runner = CountingRunner(executor)
    with pytest.raises(BatchError) as caught:  # other weights under the same name: refused before anything runs
        batch.run_batch(SIX, made_with(other), out, runner, say=lambda s: None)
    assert str(weights) in str(caught.value) and str(other) in str(caught.value) and "--restart" in str(caught.value)
    assert runner.ran == []
    runner = CountingRunner(executor)  # the same weights elsewhere: the batch goes on
    batch.run_batch(SIX[:3], made_with(same), out, runner, say=lambda s: None)
    assert runner.ran == ["2"]
    runner = CountingRunner(executor)  # --server: a name on the servers, checked by name (documented)
    batch.run_batch(SIX[:3], settings(tiny_sd15_ckpt), out, runner, say=lambda s: None)
    assert runner.ran == []


def test_a_damaged_batch_folder_is_named(executor, tiny_sd15_ckpt, tmp_path):
    out = tmp_path / "b"
    batch.run_batch(SIX[:2], settings(tiny_sd15_ckpt), out, InProcessRunner(executor), say=lambda s: None)
    items_json = (out / batch.ITEMS_FILE).read_text()
    for broken, what in (("", "is empty"), (items_json[:len(items_json) // 2], "is cut or broken"),
                         ("[]", "not a batch's item list"), ('{"dataset": "x"}', "not a batch's item list")):
        (out / batch.ITEMS_FILE).write_text(broken)
        with pytest.raises(BatchError, match=rf"items.json: {what}.*run the batch again"):
            batch.evaluate_folder(out, Scoring())
    (out / batch.ITEMS_FILE).write_text(items_json[:len(items_json) // 2])  # a resume rebuilds it, and says so
    said = []
    runner = CountingRunner(executor)
    batch.run_batch(SIX[:3], settings(tiny_sd15_ckpt), out, runner, say=said.append)
    assert runner.ran == ["2"] and any("items.json: is cut" in line and "rebuilt" in line for line in said)
    assert [item.id for item in batch.load_items_file(out)] == ["0", "1", "2"]

    manifest = (out / batch.MANIFEST).read_text()
    (out / batch.MANIFEST).write_text("")
    with pytest.raises(BatchError, match=r"manifest.jsonl is empty or cut: no finished item"):
        batch.evaluate_folder(out, Scoring())
    (out / batch.MANIFEST).write_text(manifest)
    (out / "results.csv").write_text('id,status\n"0,o')  # cut: eval rewrites it from the manifest
    rows = batch.evaluate_folder(out, Scoring())
    assert [row["id"] for row in rows] == ["0", "1", "2"]
    assert [row["id"] for row in report.read_results_csv(out / "results.csv")] == ["0", "1", "2"]

    for broken, what in (("", "is empty"), ('{"steps": 2, "si', "is cut or broken"), ('{"steps": 2, "steps": 3}',
                                                                                       "the key 'steps' appears twice")):
        (out / batch.SETTINGS_FILE).write_text(broken)
        with pytest.raises(BatchError, match=rf"batch.json: {what}.*--restart"):
            batch.check_folder(out, batch.wanted_settings(settings(tiny_sd15_ckpt), SIX))


def hand_made_folder(out: Path, items: list[EditItem], done: int) -> None:
    """A batch folder as a batch stopped after ``done`` items leaves it (no ComfyUI: random pictures)."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    (out / "images").mkdir()
    (out / batch.SETTINGS_FILE).write_text(json.dumps({"dataset": "six", "checkpoint": "x.safetensors"}))
    batch.write_items(out, items, settings("x.safetensors"), say=lambda s: None)
    for item in items[:done]:
        for role in ("source", "edit"):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(out / f"images/{item.id}_{role}.png")
        batch.append_manifest(out, {"id": item.id, "item": batch.item_fingerprint(item), "status": "ok", "seconds": 1.0,
                                    "source_image": f"images/{item.id}_source.png",
                                    "edit_image": f"images/{item.id}_edit.png", "metrics": {}})


def test_a_stopped_batch_counts_against_its_items(tmp_path):
    """A batch stopped at 1 of 3 items: eval says 1/3 with 2 not run (not 1/1), and the rows say which."""
    out = tmp_path / "b"
    hand_made_folder(out, SIX[:3], done=1)
    rows = batch.evaluate_folder(out, Scoring())
    assert [(row["id"], row["status"]) for row in rows] == [("0", "ok"), ("1", "not run"), ("2", "not run")]
    summary = (out / "summary.md").read_text()
    assert "| six | 1/3 |" in summary and "2 not run" in summary and "Failed items" not in summary
    assert [row["status"] for row in report.read_results_csv(out / "results.csv")] == ["ok", "not run", "not run"]


def test_a_hand_edited_items_json_is_refused_by_item(tmp_path):
    """Two items with one id, an id renamed (its result left under the old one), ids as numbers, a prompt that is
    not text: refused naming the item and the fix; a prompt changed since the run: that item counts as not run."""
    out = tmp_path / "b"
    hand_made_folder(out, SIX[:2], done=2)
    good = json.loads((out / batch.ITEMS_FILE).read_text())

    def edited(change, match):
        data = json.loads(json.dumps(good))
        change(data["items"])
        (out / batch.ITEMS_FILE).write_text(json.dumps(data))
        with pytest.raises(BatchError, match=match) as caught:
            batch.evaluate_folder(out, Scoring())
        assert "run the batch again (the same `fpe batch` command and --out) to rebuild it" in str(caught.value)

    edited(lambda items: items[1].update(id="0"), r"items.json: item '0' \(number 2\): its id appears twice")
    edited(lambda items: items[1].update(id="zz"), r"items.json: item 'zz' has no result while manifest.jsonl has "
                                                   r"results for ids items.json does not list \('1'\)")
    edited(lambda items: [item.update(id=int(item["id"])) for item in items], r"item 0 \(number 1\): id is int 0")
    edited(lambda items: items[0].update(target_prompt=5), r"item '0' \(number 1\): target_prompt is int 5")
    edited(lambda items: items[0].update(mask="abc"), r"item '0' \(number 1\): mask must be")
    data = json.loads(json.dumps(good))
    data["items"][0]["target_prompt"] = "a purple car"  # the result is the blue car's
    (out / batch.ITEMS_FILE).write_text(json.dumps(data))
    rows = batch.evaluate_folder(out, Scoring())
    assert rows[0]["status"] == "not run" and "another version of this item" in rows[0]["error"]
    assert rows[0].get("edge_ssim") is None and rows[1]["status"] == "ok"
    assert "| six | 1/2 |" in (out / "summary.md").read_text()


def test_without_a_checkpoint_the_batch_runs_at_the_demo_models_steps_and_size(monkeypatch):
    """The demo model's 20 steps and 128 px where its file is there; the tiny random model's where it is not,
    and always for SDXL workflows; a checkpoint or --server: the workflow's."""
    from fpe_headless import shared
    from fpe_headless.batch.cli import demo_defaults

    for present in (True, False):
        monkeypatch.setattr(shared, "demo_model_present", lambda present=present: present)
        assert demo_defaults(None, [], sdxl=False) == ((shared.DEMO_STEPS, shared.DEMO_SIZE) if present
                                                       else (shared.TINY_STEPS, shared.TINY_SIZE))
        assert demo_defaults(None, [], sdxl=True) == (shared.TINY_STEPS, shared.TINY_SIZE)
        assert demo_defaults(Path("model.safetensors"), [], sdxl=False) == (None, None)
        assert demo_defaults(None, ["http://127.0.0.1:8188"], sdxl=False) == (None, None)
    assert (shared.DEMO_STEPS, shared.DEMO_SIZE) == (20, 128)


@pytest.mark.skipif(not host_has_mmdit(), reason="ComfyUI of early 2024 has no Flux/SD3 nodes")
@pytest.mark.parametrize("name", ["fpe_flux_generated_edit", "fpe_sd35_generated_edit", "fpe_flux_real_image_edit"])
def test_flux_and_sd35_workflows_batch_on_tiny_models(name, executor, tmp_path, comfy_host):
    """An MMDiT workflow becomes batch prompts on the tiny files (``TINY_MMDIT``): the target prompt in through
    FluxGuidance, the edit decoded from SamplerCustomAdvanced for a photo; and it runs."""
    from fpe_headless.shared import TINY_MMDIT, mmdit_files

    tiny_mmdit_models()  # the tiny files in the host's models folders
    real = "real" in name
    Image.open(REPO / "workflows" / "fpe_example_apple.png").convert("RGB").save(tmp_path / "apple.png")
    items = [EditItem("x", "a red apple", "a green apple", image="apple.png" if real else None)]
    jobs = batch.make_jobs(items, settings(TINY_MMDIT, workflow=name, images=tmp_path, staging=tmp_path / "in"))
    prompt = jobs[0].prompt
    texts = [v for node in prompt.values() for k, v in node["inputs"].items() if k == "text"]
    assert "a green apple" in texts
    loader = next(node["inputs"] for node in prompt.values() if node["class_type"] == "UNETLoader")
    assert loader["unet_name"] == mmdit_files("sd35" if "sd35" in name else "flux")["unet_name"]
    for upload, local in jobs[0].uploads.items():
        shutil.copy2(local, comfy_host.workdir / "input" / upload)
    result = InProcessRunner(executor).run_one(jobs[0])
    assert result.ok, result.error
    assert set(result.images) == ({"edit"} if real else {"source", "edit"})
