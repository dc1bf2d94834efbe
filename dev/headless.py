"""The README's main job: a headless FPE edit through ComfyUI's real executor.

    bash run.sh [--checkpoint FILE.safetensors] [--source-prompt TEXT] [--target-prompt TEXT]
                [--negative TEXT] [--seed N] [--steps N] [--cfg X] [--size PX] [--workflow FILE.json]
                [--image PHOTO] [--out DIR]

Runs a shipped workflow (default workflows/fpe_generated_edit.json) and writes its saved images
(source.png, edit.png and side_by_side.png for the default) to --out. The real-image workflow
(workflows/fpe_real_image_edit.json) edits --image (default: the shipped example drawing) and also
writes reconstruction_check.png, DDIM Invert's preview, and prints its figures. With --checkpoint the file is made visible to ComfyUI's checkpoint
loader (nothing is downloaded). Without one, a tiny randomly initialised model is built and used:
the run then proves the plumbing only, and its pictures are meaningless.
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

DEFAULT_WORKFLOW = REPO / "workflows" / "fpe_generated_edit.json"
PREVIEW_NAMES = {"FPEDDIMInvert": "reconstruction_check"}  # output nodes without a filename_prefix
TINY_STEPS, TINY_SIZE = 8, 256


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="an SD1.5 .safetensors checkpoint of yours")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="UI-format workflow JSON")
    parser.add_argument("--source-prompt", help="what the image shows (the capture's positive prompt)")
    parser.add_argument("--target-prompt", help="the edit (the target sampler's positive prompt)")
    parser.add_argument("--negative", help="negative prompt of both sides")
    parser.add_argument("--seed", type=int, help="seed of both sides")
    parser.add_argument("--steps", type=int, help="steps of both sides")
    parser.add_argument("--cfg", type=float, help="guidance scale of both sides")
    parser.add_argument("--size", type=int, help="image width and height in pixels (multiple of 8); resizes the "
                                                 "photo of a real-image workflow")
    parser.add_argument("--image", type=Path, help="the photo a real-image workflow edits (its Load Image)")
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
    if not args.checkpoint:  # keep the demo short on a CPU: the tiny model's pictures mean nothing anyway
        args.steps = args.steps or TINY_STEPS
        args.size = args.size or TINY_SIZE
    texts = _prompt_roles(prompt)
    for role, value in (("source", args.source_prompt), ("target", args.target_prompt),
                        ("negative", args.negative)):
        for node_id in texts.get(role, ()):
            if value is not None:
                prompt[node_id]["inputs"]["text"] = value
    if args.image:
        if not args.image.is_file():
            parser.error(f"--image {args.image} does not exist")
        shutil.copy2(args.image, workdir / "input" / args.image.name)
        for node in prompt.values():
            if node["class_type"] == "LoadImage":
                node["inputs"]["image"] = args.image.name
    if args.size and any(node["class_type"] == "LoadImage" for node in prompt.values()):
        _resized_inputs(prompt, workdir / "input", args.size)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = ckpt_name
        for key, value in (("seed", args.seed), ("noise_seed", args.seed), ("steps", args.steps),
                           ("cfg", args.cfg), ("width", args.size), ("height", args.size)):
            if value is not None and key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value

    result = Executor().run(prompt)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for node_id, outputs in result.outputs.items():
        images = outputs.get("images", [])
        node = prompt[node_id]
        name = Path(str(node["inputs"].get("filename_prefix", PREVIEW_NAMES.get(node["class_type"], "image")))).name
        for i, image in enumerate(images):
            src = host.workdir / image["type"] / image["subfolder"] / image["filename"]
            dst = args.out / (f"{name}.png" if len(images) == 1 else f"{name}_{i}.png")
            shutil.copy2(src, dst)
            written.append(dst)
    for node_id, outputs in result.outputs.items():
        for text in outputs.get("text", []):
            print(f"{prompt[node_id]['class_type']}: {text}")
    print(f"ComfyUI {host.kind} ({host.version}) ran {len(result.executed)} nodes of {args.workflow.name}; wrote:")
    for path in sorted(written):
        print(f"  {path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _resized_inputs(prompt: dict, input_dir: Path, size: int) -> None:
    """--size for real-image workflows: a size x size copy of each loaded photo (e.g. the tiny demo)."""
    from PIL import Image

    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            name = node["inputs"]["image"]
            resized = f"{Path(name).stem}_{size}px.png"
            Image.open(input_dir / name).convert("RGB").resize((size, size), Image.LANCZOS).save(input_dir / resized)
            node["inputs"]["image"] = resized


def _prompt_roles(prompt: dict) -> dict[str, list[str]]:
    """Which CLIPTextEncode nodes are the source, target and negative prompts, read from the links."""
    roles: dict[str, list[str]] = {}

    def text_node(link):
        if isinstance(link, list) and prompt.get(link[0], {}).get("class_type") == "CLIPTextEncode":
            return link[0]
        return None

    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("FPESourceCapture", "FPEDDIMInvert"):
            role = "source"
        elif node["class_type"] in ("KSampler", "KSamplerAdvanced", "SamplerCustom"):
            role = "target"
        else:
            continue
        for key, name in (("positive", role), ("negative", "negative")):
            found = text_node(inputs.get(key))
            if found and found not in roles.setdefault(name, []):
                roles[name].append(found)
    return roles


if __name__ == "__main__":
    sys.exit(main())
