"""The tests' ComfyUI: the product's headless boot (``fpe_headless.comfy.host``), with the pack installed
from the files its registry archive carries, so the suite tests what users install.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
from pathlib import Path

from fpe_headless.comfy import host as headless_host
from fpe_headless.comfy.host import PACK_DIR_NAME, Host, detect_kind  # noqa: F401 - re-exported for the tests

REPO_ROOT = Path(__file__).resolve().parents[2]


# Never part of a pack's archive; also what a copy without git leaves out.
_NEVER_PACKED = {".git", "__pycache__", ".venv", ".ruff_cache", ".pytest_cache", "output", "test-artifacts"}


def _comfyignore_patterns() -> list[str]:
    ignore = REPO_ROOT / ".comfyignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _ignored(path: Path, patterns: list[str]) -> bool:
    """gitignore-style matching, enough for .comfyignore: ``/x`` is anchored at the top, a pattern
    with a slash matches the path from the top, any other one matches any part; globs allowed."""
    text = path.as_posix()
    for pattern in patterns:
        anchored = pattern.startswith("/") or "/" in pattern.rstrip("/")
        pattern = pattern.strip("/")
        if anchored:
            if fnmatch.fnmatch(text, pattern) or text.startswith(pattern + "/"):
                return True
        elif any(fnmatch.fnmatch(part, pattern) for part in path.parts):
            return True
    return False


def registry_archive_files() -> list[Path]:
    """The pack's files as its registry archive (what ComfyUI-Manager unpacks) carries them: git's
    files (tracked, and new ones not ignored, so uncommitted work is tested too) minus
    ``.comfyignore``; without git, every file but caches and outputs."""
    patterns = _comfyignore_patterns()
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                                capture_output=True, check=True, timeout=60).stdout.decode()
        names = [Path(n) for n in listed.split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = [p.relative_to(REPO_ROOT) for p in REPO_ROOT.rglob("*") if p.is_file()]
    return [n for n in names
            if not set(n.parts) & _NEVER_PACKED and not _ignored(n, patterns) and (REPO_ROOT / n).is_file()]


def install_pack(custom_nodes: Path, folder_name: str = PACK_DIR_NAME) -> Path:
    """Unpack the pack's registry archive files into ``custom_nodes/folder_name``."""
    target = custom_nodes / folder_name
    if target.exists():
        shutil.rmtree(target)
    for rel in registry_archive_files():
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest)
    return target


def boot(comfyui_path: Path, workdir: Path, cpu: bool = True) -> Host:
    """Boot ComfyUI with the pack installed from its registry archive's files (the product's own boot),
    and the example workflows' input images in its input folder, as a user copies them."""
    booted = headless_host.boot(comfyui_path, workdir, install=install_pack, cpu=cpu)
    for image in (REPO_ROOT / "workflows").glob("*.png"):
        shutil.copy2(image, workdir / "input" / image.name)
    return booted


def host() -> Host:
    return headless_host.host()


def pack_module():
    return headless_host.pack_module()


def pack_submodule(dotted: str):
    """A module of the loaded pack (e.g. ``fpe_attention.layers``), imported as the pack imports it."""
    import importlib

    return importlib.import_module(f"{host().pack_module_name}.{dotted}")
