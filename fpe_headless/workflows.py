"""The shipped workflows and a command line's settings put into one (``fpe edit``, and ``fpe batch`` per item).

``resolve_workflow``/``load_workflow_file`` find and read a UI-format workflow (a shipped name or a file);
``apply_settings`` puts the prompts, seed, steps, guidance, size and photo of a :class:`Job` into its
API-format prompt, each only where it belongs (the prompts' roles read from the links).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from .comfy.host import PACK_ROOT
from .demo import world
from .drawing import rgb
from .shared import MMDIT_LOADERS, TINY_MMDIT, DuplicateKey, UserError, loads_strict, mmdit_family, mmdit_files

WORKFLOWS = PACK_ROOT / "workflows"
# Our inputs that repeat a prompt's text (to find its tokens): they follow the prompt they copy.
MIRRORED_TEXT = {"FPEWordHeatmap": ("text",), "FPEAttentionReplace": ("source_text", "target_text"),
                 "FPELocalEdit": ("source_text", "target_text")}
SAMPLER_NODES = ("KSampler", "KSamplerAdvanced", "SamplerCustom")
GUIDER_NODES = ("BasicGuider", "CFGGuider")  # SamplerCustomAdvanced's target prompt (FPE Flow Invert workflows)
PASSTHROUGH = ("FluxGuidance",)  # conditioning nodes between a prompt and where it is used
PROMPT_NODES = ("CLIPTextEncode", "CLIPTextEncodeSDXL")  # the SDXL one: the prompt in text_g and text_l
PROMPT_INPUTS = ("text", "text_g", "text_l")
SEED_INPUTS = ("seed", "noise_seed")


def shipped_workflows() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


@dataclass
class Job:
    comfyui: Path
    workflow: Path
    workflow_data: dict
    checkpoint: Path | None
    image: Path | None
    out: Path
    args: argparse.Namespace
    mask: Path | None = None  # --mask: a real-image local edit's painted mask

    @property
    def real(self) -> bool:
        return any(node.get("type") == "LoadImage" for node in self.workflow_data.get("nodes", []))

    @property
    def mmdit(self) -> str | None:
        """'flux' or 'sd35' for a Flux / SD3.5 workflow (its loaders), else None."""
        return mmdit_family(self.workflow_data)

    @property
    def sdxl(self) -> bool:
        """Its prompts need SDXL's two text encoders (the tiny demo then runs the tiny SDXL model)."""
        return any(node.get("type") == "CLIPTextEncodeSDXL" for node in self.workflow_data.get("nodes", []))


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
        if kind in MMDIT_LOADERS and checkpoint_name == TINY_MMDIT and job.mmdit:
            for name, value in mmdit_files(job.mmdit).items():
                put(name, value)
        for name in SEED_INPUTS:
            put(name, args.seed)
        put("steps", args.steps)
        if kind in SAMPLER_NODES or kind in ("FPESourceCapture", "FPENullTextInvert", "CFGGuider"):  # the edit's guidance
            put("cfg", args.cfg)
        if kind in ("FPEDDIMInvert", "FPEFlowInvert"):
            put("cfg", args.invert_cfg)
        if kind in ("EmptyLatentImage", "EmptySD3LatentImage", "ImageScale"):
            put("width", args.size)
            put("height", args.size)
        if kind == "LoadImage":
            photo = job.image or input_dir / inputs["image"]
            inputs["image"] = sized_photo(photo, input_dir, args.size)


def follow_prompts(prompt: dict, replaced: dict[str, str]) -> None:
    """Inputs that copy a prompt's text take its new text; a Word Heatmap's words that the new prompt lacks
    become the new prompt's words at the same places (a word swap: 'black' -> 'zebra')."""
    for node in prompt.values():
        followed = False
        for name in MIRRORED_TEXT.get(node["class_type"], ()):
            old = node["inputs"].get(name)
            if not isinstance(old, str) or old not in replaced:
                continue
            new = node["inputs"][name] = replaced[old]
            followed = True
            words = node["inputs"].get("words")
            if node["class_type"] == "FPEWordHeatmap" and isinstance(words, str):
                # a caption of the demo model's world names its colours and shapes: those are the words
                node["inputs"]["words"] = world.caption_words(new) or swapped_words(words, old, new)
        if followed and node["class_type"] == "FPELocalEdit":
            _follow_local_words(node["inputs"])


def _follow_local_words(inputs: dict) -> None:
    """FPE Local Edit's words for its new prompts: the words they differ by (as ``fpe batch --local words``
    picks them); prompts that do not differ keep the old words they still hold."""
    from .batch.local import changed_words, clip_words  # plain text: no ComfyUI, no torch

    words, source, target = inputs.get("words"), inputs.get("source_text"), inputs.get("target_text")
    if not (isinstance(words, str) and words.strip() and isinstance(source, str) and isinstance(target, str)):
        return
    found = changed_words(source, target)
    if not found:
        held = set(clip_words(source)) | set(clip_words(target))
        found = [w for w in clip_words(words) if w in held]
    if found:
        inputs["words"] = ", ".join(found)


def _plain_words(text: str) -> list[str]:
    return [w for w in (re.sub(r"^\W+|\W+$", "", w).lower() for w in text.split()) if w]


def swapped_words(words: str, old: str, new: str) -> str:
    """``words`` for the new prompt: kept where the new prompt has them, else the words that took their place
    (aligned with difflib: 'black horse' -> 'zebra' maps both to 'zebra')."""
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
    where = hashlib.sha256(str(Path(photo).resolve()).encode()).hexdigest()[:8]  # photos of one name in two folders
    name = f"fpe_photo_{size or 'orig'}_{photo.stem}_{where}.png"
    if (input_dir / name).is_file() and (input_dir / name).stat().st_mtime >= Path(photo).stat().st_mtime:
        return name  # a batch's second edit of this photo
    with Image.open(photo) as opened:
        image = rgb(ImageOps.exif_transpose(opened))  # a 16-bit grey photo scaled, not clipped
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
        while isinstance(link, list) and prompt.get(link[0], {}).get("class_type") in PASSTHROUGH:
            link = prompt[link[0]]["inputs"].get("conditioning")  # FluxGuidance: the prompt before it
        if isinstance(link, list) and prompt.get(link[0], {}).get("class_type") in PROMPT_NODES:
            return link[0]
        return None

    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("FPESourceCapture", "FPEDDIMInvert", "FPENullTextInvert", "FPEFlowInvert"):
            role = "source"  # FPE Null-Text Invert's negative: where the null text starts
        elif node["class_type"] in SAMPLER_NODES or node["class_type"] in GUIDER_NODES:
            role = "target"
        else:
            continue
        for key, name in (("positive", role), ("conditioning", role), ("negative", "negative")):
            found = text_node(inputs.get(key))
            if found and found not in roles.setdefault(name, []):
                roles[name].append(found)
    return roles
