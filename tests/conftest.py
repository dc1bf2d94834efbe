"""Session set-up: boot one real ComfyUI host, load the pack through its loader, build tiny models.

The host is ``FPE_COMFYUI_HOST`` (set by ``dev/test.sh`` to ``COMFYUI_PATH`` or to the
provisioned 2024 copy) or ``COMFYUI_PATH``. Run the suite through ``bash dev/test.sh``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fpe_harness import host as host_mod  # noqa: E402
from fpe_headless.comfy import tiny_models  # noqa: E402

_host_path = os.environ.get("FPE_COMFYUI_HOST") or os.environ.get("COMFYUI_PATH")
if not _host_path:
    raise pytest.UsageError(
        "No ComfyUI host: run the suite with `bash dev/test.sh` (it provisions one), "
        "or set COMFYUI_PATH to a ComfyUI checkout."
    )

_WORKDIR = Path(tempfile.mkdtemp(prefix="fpe-tests-"))
HOST = host_mod.boot(Path(_host_path).resolve(), _WORKDIR)
tiny_models.register_tiny_model_configs(_WORKDIR / "tiny_configs")


def pytest_report_header(config):
    return f"ComfyUI host: {HOST.kind} ({HOST.version}) at {HOST.path}; workdir {HOST.workdir}"


def pytest_sessionfinish(session, exitstatus):
    if not os.environ.get("FPE_KEEP_WORKDIR"):
        shutil.rmtree(_WORKDIR, ignore_errors=True)


@pytest.fixture(scope="session")
def comfy_host():
    return HOST


_CHECKPOINTS: dict[str, str] = {}


def tiny_checkpoint(name: str) -> str:
    """Build (once per session) and return the checkpoint file name ComfyUI's loaders see."""
    if name not in _CHECKPOINTS:
        spec = tiny_models.TINY_SPECS[name]
        tiny_models.write_checkpoint(spec, HOST.workdir / "models" / "checkpoints" / f"{name}.safetensors")
        _CHECKPOINTS[name] = f"{name}.safetensors"
    return _CHECKPOINTS[name]


@pytest.fixture(scope="session")
def tiny_sd15_ckpt():
    return tiny_checkpoint("tiny_sd15")


@pytest.fixture(scope="session")
def tiny_sdxl_ckpt():
    return tiny_checkpoint("tiny_sdxl")


# The checkpoint each shipped workflow loads -> the tiny test model of the same architecture.
SHIPPED_CHECKPOINTS = {"v1-5-pruned-emaonly.safetensors": "tiny_sd15", "sd_xl_base_1.0.safetensors": "tiny_sdxl"}


@pytest.fixture(scope="session")
def tiny_for_shipped():
    """``tiny(ckpt_name)``: the tiny checkpoint (built on first use) that stands in for a shipped workflow's."""
    def tiny(ckpt_name: str) -> str:
        assert ckpt_name in SHIPPED_CHECKPOINTS, (
            f"a shipped workflow loads {ckpt_name!r}: name its tiny stand-in in SHIPPED_CHECKPOINTS (tests/conftest.py)")
        return tiny_checkpoint(SHIPPED_CHECKPOINTS[ckpt_name])

    return tiny


_LOADED: dict[str, tuple] = {}


def load_tiny(name: str):
    """(MODEL, CLIP, VAE) of a tiny checkpoint, loaded once through CheckpointLoaderSimple."""
    from fpe_harness.execute import call_node

    if name not in _LOADED:
        _LOADED[name] = tuple(call_node("CheckpointLoaderSimple", ckpt_name=tiny_checkpoint(name))[:3])
    return _LOADED[name]


@pytest.fixture(scope="session")
def tiny_sd15():
    return load_tiny("tiny_sd15")


@pytest.fixture(scope="session")
def tiny_sdxl():
    return load_tiny("tiny_sdxl")


@pytest.fixture(scope="session")
def tiny_sd2():
    return load_tiny("tiny_sd2")


@pytest.fixture(scope="session")
def tiny_sd2_v():
    return load_tiny("tiny_sd2_v")


ARCHITECTURES = ("tiny_sd15", "tiny_sd2", "tiny_sd2_v", "tiny_sdxl")


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny_arch(request):
    """(name, (MODEL, CLIP, VAE)) of every tiny architecture in turn: SD1.5, SD2 ε, SD2 v, SDXL."""
    return request.param, load_tiny(request.param)


@pytest.fixture(scope="session")
def fpe_error():
    """The pack's FPEError class, as the loaded pack defines it."""
    return host_mod.pack_submodule("fpe_attention.errors").FPEError


@pytest.fixture(scope="session")
def small_source(tiny_sd15):
    """A 3-step euler capture of the source prompt at 64x48 px (a 8x6 latent) on the tiny SD1.5 model."""
    from fpe_harness.graphs import SRC, capture, latent

    model, clip, _ = tiny_sd15
    return capture(model, clip, SRC, latent_image=latent(64, 48), steps=3)[1]


@pytest.fixture(scope="session")
def executor():
    from fpe_harness.execute import Executor

    return Executor()
