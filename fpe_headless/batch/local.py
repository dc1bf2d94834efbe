"""``fpe batch --local``: each item's edit limited to a region through FPE Local Edit (issue 26).

* ``words``: LocalBlend's mask from the cross-attention of the item's blend words: PIE-Bench's
  ``blended_word`` where the dataset has it, else the words that differ between the source and target
  prompts (a word-level diff). The words are looked up in the prompts the branches were encoded with: a
  photo inverted with an empty prompt (FPE DDIM Invert's default) has no source words, so its target words
  alone make the mask.
* ``annotation``: PIE-Bench's hand-drawn mask (run-length over 512x512, ``datasets.decode_mask`` without
  the border PIE-Bench's metrics add) as the MASK input, loaded from a PNG the batch writes beside the
  photos.

The prompt of each item gets an FPE Local Edit on the edit sampler's model link (or the workflow's own FPE
Local Edit takes the item's region), and FPE Local Mask -> Mask To Image -> Save Image records the mask
the run used as ``images/<id>_mask.png``. Nothing here imports ComfyUI or torch.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import datasets

MODES = ("off", "words", "annotation")
DEFAULT_START = {"words": 0.2, "annotation": 0.0}  # Prompt-to-Prompt's LocalBlend starts at 20 % of the steps
DEFAULT_THRESHOLD = 0.3  # LocalBlend's
LOCAL_NODE, MASK_FILE_NODE = "fpe_batch_local", "fpe_batch_local_mask_file"
SHOW_NODE, PICTURE_NODE, MASK_NODE = "fpe_batch_local_mask", "fpe_batch_local_mask_image", "fpe_batch_mask"
LOCAL_KIND = "FPELocalEdit"
INJECT_KINDS = ("FPESelfAttnInject", "FPEAttentionReplace", "FPEMMDiTInject")  # what FPE Local Edit limits
PROMPT_KINDS = ("CLIPTextEncode", "CLIPTextEncodeSDXL")

# CLIP's pre-tokenizer (the words ComfyUI's tokenizers, and so FPE Local Edit, see): contractions, runs of
# letters, single digits, runs of other non-space characters; lower-cased first.
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


class LocalSetupError(ValueError):
    """A --local that cannot work for the whole batch (the workflow, the dataset): one line with the fix."""


class LocalItemError(ValueError):
    """A --local that cannot work for one item (no words to find, no mask): that item fails, named."""


@dataclass(frozen=True)
class Site:
    """Where an item's local edit goes in a prompt: the edit sampler, the link that gives its latent (for
    FPE Local Mask), the CLIP of its prompts, and the workflow's own FPE Local Edit (None: one is added)."""

    sampler: str
    samples: tuple
    clip: tuple
    own: str | None


def start_of(mode: str, start: float | None) -> float | None:
    return None if mode == "off" else DEFAULT_START[mode] if start is None else float(start)


def threshold_of(mode: str, threshold: float | None) -> float | None:
    return None if mode != "words" else DEFAULT_THRESHOLD if threshold is None else float(threshold)


def describe(mode: str, start: float | None, threshold: float | None) -> str:
    """A line for the summary: what the local edits of the batch did."""
    if mode == "words":
        return (f"Local edit: words (each item's blend words: PIE-Bench's blended_word, else the words that differ "
                f"between its prompts; LocalBlend from step fraction {start:g}, threshold {threshold:g}). The words "
                "and the mask each item used: results.csv's local_words and mask_image.")
    if mode == "annotation":
        return (f"Local edit: annotation (each item's annotated mask; outside it the edit follows the source from "
                f"step fraction {start:g}). The mask as the run used it: results.csv's mask_image.")
    return ""


# --- words ------------------------------------------------------------------------------------------

def clip_words(text: str) -> list[str]:
    """The words of ``text`` as CLIP's tokenizer splits them, lower case, punctuation left out."""
    return [piece for piece in _CLIP_PIECES.findall(text.lower()) if re.search(r"[^\W_]", piece)]


def differing_words(source: str, target: str) -> tuple[list[str], list[str]]:
    """(the source's words that the target replaced or dropped, the target's words that replaced or were
    added), from a word-level diff of the two prompts (case and punctuation ignored)."""
    a, b = clip_words(source), clip_words(target)
    gone, new = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            gone += a[i1:i2]
            new += b[j1:j2]
    return list(dict.fromkeys(gone)), list(dict.fromkeys(new))


def changed_words(source: str, target: str) -> list[str]:
    """The words two prompts differ by, less those both hold ('of' in '... in the style of'), unless nothing
    else differs: what a local edit by words names when no blend words are given."""
    gone, new = differing_words(source, target)
    both = set(clip_words(source)) & set(clip_words(target))
    changed = list(dict.fromkeys(gone + new))
    return [w for w in changed if w not in both] or changed


def item_words(item: datasets.EditItem, source_text: str, target_text: str) -> tuple[str, str, list[str]]:
    """(the words for FPE Local Edit, where they came from, the blend words that neither of the item's prompts
    holds) for one item: its blend words, else the words that differ between its prompts (leaving out those
    both prompts hold, unless nothing else differs), kept where a prompt the edit encodes holds them; a
    LocalItemError where no word is left to find."""
    if item.blended_words:
        wanted = list(dict.fromkeys(w for word in item.blended_words for w in clip_words(word)))
        origin = "blended_word"
    else:
        wanted = changed_words(item.source_prompt, item.target_prompt)
        origin = "prompt diff"
        if not wanted:
            raise LocalItemError(
                f"item {item.id!r}: --local words: its source and target prompts have the same words "
                f"({item.source_prompt!r}), so no word marks the region to edit; give the item blend words (PIE-Bench's "
                "blended_word) or batch it with --local off")
    present = set(clip_words(source_text)) | set(clip_words(target_text))
    found = [w for w in wanted if w in present]
    in_item = set(clip_words(item.source_prompt)) | set(clip_words(item.target_prompt))
    missing = [w for w in wanted if w not in present and w not in in_item]  # the dataset's mistake, not the inversion
    if not found:
        empty = " (the photo was inverted with an empty prompt, so only the target's words count: "\
                "--invert-prompt source lets the source's words count too)" if not source_text.strip() else ""
        raise LocalItemError(
            f"item {item.id!r}: --local words: none of its {origin} words ({', '.join(wanted)}) is in the prompts "
            f"the edit encodes (source {source_text!r}, target {target_text!r}){empty}; fix the dataset's words or "
            "batch it with --local off")
    return ", ".join(found), origin, missing


# --- masks ------------------------------------------------------------------------------------------

def mask_png(item: datasets.EditItem, folder: Path) -> Path:
    """The item's annotated mask as a grey PNG in ``folder`` (white = edit), named by its runs; a
    LocalItemError when the item has none."""
    if not item.mask:
        raise LocalItemError(f"item {item.id!r}: --local annotation: the item has no mask annotation; batch it with "
                             "--local words or --local off")
    digest = hashlib.sha256(",".join(map(str, item.mask)).encode()).hexdigest()[:16]
    path = Path(folder) / f"fpe_mask_{digest}.png"
    if not path.is_file():
        picture = datasets.decode_mask(item.mask, border=False).astype(np.uint8) * 255
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part.png")
        Image.fromarray(picture, mode="L").save(tmp)
        tmp.replace(path)
    return path


def check_dataset(mode: str, items: list[datasets.EditItem], dataset: str) -> None:
    """A dataset that cannot give what --local asks, before ComfyUI starts."""
    if mode == "annotation" and items and not any(item.mask for item in items):
        raise LocalSetupError(
            f"--local annotation: dataset {dataset} has no mask annotation (PIE-Bench's mapping_file.json has one per "
            "image); use --local words (the items' words make the mask) or --local off")


# --- the prompt ---------------------------------------------------------------------------------------

def link_of(value) -> tuple | None:
    return tuple(value) if isinstance(value, list) and len(value) == 2 else None


def find_site(prompt: dict, edit_decode: str, workflow: str) -> Site:
    """Where the local edit goes: on the model link of the sampler whose latent the edit decodes (walking up
    its model links to the FPE Self-Attn Inject, past the workflow's own FPE Local Edit if it has one)."""
    samples = link_of(prompt[edit_decode]["inputs"].get("samples"))
    sampler = samples[0]
    node_id, own = sampler, None
    while True:
        link = link_of(prompt[node_id]["inputs"].get("model"))
        origin = prompt.get(link[0]) if link else None
        if origin is None:
            raise LocalSetupError(f"--workflow {workflow}: --local limits an FPE edit, but the edit sampler's model does "
                                  "not come from FPE Self-Attn Inject (or FPE Attention Replace)")
        if origin["class_type"] == LOCAL_KIND and own is None:
            own = link[0]
        if origin["class_type"] in INJECT_KINDS:
            break
        node_id = link[0]
    positive = link_of(prompt[sampler]["inputs"].get("positive"))
    encoder = prompt.get(positive[0]) if positive else None
    clip = link_of(encoder["inputs"].get("clip")) if encoder and encoder["class_type"] in PROMPT_KINDS else None
    if clip is None:
        raise LocalSetupError(f"--workflow {workflow}: the edit sampler's positive is not a CLIP Text Encode, so "
                              "--local words cannot find the CLIP that encoded it")
    return Site(sampler, samples, clip, own)


def check_own(prompt: dict, mode: str, workflow: str) -> None:
    """With --local off, a workflow's FPE Local Edit would take one edit's region (its words in the workflow's
    own prompts, a painted mask the batch does not upload) to every item: refused."""
    for node in prompt.values():
        if mode == "off" and node["class_type"] == LOCAL_KIND:
            words = str(node["inputs"].get("words") or "").strip()
            region = f"the words {words!r} of the workflow's own prompts" if words else "a mask of the workflow's own"
            raise LocalSetupError(
                f"--workflow {workflow}: its FPE Local Edit limits the edit to {region}; batch it with --local words "
                "or --local annotation, which give each item its own region (the node's grow, feather and soft stay)")


def text_of(prompt: dict, node_id: str) -> str:
    inputs = prompt[node_id]["inputs"]
    for name in ("text", "text_g", "text_l"):
        if isinstance(inputs.get(name), str):
            return inputs[name]
    return ""


def apply(prompt: dict, site: Site, *, mode: str, start: float, threshold: float | None, words: str = "",
          source_text: str = "", target_text: str = "", mask_file: str | None = None, stem: str) -> dict[str, str]:
    """Put the item's local edit into ``prompt``; returns the output node that saves its mask -> "mask"."""
    values = {"start": start, "words": words, "source_text": source_text if words else "",
              "target_text": target_text if words else "",
              "threshold": DEFAULT_THRESHOLD if threshold is None else threshold}
    if site.own is not None:  # the workflow's own: its grow, feather, soft and composite stay
        node_id = site.own
        prompt[node_id]["inputs"].update(values)
        prompt[node_id]["inputs"].pop("mask", None)
    else:
        node_id = LOCAL_NODE
        prompt[node_id] = {"class_type": LOCAL_KIND, "inputs": {
            "model": list(prompt[site.sampler]["inputs"]["model"]), "grow": 0, "feather": 0, "soft": "blend",
            "composite": False, **values}, "_meta": {"title": f"batch local edit ({mode})"}}
        prompt[site.sampler]["inputs"]["model"] = [node_id, 0]
    prompt[node_id]["inputs"]["clip"] = list(site.clip)
    if mask_file is not None:
        prompt[MASK_FILE_NODE] = {"class_type": "LoadImageMask", "inputs": {"image": mask_file, "channel": "red"},
                                  "_meta": {"title": "batch annotated mask"}}
        prompt[node_id]["inputs"]["mask"] = [MASK_FILE_NODE, 0]
    prompt[SHOW_NODE] = {"class_type": "FPELocalMask", "inputs": {
        "local_edit": [node_id, 1], "samples": list(site.samples)}, "_meta": {"title": "batch local mask"}}
    prompt[PICTURE_NODE] = {"class_type": "MaskToImage", "inputs": {"mask": [SHOW_NODE, 0]}}
    prompt[MASK_NODE] = {"class_type": "SaveImage", "inputs": {
        "images": [PICTURE_NODE, 0], "filename_prefix": f"fpe_batch/{stem}_mask"}, "_meta": {"title": "batch mask"}}
    return {MASK_NODE: "mask"}


def record_of(mode: str, item: datasets.EditItem, prompt: dict) -> tuple[dict, list[str]]:
    """What the item's local edit used, read back from its prompt (its words, where they came from), and a
    warning per blend word that neither of the item's prompts holds; the mask the run used is saved apart."""
    if mode == "off":
        return {}, []
    record: dict = {"local": mode}
    node = next((n for n in prompt.values() if n["class_type"] == LOCAL_KIND), None)
    if mode != "words" or node is None:
        return record, []
    inputs = node["inputs"]
    words, origin, missing = item_words(item, inputs.get("source_text") or "", inputs.get("target_text") or "")
    record.update(local_words=words, local_words_from=origin)
    return record, [f"--local words: {word!r} ({origin}) is in neither of the item's prompts: left out"
                    for word in missing]
