"""The README's main job: an FPE edit through ComfyUI's real executor, headless (``bash run.sh``).

It runs a shipped workflow (or any UI-format workflow file) with the user's checkpoint and writes the
images its Save nodes make. Every user mistake is caught before ComfyUI starts and reported in one
line with the fix; a prompt that fails says which node and why, in one line. Without a checkpoint it
runs a smoke demo on a tiny random model: the plumbing is real, the pictures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from .host import PACK_ROOT, find_comfyui, is_comfyui, make_workdir, remove_workdir

WORKFLOWS = PACK_ROOT / "workflows"
DEFAULT_WORKFLOW = "fpe_generated_edit"
PREVIEW_NAMES = {"FPEDDIMInvert": "reconstruction_check", "FPENullTextInvert": "reconstruction_check",  # no prefix
                 "FPEWordHeatmap": "word_heatmap", "FPESelfAttnComponents": "self_attn_components",
                 "FPEAttentionQuery": "attention_query", "FPELayerOverview": "layer_overview"}
# Our inputs that repeat a prompt's text (to find its tokens): they follow the prompt they copy.
MIRRORED_TEXT = {"FPEWordHeatmap": ("text",), "FPEAttentionReplace": ("source_text", "target_text")}
TINY_STEPS, TINY_SIZE = 8, 256
MAX_STEPS, MAX_SEED = 10000, 0xFFFFFFFFFFFFFFFF
CHECKPOINT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth")
SAMPLER_NODES = ("KSampler", "KSamplerAdvanced", "SamplerCustom")
PROMPT_NODES = ("CLIPTextEncode", "CLIPTextEncodeSDXL")  # the SDXL one: the prompt in text_g and text_l
PROMPT_INPUTS = ("text", "text_g", "text_l")
SEED_INPUTS = ("seed", "noise_seed")


class UserError(Exception):
    """A mistake in the command line or its files: one line, with the fix."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where there is one; an option whose default is 'not given' says so in its help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def shipped_workflows() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description="Free-Prompt-Editing headless: runs an FPE workflow through ComfyUI's real executor and "
                    "writes its images. Without --checkpoint: a smoke demo on a tiny random model "
                    f"({TINY_STEPS} steps, {TINY_SIZE} px; its pictures are meaningless).",
        epilog=f"Shipped workflows: {', '.join(shipped_workflows())}. Nothing is downloaded: the checkpoint is yours. "
               f"Other commands: `{prog.removesuffix(' edit')} batch|eval|datasets|probe` (datasets edited and scored, "
               "metrics of existing edits, the paper's prompt-pair sets, the probing analysis).")
    p.add_argument("--checkpoint", type=Path, metavar="FILE",
                   help="your SD1.x/SD2.x/SDXL checkpoint (.safetensors or .ckpt); default: the tiny demo model")
    p.add_argument("--workflow", default=DEFAULT_WORKFLOW, metavar="NAME_OR_FILE",
                   help="a shipped workflow's name, or a UI-format workflow .json (path from where you stand)")
    p.add_argument("--image", type=Path, metavar="PHOTO",
                   help="the photo a real-image workflow edits; default: the workflow's own (the shipped drawing)")
    p.add_argument("--source-prompt", metavar="TEXT", help="what the image shows; default: the workflow's")
    p.add_argument("--target-prompt", metavar="TEXT", help="the edit; default: the workflow's")
    p.add_argument("--negative", metavar="TEXT", help="negative prompt of both sides; default: the workflow's")
    p.add_argument("--seed", type=int, metavar="N", help="seed of both sides; default: the workflow's (42)")
    p.add_argument("--steps", type=int, metavar="N",
                   help=f"steps of both sides; default: the workflow's (50, SDXL 30), {TINY_STEPS} for the tiny demo")
    p.add_argument("--cfg", type=float, metavar="X",
                   help="guidance of the edit (and of a generated source, and the one FPE Null-Text Invert tunes "
                        "for); default: the workflow's (7.5, SDXL 7)")
    p.add_argument("--invert-cfg", type=float, metavar="X",
                   help="guidance of FPE DDIM Invert (real-image workflows); default: the workflow's (1.0)")
    p.add_argument("--size", type=int, metavar="PX",
                   help="generated images: width and height; real photos: the short side (aspect kept, then a "
                        "center crop to multiples of 8), and an Image Scale's width and height (the SDXL real-image "
                        f"workflow: size x size); default: the workflow's (512, SDXL 1024) or the photo's own, "
                        f"{TINY_SIZE} for the tiny demo")
    p.add_argument("--out", type=Path, default=Path("output"), metavar="DIR",
                   help="where the images go (created if missing)")
    p.add_argument("--comfyui", type=Path, metavar="DIR",
                   help="the ComfyUI to run; default: COMFYUI_PATH, or the ComfyUI this pack is installed in")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is there")
    return p


@dataclass
class Job:
    comfyui: Path
    workflow: Path
    workflow_data: dict
    checkpoint: Path | None
    image: Path | None
    out: Path
    args: argparse.Namespace

    @property
    def real(self) -> bool:
        return any(node.get("type") == "LoadImage" for node in self.workflow_data.get("nodes", []))

    @property
    def sdxl(self) -> bool:
        """Its prompts need SDXL's two text encoders (the tiny demo then runs the tiny SDXL model)."""
        return any(node.get("type") == "CLIPTextEncodeSDXL" for node in self.workflow_data.get("nodes", []))


# --- checks made before ComfyUI starts --------------------------------------------------------


def resolve_workflow(text: str) -> Path:
    given = Path(text).expanduser()
    if given.is_file():
        return given.resolve()
    name = given.name[:-5] if given.name.endswith(".json") else given.name
    if given.parent == Path(".") and (WORKFLOWS / f"{name}.json").is_file():
        return WORKFLOWS / f"{name}.json"
    raise UserError(f"--workflow {text}: no such file, and no shipped workflow of that name "
                    f"(shipped: {', '.join(shipped_workflows())})")


def load_workflow_file(path: Path) -> dict:
    from .datasets import DuplicateKey, loads_strict

    try:
        data = loads_strict(path.read_text())
    except DuplicateKey as exc:  # a hand-edited file: which of the two values counts is unknown
        raise UserError(f"--workflow {path}: the key {exc.key!r} appears twice in one JSON object; remove or "
                        "rename one of them (or save the workflow again from the ComfyUI page)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--workflow {path}: not a readable workflow JSON ({exc})") from None
    if not isinstance(data, dict) or "nodes" not in data or "links" not in data:
        raise UserError(f"--workflow {path}: not a UI-format workflow (no 'nodes'/'links'; save it with the "
                        "ComfyUI page's Save, not Export (API))")
    return data


def check_checkpoint(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"--checkpoint {path}: no such file")
    if path.is_dir():
        raise UserError(f"--checkpoint {path}: is a folder; give the checkpoint file in it")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(f"--checkpoint {path}: not a checkpoint file (expected {', '.join(CHECKPOINT_SUFFIXES)})")
    if suffix in (".safetensors", ".sft"):
        keys = safetensors_keys(path)
        if keys is None:
            raise UserError(f"--checkpoint {path}: not a safetensors file (renamed or damaged?); give the "
                            "checkpoint as downloaded")
        if not any(key.startswith("model.diffusion_model.input_blocks.") for key in keys):
            what = ("a UNet-only file (load those with Load Diffusion Model in ComfyUI)"
                    if any(key.startswith("input_blocks.") for key in keys) else
                    "no Stable Diffusion UNet (a LoRA, VAE, text encoder, or a DiT model such as Flux/SD3?)")
            raise UserError(f"--checkpoint {path}: holds {what}; FPE needs a full SD1.x/SD2.x/SDXL checkpoint "
                            "(UNet, text encoder and VAE in one file)")
    return path.resolve()


def safetensors_keys(path: Path) -> list[str] | None:
    """The tensor names in a safetensors file's header, or None if it is not one."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                return None
            (length,) = struct.unpack("<Q", raw)
            if not 2 <= length <= 100_000_000 or length > path.stat().st_size - 8:
                return None
            header = json.loads(fh.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return [key for key in header if key != "__metadata__"] if isinstance(header, dict) else None


def check_out(path: Path, option: str = "--out") -> Path:
    """A folder a command writes into: created if missing, and written to once (a test file) before any work."""
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".fpe-write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there ({exc.strerror or exc}); choose another "
                        "folder") from None
    return path.resolve()


def check_out_file(path: Path, option: str = "--out", example: str = "result.json") -> Path:
    """A file a command writes (replacing it if there): not a folder, in a folder that exists and takes a file
    (a test file is written there once), checked before any work."""
    if str(path).strip() in ("", "."):  # argparse's Path turns '' into '.'
        raise UserError(f"{option} '{path}': no file name; give one, e.g. {option} {example}")
    path = path.expanduser()
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name, e.g. {option} {path / example}")
    folder = path.parent
    if not folder.exists():
        raise UserError(f"{option} {path}: the folder {folder} does not exist; create it or choose another place")
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".fpe-write-test-", delete=True)
        probe.close()
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there ({exc.strerror or exc}); choose another "
                        "place") from None
    return path


def check_image(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"--image {path}: no such file")
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.load()  # decodes it all: a truncated download fails here, not inside ComfyUI
    except Exception:
        raise UserError(f"--image {path}: not an image Pillow can read (PNG, JPEG, WebP...)") from None
    return path.resolve()


def check_numbers(args: argparse.Namespace) -> None:
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise UserError(f"--steps {args.steps}: must be 1 to {MAX_STEPS} (the official setting is 50)")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise UserError(f"--seed {args.seed}: must be 0 to {MAX_SEED} (ComfyUI's seed range)")
    for flag, value in (("--cfg", args.cfg), ("--invert-cfg", args.invert_cfg)):
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 100.0):
            raise UserError(f"{flag} {value}: must be a number from 0 to 100")
    if args.size is not None:
        if args.size % 8:
            low = max(8, args.size - args.size % 8)
            raise UserError(f"--size {args.size}: must be a multiple of 8 (e.g. {low} or {low + 8})")
        if not 16 <= args.size <= 8192:
            raise UserError(f"--size {args.size}: must be 16 to 8192 pixels")


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
    if args.invert_cfg is not None and not any(node.get("type") == "FPEDDIMInvert" for node in data["nodes"]):
        raise UserError(f"--invert-cfg: {workflow.name} has no FPE DDIM Invert; it is for real-image workflows "
                        "(FPE Null-Text Invert inverts at cfg 1 and tunes for --cfg)")
    return job


# --- the run ------------------------------------------------------------------------------


def apply_settings(prompt: dict, job: Job, checkpoint_name: str, input_dir: Path) -> None:
    """Put the command line's settings into the prompt, each only where it belongs."""
    args = job.args
    texts = prompt_roles(prompt)
    replaced: dict[str, str] = {}  # old prompt text -> the command line's
    for role, value in (("source", args.source_prompt), ("target", args.target_prompt), ("negative", args.negative)):
        for node_id in texts.get(role, ()):
            inputs = prompt[node_id]["inputs"]
            for name in PROMPT_INPUTS:
                if value is not None and name in inputs and not isinstance(inputs[name], list):
                    if isinstance(inputs[name], str):
                        replaced.setdefault(inputs[name], value)
                    inputs[name] = value
    follow_prompts(prompt, replaced)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]

        def put(name, value, inputs=inputs):
            if value is not None and name in inputs and not isinstance(inputs[name], list):  # not a link
                inputs[name] = value

        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint_name
        for name in SEED_INPUTS:
            put(name, args.seed)
        put("steps", args.steps)
        if kind in SAMPLER_NODES or kind in ("FPESourceCapture", "FPENullTextInvert"):  # the edit's guidance
            put("cfg", args.cfg)
        if kind == "FPEDDIMInvert":
            put("cfg", args.invert_cfg)
        if kind in ("EmptyLatentImage", "ImageScale"):
            put("width", args.size)
            put("height", args.size)
        if kind == "LoadImage":
            photo = job.image or input_dir / inputs["image"]
            inputs["image"] = sized_photo(photo, input_dir, args.size)


def follow_prompts(prompt: dict, replaced: dict[str, str]) -> None:
    """Inputs that copy a prompt's text take its new text; a Word Heatmap's words that the new prompt lacks
    become the new prompt's words at the same places (a word swap: 'black' -> 'zebra')."""
    for node in prompt.values():
        for name in MIRRORED_TEXT.get(node["class_type"], ()):
            old = node["inputs"].get(name)
            if not isinstance(old, str) or old not in replaced:
                continue
            new = node["inputs"][name] = replaced[old]
            words = node["inputs"].get("words")
            if node["class_type"] == "FPEWordHeatmap" and isinstance(words, str):
                node["inputs"]["words"] = swapped_words(words, old, new)


def _plain_words(text: str) -> list[str]:
    return [w for w in (re.sub(r"^\W+|\W+$", "", w).lower() for w in text.split()) if w]


def swapped_words(words: str, old: str, new: str) -> str:
    """``words`` for the new prompt: kept where the new prompt has them, else the words that took their place
    (aligned with difflib: 'black horse' -> 'zebra' maps both to 'zebra')."""
    import difflib

    old_words, new_words = _plain_words(old), _plain_words(new)
    took_place: dict[str, str] = {}
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old_words, b=new_words).get_opcodes():
        if tag == "replace":
            for i in range(i1, i2):
                took_place.setdefault(old_words[i], new_words[min(j1 + i - i1, j2 - 1)])
    kept = []
    for word in (w.strip() for w in words.split(",") if w.strip()):
        if word.lower() in new_words:
            kept.append(word)
        elif word.lower() in took_place:
            kept.append(took_place[word.lower()])
    return ", ".join(dict.fromkeys(kept)) or (new_words[-1] if new_words else words)


def sized_photo(photo: Path, input_dir: Path, size: int | None) -> str:
    """A copy of ``photo`` in ComfyUI's input folder, its short side ``size`` (aspect kept, center crop
    to multiples of 8), or as it is without ``size``."""
    import hashlib

    from PIL import Image, ImageOps

    from . import metrics

    where = hashlib.sha256(str(Path(photo).resolve()).encode()).hexdigest()[:8]  # photos of one name in two folders
    name = f"fpe_photo_{size or 'orig'}_{photo.stem}_{where}.png"
    if (input_dir / name).is_file() and (input_dir / name).stat().st_mtime >= Path(photo).stat().st_mtime:
        return name  # a batch's second edit of this photo
    with Image.open(photo) as opened:
        image = metrics.rgb(ImageOps.exif_transpose(opened))  # a 16-bit grey photo scaled, not clipped
    if size:
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.LANCZOS)
        crop_w, crop_h = width - width % 8, height - height % 8
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    image.save(input_dir / name)
    return name


def prompt_roles(prompt: dict) -> dict[str, list[str]]:
    """Which prompt nodes (CLIPTextEncode, CLIPTextEncodeSDXL) are the source, target and negative prompts,
    read from the links."""
    roles: dict[str, list[str]] = {}

    def text_node(link):
        if isinstance(link, list) and prompt.get(link[0], {}).get("class_type") in PROMPT_NODES:
            return link[0]
        return None

    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("FPESourceCapture", "FPEDDIMInvert", "FPENullTextInvert"):
            role = "source"  # FPE Null-Text Invert's negative: where the null text starts
        elif node["class_type"] in SAMPLER_NODES:
            role = "target"
        else:
            continue
        for key, name in (("positive", role), ("negative", "negative")):
            found = text_node(inputs.get(key))
            if found and found not in roles.setdefault(name, []):
                roles[name].append(found)
    return roles


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


def tiny_checkpoint_name(sdxl: bool = False) -> str:
    """The file name the tiny demo model gets in ComfyUI's checkpoints folder."""
    from . import tiny_models

    return f"{(tiny_models.SDXL_TINY if sdxl else tiny_models.SD15_TINY).name}.safetensors"


def start_host(comfyui: Path, workdir: Path, checkpoint: Path | None, *, sdxl: bool = False, cpu: bool = False,
               say=print, command: str = "bash run.sh", demo: bool = True):
    """Boot ComfyUI in ``workdir`` with the user's checkpoint linked in, or (``demo``) the tiny demo model
    written there (said loudly); (host, the checkpoint's name for the loader). ``demo=False`` without a
    checkpoint: ComfyUI only (e.g. to build prompts that run elsewhere)."""
    import torch

    from . import tiny_models
    from .host import boot

    host = boot(comfyui, workdir, cpu=cpu or not torch.cuda.is_available(), quiet=True)
    if host.failed_extras:
        say(f"(ComfyUI could not import {len(host.failed_extras)} of its own extra node modules, e.g. audio "
            "nodes without torchaudio; this workflow does not use them)")
    if checkpoint is not None:
        link = workdir / "models" / "checkpoints" / checkpoint.name
        if not link.exists():
            link.symlink_to(checkpoint)
        return host, checkpoint.name
    if not demo:
        return host, None
    family, example = ("SDXL", "sd_xl_base_1.0") if sdxl else ("SD1.5", "v1-5-pruned-emaonly")
    say(f"No --checkpoint given: put an {family} checkpoint anywhere and pass its path, e.g.\n"
        f"  {command} --checkpoint ~/ComfyUI/models/checkpoints/{example}.safetensors\n"
        "Running a smoke demo on a tiny randomly initialised model instead: "
        "its pictures are MEANINGLESS noise-like images; only the plumbing is real.")
    tiny_models.register_tiny_model_configs(workdir / "tiny_configs")
    spec = tiny_models.SDXL_TINY if sdxl else tiny_models.SD15_TINY
    name = tiny_checkpoint_name(sdxl)
    tiny_models.write_checkpoint(spec, workdir / "models" / "checkpoints" / name)
    return host, name


# A batch's grid (issue 23, item 15): one file per output node; tests read the layout from tile_layout.
TILE_PAD, TILE_FONT = 4, 12
TILE_LINE = TILE_FONT + 6  # one line of caption text


def tile_layout(sizes: list[tuple[int, int]]) -> tuple[int, int, list[tuple[int, int]]]:
    """A batch's grid: (width, height, top-left corner of each picture) for pictures of ``sizes`` (w, h),
    row-major in about square rows and columns of cells as large as the largest picture, under a title
    line, each picture over its index line."""
    columns = math.ceil(math.sqrt(len(sizes)))
    rows = math.ceil(len(sizes) / columns)
    top = TILE_LINE + 2 * TILE_PAD
    cell_w = max(w for w, _ in sizes) + TILE_PAD
    cell_h = max(h for _, h in sizes) + TILE_LINE + TILE_PAD
    corners = [(TILE_PAD + (k % columns) * cell_w, top + (k // columns) * cell_h) for k in range(len(sizes))]
    return TILE_PAD + columns * cell_w, top + rows * cell_h, corners


def tile_images(files: list[Path], title: str):
    """The pictures of one output node as one PIL image: ``title`` above, each picture unchanged in its
    cell with its index (1-based, the batch order) below it."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=TILE_FONT)  # scalable (Pillow >= 10.1)
    except TypeError:
        font = ImageFont.load_default()
    pictures = []
    for path in files:
        with Image.open(path) as opened:
            pictures.append(opened.convert("RGB"))
    width, height, corners = tile_layout([p.size for p in pictures])
    width = max(width, 2 * TILE_PAD + 4 + math.ceil(font.getlength(title)))  # the title is never cut
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((TILE_PAD + 2, TILE_PAD), title, fill=(235, 235, 235), font=font)
    for k, (picture, (x, y)) in enumerate(zip(pictures, corners, strict=True)):
        canvas.paste(picture, (x, y))
        draw.text((x + 2, y + picture.height + 2), f"{k + 1} of {len(pictures)}", fill=(235, 235, 235), font=font)
    return canvas


def run(job: Job, say=print) -> list[Path]:
    """Boot ComfyUI in a temporary work folder, run the job, copy its images to ``job.out``."""
    from .executor import Executor, PromptFailed
    from .workflow import WorkflowError, to_api

    workdir = make_workdir("run", say)  # and the work folders killed runs left go
    try:
        host, checkpoint_name = start_host(job.comfyui, workdir, job.checkpoint, sdxl=job.sdxl,
                                           cpu=job.args.cpu, say=say)
        if job.checkpoint is None:
            job.args.steps = job.args.steps or TINY_STEPS  # keep the demo short on a CPU
            job.args.size = job.args.size or TINY_SIZE
        for image in WORKFLOWS.glob("*.png"):  # the shipped workflows' own input pictures
            shutil.copy2(image, workdir / "input" / image.name)
        try:
            prompt = to_api(job.workflow_data)
        except WorkflowError as exc:
            raise UserError(f"--workflow {job.workflow.name}: {exc}") from None
        apply_settings(prompt, job, checkpoint_name, workdir / "input")
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
