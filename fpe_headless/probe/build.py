"""``fpe probe build``: the probing datasets of supplement §7.1, made through ComfyUI.

A *set* is a prompt family with a class per colour or animal word. Each sample is one generation of its
prompt at its seed on the user's checkpoint, with FPE Attention Record on the model (every step, the
cond row) and FPE Save Attention Maps after the sampler: the file it writes (per-layer maps of the word,
or the self-attention maps) comes back through the runner (``comfy.jobs``: in this process, or ``comfy.remote``:
on ComfyUI servers) and goes into compact safetensors shards (``store``) as it arrives, so a paper-size
self-attention set (about 4 GB at 512 px) is never in memory and a killed build resumes where it stopped.

The word lists are the supplement's. Its object list (100 everyday objects) and its 12 complex templates
are printed with a "..." in the middle: only 35 objects and 7 templates (6 listed, 1 in §8's text) are known. The defaults use those
and keep the sample count near the paper's 2,000 by adding seeds (``seeds_per_prompt``); ``--words FILE``
/ ``--templates FILE`` take the full lists where a user has them.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..comfy.jobs import Job, JobResult, Runner
from ..demo import world
from ..shared import Progress

COLORS_10 = ("red", "blue", "green", "yellow", "brown", "pink", "purple", "black", "white", "orange")
ANIMALS_10 = ("dog", "giraffe", "horse", "lion", "rabbit", "sheep", "cat", "monkey", "leopard", "tiger")
# The supplement prints 35 of its 100 objects (the rest is "...").
OBJECTS_SHOWN = ("apple", "banana", "carrot", "dog", "flower", "giraffe", "hat", "car", "train", "bicycle",
                 "yak", "acorn", "bear", "caterpillar", "turtle", "dandelion", "elephant", "feather", "grape",
                 "hedgehog", "inchworm", "jackfruit", "kiwi", "lemon", "zebra", "mushroom", "otter", "peacock",
                 "rose", "strawberry", "volcano", "watermelon", "xenops", "yucca", "cup")
# ... and 6 of its 12 complex templates in the list, a 7th in §8's text.
COMPLEX_TEMPLATES_SHOWN = ("a photo of a {} car and a dog", "a photo of {} car", "the painting of a {} car",
                           "a cool painting of an old {} car", "a man and a {} car", "a {} car and a dog",
                           "a painting of a wooden {} car")
# The demo model's world (``demo.world``): its 6 colours, and every shape on every ground as the object
# ("a red circle on grass"), the captions it was trained on.
DEMO_COLOURS = tuple(world.COLOURS)
DEMO_OBJECTS = tuple(f"{shape} on {ground}" for shape in world.SHAPES for ground in world.GROUNDS)
PAPER_SAMPLES = 2000  # per set (supplement §7.1)
SAVE_NODE = "fpe_probe_maps"


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


@dataclass(frozen=True)
class ProbeSet:
    name: str
    kind: str  # "cross" (the word's cross-attention maps) or "self" (the self-attention maps)
    classes: tuple[str, ...]
    templates: tuple[str, ...]  # "{c}" = the class word, "{a}" its article, "{o}" an object
    word: str  # which word's maps: "{c}" the class word, or a fixed word of the prompt ("a", "car")
    seeds: int  # seeds per prompt, paper size
    objects: tuple[str, ...] = ()
    about: str = ""

    @property
    def word_label(self) -> str:
        """The word as the report names it: '<animal>', '<colour>', or the fixed word."""
        if not self.word:
            return "(self-attention)"
        return self.word.replace("{c}", "<animal>" if self.classes == ANIMALS_10 else "<colour>")

    def prompts(self, cls: str, objects: tuple[str, ...] | None = None,
                templates: tuple[str, ...] | None = None) -> list[str]:
        objs = objects if objects is not None else self.objects
        out = []
        for template in templates or self.templates:
            for obj in (objs if "{o}" in template else ("",)):
                out.append(template.format(c=cls, a=article(cls), o=obj))
        return out


SETS = {s.name: s for s in (
    ProbeSet("color-car", "cross", COLORS_10, ("a {c} car",), "{c}", 200, about="Table 1/6: 'a <color> car', the colour"),
    ProbeSet("color-object", "cross", COLORS_10, ("a {c} {o}",), "{c}", 2, OBJECTS_SHOWN,
             about="Table 6: 'a <color> <object>', the colour (35 objects known; seeds added to keep ~2000)"),
    ProbeSet("animal-park", "cross", ANIMALS_10, ("{a} {c} standing in the park",), "{c}", 200,
             about="Table 1/6: 'a/an <animal> standing in the park', the animal"),
    ProbeSet("color-car-a", "cross", COLORS_10, ("a {c} car",), "a", 200,
             about="Table 3/7: 'a <color> car', the non-edited word 'a'"),
    ProbeSet("color-car-car", "cross", COLORS_10, ("a {c} car",), "car", 200,
             about="Table 3/7: 'a <color> car', the non-edited word 'car'"),
    ProbeSet("complex", "cross", COLORS_10, tuple(t.replace("{}", "{c}") for t in COMPLEX_TEMPLATES_SHOWN), "{c}",
             200 // 12, about="Table 9: the complex templates, the colour (7 of the 12 known)"),
    ProbeSet("self-complex", "self", COLORS_10, tuple(t.replace("{}", "{c}") for t in COMPLEX_TEMPLATES_SHOWN), "",
             200 // 12, about="Table 9: self-attention maps of the complex templates"),
    ProbeSet("self-color-car", "self", COLORS_10, ("a {c} car",), "", 200,
             about="Table 2/8: self-attention maps of 'a <color> car'"),
    ProbeSet("self-animal-park", "self", ANIMALS_10, ("{a} {c} standing in the park",), "", 200,
             about="Table 2/8: self-attention maps of the animal prompt"),
    ProbeSet("demo-colour", "cross", DEMO_COLOURS, ("a {c} {o}",), "{c}", 2, DEMO_OBJECTS,
             about="for the demo model: 'a <colour> <shape> on <ground>' of its drawn world, the colour (6 colours "
                   "x 16 shape-ground objects)"),
    ProbeSet("self-demo-colour", "self", DEMO_COLOURS, ("a {c} {o}",), "", 2, DEMO_OBJECTS,
             about="for the demo model: self-attention maps of 'a <colour> <shape> on <ground>'"),
)}


@dataclass(frozen=True)
class Sample:
    index: int
    label: int
    prompt: str
    word: str
    seed: int


def seeds_per_prompt(probe_set: ProbeSet, prompts_per_class: int, small: bool) -> int:
    """The paper's seeds per prompt, raised where fewer prompts are known so a class keeps ~200 samples;
    ``small``: a tenth (at least 1) for a quick look."""
    per_class = PAPER_SAMPLES // len(probe_set.classes)
    seeds = max(probe_set.seeds, math.ceil(per_class / max(prompts_per_class, 1)))
    return max(1, seeds // 10) if small else seeds


def sample_seed(base: int, slot: int, k: int) -> int:
    """The k-th seed of a prompt slot (a template or object position), the same for every class: the
    supplement's "ten categories of color words using 200 random seeds" reads as 200 seeds shared by the
    classes, so the images of "a red car" and "a blue car" share their noise (and, largely, their layout).
    Fixed by the base seed, the slot and k alone: independent of the other samples and of --limit."""
    return int.from_bytes(hashlib.sha256(f"{base}\0{slot}\0{k}".encode()).digest()[:6], "big")


def plan(probe_set: ProbeSet, *, small: bool = False, seeds: int | None = None, base_seed: int = 0,
         objects: tuple[str, ...] | None = None, templates: tuple[str, ...] | None = None) -> list[Sample]:
    """Every sample of the set, classes interleaved (class 0 seed 0, class 1 seed 0, ...) so a partial or
    killed build is still balanced across classes."""
    by_class = [probe_set.prompts(c, objects, templates) for c in probe_set.classes]
    count = seeds or seeds_per_prompt(probe_set, len(by_class[0]), small)
    rows: list[tuple[int, int, int, str]] = []  # (seed k, prompt j, class, prompt)
    for label, prompts in enumerate(by_class):
        for j, prompt in enumerate(prompts):
            rows += [(k, j, label, prompt) for k in range(count)]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    samples = []
    for index, (k, j, label, prompt) in enumerate(rows):
        cls = probe_set.classes[label]
        word = probe_set.word.format(c=cls) if probe_set.word else ""
        samples.append(Sample(index, label, prompt, word, sample_seed(base_seed, j, k)))
    return samples


@dataclass
class BuildSettings:
    checkpoint: str  # the loader's name for it
    steps: int = 50  # the official code's DDIM schedule (supplement §7.1 names none for the probe data)
    cfg: float = 7.5
    sampler: str = "ddim"
    scheduler: str = "ddim_uniform"
    size: int = 512
    self_side: int = 256
    negative: str = ""


def make_job(sample: Sample, probe_set: ProbeSet, settings: BuildSettings) -> Job:
    """One generation with the recorder on, and the word's (or the self-attention) maps saved."""
    cross = probe_set.kind == "cross"
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": settings.checkpoint}},
        "2": {"class_type": "FPEAttentionRecord", "inputs": {
            "model": ["1", 0], "cross_layers": "all" if cross else "none", "cross_custom_layers": "",
            "self_layers": "none" if cross else "all", "self_custom_layers": "", "start_percent": 0.0,
            "end_percent": 1.0, "rows": "cond", "image": 0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": sample.prompt}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": settings.negative}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": settings.size, "height": settings.size,
                                                           "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0],
            "seed": sample.seed, "steps": settings.steps, "cfg": settings.cfg, "sampler_name": settings.sampler,
            "scheduler": settings.scheduler, "denoise": 1.0}},
        SAVE_NODE: {"class_type": "FPESaveAttentionMaps", "inputs": {
            "fpe_record": ["2", 1], "samples": ["6", 0], "clip": ["1", 1], "text": sample.prompt,
            "word": sample.word, "self_side": settings.self_side, "filename_prefix": "fpe_probe/maps",
            "release_run": True}},
    }
    return Job(str(sample.index), str(sample.index), prompt, {SAVE_NODE: "maps"})


def read_maps(data: bytes, kind: str) -> tuple[list[str], list]:
    """(layer names, maps in forward order) of one FPE Save Attention Maps file."""
    from safetensors.torch import load  # imports torch: not for --help or `fpe probe list`

    tensors = load(data)
    names = json.loads(_metadata(data).get(f"{kind}_layers", "[]"))
    return names, [tensors[f"{kind}.{name}"] for name in names]


def _metadata(data: bytes) -> dict:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]).get("__metadata__", {}) or {}


@dataclass
class BuildOutcome:
    folder: Path
    total: int
    ran: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def build_meta(probe_set: ProbeSet, samples: list[Sample], settings: BuildSettings,
               extra_meta: dict | None = None) -> dict:
    """What probe.json records (keys starting with ``_`` are bookkeeping a resume may change)."""
    values = asdict(settings)
    if probe_set.kind == "cross":
        del values["self_side"]  # not part of a cross-attention set: changing it must not block a resume
    maps = ("the word's tokens' columns summed, averaged over heads and every step, cond row" if probe_set.kind ==
            "cross" else f"N x N averaged over heads and every step, cond row; N >= {settings.self_side}: "
                         f"area-averaged to {settings.self_side} x {settings.self_side} (blocks of the raster-ordered "
                         "matrix, i.e. runs of consecutive tokens)")
    return json.loads(json.dumps({  # as probe.json gives it back (tuples are lists)
        "kind": probe_set.kind, "set": probe_set.name, "word": probe_set.word_label,
        "classes": list(probe_set.classes), "about": probe_set.about, "maps": maps,
        "seeds": "shared by the classes: sha256(base seed, prompt slot, k)", "_samples": len(samples),
        **values, **(extra_meta or {})}))


def check_resume(out: Path, meta: dict) -> dict | None:
    """probe.json of ``out`` if it holds this set with these settings; None for a new folder; else a
    ValueError naming what differs (before ComfyUI starts)."""
    path = Path(out) / "probe.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    changed = [k for k in meta if not k.startswith("_") and stored.get(k) != meta[k]]
    if changed:
        raise ValueError(f"--out {out} holds a probe set built with other settings ({', '.join(changed[:4])}): "
                         "use another --out")
    return stored


FLUSH_S = 30.0  # a partly filled shard is written after this long: a hard kill loses at most this much work


def build(probe_set: ProbeSet, samples: list[Sample], settings: BuildSettings, out: Path, runner: Runner, *,
          extra_meta: dict | None = None, say: Callable[[str], None] = print, progress_stream=None,
          shard_size: int = 64) -> BuildOutcome:
    """Run the samples not stored before; store each as it arrives; a failing sample is reported, not stored
    (the next build retries it). When the first result fails, or the store cannot write, the build stops:
    every sample would fail the same way."""
    from .store import ProbeWriter  # imports torch: not for --help or `fpe probe list`

    out = Path(out)
    meta = build_meta(probe_set, samples, settings, extra_meta)
    stored = check_resume(out, meta)
    if stored is not None:
        stored["_samples"] = max(len(samples), stored.get("_samples", 0))
    writer = ProbeWriter(out, stored, shard_size) if stored is not None else None
    done = writer.done() if writer is not None else set()
    todo = [s for s in samples if s.index not in done]
    outcome = BuildOutcome(out, len(samples))
    if done:
        say(f"resuming {out}: {len(samples) - len(todo)} of {len(samples)} samples stored before")
    by_index = {s.index: s for s in samples}
    progress = Progress(len(samples), len(samples) - len(todo), progress_stream)
    flushed = time.monotonic()

    def store(result: JobResult) -> None:
        nonlocal writer, flushed
        sample = by_index[int(result.key)]
        if result.ok:
            try:
                names, maps = read_maps(result.images["maps"], probe_set.kind)
                if not maps:
                    raise ValueError("the maps file holds no maps")
            except Exception as exc:  # noqa: BLE001 - one sample's bad file: reported, retried next build
                result = JobResult(result.key, error=f"{type(exc).__name__}: {exc}")
        if result.ok:
            try:
                if writer is None:
                    layers = [{"name": n, "shape": list(m.shape)} for n, m in zip(names, maps, strict=True)]
                    writer = ProbeWriter(out, {**meta, "layers": layers}, shard_size)
                writer.add(sample.index, sample.label, sample.seed, maps)
                if time.monotonic() - flushed > FLUSH_S:
                    writer.flush()
                    flushed = time.monotonic()
            except OSError as exc:
                raise ValueError(f"--out {out}: cannot store the maps ({exc.strerror or exc}); free space or "
                                 "choose another --out, then run the same command again") from None
            outcome.ran.append(sample.index)
        else:
            outcome.failed.append(result.key)
            say(f"sample {sample.index} ({sample.prompt!r}, seed {sample.seed}) failed: {result.error}")
            if not outcome.ran and not done:
                raise ValueError(f"the first sample failed, so every sample would: {result.error}")
        progress.step(result.ok, f"sample {sample.index}")

    try:
        runner.run([make_job(s, probe_set, settings) for s in todo], store)
    finally:
        if writer is not None:
            writer.close()
    return outcome
