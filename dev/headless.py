"""Run a UI-format workflow headless through ComfyUI's real executor (the README's main job).

    bash run.sh [--checkpoint FILE.safetensors] [--workflow WORKFLOW.json] [--prompt TEXT]
                [--seed N] [--steps N] [--out DIR]

With ``--checkpoint`` the file is made visible to ComfyUI's checkpoint loader and every
CheckpointLoaderSimple in the workflow uses it. Without one, a tiny randomly initialised model is
built and used: the run then proves the plumbing only, and its pictures are meaningless.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

DEFAULT_WORKFLOW = REPO / "tests" / "fixtures" / "txt2img_tiny_sd15.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="an SD1.5 .safetensors checkpoint of yours")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="UI-format workflow JSON")
    parser.add_argument("--prompt", help="text for the first CLIPTextEncode node")
    parser.add_argument("--seed", type=int, help="seed for every sampler in the workflow")
    parser.add_argument("--steps", type=int, help="steps for every sampler in the workflow")
    parser.add_argument("--out", type=Path, default=REPO / "output", help="where images are written")
    args = parser.parse_args(argv)

    host_path = os.environ.get("FPE_COMFYUI_HOST") or os.environ.get("COMFYUI_PATH")
    if not host_path:
        parser.error("no ComfyUI: run through `bash run.sh`, or set COMFYUI_PATH")

    from fpe_harness import host as host_mod
    from fpe_harness import tiny_models

    workdir = Path(tempfile.mkdtemp(prefix="fpe-headless-"))
    host = host_mod.boot(Path(host_path), workdir)
    checkpoints = workdir / "models" / "checkpoints"
    if args.checkpoint:
        if not args.checkpoint.is_file():
            parser.error(f"--checkpoint {args.checkpoint} does not exist")
        (checkpoints / args.checkpoint.name).symlink_to(args.checkpoint.resolve())
        ckpt_name = args.checkpoint.name
    else:
        print("No --checkpoint given: put an SD1.5 checkpoint anywhere and pass its path, e.g.\n"
              "  bash run.sh --checkpoint ~/ComfyUI/models/checkpoints/v1-5-pruned-emaonly.safetensors\n"
              "Running a smoke demo on a tiny randomly initialised model instead: "
              "its pictures are MEANINGLESS noise-like images; only the plumbing is real.")
        tiny_models.register_tiny_model_configs(workdir / "tiny_configs")
        tiny_models.write_checkpoint(tiny_models.SD15_TINY, checkpoints / "tiny_sd15.safetensors")
        ckpt_name = "tiny_sd15.safetensors"

    from fpe_harness.execute import Executor
    from fpe_harness.workflow import load_workflow, to_api

    prompt = to_api(load_workflow(args.workflow))
    first_text = True
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = ckpt_name
        if args.prompt is not None and node["class_type"] == "CLIPTextEncode" and first_text:
            inputs["text"], first_text = args.prompt, False
        for key, value in (("seed", args.seed), ("noise_seed", args.seed), ("steps", args.steps)):
            if value is not None and key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value

    result = Executor().run(prompt)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for outputs in result.outputs.values():
        for image in outputs.get("images", []):
            src = host.workdir / image["type"] / image["subfolder"] / image["filename"]
            shutil.copy2(src, args.out / image["filename"])
            written.append(args.out / image["filename"])
    print(f"ComfyUI {host.kind} ({host.version}) ran {len(result.executed)} nodes; wrote:")
    for path in written:
        print(f"  {path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
