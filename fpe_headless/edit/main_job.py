"""The README's main job: an FPE edit through ComfyUI's real executor, headless (``bash run.sh``, ``fpe edit``).

It runs a shipped workflow (or any UI-format workflow file) with the user's checkpoint and writes the
images its Save nodes make. Every user mistake is caught before ComfyUI starts and reported in one
line with the fix; a prompt that fails says which node and why, in one line. Without a checkpoint an
SD1.x workflow runs on the demo model (trained on drawn shapes: "a red circle on grass" becomes "a blue
circle on grass", a real-image workflow edits a scene drawn at run time); an SDXL workflow runs a smoke
demo on a tiny random SDXL model (the plumbing is real, the pictures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..comfy.executor import Executor, PromptFailed
from ..comfy.host import find_comfyui, is_comfyui, make_workdir, remove_workdir
from ..comfy.workflow import WorkflowError, to_api
from ..demo import world
from ..drawing import tile_images
from ..shared import (
    DEMO_SIZE,
    DEMO_SOURCE,
    DEMO_STEPS,
    DEMO_TARGET,
    TINY_SIZE,
    TINY_STEPS,
    HelpFormatter,
    UserError,
    check_checkpoint,
    check_numbers,
    check_out,
    start_host,
    uses_demo_model,
)
from ..workflows import WORKFLOWS, Job, apply_settings, load_workflow_file, resolve_workflow, shipped_workflows

DEFAULT_WORKFLOW = "fpe_generated_edit"
DEMO_PHOTO_SEED = 10_000_007  # the demo's real-image scene: far from the training scenes' seeds
# The demo model's text encoder is frozen and random, so its word maps are flat (outside its object a word's
# map is 0.7-0.9 of its peak): LocalBlend's 0.3 marks the whole frame, 0.8-0.9 only part of the object (whose
# colour edit then fails); 0.7 holds the object and about half of the ground (looked at, seed 42).
DEMO_WORD_THRESHOLD = 0.7
DEMO_MASK = "fpe_demo_scene_mask.png"  # the drawn scene's object, grown: a real-image local edit's painted mask
DEMO_MASK_GROW = 9  # image pixels (a 9x9 max filter: 4 px each way)
PREVIEW_NAMES = {"FPEDDIMInvert": "reconstruction_check", "FPEFlowInvert": "reconstruction_check", "FPENullTextInvert": "reconstruction_check",  # no prefix
                 "FPEWordHeatmap": "word_heatmap", "FPESelfAttnComponents": "self_attn_components",
                 "FPEAttentionQuery": "attention_query", "FPELayerOverview": "layer_overview",
                 "FPELocalMask": "local_mask"}


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description="Free-Prompt-Editing headless: runs an FPE workflow through ComfyUI's real executor and "
                    "writes its images. Without --checkpoint: the demo model, a small model trained on drawn "
                    f"shapes ({DEMO_STEPS} steps, {DEMO_SIZE} px: '{DEMO_SOURCE}' -> '{DEMO_TARGET}'; SDXL "
                    f"workflows: a tiny random model, {TINY_STEPS} steps, {TINY_SIZE} px, meaningless pictures).",
        epilog=f"Shipped workflows: {', '.join(shipped_workflows())}. Nothing is downloaded: the checkpoint is yours. "
               f"Other commands: `{prog.removesuffix(' edit')} batch|eval|datasets|probe` (datasets edited and scored, "
               "metrics of existing edits, the paper's prompt-pair sets, the probing analysis).")
    p.add_argument("--checkpoint", type=Path, metavar="FILE",
                   help="your SD1.x/SD2.x/SDXL checkpoint (.safetensors or .ckpt); default: the demo model")
    p.add_argument("--workflow", default=DEFAULT_WORKFLOW, metavar="NAME_OR_FILE",
                   help="a shipped workflow's name, or a UI-format workflow .json (path from where you stand)")
    p.add_argument("--image", type=Path, metavar="PHOTO",
                   help="the photo a real-image workflow edits; default: the workflow's own (the shipped drawing), "
                        "with the demo model a drawn scene")
    p.add_argument("--mask", type=Path, metavar="PNG",
                   help="a real-image local edit's mask (fpe_real_image_local_edit): white where the photo is "
                        "edited, black where it is kept, the photo's aspect; default: the workflow's own (painted on "
                        "the shipped drawing), with the demo model the drawn scene's object")
    p.add_argument("--source-prompt", metavar="TEXT",
                   help=f"what the image shows; default: the workflow's ('{DEMO_SOURCE}' with the demo model)")
    p.add_argument("--target-prompt", metavar="TEXT",
                   help=f"the edit; default: the workflow's ('{DEMO_TARGET}' with the demo model)")
    p.add_argument("--negative", metavar="TEXT", help="negative prompt of both sides; default: the workflow's")
    p.add_argument("--seed", type=int, metavar="N", help="seed of both sides; default: the workflow's (42)")
    p.add_argument("--steps", type=int, metavar="N",
                   help=f"steps of both sides; default: the workflow's (50, SDXL 30), {DEMO_STEPS} for the demo model, "
                        f"{TINY_STEPS} for the tiny SDXL demo")
    p.add_argument("--cfg", type=float, metavar="X",
                   help="guidance of the edit (and of a generated source, and the one FPE Null-Text Invert tunes "
                        "for); default: the workflow's (7.5, SDXL 7)")
    p.add_argument("--invert-cfg", type=float, metavar="X",
                   help="guidance of FPE DDIM Invert (real-image workflows); default: the workflow's (1.0)")
    p.add_argument("--size", type=int, metavar="PX",
                   help="generated images: width and height; real photos: the short side (aspect kept, then a "
                        "center crop to multiples of 8), and an Image Scale's width and height (the SDXL real-image "
                        f"workflow: size x size); default: the workflow's (512, SDXL 1024) or the photo's own, "
                        f"{DEMO_SIZE} for the demo model, {TINY_SIZE} for the tiny SDXL demo")
    p.add_argument("--out", type=Path, default=Path("output"), metavar="DIR",
                   help="where the images go (created if missing)")
    p.add_argument("--comfyui", type=Path, metavar="DIR",
                   help="the ComfyUI to run; default: COMFYUI_PATH, or the ComfyUI this pack is installed in")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is there")
    return p


# --- checks made before ComfyUI starts --------------------------------------------------------


def check_image(path: Path, option: str = "--image") -> Path:
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()  # decodes it all: a truncated download fails here, not inside ComfyUI
    except Exception:
        raise UserError(f"{option} {path}: not an image Pillow can read (PNG, JPEG, WebP...)") from None
    return path.resolve()


def prepare(args: argparse.Namespace) -> Job:
    """Every check that needs no ComfyUI: files, folders, numbers, and which ComfyUI to run."""
    check_numbers(args)
    if args.target_prompt is not None and not args.target_prompt.strip():  # as a dataset's empty target is refused
        raise UserError("--target-prompt '': an empty target prompt edits toward nothing; give the edit's text "
                        "(e.g. --target-prompt \"a photo of rubber ducks walking on street\"), or leave it out")
    workflow = resolve_workflow(args.workflow)
    data = load_workflow_file(workflow)
    checkpoint = check_checkpoint(args.checkpoint) if args.checkpoint else None
    comfyui = find_comfyui(str(args.comfyui) if args.comfyui else None)
    if comfyui is None:
        raise UserError("no ComfyUI to run: start this through `bash run.sh` (it provides one), pass --comfyui, "
                        "or set COMFYUI_PATH")
    if not is_comfyui(comfyui):
        raise UserError(f"--comfyui {comfyui}: not a ComfyUI folder (no nodes.py and comfy/ there)")
    job = Job(comfyui, workflow, data, checkpoint, None, check_out(args.out), args)
    if job.mmdit and checkpoint is not None:
        raise UserError(f"--checkpoint: {workflow.name} loads a Flux/SD3.5 diffusion model, its text encoders and VAE "
                        "by name (Load Diffusion Model, DualCLIPLoader/TripleCLIPLoader, Load VAE), not a checkpoint: "
                        "run it in ComfyUI with your files; without --checkpoint it runs on tiny random models here")
    if args.image is not None:
        if not job.real:
            raise UserError(f"--image: {workflow.name} edits a generated image and loads no photo; use it with a "
                            "real-image workflow (e.g. --workflow fpe_real_image_edit)")
        job.image = check_image(args.image)
    elif job.real:
        shipped = {p.name for p in WORKFLOWS.glob("*.png")}
        for node in data["nodes"]:
            wanted = (node.get("widgets_values") or [None])[0] if node.get("type") == "LoadImage" else None
            if wanted is not None and wanted not in shipped:
                raise UserError(f"--workflow {workflow.name}: its Load Image wants {str(wanted)!r}, which only your "
                                "ComfyUI's input folder has: pass the photo with --image")
    painted = any(node.get("type") == "LoadImageMask" for node in data["nodes"])
    if args.mask is not None:
        if not painted:
            raise UserError(f"--mask: {workflow.name} loads no painted mask (Load Image (as Mask)); use it with "
                            "--workflow fpe_real_image_local_edit")
        job.mask = check_image(args.mask, "--mask")
    elif painted and args.image is not None:
        raise UserError(f"--mask: {workflow.name} edits inside a mask painted on its own photo; for --image "
                        f"{args.image.name}, paint the region to edit white on black at the photo's aspect and pass "
                        "it with --mask")
    if args.invert_cfg is not None and not any(node.get("type") in ("FPEDDIMInvert", "FPEFlowInvert")
                                               for node in data["nodes"]):
        raise UserError(f"--invert-cfg: {workflow.name} has no FPE DDIM Invert; it is for real-image workflows "
                        "(FPE Null-Text Invert inverts at cfg 1 and tunes for --cfg)")
    return job


# --- the run ------------------------------------------------------------------------------


class _ExecutorErrors(logging.Filter):
    """ComfyUI's executor logs a failing node's traceback (and validation failures) itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and Path(record.pathname).name == "execution.py")


@contextlib.contextmanager
def _executor_errors_hidden():
    hidden = _ExecutorErrors()
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(hidden)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(hidden)


def use_demo_defaults(job: Job, input_dir: Path) -> None:
    """What the demo model knows: its size and steps, a colour edit of its world, and for a real-image
    workflow a scene drawn now (never in its training set) as the photo. The command line still wins."""
    args = job.args
    args.steps = args.steps or DEMO_STEPS
    args.size = args.size or DEMO_SIZE
    args.source_prompt = args.source_prompt or DEMO_SOURCE
    args.target_prompt = args.target_prompt or DEMO_TARGET
    if job.real and job.image is None:
        scene = world.random_scene(DEMO_PHOTO_SEED, objects=1, colour="red", shape="circle", ground="grass")
        job.image = input_dir / "fpe_demo_scene.png"
        world.draw(scene).save(job.image)
        coverage = np.maximum.reduce(world.render(scene)[1])
        Image.fromarray((coverage > 0.5).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(DEMO_MASK_GROW)).save(
            input_dir / DEMO_MASK)


def use_mask(prompt: dict, job: Job, input_dir: Path) -> None:
    """--mask: the painted mask every Load Image (as Mask) loads (its grey level, read from the red channel)."""
    name = "fpe_user_mask.png"
    with Image.open(job.mask) as image:
        image.convert("L").convert("RGB").save(input_dir / name)
    for node in prompt.values():
        if node["class_type"] == "LoadImageMask":
            node["inputs"]["image"], node["inputs"]["channel"] = name, "red"


def use_demo_local_settings(prompt: dict, job: Job) -> None:
    """A local-edit workflow on the demo model: its word threshold, and for the drawn scene (no --image) the
    scene's own object as the painted mask (the shipped mask outlines the example photo's apple)."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "FPELocalEdit" and isinstance(inputs.get("words"), str) and inputs["words"].strip():
            inputs["threshold"] = DEMO_WORD_THRESHOLD
        if node["class_type"] == "LoadImageMask" and job.image is not None and job.image.name == "fpe_demo_scene.png":
            inputs["image"], inputs["channel"] = DEMO_MASK, "red"


def run(job: Job, say=print) -> list[Path]:
    """Boot ComfyUI in a temporary work folder, run the job, copy its images to ``job.out``."""
    workdir = make_workdir("run", say)  # and the work folders killed runs left go
    try:
        host, checkpoint_name = start_host(job.comfyui, workdir, job.checkpoint, sdxl=job.sdxl,
                                           cpu=job.args.cpu, say=say, mmdit=job.mmdit)
        for image in WORKFLOWS.glob("*.png"):  # the shipped workflows' own input pictures
            shutil.copy2(image, workdir / "input" / image.name)
        demo = uses_demo_model(job.checkpoint, job.sdxl) and not job.mmdit
        if demo:
            use_demo_defaults(job, workdir / "input")
        elif job.checkpoint is None:
            job.args.steps = job.args.steps or TINY_STEPS  # keep the demo short on a CPU
            job.args.size = job.args.size or TINY_SIZE
        try:
            prompt = to_api(job.workflow_data)
        except WorkflowError as exc:
            raise UserError(f"--workflow {job.workflow.name}: {exc}") from None
        apply_settings(prompt, job, checkpoint_name, workdir / "input")
        if demo:
            use_demo_local_settings(prompt, job)
        if job.mask is not None:
            use_mask(prompt, job, workdir / "input")
        try:
            with _executor_errors_hidden():  # a failure is reported below, in one line
                result = Executor().run(prompt)
        except PromptFailed as exc:
            raise UserError(f"{job.workflow.name}: {exc}") from None
        written, names = [], set()
        for node_id, outputs in result.outputs.items():
            node = prompt[node_id]
            images = outputs.get("images", [])
            name = Path(str(node["inputs"].get("filename_prefix", PREVIEW_NAMES.get(node["class_type"], "image")))).name
            if images and name in names:  # two nodes of one kind (source and edit): keep both
                name = f"{name}_node{node_id}"
            names.add(name)
            files = [host.workdir / image["type"] / image["subfolder"] / image["filename"] for image in images]
            if len(files) == 1:  # a single picture as the node saved it
                shutil.copy2(files[0], job.out / f"{name}.png")
                written.append(job.out / f"{name}.png")
            elif files:  # a batch: one captioned grid per node, not one file per image
                title = f"{name} · node {node_id} ({node['class_type']}) · {len(files)} images"
                tile_images(files, title).save(job.out / f"{name}.png")
                written.append(job.out / f"{name}.png")
            for text in outputs.get("text", []):
                say(f"{node['class_type']}: {text}")
        for warning in result.events("free-prompt-editing.warning"):
            say(f"warning: {warning.get('summary')}: {warning.get('detail')}")
        say(f"{host.label} ran {len(result.executed)} nodes of {job.workflow.name}; wrote:")
        for path in sorted(written):
            say(f"  {path}")
        return written
    finally:
        remove_workdir(workdir)


def main(argv=None) -> int:
    prog = os.environ.get("FPE_PROG", "python -m fpe_headless")
    args = parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.simplefilter("ignore", FutureWarning)  # libraries' notices about their own future APIs
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        job = prepare(args)
        run(job)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
