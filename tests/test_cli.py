"""`fpe` (python -m fpe_headless): its commands as a user meets them, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    assert bare.returncode == 0 and "`fpe datasets`" in bare.stdout
