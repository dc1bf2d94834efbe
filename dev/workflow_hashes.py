"""Print a sha256 of every image each shipped workflow writes, on the tiny test models.

A refactoring check: run it before and after a change that must not change behaviour and diff
the two outputs. Uses the test harness (a real ComfyUI host, the tiny models, the shipped graphs
at 64 px and 3 steps), so run it inside the test environment:

    source dev/env.sh && python dev/workflow_hashes.py > before.txt
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from fpe_harness import host as host_mod  # noqa: E402
from fpe_harness.execute import Executor  # noqa: E402

try:
    from fpe_headless.comfy import tiny_models
    from fpe_headless.comfy.workflow import load_workflow, to_api
except ImportError:  # a checkout from before fpe_headless was split by command (the "before" of a refactor)
    from fpe_headless import tiny_models
    from fpe_headless.workflow import load_workflow, to_api

SHIPPED = {"v1-5-pruned-emaonly.safetensors": "tiny_sd15", "sd_xl_base_1.0.safetensors": "tiny_sdxl"}


def main() -> None:
    host_path = os.environ.get("FPE_COMFYUI_HOST") or os.environ.get("COMFYUI_PATH")
    if not host_path:
        sys.exit("no ComfyUI host: `source dev/env.sh` first (it sets FPE_COMFYUI_HOST), or set COMFYUI_PATH")
    workdir = Path(tempfile.mkdtemp(prefix="fpe-hashes-"))
    try:
        _print_hashes(host_path, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _print_hashes(host_path: str, workdir: Path) -> None:
    host = host_mod.boot(Path(host_path).resolve(), workdir)
    tiny_models.register_tiny_model_configs(workdir / "tiny_configs")
    for name in set(SHIPPED.values()):
        tiny_models.write_checkpoint(tiny_models.TINY_SPECS[name], workdir / "models" / "checkpoints" / f"{name}.safetensors")
    try:
        from fpe_harness.shipped import shrink  # the tests' own 64 px / 3 step shrink
    except ImportError:  # before the harness held it
        from test_workflow_conversion import shrink

    try:
        from fpe_harness.shipped import host_has_mmdit, is_mmdit, use_tiny_checkpoints  # Flux / SD3.5 files
    except ImportError:  # before the MMDiT workflows
        host_has_mmdit, is_mmdit, use_tiny_checkpoints = (lambda: False), (lambda path: False), None

    print(f"# host {host.kind} {host.version}")
    for path in sorted((REPO / "workflows").glob("*.json")):
        if is_mmdit(path) and not host_has_mmdit():
            print(f"{path.stem}	(skipped: this ComfyUI has no Flux/SD3)")
            continue
        wf = load_workflow(path)
        if is_mmdit(path):
            wf = use_tiny_checkpoints(wf, lambda shipped: SHIPPED[shipped] + ".safetensors")
        for node in wf["nodes"]:
            if node["type"] == "CheckpointLoaderSimple":
                node["widgets_values"][0] = SHIPPED[node["widgets_values"][0]] + ".safetensors"
        api = shrink(to_api(wf))
        result = Executor().run(api)
        for node_id in sorted(result.outputs, key=int):
            for image in result.outputs[node_id].get("images", []):
                file = workdir / image.get("type", "output") / image["subfolder"] / image["filename"]
                pixels = np.asarray(Image.open(file))  # pixels only: the PNG text holds the prompt
                digest = hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
                print(f"{path.stem}\t{api[node_id]['_meta']['title']}\t{digest}")


if __name__ == "__main__":
    main()
