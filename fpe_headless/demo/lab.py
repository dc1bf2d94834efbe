"""Edits of the drawn world on the demo model, run through ComfyUI's real executor, and read back.

The graphs here are the shipped workflows' graphs in API form (Source Capture / DDIM Invert /
Null-Text Invert, Self-Attn Inject, KSampler), with a batch of seeds per prompt and a control
branch: the same target prompt and seed sampled without FPE. ``dev/measure_demo_model.py`` and the
semantic tests score their pictures with the world's reader.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import world

SAMPLER = {"sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0}
EMPTY_LATENT = "EmptyLatentImage"


@dataclass
class EditSettings:
    steps: int = 20
    cfg: float = 7.5
    layers: str = "official"
    custom_layers: str = "in4,in5,in7,in8,mid0,out3-8"
    start: float = 0.0
    end: float = 0.8
    size: int = world.SIZE


@dataclass
class Pictures:
    """uint8 H x W x 3 arrays per role ("source", "edit", "control", "photo", "reconstruction")."""

    by_role: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __getitem__(self, role: str) -> list[np.ndarray]:
        return self.by_role[role]


class _Graph:
    def __init__(self, checkpoint: str):
        self.nodes: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self.ckpt = self.add("CheckpointLoaderSimple", ckpt_name=checkpoint)
        self.saves: dict[str, str] = {}

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(next(self._ids))
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    def text(self, text: str) -> list:
        return [self.add("CLIPTextEncode", text=text, clip=[self.ckpt, 1]), 0]

    def save(self, role: str, image: list) -> None:
        self.saves[role] = self.add("SaveImage", filename_prefix=f"demo/{role}", images=image)

    def decode_and_save(self, role: str, latent: list) -> None:
        self.save(role, [self.add("VAEDecode", samples=latent, vae=[self.ckpt, 2]), 0])


def _store(settings: EditSettings) -> dict:
    """Store what the edit needs, and no more (a sweep over layers/end stores everything)."""
    return {"store_layers": settings.layers, "store_custom_layers": settings.custom_layers,
            "store_end": max(settings.end, 0.01), "store_rows": "cond", "storage": "auto", "precision": "exact",
            "store_cross": "off"}


def _inject(graph: _Graph, source: list, settings: EditSettings) -> list:
    return [graph.add("FPESelfAttnInject", layers=settings.layers, custom_layers=settings.custom_layers,
                      start=settings.start, end=settings.end, branches="cond only", sweep="",
                      model=[graph.ckpt, 0], fpe_source=source), 0]


def generated_edit_graph(checkpoint: str, source_text: str, target_text: str, seed: int, batch: int,
                         settings: EditSettings, control: bool = True, layer_lists: dict[str, str] | None = None) -> _Graph:
    """Source (Capture) and FPE edit (Inject + KSampler) of ``batch`` seeds, and the control without FPE.
    ``layer_lists`` adds edits from the same capture with custom layer lists, saved as role "edit_<name>"
    (the capture stores what ``settings`` select: at 128 px 'official' is every layer)."""
    g = _Graph(checkpoint)
    src, tgt, neg = g.text(source_text), g.text(target_text), g.text("")
    latent = [g.add(EMPTY_LATENT, width=settings.size, height=settings.size, batch_size=batch), 0]
    sampling = dict(seed=seed, steps=settings.steps, cfg=settings.cfg, **SAMPLER)
    capture = g.add("FPESourceCapture", **sampling, **_store(settings), model=[g.ckpt, 0], positive=src,
                    negative=neg, latent_image=latent)
    edit = g.add("KSampler", **sampling, model=_inject(g, [capture, 1], settings), positive=tgt, negative=neg,
                 latent_image=latent)
    g.decode_and_save("source", [capture, 0])
    g.decode_and_save("edit", [edit, 0])
    for name, layers in (layer_lists or {}).items():
        variant = dataclasses.replace(settings, layers="custom", custom_layers=layers)
        g.decode_and_save(f"edit_{name}", [g.add("KSampler", **sampling, model=_inject(g, [capture, 1], variant),
                                                 positive=tgt, negative=neg, latent_image=latent), 0])
    if control:
        plain = g.add("KSampler", **sampling, model=[g.ckpt, 0], positive=tgt, negative=neg, latent_image=latent)
        g.decode_and_save("control", [plain, 0])
    return g


def generation_graph(checkpoint: str, text: str, seed: int, batch: int, settings: EditSettings) -> _Graph:
    g = _Graph(checkpoint)
    latent = [g.add(EMPTY_LATENT, width=settings.size, height=settings.size, batch_size=batch), 0]
    out = g.add("KSampler", seed=seed, steps=settings.steps, cfg=settings.cfg, **SAMPLER, model=[g.ckpt, 0],
                positive=g.text(text), negative=g.text(""), latent_image=latent)
    g.decode_and_save("generated", [out, 0])
    return g


def real_edit_graph(checkpoint: str, photo: str, source_text: str, target_text: str, settings: EditSettings,
                    null_text: bool = False, invert_cfg: float = 1.0) -> _Graph:
    """A drawn 'photo' inverted (DDIM at ``invert_cfg``, or null-text tuned for ``settings.cfg``), its
    reconstruction (the same prompt, no edit) and the FPE edit."""
    g = _Graph(checkpoint)
    image = [g.add("LoadImage", image=photo), 0]
    latent = [g.add("FPEVAEEncodeMean", sides="crop to a multiple of 8", pixels=image, vae=[g.ckpt, 2]), 0]
    src, tgt, neg = g.text(source_text), g.text(target_text), g.text("")
    if null_text:
        invert = g.add("FPENullTextInvert", steps=settings.steps, scheduler=SAMPLER["scheduler"], cfg=settings.cfg,
                       inner_steps=10, early_stop=1e-5, learning_rate=0.01, **_store(settings),
                       model=[g.ckpt, 0], positive=src, negative=neg, latent=latent, vae=[g.ckpt, 2])
        negative = [invert, 2]
    else:
        invert = g.add("FPEDDIMInvert", steps=settings.steps, scheduler=SAMPLER["scheduler"], cfg=invert_cfg,
                       denoise=1.0, **_store(settings), reconstruction_check=False, model=[g.ckpt, 0],
                       positive=src, latent=latent, vae=[g.ckpt, 2])
        negative = neg
    advanced = dict(add_noise="disable", noise_seed=0, steps=settings.steps, cfg=settings.cfg,
                    sampler_name=SAMPLER["sampler_name"], scheduler=SAMPLER["scheduler"], start_at_step=0,
                    end_at_step=10000, return_with_leftover_noise="disable", negative=negative,
                    latent_image=[invert, 0])
    recon = g.add("KSamplerAdvanced", **advanced, model=[g.ckpt, 0], positive=src)
    edit = g.add("KSamplerAdvanced", **advanced, model=_inject(g, [invert, 1], settings), positive=tgt)
    g.decode_and_save("reconstruction", [recon, 0])
    g.decode_and_save("edit", [edit, 0])
    return g


def run(graph: _Graph, executor, output_dir: Path) -> Pictures:
    """Run a graph with ``executor`` (fpe_headless.comfy.executor.Executor); its pictures by role."""
    result = executor.run(graph.nodes)
    pictures = Pictures()
    for role, node_id in graph.saves.items():
        files = [output_dir / i["subfolder"] / i["filename"] for i in result.outputs[node_id]["images"]]
        pictures.by_role[role] = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        for f in files:
            f.unlink()
    return pictures


# --------------------------------------------------------------------------------------------
# Scores


@dataclass(frozen=True)
class EditScore:
    iou: float  # the object's mask in the edit vs in the source
    colour_right: bool  # the edit's object has the target colour
    shape_kept: bool
    centroid_shift: float  # as a share of the source object's size
    found: bool  # both pictures hold an object at all


def score_edit(source: np.ndarray, edit: np.ndarray, colour: str | None, objects: int = 1) -> EditScore:
    """How the edit of the first (leftmost) object compares with the source's."""
    before, after = world.read(source, objects), world.read(edit, objects)
    if not before or not after:
        return EditScore(0.0, False, False, 1.0, False)
    a, b = before[0], after[0]
    shift = float(np.hypot(a.centroid[0] - b.centroid[0], a.centroid[1] - b.centroid[1]) / max(a.size, 1.0))
    union_a = np.logical_or.reduce([s.mask for s in before])
    union_b = np.logical_or.reduce([s.mask for s in after])
    return EditScore(world.iou(union_a, union_b), colour is None or b.colour == colour, a.shape == b.shape, shift, True)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
