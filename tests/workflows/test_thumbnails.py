"""Every shipped workflow has its template-browser picture (same name, .jpg), made from that very file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "workflows").glob("*.json"))
STAMP_PREFIX = b"fpe-workflow-sha256:"  # written by dev/make_thumbnails.py


def test_workflows_are_shipped():
    assert {p.stem for p in SHIPPED} >= {
        "fpe_generated_edit", "fpe_generated_edit_official_schedule", "fpe_real_image_edit",
        "fpe_sdxl_generated_edit", "fpe_sdxl_real_image_edit", "fpe_local_edit", "fpe_real_image_local_edit",
        "fpe_flux_generated_edit", "fpe_sd35_generated_edit", "fpe_flux_real_image_edit"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_each_workflow_has_a_current_jpeg_thumbnail(path):
    picture = path.with_suffix(".jpg")
    assert picture.is_file(), f"{picture.name} is missing: run `COMFYUI_PATH=<current ComfyUI> bash dev/thumbnails.sh`"
    with Image.open(picture) as image:
        assert image.format == "JPEG"
        assert image.width >= 512 and image.height >= 256
        stamp = image.info.get("comment", b"")
    digest = hashlib.sha256(path.read_bytes()).hexdigest().encode()
    assert stamp == STAMP_PREFIX + digest, (
        f"{picture.name} was made from another version of {path.name}: "
        "run `COMFYUI_PATH=<current ComfyUI> bash dev/thumbnails.sh`")
