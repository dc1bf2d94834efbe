"""`fpe` (python -m fpe_headless): its commands as a user meets them, in a fresh process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fpe(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), FPE_PROG="fpe")
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
    assert bare.returncode == 0 and "`fpe batch|eval|datasets|probe`" in bare.stdout


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
    assert "| car-fake-edit | 6/6 |" in done.stdout and "MEANINGLESS" in done.stderr  # the demo says what it is
    assert "it/s" not in done.stderr  # the batch's bar replaces one bar per sampling
    after = [line for line in manifest.read_text().splitlines() if line.endswith("}")]
    assert after[:len(before)] == before and len(after) == 6  # nothing finished was run or written again
