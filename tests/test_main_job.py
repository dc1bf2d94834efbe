"""README's first command: the headless FPE edit (smoke demo without a checkpoint), in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import HOST

REPO = Path(__file__).resolve().parents[1]


def test_headless_fpe_edit_writes_source_edit_and_side_by_side(tmp_path):
    env = dict(os.environ, FPE_COMFYUI_HOST=str(HOST.path), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(REPO / "dev" / "headless.py"), "--steps", "2", "--size", "64", "--out", str(tmp_path),
         "--target-prompt", "a photo of wooden ducks walking on street"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pictures are MEANINGLESS" in done.stdout
    assert "ran 14 nodes of fpe_generated_edit.json" in done.stdout
    source, edit, both = (np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("source", "edit",
                                                                                        "side_by_side"))
    assert source.shape == edit.shape == (64, 64, 3) and both.shape == (64, 128, 3)
    assert np.array_equal(both, np.concatenate([source, edit], axis=1))
    assert not np.array_equal(source, edit)


def test_headless_real_image_edit_writes_the_edit_and_the_reconstruction_check(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((61, 72, 3)) * 255).astype(np.uint8)).save(photo)
    env = dict(os.environ, FPE_COMFYUI_HOST=str(HOST.path), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(REPO / "dev" / "headless.py"), "--workflow", str(REPO / "workflows" /
                                                                              "fpe_real_image_edit.json"),
         "--image", str(photo), "--steps", "3", "--size", "48", "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FPEDDIMInvert: reconstruction latent RMSE" in done.stdout and "dB" in done.stdout
    edit, both, check = (np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
                         for name in ("real_edit", "real_side_by_side", "reconstruction_check"))
    assert edit.shape == (48, 48, 3)  # --size resizes the photo
    assert both.shape == (48, 96, 3) and check.shape[1] == 2 * 48  # photo | edit; input | reconstruction
