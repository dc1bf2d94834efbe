"""``fpe batch``: a dataset of prompt pairs -> one FPE edit per item through ComfyUI, with metrics.

Each item becomes an API prompt made from a workflow (the shipped generated-image or real-image edit
unless ``--workflow`` names another), with the item's prompts, photo and seed put in the way ``fpe edit``
puts them, the workflow's own output nodes removed and two Save Image nodes of ours added on the decoded
source and edit (``make_jobs``). A runner (``comfy.jobs``: in this process, or ``comfy.remote``: ComfyUI
servers) runs them; each finished item is written to the batch folder and appended to ``manifest.jsonl`` at once,
so a killed batch restarts where it stopped (``run_batch``).

The batch folder::

    batch.json          what was asked (dataset, workflow, checkpoint and its content's fingerprint,
                        settings): a resume must match it
    items.json          the items as run (prompts, photos, masks): what ``fpe eval`` reads
    manifest.jsonl      one line per finished item (the last line of an item counts): status, files, metrics
                        (with ``--local``: the local mode and the item's words)
    images/             <id>_source.png, <id>_edit.png (with ``--local``: <id>_mask.png, the mask the edit used)
    results.csv         one row per item (``report``), rewritten at the end
    summary.md          the Table 4/5-style summary
    contact_sheet_*.png source | edit pairs, captioned

Seeds are per source (``seed_for``): the edits of one source share its seed, as they share its image, so
the executor's cache pays the source (capture or inversion) once per source; jobs are ordered by source.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..comfy.jobs import Job, JobResult, Runner
from ..comfy.workflow import WorkflowError, to_api
from ..drawing import rgb
from ..shared import DuplicateKey, Progress, UserError, loads_strict
from ..workflows import SAMPLER_NODES, WORKFLOWS, apply_settings, load_workflow_file, prompt_roles, resolve_workflow
from ..workflows import Job as EditJob
from . import datasets, local, report

GENERATED_WORKFLOW, REAL_WORKFLOW = "fpe_generated_edit", "fpe_real_image_edit"
SOURCE_NODE, EDIT_NODE = "fpe_batch_source", "fpe_batch_edit"
NOT_RUN = "not run"  # where an item ran that never reached ComfyUI (its photo is unreadable)
SOURCE_MAKERS = ("FPESourceCapture",)  # a latent out of these is the generated source
MANIFEST, SETTINGS_FILE, ITEMS_FILE = "manifest.jsonl", "batch.json", "items.json"
ASKED = ("dataset", "workflow", "checkpoint", "steps", "cfg", "invert_cfg", "size", "seed", "same_seed",
         "negative", "invert_prompt", "reconstruction_check", "local", "local_start",
         "local_threshold")  # what a resume must match
# What a batch.json written before a setting existed means by its absence (a folder of local-less edits).
ASKED_BEFORE = {"local": "off", "local_start": None, "local_threshold": None}


class BatchError(ValueError):
    """A batch that cannot start: one line naming the option or file and the fix."""


@dataclass
class BatchSettings:
    checkpoint: str  # the name ComfyUI's checkpoint loader knows (a file in its models/checkpoints)
    workflow: Path | None = None  # None: the shipped generated-image or real-image edit, by the items' kind
    steps: int | None = None  # None: the workflow's
    cfg: float | None = None
    invert_cfg: float | None = None
    size: int | None = None  # generated: width and height; photos: the short side (as ``fpe edit``)
    seed: int = 0  # the base of the per-source seeds
    same_seed: bool = False  # every item gets ``seed`` itself
    negative: str | None = None
    # photos: the inversion's prompt: "auto" = "" for FPE DDIM Invert (the official code), the item's source
    # prompt for FPE Null-Text Invert (the notebook tunes the null text for it); or "empty" / "source"
    invert_prompt: str = "auto"
    reconstruction_check: bool = False  # real images: FPE DDIM Invert's extra reconstruction pass
    images: Path | None = None  # where the items' photos are
    dataset: str = "dataset"  # the name in the report
    method: str = "FPE"  # the method's name in the report (Table 5 compares methods)
    staging: Path | None = None  # where resized photos are written before they go to ComfyUI's input folder
    checkpoint_file: str | None = None  # the local file given (None: --server's name, or the tiny demo)
    checkpoint_content: str | None = None  # its ``fingerprint.file_fingerprint``: a resume needs the same weights
    # issue 26: each edit limited to a region by FPE Local Edit: "off", "words" (LocalBlend from the item's
    # blend words) or "annotation" (the dataset's mask); the blend's start (fraction of the steps; None: 0.2
    # for words, 0 for a mask) and the words' threshold (None: 0.3). Resolved on creation (what batch.json says).
    local: str = "off"
    local_start: float | None = None
    local_threshold: float | None = None

    def __post_init__(self):
        if self.local not in local.MODES:
            raise BatchError(f"--local {self.local}: choose one of {', '.join(local.MODES)}")
        self.local_start = local.start_of(self.local, self.local_start)
        self.local_threshold = local.threshold_of(self.local, self.local_threshold)


def seed_for(base: int, group: str) -> int:
    """A seed per source, fixed by the base seed and the source alone (so an item's seed does not depend on
    which other items the batch has, or on the order they run in)."""
    digest = hashlib.sha256(f"{base}\0{group}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def group_of(item: datasets.EditItem, inverts_with_prompt: bool = False) -> str:
    """Items of one group share the source branch's inputs: a generated source's prompt, or a photo (with
    its prompt where the inversion uses it)."""
    if item.image is None:
        return f"prompt:{item.source_prompt}"
    return f"image:{item.image}" + (f"\0{item.source_prompt}" if inverts_with_prompt else "")


def safe_name(item_id: str) -> str:
    """A file name for an id; an id that had to change gets a short hash of itself ('a/b' and 'a_b' differ)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._")[:80] or "item"
    return name if name == item_id else f"{name}-{hashlib.sha256(item_id.encode()).hexdigest()[:8]}"


# --- reading a dataset ----------------------------------------------------------------------------

def load_items(spec: str, images: Path | None = None) -> tuple[str, list[datasets.EditItem], Path | None]:
    """(dataset name, items, the photos' folder) from a generated set's name (car-fake-edit, animals-park,
    demo-colours), a paper JSON file, PIE-Bench's mapping_file.json, or a CSV of image,source_prompt,target_prompt."""
    if spec == "car-fake-edit":
        return spec, datasets.car_fake_edit(), None
    if spec == "animals-park":
        return spec, datasets.animal_park_pairs(), None
    if spec == "demo-colours":
        return spec, datasets.demo_colours(), None
    path = Path(spec).expanduser()
    if not path.is_file():
        if spec == "demo-real-edit":
            raise BatchError(f"dataset {spec}: its photos are drawn when it is written: `fpe datasets generate {spec} "
                             "--out demo_real.json` (the photos go beside the file), then `fpe batch demo_real.json`")
        raise BatchError(f"dataset {spec}: no such file (or give car-fake-edit, animals-park or demo-colours; the "
                         "other sets: `fpe datasets generate NAME --out FILE` first)")
    if path.suffix.lower() == ".csv":
        folder = images or path.parent
        return path.stem, datasets.read_folder(folder, path), folder
    raw = datasets._load(path) if path.suffix.lower() == ".json" else None
    if isinstance(raw, dict):  # PIE-Bench: photos under annotation_images/ beside the mapping file
        folder = images or (path.parent / "annotation_images" if (path.parent / "annotation_images").is_dir()
                            else path.parent)
        items = datasets.read_pie_bench(path)
        if any(item.image is None for item in items):
            raise BatchError(f"dataset {spec}: PIE-Bench entries need an image_path (e.g. "
                             f"{next(i.id for i in items if i.image is None)!r} has none)")
        return ("pie-bench" if path.stem == "mapping_file" else path.stem), items, folder
    if isinstance(raw, list):
        pie_keys = {"original_prompt", "editing_prompt"}
        if path.name.lower() == "mapping_file.json" or any(isinstance(row, dict) and pie_keys & set(row)
                                                           for row in raw):
            raise BatchError(f"dataset {spec}: PIE-Bench expects an object of entries keyed by image id "
                             '({"000000000000": {"image_path": ..., "original_prompt": ...}, ...}), not a list')
        items = datasets.read_official(path)
        return path.stem, items, (images or path.parent) if any(i.image for i in items) else None
    raise BatchError(f"dataset {spec}: expected a .json (the paper's files, PIE-Bench's mapping_file.json) or a "
                     ".csv with image,source_prompt,target_prompt")


def check_items(items: list[datasets.EditItem], images: Path | None) -> None:
    """What can be told from the items alone, before ComfyUI starts."""
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise BatchError(f"dataset: item id {item.id!r} appears twice; ids name the output files")
        seen.add(item.id)
        if not item.target_prompt.strip():
            raise BatchError(f"dataset: item {item.id!r} has an empty target prompt; every item needs its edit")
    if any(item.image for item in items) and any(item.image is None for item in items):
        raise BatchError("dataset: mixes items with and without photos; split it into a real and a generated set")
    photos = sorted({item.image for item in items if item.image})
    if not photos:
        return
    if images is None or not images.is_dir():
        raise BatchError(f"--images {images}: not a folder; give the folder the dataset's photo names are in")
    missing = [name for name in photos if not (images / name).is_file()]
    if missing and len(missing) * 2 >= len(photos):  # a few missing fail as items; most missing is the folder
        raise BatchError(f"--images {images}: {len(missing)} of the {len(photos)} photos are not there (e.g. "
                         f"{missing[0]!r}); pass --images DIR, the folder the dataset's photo names are relative to")


# --- items -> prompts ---------------------------------------------------------------------------------

def _origin(prompt: dict, link) -> dict | None:
    return prompt.get(link[0]) if isinstance(link, list) else None


def output_roles(prompt: dict) -> dict[str, list]:
    """The links to the decoded source and edit: a VAE Decode of a sampler's latent is the edit, one of
    FPE Source Capture's the source."""
    roles: dict[str, list] = {}
    for node_id, node in prompt.items():
        if node["class_type"] != "VAEDecode":
            continue
        origin = _origin(prompt, node["inputs"].get("samples"))
        kind = origin["class_type"] if origin else None
        role = "edit" if kind in SAMPLER_NODES + ("SamplerCustomAdvanced",) else "source" if kind in SOURCE_MAKERS else None
        if role is None:
            continue
        if role in roles:
            raise BatchError(f"the workflow decodes two {role} images (VAE Decode nodes {roles[role][0]} and "
                             f"{node_id}); a batch workflow has one source and one edit")
        roles[role] = [node_id, 0]
    if "edit" not in roles:
        raise BatchError("the workflow has no VAE Decode of a KSampler's latent: a batch needs the edit decoded")
    return roles


def _strip_saves(prompt: dict) -> None:
    """Drop the workflow's own saves and previews: the batch saves its own. Other output nodes (side by
    sides, heatmaps) go with everything the decodes do not need; an inversion node stays as their ancestor."""
    for node_id in [k for k, v in prompt.items() if v["class_type"] in ("SaveImage", "PreviewImage")]:
        del prompt[node_id]


def check_workflow_file(settings: BatchSettings, items: list[datasets.EditItem]) -> None:
    """What the workflow file tells without ComfyUI: photo or not, a sweep (make_jobs checks the rest)."""
    try:
        data = load_workflow_file(workflow_file(settings, items))
    except UserError as exc:
        raise BatchError(str(exc)) from None
    kinds = {node.get("type") for node in data.get("nodes", []) if node.get("mode") not in (2, 4)}
    real = bool(items) and items[0].image is not None
    name = workflow_file(settings, items).name
    if "FPESweepLatent" in kinds:
        raise BatchError(f"--workflow {name}: a settings sweep makes several edits per item; batch one setting at "
                         "a time (set it in the workflow)")
    if ("LoadImage" in kinds) != real:
        raise BatchError(f"--workflow {name}: {'loads a photo' if real is False else 'loads no photo'} but the "
                         f"dataset's items {'have none' if real is False else 'are photos'}")
    if settings.local != "off" and not kinds & set(local.INJECT_KINDS):
        raise BatchError(f"--local {settings.local}: --workflow {name} has no FPE Self-Attn Inject (or FPE Attention "
                         "Replace) whose edit FPE Local Edit could limit; use an FPE edit workflow")


def check_local(settings: BatchSettings, items: list[datasets.EditItem]) -> None:
    """A dataset that cannot give what --local asks (no mask annotation): before ComfyUI starts."""
    try:
        local.check_dataset(settings.local, items, settings.dataset)
    except local.LocalSetupError as exc:
        raise BatchError(str(exc)) from None


def _keep_ancestors(prompt: dict, roots: list[str]) -> None:
    """Only what the kept outputs need (a side-by-side without its save is dead weight in every prompt)."""
    keep, todo = set(), list(roots)
    while todo:
        node_id = todo.pop()
        if node_id in keep or node_id not in prompt:
            continue
        keep.add(node_id)
        todo += [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    for node_id in set(prompt) - keep:
        del prompt[node_id]


def make_jobs(items: list[datasets.EditItem], settings: BatchSettings) -> list[Job]:
    """One job per item, ordered so that the items of a source follow each other (first-seen order)."""
    if not items:
        return []
    real = items[0].image is not None
    workflow = settings.workflow or WORKFLOWS / f"{REAL_WORKFLOW if real else GENERATED_WORKFLOW}.json"
    try:
        path = resolve_workflow(str(workflow))
        data = load_workflow_file(path)
        template = to_api(data)
    except (WorkflowError, Exception) as exc:  # workflows' UserError and to_api's WorkflowError: one line each
        raise BatchError(f"--workflow {workflow}: {exc}") from None
    has_photo = any(node["class_type"] == "LoadImage" for node in template.values())
    if has_photo != real:
        raise BatchError(f"--workflow {path.name}: {'loads a photo' if has_photo else 'loads no photo'} but the "
                         f"dataset's items {'have none' if has_photo else 'are photos'}")
    if any(node["class_type"] == "FPESweepLatent" for node in template.values()):
        raise BatchError(f"--workflow {path.name}: a settings sweep makes several edits per item; batch one "
                         "setting at a time (set it in the workflow)")
    roles = output_roles(template)
    try:
        local.check_own(template, settings.local, path.name)
        site = local.find_site(template, roles["edit"][0], path.name) if settings.local != "off" else None
    except local.LocalSetupError as exc:
        raise BatchError(str(exc)) from None
    nulltext = any(node["class_type"] == "FPENullTextInvert" for node in template.values())
    keep_source_prompt = not real or settings.invert_prompt == "source" or (
        settings.invert_prompt == "auto" and nulltext)
    _strip_saves(template)
    _keep_ancestors(template, [link[0] for link in roles.values()])

    order: dict[str, int] = {}
    for item in items:
        order.setdefault(group_of(item, real and keep_source_prompt), len(order))
    staging = settings.staging
    jobs = []
    for item in sorted(items, key=lambda it: order[group_of(it, real and keep_source_prompt)]):  # stable sort
        group = group_of(item, real and keep_source_prompt)
        prompt = copy.deepcopy(template)
        args = argparse.Namespace(
            source_prompt=item.source_prompt if keep_source_prompt else None,
            target_prompt=item.target_prompt, negative=settings.negative,
            seed=settings.seed if settings.same_seed else seed_for(settings.seed, group),
            steps=settings.steps, cfg=settings.cfg, invert_cfg=settings.invert_cfg, size=settings.size)
        uploads = {}
        photo = None
        if real:
            photo = (settings.images or Path(".")) / item.image
            if staging is None:
                raise BatchError("internal: photos need a staging folder")
            staging.mkdir(parents=True, exist_ok=True)
        edit_job = EditJob(Path("."), path, data, None, photo, staging or Path("."), args)
        if real:
            if not photo.is_file():
                jobs.append(_unrunnable(item, group, f"photo {item.image}: no such file in {photo.parent}"))
                continue
            try:
                apply_settings(prompt, edit_job, settings.checkpoint, staging)
            except Exception as exc:  # noqa: BLE001 - PIL's many ways of saying "not an image"
                jobs.append(_unrunnable(item, group, f"photo {item.image}: not an image Pillow can read "
                                                     f"({type(exc).__name__})"))
                continue
            uploads = {node["inputs"]["image"]: staging / node["inputs"]["image"]
                       for node in prompt.values() if node["class_type"] == "LoadImage"}
        else:
            apply_settings(prompt, edit_job, settings.checkpoint, Path("."))
        for node in prompt.values():
            if "reconstruction_check" in node["inputs"]:  # FPE DDIM Invert, FPE Null-Text Invert
                node["inputs"]["reconstruction_check"] = settings.reconstruction_check
        outputs = {}
        if site is not None:
            try:
                outputs.update(_local_edit(prompt, site, item, settings, staging, uploads))
            except local.LocalItemError as exc:
                jobs.append(_unrunnable(item, group, str(exc)))
                continue
        for role, link in roles.items():
            node_id = SOURCE_NODE if role == "source" else EDIT_NODE
            prompt[node_id] = {"class_type": "SaveImage", "inputs": {
                "images": list(link), "filename_prefix": f"fpe_batch/{safe_name(item.id)}_{role}"},
                "_meta": {"title": f"batch {role}"}}
            outputs[node_id] = role
        if site is not None:  # what the item's region replaced (a workflow's painted mask) goes
            _keep_ancestors(prompt, list(outputs))
        jobs.append(Job(item.id, group, prompt, outputs, uploads))
    return jobs


def _local_edit(prompt: dict, site: local.Site, item: datasets.EditItem, settings: BatchSettings,
                staging: Path | None, uploads: dict) -> dict[str, str]:
    """The item's FPE Local Edit (``--local``) in its prompt: the words looked up in the prompts its branches
    encode, or its annotated mask as a PNG upload; the output node that saves the mask it used."""
    texts = prompt_roles(prompt)
    source_text = local.text_of(prompt, texts["source"][0]) if texts.get("source") else ""
    target = local.link_of(prompt[site.sampler]["inputs"].get("positive"))
    target_text = local.text_of(prompt, target[0]) if target else item.target_prompt
    words, mask_file = "", None
    if settings.local == "words":
        words = local.item_words(item, source_text, target_text)[0]
    else:
        if staging is None:
            raise BatchError("internal: masks need a staging folder")
        path = local.mask_png(item, staging)
        uploads[path.name] = path
        mask_file = path.name
    return local.apply(prompt, site, mode=settings.local, start=settings.local_start, threshold=settings.local_threshold,
                       words=words, source_text=source_text, target_text=target_text, mask_file=mask_file,
                       stem=safe_name(item.id))


def _unrunnable(item, group: str, error: str) -> Job:
    """A job that fails before it reaches ComfyUI (its photo is unreadable): recorded like any failure."""
    return Job(item.id, group, {}, {}, {}, error=error)


# --- the manifest ---------------------------------------------------------------------------------------

def item_fingerprint(item: datasets.EditItem) -> str:
    """What an item's result depends on besides the batch settings: a finished entry counts only for
    the same item (another dataset written into the same folder reruns its items)."""
    return hashlib.sha256(json.dumps(asdict(item), sort_keys=True).encode()).hexdigest()[:16]


def asked(settings: BatchSettings, workflow_bytes: bytes) -> dict:
    values = {k: v for k, v in asdict(settings).items() if k in ASKED}
    values.update(dataset=settings.dataset, workflow=hashlib.sha256(workflow_bytes).hexdigest()[:16],
                  checkpoint_file=settings.checkpoint_file, checkpoint_content=settings.checkpoint_content)
    return values


def read_json_file(path: Path, fix: str):
    """A JSON file of a batch folder; empty, cut or otherwise broken: a BatchError naming it and ``fix``."""
    try:
        text = path.read_text(encoding="utf-8")
        return loads_strict(text)
    except DuplicateKey as exc:  # written by hand since: which value counts is unknown
        raise BatchError(f"{path}: the key {exc.key!r} appears twice in one JSON object; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        what = "is empty" if path.is_file() and not path.stat().st_size else (
            f"is cut or broken ({exc})" if isinstance(exc, ValueError) else f"cannot be read ({exc})")
        raise BatchError(f"{path}: {what}; {fix}") from None


def read_manifest(folder: Path) -> dict[str, dict]:
    """The last entry of each item; a line cut off by a kill is skipped (the item reruns)."""
    entries: dict[str, dict] = {}
    path = folder / MANIFEST
    if not path.is_file():
        return entries
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # a damaged line: skipped
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "id" in entry:
            entries[str(entry["id"])] = entry
    return entries


def append_manifest(folder: Path, entry: dict) -> None:
    path = folder / MANIFEST
    cut = False  # a kill in the middle of a line: end it, or this entry would join the broken line
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            cut = handle.read(1) != b"\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(("\n" if cut else "") + json.dumps(entry, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def check_folder(out: Path, wanted: dict, restart: bool = False) -> None:
    """A batch folder holding other settings is refused (before anything runs), unless ``restart``."""
    settings_path = Path(out) / SETTINGS_FILE
    if restart or not settings_path.is_file():
        return
    before = read_json_file(settings_path, "what the batch was run with is lost: use another --out, or --restart "
                                           "to discard its results")
    if not isinstance(before, dict):
        raise BatchError(f"{settings_path}: not a batch's settings (a JSON object); use another --out, or --restart "
                         "to discard its results")
    changed = [f"{k}: {before.get(k, ASKED_BEFORE.get(k))!r} -> {wanted.get(k)!r}" for k in ASKED
               if before.get(k, ASKED_BEFORE.get(k)) != wanted.get(k)]
    if changed:
        raise BatchError(f"--out {out} holds a batch with other settings ({'; '.join(changed[:3])}): use another "
                         "--out, or --restart to discard its results")
    then, now = before.get("checkpoint_content"), wanted.get("checkpoint_content")
    if then and now and then != now:  # with --server (a name on the servers) or an older folder: the name only
        raise BatchError(f"--out {out} was made with other weights of the same name: {before.get('checkpoint_file')} "
                         f"({then}) then, {wanted.get('checkpoint_file')} ({now}) now; use another --out, or "
                         "--restart to discard its results")


def wanted_settings(settings: BatchSettings, items: list[datasets.EditItem]) -> dict:
    return asked(settings, workflow_file(settings, items).read_bytes())


def open_folder(out: Path, wanted: dict, restart: bool = False) -> dict[str, dict]:
    """Create or resume the batch folder; the entries already finished."""
    check_folder(out, wanted, restart)
    out.mkdir(parents=True, exist_ok=True)
    if restart:
        for name in (MANIFEST, SETTINGS_FILE, ITEMS_FILE):
            (out / name).unlink(missing_ok=True)
    settings_path = out / SETTINGS_FILE
    before = read_json_file(settings_path, "use another --out, or --restart") if settings_path.is_file() else None
    if before is None or (wanted.get("checkpoint_content") and not before.get("checkpoint_content")):
        # an older folder (or one made with --server) learns the weights it is resumed with: checked from now on
        record = {**(before or {}), **{k: v for k, v in wanted.items() if v is not None or before is None}}
        settings_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return read_manifest(out)


def write_items(out: Path, items: list[datasets.EditItem], settings: BatchSettings,
                say: Callable[[str], None] = print) -> list[datasets.EditItem]:
    """The items as run, and the report's names (``fpe eval`` needs nothing else). Items of earlier runs of
    the folder stay (a later ``--limit 2`` does not hide the results of a ``--limit 5``); returns them all."""
    try:
        earlier = load_items_file(out) if (out / ITEMS_FILE).is_file() else []
    except BatchError as exc:  # a kill while it was written (or an edit): rebuilt from this run's items
        say(f"{exc.args[0].split(';')[0]}: rebuilt from this run's items (items only an earlier, larger run had "
            "are left out of the report)")
        earlier = []
    now = {item.id for item in items}
    every = list(items) + [item for item in earlier if item.id not in now]
    data = {"dataset": settings.dataset, "method": settings.method, "items": [asdict(item) for item in every]}
    tmp = out / (ITEMS_FILE + ".part")
    tmp.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out / ITEMS_FILE)
    return every


REBUILD = "run the batch again (the same `fpe batch` command and --out) to rebuild it"


def read_items_file(out: Path) -> tuple[dict, list[datasets.EditItem]]:
    """items.json: (its names: dataset, method; the items). Empty, cut or not a batch's: a BatchError naming
    the file and the fix."""
    path = out / ITEMS_FILE
    data = read_json_file(path, REBUILD)
    try:
        names = {"dataset": str(data["dataset"]), "method": str(data["method"])}
        items = [datasets.EditItem(**{**raw, "blended_words": tuple(raw.get("blended_words") or ()),
                                      "mask": tuple(raw.get("mask") or ())}) for raw in data["items"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise BatchError(f"{path}: not a batch's item list ({type(exc).__name__}: {exc}); {REBUILD}") from None
    seen: set[str] = set()
    for n, item in enumerate(items):
        problem = _item_problem(item)
        if problem is None and item.id in seen:
            problem = "its id appears twice (ids name the results)"
        if problem is not None:
            raise BatchError(f"{path}: item {item.id!r} (number {n + 1}): {problem}; {REBUILD}")
        seen.add(item.id)
    return names, items


def _item_problem(item: datasets.EditItem) -> str | None:
    """What a hand edit of items.json broke in one item (the batch writes strings, lists of them, whole numbers)."""
    for name in ("id", "source_prompt", "target_prompt"):
        if not isinstance(getattr(item, name), str):
            return f"{name} is {type(getattr(item, name)).__name__} {getattr(item, name)!r}, not text"
    for name in ("image", "edit_type"):
        if getattr(item, name) is not None and not isinstance(getattr(item, name), str):
            return f"{name} is {type(getattr(item, name)).__name__} {getattr(item, name)!r}, not text"
    if not all(isinstance(word, str) for word in item.blended_words):
        return "blended_words must be a list of words"
    if len(item.mask) % 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item.mask):
        return "mask must be (start, length) pairs of whole numbers"
    return None


def load_items_file(out: Path) -> list[datasets.EditItem]:
    return read_items_file(out)[1]


def check_eval_folder(out: Path) -> tuple[dict, list[datasets.EditItem], dict[str, dict]]:
    """What ``fpe eval`` reads of a batch folder (items.json, manifest.jsonl; results.csv and summary.md are
    rewritten from them): the names, items and entries, or a BatchError naming the broken file and the fix."""
    if not (out / ITEMS_FILE).is_file():
        raise BatchError(f"{out}: no {ITEMS_FILE}: not a batch folder, or its batch never started")
    names, items = read_items_file(out)
    entries = read_manifest(out)
    if items and not entries:
        state = "is empty or cut" if (out / MANIFEST).is_file() else "is missing"
        raise BatchError(f"{out / MANIFEST} {state}: no finished item is recorded; run the batch again (the same "
                         "`fpe batch` command and --out) to run its items")
    ids = {item.id for item in items}
    strays = [key for key in entries if key not in ids]
    unmatched = [item.id for item in items if item.id not in entries]
    if strays and unmatched:  # an id renamed by hand: its result is there under the old name
        raise BatchError(f"{out / ITEMS_FILE}: item {unmatched[0]!r} has no result while {MANIFEST} has results for "
                         f"ids items.json does not list ({', '.join(map(repr, strays[:3]))}): the ids were changed "
                         f"since the run; {REBUILD}")
    return names, items, entries


def stale_entry(item: datasets.EditItem, entry: dict | None) -> bool:
    """A result made for another version of the item (items.json edited since, or another dataset in the
    folder): its pictures and metrics are not this item's."""
    return bool(entry) and bool(entry.get("item")) and entry["item"] != item_fingerprint(item)


def evaluate_folder(out: Path, scoring: Scoring, recompute: bool = False) -> list[dict]:
    """``fpe eval`` of a batch folder: the missing metrics (all with ``recompute``), then the reports."""
    names, items, entries = check_eval_folder(out)
    settings = BatchSettings(checkpoint="", dataset=names["dataset"], method=names["method"],
                             **local_settings_of(out))
    fill_missing_metrics(out, items, entries, scoring, recompute=recompute)
    return write_reports(out, items, entries, settings)


def local_settings_of(out: Path) -> dict:
    """The --local a batch folder was made with (its batch.json), for the reports ``fpe eval`` rewrites."""
    try:
        record = read_json_file(out / SETTINGS_FILE, "")
    except BatchError:
        return {}
    if not isinstance(record, dict) or record.get("local") not in local.MODES:
        return {}
    values = {"local": record["local"]}
    for key in ("local_start", "local_threshold"):
        if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool):
            values[key] = float(record[key])
    return values


# --- metrics of one item --------------------------------------------------------------------------------

@dataclass
class Scoring:
    clip: object | None = None  # metrics.ClipScorer, or None: no CS/CDS/CLIP edited
    clip_scale: float = 100.0
    dino: object | None = None  # metrics.StructureDistance, or None: no structure distance
    lpips: object | None = None  # metrics.Lpips, or None: no background LPIPS

    def wanted(self, masked: bool) -> set[str]:
        """The metrics ``score`` gives an item (``masked``: it has an edit mask)."""
        names = {"edge_ssim"} | ({"clip_score", "clip_directional"} if self.clip is not None else set())
        names |= {"structure_distance"} if self.dino is not None else set()
        if masked:
            names |= {"bg_psnr"} | ({"bg_lpips"} if self.lpips is not None else set())
            names |= {"clip_edited"} if self.clip is not None else set()
        return names

    def score(self, item: datasets.EditItem, source_png: Path, edit_png: Path, mask_png: Path | None = None) -> dict:
        """edge_ssim; bg_* where the item has a mask (PIE-Bench runs, or a PNG: white = edited); CS and CDS
        with CLIP."""
        from . import metrics  # imports torch, which --help and the checks before ComfyUI starts do without

        with Image.open(source_png) as a, Image.open(edit_png) as b:
            source, edit = rgb(a), rgb(b)  # 16-bit scaled, not clipped to white
        if source.size != edit.size:  # a photo the workflow cropped or scaled: compare at the edit's size
            source = source.resize(edit.size, Image.LANCZOS)
        values = {"edge_ssim": metrics.edge_ssim(source, edit)}
        mask = None
        if mask_png is not None:
            with Image.open(mask_png) as m:
                mask = metrics.mask_of(m)
        elif item.mask:
            mask = datasets.decode_mask(item.mask, border=False)
        if mask is not None:
            if mask.shape != (edit.height, edit.width):
                mask = np.array(Image.fromarray(mask).resize(edit.size, Image.NEAREST))
            bg = metrics.background_metrics(source, edit, mask)
            values.update(bg_psnr=bg.psnr, bg_mse=bg.mse, bg_ssim=bg.ssim)
            if self.lpips is not None:
                values.update(bg_lpips=self.lpips.background(source, edit, mask), lpips_model=self.lpips.label)
        if self.clip is not None:
            values["clip_score"] = self.clip.clip_score([edit], [item.target_prompt], scale=self.clip_scale)[0]
            values["clip_directional"] = self.clip.directional_similarity(
                [source], [edit], [item.source_prompt], [item.target_prompt])[0]
            if mask is not None:
                values["clip_edited"] = metrics.clip_edited(self.clip, edit, mask, item.target_prompt,
                                                            scale=self.clip_scale)
            values["clip_model"] = getattr(self.clip, "label", None)
        if self.dino is not None:
            values.update(structure_distance=self.dino.distance(source, edit), structure_model=self.dino.label)
        return values  # NaN stays NaN (PIE-Bench's all-edited mask): computed, undefined


# --- the batch ------------------------------------------------------------------------------------------------

@dataclass
class BatchOutcome:
    folder: Path
    total: int
    ran: list[str] = field(default_factory=list)  # item ids run now (not those finished before)
    failed: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    interrupted: bool = False


def item_row(item: datasets.EditItem, entry: dict, settings: BatchSettings) -> dict:
    row = {"id": item.id, "dataset": settings.dataset, "method": settings.method,
           "source_prompt": item.source_prompt, "target_prompt": item.target_prompt}
    row.update({k: v for k, v in entry.items() if k not in ("id", "item", "metrics", "warnings")})
    if entry.get("warnings"):
        row["warnings"] = "; ".join(entry["warnings"])
    row.update(entry.get("metrics") or {})
    return row


def workflow_file(settings: BatchSettings, items: list[datasets.EditItem]) -> Path:
    return resolve_workflow(str(settings.workflow)) if settings.workflow else jobs_workflow(items)


def finished_entry(out: Path, entry: dict | None, fingerprint: str) -> bool:
    """An item needs no run: finished ok, for this very item, and its pictures still there."""
    return bool(entry) and entry.get("status") == "ok" and entry.get("item") == fingerprint and all(
        entry.get(key) and (out / entry[key]).is_file() for key in ("source_image", "edit_image"))


def pending_items(out: Path, items: list[datasets.EditItem], restart: bool = False) -> list[datasets.EditItem]:
    """The items a run of the batch folder has to compute (all of them for a new folder or ``restart``)."""
    if restart:
        return list(items)
    entries = read_manifest(Path(out))
    return [item for item in items if not finished_entry(Path(out), entries.get(item.id), item_fingerprint(item))]


def run_batch(items: list[datasets.EditItem], settings: BatchSettings, out: Path, runner: Runner | None, *,
              scoring: Scoring | None = None, restart: bool = False, say: Callable[[str], None] = print,
              progress_stream=None) -> BatchOutcome:
    """Run the items not finished before, writing each as it ends; then the CSV, summary and sheets (also
    when interrupted, for what finished). ``runner`` may be None when nothing is left to run."""
    out = Path(out)
    scoring = scoring or Scoring()
    settings.staging = settings.staging or out / "inputs"
    check_local(settings, items)
    finished = open_folder(out, wanted_settings(settings, items), restart)
    every_item = write_items(out, items, settings, say)
    (out / "images").mkdir(exist_ok=True)
    prints = {item.id: item_fingerprint(item) for item in items}
    pending = [item for item in items if not finished_entry(out, finished.get(item.id), prints[item.id])]
    outcome = BatchOutcome(out, len(items))
    if len(pending) < len(items):
        say(f"resuming {out}: {len(items) - len(pending)} of {len(items)} items finished before")
    try:
        if pending:
            if runner is None:
                raise BatchError("internal: items to run but no runner")
            _run_pending(pending, settings, out, runner, scoring, finished, prints, outcome, say,
                         Progress(len(items), len(items) - len(pending), progress_stream))
    except KeyboardInterrupt:
        outcome.interrupted = True
        raise
    finally:  # the reports of what finished, even when interrupted
        fill_missing_metrics(out, every_item, finished, scoring)
        outcome.rows = write_reports(out, every_item, finished, settings)
    return outcome


def _run_pending(pending, settings, out, runner, scoring, finished, prints, outcome, say, progress) -> None:
    jobs = make_jobs(pending, settings)
    jobs_by_key = {job.key: job for job in jobs}
    by_id = {item.id: item for item in pending}

    def record(result: JobResult) -> None:
        item, job = by_id[result.key], jobs_by_key[result.key]
        entry = {"id": item.id, "item": prints[item.id], "status": "ok" if result.ok else "error",
                 "seed": _seed_of(job), "seconds": round(result.seconds, 3), "where": result.where,
                 "error": result.error, "warnings": result.warnings, "source_image": None, "edit_image": None,
                 "metrics": {}}
        notes, warned = local.record_of(settings.local, item, job.prompt)
        entry.update(notes)
        entry["warnings"] = list(entry["warnings"] or []) + warned
        if result.ok:
            try:
                entry.update(save_images(out, item, result, job))
                entry["metrics"] = scoring.score(item, out / entry["source_image"], out / entry["edit_image"])
            except Exception as exc:  # noqa: BLE001 - a broken image or metric: this item's failure
                entry.update(status="error", error=f"after the run: {type(exc).__name__}: {exc}")
        append_manifest(out, entry)
        finished[item.id] = entry
        outcome.ran.append(item.id)
        if entry["status"] != "ok":
            outcome.failed.append(item.id)
            say(f"item {item.id} failed: {entry['error']}")
        progress.step(entry["status"] == "ok", f"item {item.id}", ran=result.where != NOT_RUN)

    runnable = []
    for job in jobs:
        if job.error is not None:
            record(JobResult(job.key, error=job.error, where=NOT_RUN))
        else:
            runnable.append(job)
    check = getattr(runner, "check", None)
    if runnable and check is not None:  # a workflow ComfyUI refuses would fail every item the same way
        problem = check(runnable[0])
        if problem:
            raise BatchError(f"--workflow: ComfyUI refuses the batch's prompt ({problem}); every item would fail")
    if runnable:
        runner.run(runnable, record)


def jobs_workflow(items: list[datasets.EditItem]) -> Path:
    real = bool(items) and items[0].image is not None
    return WORKFLOWS / f"{REAL_WORKFLOW if real else GENERATED_WORKFLOW}.json"


def _seed_of(job: Job):
    for node in job.prompt.values():
        for name in ("seed", "noise_seed"):
            if isinstance(node["inputs"].get(name), int):
                return node["inputs"][name]
    return None


def save_images(out: Path, item: datasets.EditItem, result: JobResult, job: Job) -> dict:
    stem = safe_name(item.id)
    files = {}
    photos = [job.uploads[node["inputs"]["image"]] for node in job.prompt.values()
              if node["class_type"] == "LoadImage" and node["inputs"].get("image") in job.uploads]
    for role in ("source", "edit", "mask"):
        data = result.images.get(role)
        if data is None and role == "source":  # a real photo: the photo, as the workflow was given it
            data = photos[0].read_bytes() if photos else None
        if data is None and role == "mask":  # only a local edit (--local) saves the mask it used
            continue
        if data is None:
            raise ValueError(f"no {role} image came back")
        name = f"images/{stem}_{role}.png"
        if role == "source" and not result.images.get(role):
            buffer = io.BytesIO()
            Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="PNG")
            data = buffer.getvalue()
        tmp = out / (name + ".part")
        tmp.write_bytes(data)
        tmp.replace(out / name)
        files[f"{role}_image"] = name
    return files


def fill_missing_metrics(out: Path, items: list[datasets.EditItem], entries: dict[str, dict], scoring: Scoring,
                         recompute: bool = False) -> int:
    """Metrics for finished items that lack some (CLIP given on a later run, or ``fpe eval``)."""
    filled = 0
    for item in items:
        entry = entries.get(item.id)
        if not entry or entry.get("status") != "ok" or stale_entry(item, entry):
            continue
        have = entry.get("metrics") or {}
        if not recompute and scoring.wanted(bool(item.mask)) <= set(have):
            continue
        try:
            entry["metrics"] = {**have, **scoring.score(item, out / entry["source_image"], out / entry["edit_image"])}
        except Exception as exc:  # noqa: BLE001 - a deleted or broken picture: the item is redone next run
            entry.update(status="error", error=f"cannot score it: {type(exc).__name__}: {exc}")
        append_manifest(out, entry)
        filled += 1
    return filled


def write_reports(out: Path, items: list[datasets.EditItem], entries: dict[str, dict],
                  settings: BatchSettings) -> list[dict]:
    rows = []
    for item in items:  # an item without a result of its own counts as not run (a stopped batch, an edit since)
        entry = entries.get(item.id)
        if entry is None or stale_entry(item, entry):
            rows.append(item_row(item, {"status": report.STATUS_NOT_RUN, "error": (
                "its result was made for another version of this item (prompts or photo changed since); run the "
                "batch again to redo it") if entry else None}, settings))
        else:
            rows.append(item_row(item, entry, settings))
    report.write_results_csv(rows, out / "results.csv")
    title = f"{settings.method} on {settings.dataset}"
    summary = report.summary_markdown(report.summarize(rows), title=title)
    if settings.local != "off":
        summary = summary.rstrip("\n") + "\n\n" + local.describe(settings.local, settings.local_start,
                                                                 settings.local_threshold) + "\n"
    (out / "summary.md").write_text(summary, encoding="utf-8")
    sheet_entries = []
    for row in rows:
        if row.get("status") == report.STATUS_NOT_RUN:
            continue
        caption = f"{row['id']}: {row['source_prompt']} -> {row['target_prompt']}"
        figures = [f"{name} {row[key]:{spec}}" for name, key, spec in (
            ("CS", "clip_score", ".2f"), ("CDS", "clip_directional", ".4f"), ("edge SSIM", "edge_ssim", ".3f"))
            if isinstance(row.get(key), float)]
        if row.get("local_words"):
            caption += f"  [local: {row['local_words']}]"
        elif row.get("local"):
            caption += f"  [local: {row['local']}]"
        if figures:
            caption += "\n" + "  ".join(figures)
        if row.get("status") != "ok":
            caption += f"\nfailed: {row.get('error') or ''}"
        sheet_entries.append(report.SheetEntry(
            out / row["source_image"] if row.get("source_image") else None,
            out / row["edit_image"] if row.get("status") == "ok" and row.get("edit_image") else None, caption))
    report.contact_sheets(sheet_entries, out)
    return rows
