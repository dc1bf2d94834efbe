"""`fpe` (python -m fpe_headless): its commands as a user meets them, in a fresh process."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fpe_headless.shared import demo_model_present

REPO = Path(__file__).resolve().parents[2]
_TMPDIR: list[Path] = []  # this module's own TMPDIR for the commands (``own_tmpdir``)


@pytest.fixture(autouse=True, scope="module")
def own_tmpdir(tmp_path_factory):
    """The commands' TMPDIR is this module's: work folders other processes left in the machine's TMPDIR
    (which the next command tidies, with a note on stderr) must not change what a test sees."""
    _TMPDIR[:] = [tmp_path_factory.mktemp("fpe-tmpdir")]
    yield
    _TMPDIR.clear()


def fpe(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), FPE_PROG="fpe", TMPDIR=str(_TMPDIR[0]))
    return subprocess.run([sys.executable, "-m", "fpe_headless", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_datasets_list_and_generate(tmp_path):
    listed = fpe("datasets", "list")
    assert listed.returncode == 0 and "car-fake-edit" in listed.stdout and "(756)" in listed.stdout
    done = fpe("datasets", "generate", "car-fake-edit", "--out", tmp_path / "cars.json")
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "cars.json").read_text())
    assert len(rows) == 756 and rows[0] == {"soure_prompt": "a red car", "edit_prompt": "a green car"}
    missing = fpe("datasets", "generate", "imagenet-real-edit", "--out", tmp_path / "x.json")
    assert missing.returncode == 2 and not (tmp_path / "x.json").exists()
    assert missing.stderr.strip().count("\n") == 0 and "give --queries FILE" in missing.stderr
    nowhere = fpe("datasets", "generate", "animals-park", "--out", tmp_path / "no" / "x.json")
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr


def test_edit_is_the_main_job_and_help_names_the_commands():
    edit = fpe("edit", "--help")
    assert edit.returncode == 0 and edit.stdout.startswith("usage: fpe edit") and "--checkpoint" in edit.stdout
    bare = fpe("--help")  # no command: the main job, as bash run.sh runs it
    # argparse wraps the epilog where the list of shipped workflows ends: compare the words
    assert bare.returncode == 0 and "`fpe batch|eval|datasets|probe`" in " ".join(bare.stdout.split())


def test_batch_and_eval_mistakes_are_one_line_before_comfyui_starts(tmp_path):
    cases = [
        (("batch", tmp_path / "none.json"), "no such file"),
        (("batch", "car-fake-edit", "--server", "http://127.0.0.1:9"), "--server needs --checkpoint NAME"),
        (("batch", "car-fake-edit", "--limit", "0"), "--limit 0: must be 1 or more"),
        (("batch", "car-fake-edit", "--steps", "0"), "--steps 0: must be 1 to"),
        (("batch", "car-fake-edit", "--clip", tmp_path), "not a transformers CLIP folder"),
        (("eval", tmp_path), "neither a batch folder"),
        (("probe", "build", "color-car", "--limit", "0"), "--limit 0: must be 1 or more"),
        (("probe", "train", tmp_path), "not a probe dataset folder"),
    ]
    for args, message in cases:
        done = fpe(*args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert done.stderr.strip().count("\n") == 0, done.stderr
    helped = fpe("batch", "--help")
    assert helped.returncode == 0 and "(default: None)" not in helped.stdout
    for option in ("--seed", "--timeout", "--retries", "--clip-scale", "--invert-prompt"):
        line = helped.stdout[helped.stdout.index("\n  " + option):]  # its help, not the usage line
        assert "(default:" in line[:400], option


def test_batch_command_killed_and_resumed(tmp_path):
    """The tiny demo as a user runs it: SIGKILL in the middle, run again, only the rest is computed."""
    out = tmp_path / "b"
    args = ["batch", "car-fake-edit", "--limit", "6", "--steps", "4", "--size", "128", "--out", out]
    env = dict(os.environ, PYTHONPATH=str(REPO), FPE_PROG="fpe")
    batch_run = subprocess.Popen([sys.executable, "-m", "fpe_headless", *map(str, args)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and batch_run.poll() is None:
        if manifest.is_file() and manifest.read_text().count("\n") >= 2:
            batch_run.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    batch_run.wait(timeout=60)
    assert batch_run.returncode == -signal.SIGKILL, batch_run.communicate()[1][-2000:]
    text = manifest.read_text()
    before = text[:text.rfind("\n") + 1].splitlines()  # whole lines: the kill may have cut the last one
    assert 2 <= len(before) < 6
    done = fpe(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(before)} of 6 items finished before" in done.stderr
    assert f"6 of 6 items edited ({6 - len(before)} now, 0 failed now)" in done.stdout
    assert "| car-fake-edit | 6/6 |" in done.stdout
    # the demo says what it is: the demo model of drawn shapes, or where its file is not there the tiny random one
    assert ("MEANINGLESS" in done.stderr) != demo_model_present() and "Running" in done.stderr
    assert "it/s" not in done.stderr  # the batch's bar replaces one bar per sampling
    after = [line for line in manifest.read_text().splitlines() if line.endswith("}")]
    assert after[:len(before)] == before and len(after) == 6  # nothing finished was run or written again


DEMO_RUN = """import sys
from pathlib import Path
import fpe_headless.demo.checkpoint as demo
demo.DEMO_CHECKPOINT = Path(sys.argv[1])  # before anything imports it
from fpe_headless.cli import main
sys.exit(main(sys.argv[2:]))
"""


def demo_batch(out: Path, demo_file: Path | None = None):
    """`fpe batch demo-colours` on 3 items at 2 steps, as a user runs it without --checkpoint; ``demo_file``:
    the demo model's file is looked for there instead (a stand-in, or a path with nothing to hide it)."""
    args = ["batch", "demo-colours", "--limit", "3", "--steps", "2", "--out", out]
    if demo_file is None:
        return fpe(*args)
    env = dict(os.environ, PYTHONPATH=str(REPO), FPE_PROG="fpe", TMPDIR=str(_TMPDIR[0]))
    return subprocess.run([sys.executable, "-c", DEMO_RUN, str(demo_file), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=180)


def check_demo_batch(done, out: Path, demo: bool, checkpoint: str) -> None:
    """3 of demo-colours edited on the demo model (its 128 px, said so) or the tiny random one (256 px, said
    MEANINGLESS), the weights recorded."""
    from fpe_headless.shared import DEMO_SIZE, TINY_SIZE

    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 of 3 items edited (3 now, 0 failed now)" in done.stdout and "| demo-colours | 3/3 |" in done.stdout
    assert ("trained on drawn shapes" in done.stderr) == demo and ("MEANINGLESS" in done.stderr) != demo
    size = DEMO_SIZE if demo else TINY_SIZE
    recorded = json.loads((out / "batch.json").read_text())
    assert (recorded["steps"], recorded["size"], recorded["checkpoint"]) == (2, size, checkpoint)
    assert (recorded["checkpoint_content"] is not None) == demo  # a retrained demo model is not resumed into
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["source_prompt"], r["target_prompt"]) for r in rows] == [
        ("a red circle on grass", "a orange circle on grass"), ("a red square on grass", "a yellow square on grass"),
        ("a red triangle on grass", "a green triangle on grass")]
    from PIL import Image

    for row in rows:
        for role in ("source", "edit"):
            assert np.asarray(Image.open(out / f"images/{row['id']}_{role}.png")).shape == (size, size, 3)


def test_batch_of_the_demo_set_runs_on_whichever_demo_model_is_there(tmp_path):
    """The demo set end to end without --checkpoint: the demo model where its file is there, the tiny random
    model where it is not (never skipped)."""
    from fpe_headless.shared import demo_model_present, tiny_checkpoint_name

    out = tmp_path / "b"
    check_demo_batch(demo_batch(out), out, demo_model_present(), tiny_checkpoint_name(False))


def test_probe_build_of_a_demo_set_runs_on_whichever_demo_model_is_there(tmp_path):
    from fpe_headless.demo import world
    from fpe_headless.shared import tiny_checkpoint_name

    out = tmp_path / "p"
    done = fpe("probe", "build", "demo-colour", "--limit", "6", "--steps", "2", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 of 6 samples stored" in done.stdout
    meta = json.loads((out / "probe.json").read_text())
    assert meta["classes"] == list(world.COLOURS) and meta["word"] == "<colour>" and "demo model" in meta["about"]
    assert (meta["steps"], meta["size"], meta["checkpoint"]) == (2, 128, tiny_checkpoint_name(False))
    assert len(meta["layers"]) == 16  # the SD1.5 layout's cross-attention layers


def test_help_names_the_demo_sets_and_the_demo_models_defaults():
    from fpe_headless.probe.cli import TINY_PROBE_SIZE
    from fpe_headless.shared import DEMO_SIZE, DEMO_STEPS, TINY_SIZE, TINY_STEPS

    def text(*args):
        done = fpe(*args)
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())  # argparse wraps the lines

    batch_help = text("batch", "--help")
    assert f"{DEMO_STEPS} for the demo model, {TINY_STEPS} for a tiny random one" in batch_help
    assert f"{DEMO_SIZE} for the demo model, {TINY_SIZE} for a tiny random one" in batch_help
    assert "demo-colours" in batch_help
    probe_help = text("probe", "build", "--help")
    assert f"{DEMO_STEPS} for the demo model, {TINY_STEPS} for the tiny random one" in probe_help
    assert f"{DEMO_SIZE} for the demo model, {TINY_PROBE_SIZE} for the tiny random one" in probe_help
    assert "demo-colour" in probe_help and "self-demo-colour" in probe_help
    listed = text("probe", "list")
    assert "demo-colour cross 2016 samples (192 with --small) for the demo model" in listed
    assert "self-demo-colour self 2016 samples" in listed
    assert "demo-real-edit" in text("datasets", "list")


def test_batch_of_the_demo_set_on_the_other_demo_model(tmp_path, tiny_sd15_ckpt, comfy_host):
    """The branch the machine's files do not take: a tiny SD1.5-layout checkpoint standing in as the demo model's
    file where none is there (the demo's steps, size and message), or a path with nothing, hiding the real one
    (the tiny random model's)."""
    from fpe_headless.demo.checkpoint import DEMO_CHECKPOINT
    from fpe_headless.shared import demo_model_present

    out = tmp_path / "b"
    if demo_model_present():
        check_demo_batch(demo_batch(out, tmp_path / "nothing" / DEMO_CHECKPOINT.name), out, False,
                         "tiny_sd15.safetensors")
        return
    stand_in = tmp_path / DEMO_CHECKPOINT.name
    shutil.copy2(comfy_host.workdir / "models" / "checkpoints" / tiny_sd15_ckpt, stand_in)
    check_demo_batch(demo_batch(out, stand_in), out, True, DEMO_CHECKPOINT.name)


def one_line_error(done, *parts):
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr, done.stderr
    for part in parts:
        assert str(part) in done.stderr, (part, done.stderr)


def test_float_options_refuse_nan_and_inf(tmp_path):
    """argparse's float takes 'nan' and 'inf'; every float option of `fpe eval` and `fpe batch` refuses them in one
    line (exit 2), before any file is read or ComfyUI starts."""
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    pairs = tmp_path / "pairs.csv"  # a CSV that scores (exit 0) with a good --clip-scale
    pairs.write_text("source_image,edit_image,source_prompt,target_prompt\na.png,a.png,a cat,a dog\n")
    for value in ("nan", "inf", "-inf", "0", "-1"):
        one_line_error(fpe("eval", pairs, f"--clip-scale={value}", cwd=tmp_path), f"--clip-scale {float(value)}: "
                       "must be a number above 0")
        one_line_error(fpe("batch", "car-fake-edit", f"--clip-scale={value}", cwd=tmp_path),
                       f"--clip-scale {float(value)}: must be a number above 0")
    for value in ("nan", "inf", "0"):
        one_line_error(fpe("batch", "car-fake-edit", "--timeout", value, cwd=tmp_path),
                       f"--timeout {float(value)}: must be a number of seconds above 0")
    for flag in ("--cfg", "--invert-cfg"):
        one_line_error(fpe("batch", "car-fake-edit", flag, "nan", cwd=tmp_path), f"{flag} nan: must be a number")
    # and the probing commands' float options
    one_line_error(fpe("probe", "build", "color-car", "--timeout", "nan", cwd=tmp_path),
                   "--timeout nan: must be a number of seconds above 0")
    one_line_error(fpe("probe", "build", "color-car", "--cfg", "inf", cwd=tmp_path), "--cfg inf: must be a number")
    for flag, value in (("--lr", "nan"), ("--lr", "0"), ("--test-fraction", "nan")):
        one_line_error(fpe("probe", "train", tmp_path, "--out", tmp_path / "probes", flag, value, cwd=tmp_path),
                       f"{flag} {float(value)}: must be")
    assert not list(tmp_path.glob("fpe_*"))  # nothing written
    assert fpe("eval", pairs, "--clip-scale=1", cwd=tmp_path).returncode == 0


def test_eval_pairs_of_other_sizes_fail_by_name_and_the_rest_is_scored(tmp_path):
    """A pair whose edit (or mask) has another size than its source is not scaled and scored: the item fails
    with both files and sizes named, like an unreadable file, the others are scored, and the exit status is 1."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (64, 64), "b.png": (64, 64), "small.png": (32, 48)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((32, 32), 255, dtype=np.uint8)).save(tmp_path / "masks" / "m.png")
    Image.fromarray(np.full((64, 64), 255, dtype=np.uint8)).save(tmp_path / "masks" / "full.png")
    (tmp_path / "pairs.csv").write_text(
        "id,source_image,edit_image,source_prompt,target_prompt,mask\n"
        "good,a.png,b.png,a cat,a dog,masks/full.png\n"
        "edit,a.png,small.png,a cat,a dog,\n"
        "mask,a.png,b.png,a cat,a dog,masks/m.png\n"
        "source,small.png,a.png,a cat,a dog,\n")
    done = fpe("eval", "pairs.csv", "--out", "out", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    with open(tmp_path / "out" / "results.csv", newline="", encoding="utf-8") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    assert rows["good"]["status"] == "ok" and rows["good"]["edge_ssim"]
    expected = {
        "edit": "edit_image small.png is 32x48 px but source_image a.png is 64x64: give the edit at the source's size",
        "mask": "mask masks/m.png is 32x32 px but source_image a.png is 64x64: give the mask at the source's size",
        "source": "edit_image a.png is 64x64 px but source_image small.png is 32x48: give the edit at the source's "
                  "size",
    }
    for item, message in expected.items():
        assert rows[item]["status"] == "error" and rows[item]["error"] == message, rows[item]
        assert not rows[item]["edge_ssim"]
        assert f"item {item} not scored: {message}" in done.stderr
    assert "| pairs | 1/4 |" in done.stdout, done.stdout


def test_broken_input_files_are_one_line(tmp_path):
    """A repeated key in a dataset JSON, an unclosed quote in a CSV, a batch folder's files empty or cut."""
    entry = '{"image_path": "a.png", "original_prompt": "a [cat]", "editing_prompt": "a [dog]", "mask": []}'
    mapping = tmp_path / "mapping_file.json"
    mapping.write_text('{"000000000001": ' + entry + ', "000000000001": ' + entry + "}")
    one_line_error(fpe("batch", mapping), mapping, "the key '000000000001' appears twice")
    (tmp_path / "cat.png").write_bytes(b"png")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('image,source_prompt,target_prompt\ncat.png,"a cat,a dog\ncat.png,a cat,a fox\n')
    one_line_error(fpe("batch", prompts), prompts, "line 2: the quote that opens source_prompt is never closed")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text('source_image,edit_image,source_prompt,target_prompt\ncat.png,cat.png,a cat,"a dog\n')
    one_line_error(fpe("eval", pairs, cwd=tmp_path), pairs,  # its default --out folder lands in cwd
                   "line 2: the quote that opens target_prompt is never closed")

    folder = tmp_path / "b"  # what `fpe batch` leaves, then damaged
    made = fpe("batch", "car-fake-edit", "--limit", "2", "--steps", "2", "--size", "64", "--out", folder)
    assert made.returncode == 0, made.stderr[-2000:]
    items = (folder / "items.json").read_text()
    for text in ("", items[:len(items) // 3]):
        (folder / "items.json").write_text(text)
        one_line_error(fpe("eval", folder), folder / "items.json", "run the batch again")
    (folder / "items.json").write_text(items)
    manifest = (folder / "manifest.jsonl").read_text()
    (folder / "manifest.jsonl").write_text(manifest[:20])
    one_line_error(fpe("eval", folder), folder / "manifest.jsonl", "empty or cut", "run the batch again")
    (folder / "manifest.jsonl").write_text(manifest)
    (folder / "results.csv").write_text("")
    (folder / "batch.json").write_text("")
    scored = fpe("eval", folder)  # eval rewrites results.csv and does not need batch.json's content
    assert scored.returncode == 0 and "| car-fake-edit | 2/2 |" in scored.stdout, scored.stderr[-2000:]
    one_line_error(fpe("batch", "car-fake-edit", "--limit", "2", "--steps", "2", "--size", "64", "--out", folder),
                   folder / "batch.json", "is empty", "--restart")


def test_resume_with_other_weights_of_the_same_name_is_refused(executor, tiny_sd15_ckpt, comfy_host, tmp_path):
    """`fpe batch` and `fpe probe build` record the checkpoint's content; other weights under the file name the
    folder was made with are refused, naming both files, before ComfyUI starts."""
    from test_batch import other_weights

    from fpe_headless.batch import batch, datasets
    from fpe_headless.comfy.jobs import InProcessRunner
    from fpe_headless.fingerprint import file_fingerprint
    from fpe_headless.probe import build as probing

    weights = tmp_path / "a" / tiny_sd15_ckpt
    weights.parent.mkdir()
    weights.write_bytes((comfy_host.workdir / "models" / "checkpoints" / tiny_sd15_ckpt).read_bytes())
    other = other_weights(weights, tmp_path / "other" / tiny_sd15_ckpt)
    fingerprint = file_fingerprint(weights)

    out = tmp_path / "b"  # a batch as `fpe batch car-fake-edit --limit 1 --steps 2 --size 64 --checkpoint a/...` makes it
    made_with = batch.BatchSettings(checkpoint=tiny_sd15_ckpt, steps=2, size=64, dataset="car-fake-edit",
                                    checkpoint_file=str(weights), checkpoint_content=fingerprint)
    batch.run_batch(datasets.car_fake_edit()[:1], made_with, out, InProcessRunner(executor), say=lambda s: None)
    resumed = fpe("batch", "car-fake-edit", "--limit", "2", "--steps", "2", "--size", "64", "--checkpoint", other,
                  "--out", out)
    one_line_error(resumed, "other weights of the same name", weights, other, "--restart")

    probe_out = tmp_path / "p"
    probe_set = probing.SETS["color-car"]
    probing.build(probe_set, probing.plan(probe_set)[:1], probing.BuildSettings(checkpoint=tiny_sd15_ckpt, steps=1,
                                                                                  size=64), probe_out,
                  InProcessRunner(executor), extra_meta={"_checkpoint_file": str(weights),
                                                         "_checkpoint_content": fingerprint}, say=lambda s: None)
    built = fpe("probe", "build", "color-car", "--steps", "1", "--size", "64", "--checkpoint", other, "--out",
                probe_out)
    one_line_error(built, "other weights of the same name", weights, other, "use another --out")


def test_killed_batch_work_folder_goes_with_the_next_run(tmp_path):
    """A SIGKILLed batch cannot remove its work folder in TMPDIR; the next command removes it (and only the
    folders of dead fpe processes). torch's compile cache stays inside the work folder: TMPDIR ends empty."""
    owner_file = ".fpe-owner.json"  # {pid, start: field 22 of /proc/<pid>/stat, boot, host, pid namespace}

    def owner(pid, start, namespace=None):
        return {"pid": pid, "start": start, "boot": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                "host": socket.gethostname(), "pid_ns": namespace or os.stat("/proc/self/ns/pid").st_ino}

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "b"
    args = ["batch", "car-fake-edit", "--limit", "4", "--steps", "4", "--size", "128", "--out", out]
    env = dict(os.environ, PYTHONPATH=str(REPO), FPE_PROG="fpe", TMPDIR=str(tmp))
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    batch_run = subprocess.Popen([sys.executable, "-m", "fpe_headless", *map(str, args)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and batch_run.poll() is None:
        if manifest.is_file() and manifest.read_text().count("\n") >= 1:
            batch_run.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    batch_run.wait(timeout=60)
    assert batch_run.returncode == -signal.SIGKILL, batch_run.communicate()[1][-2000:]
    (left,) = [p for p in tmp.iterdir() if p.name.startswith("fpe-batch-")]
    assert (left / "models" / "checkpoints").is_dir()
    assert not list(tmp.glob("torchinductor_*"))  # torch's cache went into the work folder

    keep = []  # what the next run must not touch: a live fpe process's folder, another program's folder
    started = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]
    # a container sharing TMPDIR and the host name: its pids are another namespace's, so "reused" means nothing
    in_container = owner(os.getpid(), "1", namespace=1)
    for name, record in (("fpe-run-live", owner(os.getpid(), started)), ("fpe-probe-foreign", None),
                         ("fpe-eval-container", in_container)):
        (tmp / name).mkdir()
        if record:
            (tmp / name / owner_file).write_text(json.dumps(record))
        keep.append(name)
    reused = tmp / "fpe-batch-reused"  # its pid now belongs to a later process (this one): its owner is gone
    reused.mkdir()
    (reused / owner_file).write_text(json.dumps(owner(os.getpid(), "1")))

    done = subprocess.run([sys.executable, "-m", "fpe_headless", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "removed 2 work folders that killed fpe commands left" in done.stderr
    assert sorted(p.name for p in tmp.iterdir()) == sorted(keep)  # the killed and the reused-pid folders went
    assert not left.exists() and not reused.exists()

    for name in keep:
        shutil.rmtree(tmp / name)
    edited = subprocess.run([sys.executable, "-m", "fpe_headless", "edit", "--steps", "2", "--size", "64", "--out",
                             tmp_path / "edit"], env=env, capture_output=True, text=True, timeout=300)
    assert edited.returncode == 0, edited.stderr[-2000:]
    assert list(tmp.iterdir()) == []  # no work folder, no torchinductor_<user>


def test_eval_of_a_stopped_batch_and_a_comma_in_a_prompt(tmp_path):
    """`fpe eval` on a batch stopped at 1 of 3 items: 1/3, "2 not run" in summary.md and on stderr, exit 1. An
    unquoted comma in a prompt (batch CSV and pairs CSV): one line naming the line, exit 2."""
    from PIL import Image
    from test_batch import SIX, hand_made_folder

    hand_made_folder(tmp_path / "b", SIX[:3], done=1)
    done = fpe("eval", tmp_path / "b", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "2 of 3 items not run" in done.stderr and "| six | 1/3 |" in done.stdout
    assert "2 not run" in (tmp_path / "b" / "summary.md").read_text()
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    (tmp_path / "prompts.csv").write_text("image,source_prompt,target_prompt\na.png,a cat,a dog, wearing a red hat\n")
    one_line_error(fpe("batch", "prompts.csv", cwd=tmp_path), "prompts.csv: line 2 has 4 fields but the header names 3; "
                   'quote a prompt that holds a comma ("a dog, wearing a hat")')
    (tmp_path / "pairs.csv").write_text("source_image,edit_image,source_prompt,target_prompt\n"
                                        "a.png,a.png,a cat,a dog, wearing a red hat\n")
    one_line_error(fpe("eval", "pairs.csv", cwd=tmp_path), "pairs.csv: line 2 has 5 fields but the header names 4")


def test_output_paths_that_are_folders_or_unwritable_are_one_line(tmp_path):
    """Every output path is checked before any work: a folder, '' or a place under a file is one line (exit 2);
    a batch whose results.csv cannot be written keeps its edits and names the file."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "ds").mkdir()
    for out, message in (("ds", "--out ds: is a folder; give a file name"), ("", "no file name; give one"),
                         ("afile/x.json", "--out afile/x.json: cannot write there")):
        one_line_error(fpe("datasets", "generate", "car-fake-edit", "--out", out, cwd=tmp_path), message)
    one_line_error(fpe("datasets", "generate", "car-real-edit", "--out", "x.json", "--stanford-cars", "ds",
                       cwd=tmp_path), "--stanford-cars ds: is a folder")
    out = tmp_path / "b"
    args = ["batch", "car-fake-edit", "--limit", "1", "--steps", "2", "--size", "64", "--out", out]
    assert fpe(*args).returncode == 0
    for table, message in (("ds", "--table ds: is a folder"), ("afile/t.md", "--table afile/t.md: cannot write")):
        done = fpe("eval", out, "--table", table, cwd=tmp_path)
        one_line_error(done, message)
        assert "scored" not in done.stdout  # told before the scoring
    (out / "results.csv").unlink()
    (out / "results.csv").mkdir()
    done = fpe(*args)
    errors = [line for line in done.stderr.splitlines() if "error" in line]  # after the "resuming" notice
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert errors[0].startswith(f"fpe batch: error: {out / 'results.csv'}: cannot write it"), errors
    assert "the edits are kept" in errors[0] and f"fpe eval {out}" in errors[0]
    assert (out / "manifest.jsonl").read_text().count("\n") == 1
