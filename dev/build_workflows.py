"""Write the shipped example workflows (UI format) from compact descriptions.

    python dev/build_workflows.py        # rewrites workflows/*.json

Each node lists its linked inputs and outputs with their types and its widget values in the
order the web UI stores them (a seed widget is followed by its "control after generate" value).
The test suite converts and runs every shipped file through ComfyUI's executor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_LAYERS = "in4,in5,in7,in8,mid0,out3-8"
SOURCE_PROMPT = "a photo of green ducks walking on street"
TARGET_PROMPT = "a photo of rubber ducks walking on street"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"


@dataclass(frozen=True)
class Base:
    """What differs between the SD1.5 workflows and their SDXL versions."""

    checkpoint: str
    encoder: str  # the prompt node: CLIPTextEncode, or CLIPTextEncodeSDXL (text_g = text_l = the prompt)
    side: int  # the image size (the generated latent; a photo is scaled to side x side)
    steps: int
    cfg: float
    sampler: str  # of the generated edit (the real-image edit samples with ddim, as DDIM Invert inverts)
    scheduler: str
    custom_layers: str  # the store/inject 'custom' text, shown but unused under preset 'official'
    precision: str  # of the capture's record
    save_prefix: str  # SaveImage names: FPE/<save_prefix>side_by_side, ...
    prompt_size: tuple[int, int] = (400, 130)


SD15 = Base(CHECKPOINT, "CLIPTextEncode", 512, 50, 7.5, "ddim", "ddim_uniform", OFFICIAL_LAYERS, "exact", "")
# SDXL base at its native 1024 px: the 'official' rule (<= 32x32 tokens) keeps the 32x32 level, i.e. SDXL's
# in7, in8, mid0 and out0-2 (60 transformer layers), the paper's level; the custom text names the same blocks.
SDXL = Base("sd_xl_base_1.0.safetensors", "CLIPTextEncodeSDXL", 1024, 30, 7.0, "euler", "normal",
            "in7,in8,mid0,out0-2", "fp16", "sdxl_", prompt_size=(400, 300))


def prompt_node(g: Graph, base: Base, node_id: int, pos, text: str, title: str) -> int:
    """A prompt encoder; CLIPTextEncodeSDXL gets the size conditioning of an uncropped side x side image."""
    if base.encoder == "CLIPTextEncodeSDXL":
        widgets = [base.side, base.side, 0, 0, base.side, base.side, text, text]
    else:
        widgets = [text]
    return g.node(node_id, base.encoder, pos, inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
                  widgets=widgets, title=title, size=base.prompt_size)


class Graph:
    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def node(self, node_id, ctype, pos, *, inputs=(), outputs=(), widgets=(), title=None, size=(320, 130),
             color=None):
        node = {
            "id": node_id, "type": ctype, "pos": list(pos), "size": list(size), "flags": {},
            "order": len(self.nodes), "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": None} for name, kind in inputs],
            "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                        for i, (name, kind) in enumerate(outputs)],
            "properties": {"Node name for S&R": ctype},
            "widgets_values": list(widgets),
        }
        if title:
            node["title"] = title
        if color:
            node["color"], node["bgcolor"] = color
        self.nodes.append(node)
        return node_id

    def link(self, src, src_slot, dst, input_name):
        source = next(n for n in self.nodes if n["id"] == src)
        target = next(n for n in self.nodes if n["id"] == dst)
        slot = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == input_name)
        kind = source["outputs"][src_slot]["type"]
        link_id = len(self.links) + 1
        self.links.append([link_id, src, src_slot, dst, slot, kind])
        source["outputs"][src_slot]["links"].append(link_id)
        target["inputs"][slot]["link"] = link_id

    def workflow(self) -> dict:
        for node in self.nodes:
            for out in node["outputs"]:
                if not out["links"]:
                    out["links"] = None
        return {
            "last_node_id": max(n["id"] for n in self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": 0.4,
        }


FPE_COLOR = ("#233", "#355")


def checkpoint_node(g: Graph, base: Base) -> None:
    """Node 1: Load Checkpoint, left of the prompt column."""
    g.node(1, "CheckpointLoaderSimple", (20, 300), outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
           widgets=[base.checkpoint], size=(315, 100))


def generated_prompts(g: Graph, base: Base, source: str, target: str) -> None:
    """Nodes 2-5 of a generated edit: source, target and negative prompts, and the empty latent."""
    step = base.prompt_size[1] + 50  # vertical spacing of the prompt column
    prompt_node(g, base, 2, (380, 40), source, "Source prompt")
    prompt_node(g, base, 3, (380, 40 + step), target, "Target prompt (the edit)")
    prompt_node(g, base, 4, (380, 40 + 2 * step), "", "Negative prompt")
    g.node(5, "EmptyLatentImage", (380, 40 + 3 * step), outputs=[("LATENT", "LATENT")],
           widgets=[base.side, base.side, 1], size=(315, 106))


def capture_node(g: Graph, base: Base, node_id: int, pos, title: str | None = None) -> None:
    """FPE Source Capture with the base's sampling, seed 42, the official store settings."""
    sampling = [base.steps, base.cfg, base.sampler, base.scheduler]
    g.node(node_id, "FPESourceCapture", pos,
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT"), ("sigmas", "SIGMAS")],
           outputs=[("source_latent", "LATENT"), ("fpe_source", "FPE_SOURCE")],
           widgets=[42, "fixed", *sampling, 1.0, "official", base.custom_layers, 0.8, "cond", "auto",
                    base.precision, "off"],
           title=title, size=(340, 430), color=FPE_COLOR)


def inject_node(g: Graph, base: Base, node_id: int, pos) -> None:
    """FPE Self-Attn Inject with the official settings, no sweep."""
    g.node(node_id, "FPESelfAttnInject", pos, inputs=[("model", "MODEL"), ("fpe_source", "FPE_SOURCE")],
           outputs=[("model", "MODEL"), ("sweep_labels", "FPE_SWEEP_LABELS")],
           widgets=["official", base.custom_layers, 0.0, 0.8, "cond only", ""],
           size=(340, 190), color=FPE_COLOR)


def photo_nodes(g: Graph, base: Base) -> None:
    """Nodes 1-3 of a real-image edit: Load Checkpoint, the example photo, FPE VAE Encode (Mean)."""
    step = base.prompt_size[1] + 50
    checkpoint_node(g, base)
    g.node(2, "LoadImage", (20, 460), outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], widgets=[EXAMPLE_IMAGE, "image"],
           title="Load the photo to edit", size=(315, 360))
    g.node(3, "FPEVAEEncodeMean", (380, 40 + 3 * step), inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
           outputs=[("latent", "LATENT")], widgets=["crop to a multiple of 8"], size=(315, 80), color=FPE_COLOR)


def target_ksampler(g: Graph, base: Base, node_id: int, pos, size) -> None:
    """The target's KSampler: the capture's seed and sampling settings."""
    sampling = [base.steps, base.cfg, base.sampler, base.scheduler]
    g.node(node_id, "KSampler", pos,
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT")],
           outputs=[("LATENT", "LATENT")], widgets=[42, "fixed", *sampling, 1.0],
           title="KSampler (target: same seed, steps, sampler)", size=size)


def decode_node(g: Graph, node_id: int, pos, title: str) -> None:
    g.node(node_id, "VAEDecode", pos, inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")],
           title=title, size=(210, 50))


def side_by_side_node(g: Graph, node_id: int, pos) -> None:
    g.node(node_id, "FPESideBySide", pos, inputs=[("image_a", "IMAGE"), ("image_b", "IMAGE")],
           outputs=[("image", "IMAGE")], size=(260, 50), color=FPE_COLOR)


def generated_edit(official_schedule: bool = False, base: Base = SD15) -> dict:
    """The official example edit; with ``official_schedule`` over the authors' exact DDIM timesteps
    (980 ... 20, 0) through FPE Official DDIM Sigmas and SamplerCustom; ``base`` picks the model's
    settings (SD1.5, or SDXL with its own prompt encoder, size and sampler)."""
    g = Graph()
    checkpoint_node(g, base)
    generated_prompts(g, base, SOURCE_PROMPT, TARGET_PROMPT)
    capture_title = "FPE Source Capture (sigmas)" if official_schedule else None
    capture_node(g, base, 6, (830, 40), title=capture_title)
    inject_node(g, base, 7, (830, 510))
    if official_schedule:
        g.node(16, "FPEOfficialDDIMSigmas", (380, 720), inputs=[("model", "MODEL")], outputs=[("sigmas", "SIGMAS")],
               widgets=[50], size=(315, 60), color=FPE_COLOR)
        g.node(17, "KSamplerSelect", (380, 820), outputs=[("SAMPLER", "SAMPLER")], widgets=["ddim"], size=(315, 60))
        g.node(8, "SamplerCustom", (1220, 460),
               inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
               outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], widgets=[True, 42, "fixed", 7.5],
               title="SamplerCustom (target: same seed, sigmas)", size=(380, 230))
    else:
        target_ksampler(g, base, 8, (1220, 460), (380, 270))
    decode_node(g, 9, (1220, 40), "Decode source")
    decode_node(g, 10, (1680, 460), "Decode edit")
    side_by_side_node(g, 11, (1680, 40))
    g.node(12, "SaveImage", (1980, 40), inputs=[("images", "IMAGE")], widgets=[f"FPE/{base.save_prefix}side_by_side"],
           title="Save source | edit", size=(420, 300))
    g.node(13, "SaveImage", (1220, 140), inputs=[("images", "IMAGE")], widgets=[f"FPE/{base.save_prefix}source"],
           title="Save source", size=(380, 270))
    g.node(14, "SaveImage", (1980, 460), inputs=[("images", "IMAGE")], widgets=[f"FPE/{base.save_prefix}edit"],
           title="Save edit", size=(320, 280))
    if base is SDXL:
        g.node(15, "Note", (20, 480), widgets=[NOTE_SDXL_GENERATED], size=(330, 560))
    else:
        g.node(15, "Note", (20, 480), widgets=[NOTE_OFFICIAL_SCHEDULE if official_schedule else NOTE_GENERATED],
               size=(330, 300))
    g.link(1, 0, 6, "model")
    g.link(1, 0, 7, "model")
    for clip_user in (2, 3, 4):
        g.link(1, 1, clip_user, "clip")
    g.link(2, 0, 6, "positive")
    g.link(4, 0, 6, "negative")
    g.link(5, 0, 6, "latent_image")
    g.link(6, 1, 7, "fpe_source")
    g.link(7, 0, 8, "model")
    g.link(3, 0, 8, "positive")
    g.link(4, 0, 8, "negative")
    g.link(5, 0, 8, "latent_image")
    if official_schedule:
        g.link(1, 0, 16, "model")
        g.link(16, 0, 6, "sigmas")
        g.link(16, 0, 8, "sigmas")
        g.link(17, 0, 8, "sampler")
    g.link(6, 0, 9, "samples")
    g.link(1, 2, 9, "vae")
    g.link(8, 0, 10, "samples")
    g.link(1, 2, 10, "vae")
    g.link(9, 0, 11, "image_a")
    g.link(10, 0, 11, "image_b")
    g.link(11, 0, 12, "images")
    g.link(9, 0, 13, "images")
    g.link(10, 0, 14, "images")
    return g.workflow()


NOTE_GENERATED = (
    "Free-Prompt-Editing (Liu et al., CVPR 2024): the source prompt makes an image, the target prompt edits it "
    "while the layout stays.\n\n"
    "FPE Source Capture samples the source and records its self-attention; FPE Self-Attn Inject makes the "
    "target KSampler reuse it. Keep seed, steps, sampler and scheduler (and denoise) the SAME on the capture "
    "and the KSampler.\n\n"
    "Change only the target prompt and queue again: the source is cached, a re-edit costs one generation.\n"
    "Stronger change of shape: lower the Inject's end (0.4-0.6). Closer to the source: raise it or use "
    "layers 'all'.")
NOTE_OFFICIAL_SCHEDULE = (
    "Exact reproduction of the authors' notebook schedule: DDIM over timesteps 980, 960, ..., 20, 0 (ending at "
    "alpha_bar_0, not a clean image), which ComfyUI's ddim_uniform (981 ... 1, then 0) only approximates.\n\n"
    "FPE Official DDIM Sigmas feeds the same sigmas to the capture and to SamplerCustom; keep the sampler "
    "'ddim' and the same seed on both.")

NOTE_SDXL_GENERATED = (
    "SDXL version of the generated edit (Free-Prompt-Editing, Liu et al., CVPR 2024): the source prompt makes "
    "an image, the target prompt edits it while the layout stays. Pick your SDXL base checkpoint in Load "
    "Checkpoint.\n\n"
    "1024x1024, SDXL's own size; each prompt goes to both text_g and text_l, with the sizes of a 1024x1024 "
    "image. Euler / normal, 30 steps, cfg 7: usual SDXL settings (the SD1.5 example: ddim, 50 steps, 7.5). Keep "
    "seed, steps, sampler and scheduler (and denoise) the SAME on the capture and the KSampler.\n\n"
    "Layers 'official' (at most 32x32 tokens) keeps SDXL's 32x32 level at 1024 px (in7, in8, mid, out0-2: 60 "
    "transformer layers), the level the paper edits. The capture stores fp16: the record is ~3.5 GB at these "
    "settings.\n\n"
    "Change only the target prompt and queue again: the source is cached. Stronger change of shape: lower the "
    "Inject's end (0.4-0.6); closer to the source: raise it.")
NOTE_SDXL_REAL = (
    "SDXL version of the real-image edit (the authors' edit_real): FPE DDIM Invert turns the photo into noise "
    "with an empty prompt and records its self-attention; the target prompt samples that noise back while FPE "
    "Self-Attn Inject keeps the photo's layout. Pick your SDXL base checkpoint in Load Checkpoint.\n\n"
    "The photo is scaled and center-cropped to 1024x1024, SDXL's own size (change Image Scale for another "
    "size or aspect; keep the prompts' sizes in step). The KSamplerAdvanced must keep add_noise 'disable', "
    "sampler 'ddim' and the SAME steps (30) and scheduler as DDIM Invert. Layers 'official' keeps SDXL's 32x32 "
    "level at 1024 px; the record is stored in fp16 (~3.5 GB).\n\n"
    "DDIM Invert's preview shows the photo beside its reconstruction: above ~30 dB PSNR edits keep the "
    "details; below ~20 dB use more steps or a source prompt that describes the photo.\n\n"
    "Change only the target prompt and queue again: the inversion is cached.")


EXAMPLE_IMAGE = "fpe_example_apple.png"  # drawn by dev/make_example_image.py; copy it to ComfyUI/input
REAL_TARGET_PROMPT = "a photo of a green apple on a wooden table"
REAL_SOURCE_PROMPT = "a photo of a red apple on a wooden table"  # the null-text inversion's


def real_image_edit(base: Base = SD15, nulltext: bool = False) -> dict:
    """The official edit_real flow: invert a photo with an empty prompt, edit it with the target prompt.
    For SDXL the photo is first scaled (center crop) to the model's side x side. ``nulltext``: the
    supplement's Algorithm 3 instead (null-text inversion with a source prompt that describes the photo,
    the edit at cfg 7.5 with the per-step null embeddings as the target sampler's negative)."""
    g = Graph()
    step = base.prompt_size[1] + 50
    photo_nodes(g, base)
    if nulltext:
        prompt_node(g, base, 4, (380, 40), REAL_SOURCE_PROMPT, "Source prompt (describes the photo)")
    else:
        prompt_node(g, base, 4, (380, 40), "", "Source prompt (empty, as the official code)")
    prompt_node(g, base, 5, (380, 40 + step), REAL_TARGET_PROMPT, "Target prompt (the edit)")
    prompt_node(g, base, 6, (380, 40 + 2 * step), "",
                "Null text start (empty, as the official code)" if nulltext else "Negative prompt")
    cfg = 7.5 if nulltext else base.cfg
    if nulltext:
        g.node(7, "FPENullTextInvert", (830, 40),
               inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("latent", "LATENT"), ("sigmas", "SIGMAS"), ("vae", "VAE")],
               outputs=[("inverted_latent", "LATENT"), ("fpe_source", "FPE_SOURCE"),
                        ("null_negative", "CONDITIONING"), ("report", "STRING")],
               widgets=[base.steps, "ddim_uniform", cfg, 10, 1e-5, 0.01, "official", base.custom_layers, 0.8, "cond",
                        "auto", base.precision, "off"],
               size=(360, 760), color=FPE_COLOR)
    else:
        g.node(7, "FPEDDIMInvert", (830, 40),
               inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT"),
                       ("negative", "CONDITIONING"), ("sigmas", "SIGMAS"), ("vae", "VAE")],
               outputs=[("inverted_latent", "LATENT"), ("fpe_source", "FPE_SOURCE"), ("report", "STRING")],
               widgets=[base.steps, "ddim_uniform", 1.0, 1.0, "official", base.custom_layers, 0.8, "cond", "auto",
                        base.precision, True, "off"],
               size=(360, 700), color=FPE_COLOR)
    inject_node(g, base, 8, (1230, 40))
    g.node(9, "KSamplerAdvanced", (1230, 290),
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT")],
           outputs=[("LATENT", "LATENT")],
           widgets=["disable", 0, "fixed", base.steps, cfg, "ddim", "ddim_uniform", 0, 10000, "disable"],
           title="KSamplerAdvanced (target: ddim, no noise" + (", null_negative)" if nulltext else ")"),
           size=(380, 340))
    decode_node(g, 10, (1680, 290), "Decode edit")
    side_by_side_node(g, 11, (1680, 40))
    prefix = "FPE/nulltext_" if nulltext else f"FPE/{base.save_prefix}real_"
    g.node(12, "SaveImage", (1980, 40), inputs=[("images", "IMAGE")], widgets=[f"{prefix}side_by_side"],
           title="Save photo | edit", size=(420, 300))
    g.node(13, "SaveImage", (1980, 400), inputs=[("images", "IMAGE")], widgets=[f"{prefix}edit"],
           title="Save edit", size=(320, 300))
    photo = 2  # what the edit starts from and is shown beside: the loaded photo, or its scaled copy
    if nulltext:
        g.node(14, "Note", (1230, 690), widgets=[NOTE_NULLTEXT], size=(380, 400))
    elif base is SDXL:
        g.node(14, "Note", (1230, 690), widgets=[NOTE_SDXL_REAL], size=(380, 480))
        g.node(15, "ImageScale", (20, 880), inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")],
               widgets=["lanczos", base.side, base.side, "center"], title=f"Scale to {base.side}x{base.side} (SDXL)",
               size=(315, 130))
        g.link(2, 0, 15, "image")
        photo = 15
    else:
        g.node(14, "Note", (380, 720), widgets=[NOTE_REAL], size=(400, 330))
    g.link(1, 0, 7, "model")
    g.link(1, 0, 8, "model")
    for clip_user in (4, 5, 6):
        g.link(1, 1, clip_user, "clip")
    g.link(photo, 0, 3, "pixels")
    g.link(1, 2, 3, "vae")
    g.link(3, 0, 7, "latent")
    g.link(4, 0, 7, "positive")
    if nulltext:
        g.link(6, 0, 7, "negative")
    g.link(1, 2, 7, "vae")
    g.link(7, 1, 8, "fpe_source")
    g.link(8, 0, 9, "model")
    g.link(5, 0, 9, "positive")
    if nulltext:
        g.link(7, 2, 9, "negative")
    else:
        g.link(6, 0, 9, "negative")
    g.link(7, 0, 9, "latent_image")
    g.link(9, 0, 10, "samples")
    g.link(1, 2, 10, "vae")
    g.link(photo, 0, 11, "image_a")
    g.link(10, 0, 11, "image_b")
    g.link(11, 0, 12, "images")
    g.link(10, 0, 13, "images")
    return g.workflow()


NOTE_REAL = (
    "Real-image editing (the authors' edit_real): FPE DDIM Invert turns the photo into noise with an empty "
    "prompt and records the photo's self-attention along the way; the target prompt then samples that noise "
    "back while FPE Self-Attn Inject keeps the photo's layout.\n\n"
    "Load your photo (drag it onto Load Image). The KSamplerAdvanced must keep add_noise 'disable', sampler "
    "'ddim' and the SAME steps and scheduler as DDIM Invert.\n\n"
    "DDIM Invert's preview shows the photo beside its reconstruction from the inverted noise, with the error. "
    "PSNR above ~30 dB: the inversion loses less than the VAE itself does, edits keep the details; below ~20 dB: "
    "use cfg 1, more steps, or a source prompt that describes the photo. Turn the check off once you trust "
    "the settings.\n\n"
    "Change only the target prompt and queue again: the inversion is cached, a re-edit costs one generation.")



NOTE_NULLTEXT = (
    "Null-text inversion + FPE (the paper's supplement, Algorithm 3): the photo is inverted with a source prompt "
    "that describes it, then the negative embedding is tuned step by step so that sampling at cfg 7.5 gives the "
    "photo back. Fine detail (faces, text, texture) survives better than with FPE DDIM Invert at cfg 7.5.\n\n"
    "Connect null_negative to the target sampler's NEGATIVE, and keep the sampler's add_noise 'disable', sampler "
    "'ddim', and the SAME steps, scheduler and cfg as the inversion node.\n\n"
    "It costs about 10 inversions (up to 10 forward + backward passes per step) once per photo; change only the "
    "target prompt and queue again: the inversion is cached, a re-edit costs one generation.")


SWEEP = "layers=official,all; end=0.2,0.4,0.6,0.8"  # grid rows: layers, columns: the replace ratio


def settings_sweep() -> dict:
    """One source, 8 edits in one batched run (layers x replace ratio), laid out as a titled grid."""
    g = Graph()
    base = SD15
    sampling = [base.steps, base.cfg, base.sampler, base.scheduler]
    checkpoint_node(g, base)
    generated_prompts(g, base, SOURCE_PROMPT, TARGET_PROMPT)
    g.node(6, "FPESourceCapture", (830, 40),
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT"), ("sigmas", "SIGMAS")],
           outputs=[("source_latent", "LATENT"), ("fpe_source", "FPE_SOURCE")],
           widgets=[42, "fixed", *sampling, 1.0, "all", base.custom_layers, 0.8, "cond", "auto", base.precision,
                    "off"],
           title="FPE Source Capture (store_layers all)", size=(340, 470), color=FPE_COLOR)
    g.node(7, "FPESelfAttnInject", (830, 600), inputs=[("model", "MODEL"), ("fpe_source", "FPE_SOURCE")],
           outputs=[("model", "MODEL"), ("sweep_labels", "FPE_SWEEP_LABELS")],
           widgets=["official", base.custom_layers, 0.0, 0.8, "cond only", SWEEP], size=(340, 220), color=FPE_COLOR)
    g.node(8, "FPESweepLatent", (830, 880), inputs=[("latent", "LATENT"), ("sweep_labels", "FPE_SWEEP_LABELS")],
           outputs=[("latent", "LATENT")], size=(340, 60), color=FPE_COLOR)
    g.node(9, "KSampler", (1220, 560),
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT")],
           outputs=[("LATENT", "LATENT")], widgets=[42, "fixed", *sampling, 1.0],
           title="KSampler (target: 8 edits in one batch)", size=(380, 270))
    decode_node(g, 10, (1260, 40), "Decode source")
    decode_node(g, 11, (1680, 560), "Decode edits")
    g.node(12, "FPESweepGrid", (1680, 40), inputs=[("images", "IMAGE"), ("sweep_labels", "FPE_SWEEP_LABELS"),
                                                   ("source", "IMAGE")],
           outputs=[("image", "IMAGE")], size=(260, 80), color=FPE_COLOR)
    g.node(13, "SaveImage", (1980, 40), inputs=[("images", "IMAGE")], widgets=["FPE/sweep_grid"],
           title="Save the grid", size=(640, 420))
    g.node(14, "Note", (20, 480), widgets=[NOTE_SWEEP], size=(330, 420))
    g.link(1, 0, 6, "model")
    g.link(1, 0, 7, "model")
    for clip_user in (2, 3, 4):
        g.link(1, 1, clip_user, "clip")
    g.link(2, 0, 6, "positive")
    g.link(4, 0, 6, "negative")
    g.link(5, 0, 6, "latent_image")
    g.link(6, 1, 7, "fpe_source")
    g.link(5, 0, 8, "latent")
    g.link(7, 1, 8, "sweep_labels")
    g.link(7, 0, 9, "model")
    g.link(3, 0, 9, "positive")
    g.link(4, 0, 9, "negative")
    g.link(8, 0, 9, "latent_image")
    g.link(6, 0, 10, "samples")
    g.link(1, 2, 10, "vae")
    g.link(9, 0, 11, "samples")
    g.link(1, 2, 11, "vae")
    g.link(11, 0, 12, "images")
    g.link(7, 1, 12, "sweep_labels")
    g.link(10, 0, 12, "source")
    g.link(12, 0, 13, "images")
    return g.workflow()


NOTE_SWEEP = (
    "Settings sweep: which replace ratio (end) and which layers suit this edit? One "
    "source, and every combination of the Inject's sweep as one image of ONE batched target run.\n\n"
    "sweep 'layers=official,all; end=0.2,0.4,0.6,0.8': 2 x 4 = 8 images; the first setting named gives the grid's "
    "rows, the last its columns. Settings: start, end, layers (presets, or quoted block lists: layers=\"in4,in5\","
    "all). The capture must store what the sweep uses (here store_layers 'all', store_end 0.8).\n\n"
    "FPE Sweep Latent repeats the source's latent once per setting with the source's noise, so image k is exactly "
    "the edit with setting k. Keep seed, steps, sampler and scheduler the SAME on the capture and the KSampler.")


MAPS_SOURCE_PROMPT = "a photo of a white horse in the park"
MAPS_TARGET_PROMPT = "a photo of a black horse in the park"
MAPS_SOURCE_WORDS = "white, horse"  # the edited word, then a word both prompts share
MAPS_TARGET_WORDS = "black, horse"


def attention_maps() -> dict:
    """The generated edit with FPE Attention Record before each sampler (the source's capture, the edit's
    KSampler) and the pictures of both runs: word heatmaps (cross-attention) and the top self-attention
    components (the layout), as the paper's Figure 3; FPE Layer Overview shows the layers the Inject edits."""
    g = Graph()
    base = SD15
    step = base.prompt_size[1] + 50
    record_widgets = ["all", "", "official", "", 0.0, 1.0, "cond", 0]
    record_io = dict(inputs=[("model", "MODEL")],
                     outputs=[("model", "MODEL"), ("fpe_record", "FPE_ATTENTION_RECORD")])
    heatmap_io = dict(inputs=[("fpe_record", "FPE_ATTENTION_RECORD"), ("samples", "LATENT"), ("clip", "CLIP"),
                              ("image", "IMAGE")],
                      outputs=[("heatmaps", "IMAGE"), ("masks", "MASK")])
    components_io = dict(inputs=[("fpe_record", "FPE_ATTENTION_RECORD"), ("samples", "LATENT"), ("image", "IMAGE")],
                         outputs=[("components", "IMAGE")])
    checkpoint_node(g, base)
    generated_prompts(g, base, MAPS_SOURCE_PROMPT, MAPS_TARGET_PROMPT)
    # the source row (top): record -> capture -> decode -> pictures
    g.node(6, "FPEAttentionRecord", (830, 40), **record_io, widgets=record_widgets,
           title="FPE Attention Record (source)", size=(340, 270), color=FPE_COLOR)
    capture_node(g, base, 7, (1220, 40))
    decode_node(g, 8, (1610, 40), "Decode source")
    g.node(9, "FPEWordHeatmap", (2130, 40), **heatmap_io,
           widgets=[MAPS_SOURCE_PROMPT, MAPS_SOURCE_WORDS, "", 0.6],
           title="FPE Word Heatmap (source)", size=(440, 560), color=FPE_COLOR)
    g.node(10, "FPESelfAttnComponents", (2610, 40), **components_io, widgets=["", 6, "randomized", 0.6],
           title="FPE Self-Attn Components (source)", size=(540, 560), color=FPE_COLOR)
    # the edit row (below): inject -> record -> KSampler -> decode -> pictures
    inject_node(g, base, 11, (830, 660))
    g.node(12, "FPEAttentionRecord", (830, 900), **record_io, widgets=record_widgets,
           title="FPE Attention Record (edit)", size=(340, 270), color=FPE_COLOR)
    target_ksampler(g, base, 13, (1220, 660), (340, 270))
    decode_node(g, 14, (1610, 660), "Decode edit")
    g.node(15, "FPEWordHeatmap", (2130, 660), **heatmap_io,
           widgets=[MAPS_TARGET_PROMPT, MAPS_TARGET_WORDS, "", 0.6],
           title="FPE Word Heatmap (edit)", size=(440, 560), color=FPE_COLOR)
    g.node(16, "FPESelfAttnComponents", (2610, 660), **components_io, widgets=["", 6, "randomized", 0.6],
           title="FPE Self-Attn Components (edit)", size=(540, 560), color=FPE_COLOR)
    # source | edit, between the rows' decodes
    side_by_side_node(g, 17, (1610, 140))
    g.node(18, "SaveImage", (1610, 240), inputs=[("images", "IMAGE")], widgets=["FPE/attention_maps_side_by_side"],
           title="Save source | edit", size=(480, 300))
    g.node(19, "Note", (20, 460), widgets=[NOTE_ATTENTION_MAPS], size=(330, 440))
    # which layers the Inject edits (and Record's self_layers 'official' records) at this size; tall enough
    # for the table it shows
    g.node(20, "FPELayerOverview", (380, 40 + 4 * step), inputs=[("model", "MODEL"), ("latent", "LATENT")],
           outputs=[("image", "IMAGE"), ("text", "STRING")],
           widgets=[base.side, base.side, "official", OFFICIAL_LAYERS],
           size=(400, 430), color=FPE_COLOR)
    g.link(1, 0, 6, "model")
    g.link(1, 0, 11, "model")
    g.link(1, 0, 20, "model")
    g.link(5, 0, 20, "latent")  # the overview counts tokens at the sampled size
    for clip_user in (2, 3, 4, 9, 15):
        g.link(1, 1, clip_user, "clip")
    g.link(6, 0, 7, "model")
    g.link(2, 0, 7, "positive")
    g.link(4, 0, 7, "negative")
    g.link(5, 0, 7, "latent_image")
    g.link(7, 1, 11, "fpe_source")
    g.link(11, 0, 12, "model")
    g.link(12, 0, 13, "model")
    g.link(3, 0, 13, "positive")
    g.link(4, 0, 13, "negative")
    g.link(5, 0, 13, "latent_image")
    g.link(7, 0, 8, "samples")
    g.link(1, 2, 8, "vae")
    g.link(13, 0, 14, "samples")
    g.link(1, 2, 14, "vae")
    for picture, record, latent, decoded in ((9, 6, 7, 8), (10, 6, 7, 8), (15, 12, 13, 14), (16, 12, 13, 14)):
        g.link(record, 1, picture, "fpe_record")
        g.link(latent, 0, picture, "samples")
        g.link(decoded, 0, picture, "image")
    g.link(8, 0, 17, "image_a")
    g.link(14, 0, 17, "image_b")
    g.link(17, 0, 18, "images")
    return g.workflow()


NOTE_ATTENTION_MAPS = (
    "What the attention holds (paper §3, Figure 3), for the source and for its FPE edit.\n\n"
    "FPE Attention Record goes last before the sampler (after Self-Attn Inject); it does not change the picture. "
    "A picture node's samples must be the LATENT of the sampler that used that recording model.\n\n"
    "Word Heatmap (cross-attention): where each word looks. In the edit 'black' looks where 'white' looked: "
    "the word changes, the place stays.\n\n"
    "Self-Attn Components: the first components outline the object: the layout. In the layers the Inject "
    "edits (Layer Overview, 'official') the edit's stay the source's.\n\n"
    "Change the words and queue again: only the pictures are drawn again.")


# The local edit's scene: the demo model's world (two objects, the right one changes colour), so that the
# same graph runs on the pack's demo model (dev/make_local_edit_pictures.py draws it there) and on SD1.5.
LOCAL_SOURCE_PROMPT = "a blue circle and a yellow square on stone"
LOCAL_TARGET_PROMPT = "a blue circle and a red square on stone"
LOCAL_WORDS = "yellow, red"  # the changed object's word in each prompt
LOCAL_START = 0.2  # Prompt-to-Prompt's: the word maps settle first
LOCAL_THRESHOLD = 0.3  # LocalBlend's, for SD1.x (the demo model's flat maps need about 0.9)
LOCAL_IO = dict(inputs=[("model", "MODEL"), ("mask", "MASK"), ("clip", "CLIP")],
                outputs=[("model", "MODEL"), ("local_edit", "FPE_LOCAL_EDIT")])


def local_edit_widgets(*, start=0.0, grow=0, feather=0, words="", source_text="", target_text="",
                       threshold=LOCAL_THRESHOLD) -> list:
    """FPE Local Edit's widgets in the page's order; soft 'blend', composite off."""
    return [start, grow, feather, "blend", words, source_text, target_text, threshold, False]


def local_edit() -> dict:
    """The generated edit limited by words (LocalBlend): FPE Local Edit between the Inject and the target
    KSampler, FPE Local Mask showing the mask the run found, source | local edit saved side by side."""
    g = Graph()
    base = SD15
    checkpoint_node(g, base)
    generated_prompts(g, base, LOCAL_SOURCE_PROMPT, LOCAL_TARGET_PROMPT)
    capture_node(g, base, 6, (830, 40))
    inject_node(g, base, 7, (830, 510))
    g.node(8, "FPELocalEdit", (830, 750), **LOCAL_IO,
           widgets=local_edit_widgets(start=LOCAL_START, words=LOCAL_WORDS, source_text=LOCAL_SOURCE_PROMPT,
                                      target_text=LOCAL_TARGET_PROMPT),
           title="FPE Local Edit (words)", size=(340, 520), color=FPE_COLOR)
    target_ksampler(g, base, 9, (1220, 460), (380, 270))
    decode_node(g, 10, (1220, 40), "Decode source")
    decode_node(g, 11, (1680, 460), "Decode local edit")
    side_by_side_node(g, 12, (1680, 40))
    g.node(13, "SaveImage", (1980, 40), inputs=[("images", "IMAGE")], widgets=["FPE/local_side_by_side"],
           title="Save source | local edit", size=(420, 300))
    g.node(14, "SaveImage", (1980, 460), inputs=[("images", "IMAGE")], widgets=["FPE/local_edit"],
           title="Save local edit", size=(320, 280))
    g.node(15, "FPELocalMask", (1680, 560), inputs=[("local_edit", "FPE_LOCAL_EDIT"), ("samples", "LATENT")],
           outputs=[("mask", "MASK")], title="FPE Local Mask (the words' mask)", size=(260, 300),
           color=FPE_COLOR)
    g.node(16, "Note", (20, 480), widgets=[NOTE_LOCAL], size=(330, 520))
    g.link(1, 0, 6, "model")
    g.link(1, 0, 7, "model")
    for clip_user in (2, 3, 4, 8):
        g.link(1, 1, clip_user, "clip")
    g.link(2, 0, 6, "positive")
    g.link(4, 0, 6, "negative")
    g.link(5, 0, 6, "latent_image")
    g.link(6, 1, 7, "fpe_source")
    g.link(7, 0, 8, "model")
    g.link(8, 0, 9, "model")
    g.link(3, 0, 9, "positive")
    g.link(4, 0, 9, "negative")
    g.link(5, 0, 9, "latent_image")
    g.link(6, 0, 10, "samples")
    g.link(1, 2, 10, "vae")
    g.link(9, 0, 11, "samples")
    g.link(1, 2, 11, "vae")
    g.link(10, 0, 12, "image_a")
    g.link(11, 0, 12, "image_b")
    g.link(12, 0, 13, "images")
    g.link(11, 0, 14, "images")
    g.link(8, 1, 15, "local_edit")
    g.link(9, 0, 15, "samples")
    return g.workflow()


NOTE_LOCAL = (
    "Local edit by words (Prompt-to-Prompt's LocalBlend): FPE changes only where the words' cross-attention "
    "points, and everywhere else the target follows the source at every step: the blue circle and the ground "
    "stay the source's pixels, the square turns red.\n\n"
    "FPE Local Edit goes between FPE Self-Attn Inject and the target KSampler. words: the changed object's word "
    "in each prompt ('yellow' in the source, 'red' in the target). source_text and target_text must be the two "
    "prompts exactly as typed above: change them together with the prompts.\n\n"
    "start 0.2 (Prompt-to-Prompt's): the first steps run unmasked while the word maps settle. threshold 0.3: "
    "lower finds a larger region. FPE Local Mask shows the mask the run found.\n\n"
    "A painted MASK instead of words: connect it to FPE Local Edit's mask and clear words. Change only words, "
    "threshold or the mask and queue again: the source is cached.")


def real_image_local_edit() -> dict:
    """The DDIM-inversion real-image edit limited by a painted mask (Load Image (as Mask)): outside it the
    target follows the photo's inverted trajectory, so the background stays the photo's."""
    g = Graph()
    base = SD15
    step = base.prompt_size[1] + 50
    photo_nodes(g, base)
    prompt_node(g, base, 4, (380, 40), "", "Source prompt (empty, as the official code)")
    prompt_node(g, base, 5, (380, 40 + step), REAL_TARGET_PROMPT, "Target prompt (the edit)")
    prompt_node(g, base, 6, (380, 40 + 2 * step), "", "Negative prompt")
    g.node(7, "FPEDDIMInvert", (830, 40),
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT"),
                   ("negative", "CONDITIONING"), ("sigmas", "SIGMAS"), ("vae", "VAE")],
           outputs=[("inverted_latent", "LATENT"), ("fpe_source", "FPE_SOURCE"), ("report", "STRING")],
           widgets=[base.steps, "ddim_uniform", 1.0, 1.0, "official", base.custom_layers, 0.8, "cond", "auto",
                    base.precision, True, "off"],
           size=(360, 700), color=FPE_COLOR)
    inject_node(g, base, 8, (1230, 40))
    g.node(9, "FPELocalEdit", (1230, 280), **LOCAL_IO, widgets=local_edit_widgets(feather=2),
           title="FPE Local Edit (painted mask)", size=(340, 520), color=FPE_COLOR)
    g.node(10, "KSamplerAdvanced", (1230, 850),
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT")],
           outputs=[("LATENT", "LATENT")],
           widgets=["disable", 0, "fixed", base.steps, base.cfg, "ddim", "ddim_uniform", 0, 10000, "disable"],
           title="KSamplerAdvanced (target: ddim, no noise)", size=(380, 340))
    decode_node(g, 11, (1680, 400), "Decode edit")
    side_by_side_node(g, 12, (1680, 40))
    g.node(13, "SaveImage", (1980, 40), inputs=[("images", "IMAGE")], widgets=["FPE/real_local_side_by_side"],
           title="Save photo | edit", size=(420, 300))
    g.node(14, "SaveImage", (1980, 400), inputs=[("images", "IMAGE")], widgets=["FPE/real_local_edit"],
           title="Save edit", size=(320, 300))
    g.node(15, "LoadImageMask", (20, 880), outputs=[("MASK", "MASK")], widgets=[EXAMPLE_MASK, "red", "image"],
           title="Load the painted mask (white: edit)", size=(315, 360))
    g.node(16, "FPELocalMask", (1680, 760), inputs=[("local_edit", "FPE_LOCAL_EDIT"), ("samples", "LATENT")],
           outputs=[("mask", "MASK")], title="FPE Local Mask (the mask used)", size=(260, 300), color=FPE_COLOR)
    g.node(17, "Note", (380, 720), widgets=[NOTE_REAL_LOCAL], size=(400, 420))
    g.link(1, 0, 7, "model")
    g.link(1, 0, 8, "model")
    for clip_user in (4, 5, 6):
        g.link(1, 1, clip_user, "clip")
    g.link(2, 0, 3, "pixels")
    g.link(1, 2, 3, "vae")
    g.link(3, 0, 7, "latent")
    g.link(4, 0, 7, "positive")
    g.link(1, 2, 7, "vae")
    g.link(7, 1, 8, "fpe_source")
    g.link(8, 0, 9, "model")
    g.link(15, 0, 9, "mask")
    g.link(9, 0, 10, "model")
    g.link(5, 0, 10, "positive")
    g.link(6, 0, 10, "negative")
    g.link(7, 0, 10, "latent_image")
    g.link(10, 0, 11, "samples")
    g.link(1, 2, 11, "vae")
    g.link(2, 0, 12, "image_a")
    g.link(11, 0, 12, "image_b")
    g.link(12, 0, 13, "images")
    g.link(11, 0, 14, "images")
    g.link(9, 1, 16, "local_edit")
    g.link(10, 0, 16, "samples")
    return g.workflow()


EXAMPLE_MASK = "fpe_example_apple_mask.png"  # drawn by dev/make_example_image.py; copy it to ComfyUI/input too
NOTE_REAL_LOCAL = (
    "Local real-image edit: the photo is inverted and edited as in the real-image workflow, but only inside the "
    "painted mask. Outside it the target follows the photo's inverted trajectory at every step, so the wall and "
    "the table stay the photo's (DDIM Invert's trajectory ends on the photo's own latent).\n\n"
    "The mask: white = edit, black = keep, any size of the photo's shape. This example loads a painted file with "
    "Load Image (as Mask), channel red. Your own: paint on the photo in Load Image's mask editor and connect "
    "Load Image's MASK to FPE Local Edit's mask instead, or put a Set Latent Noise Mask on the inverted latent.\n\n"
    "feather 2 softens the edge over 2 latent pixels (16 px); grow widens the mask. Keep add_noise 'disable', "
    "sampler 'ddim' and the SAME steps and scheduler as DDIM Invert.\n\n"
    "Change only the mask or the target prompt and queue again: the inversion is cached.")



# ---- MMDiT models (Flux.1 dev, SD3.5 Medium): FPE MMDiT Inject; current ComfyUI only (no Flux/SD3 in early 2024)

@dataclass(frozen=True)
class DiT:
    """What differs between the Flux.1 dev and SD3.5 Medium workflows."""

    unet: str  # UNETLoader's file (models/diffusion_models)
    clip_loader: str  # DualCLIPLoader (type flux) or TripleCLIPLoader
    clip_widgets: tuple
    vae: str  # VAELoader's file (models/vae)
    steps: int
    cfg: float
    guidance: float | None  # Flux dev's distilled guidance (FluxGuidance); None: SD3.5 has none
    save_prefix: str
    clip_size: tuple[int, int] = (315, 130)


FLUX = DiT("flux1-dev.safetensors", "DualCLIPLoader", ("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"),
           "ae.safetensors", 28, 1.0, 3.5, "flux_")
# SD3.5 Medium as Stability's model card samples it: 40 steps, cfg 4.5 (the negative prompt used)
SD35 = DiT("sd3.5_medium.safetensors", "TripleCLIPLoader",
           ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"), "sd3.5_vae.safetensors", 40, 4.5,
           None, "sd35_", clip_size=(315, 130))
DIT_SIDE = 1024
DIT_SOURCE_PROMPT = "a photo of a cat sitting on a wooden bench"
DIT_TARGET_PROMPT = "a photo of a dog sitting on a wooden bench"
DIT_INJECT_WIDGETS = ["image map", "all", "double0-18", 0.0, 0.2, "cond only", ""]  # the node's defaults


def dit_loaders(g: Graph, dit: DiT) -> None:
    """Nodes 1-3: Load Diffusion Model, the text encoders' loader, Load VAE."""
    g.node(1, "UNETLoader", (20, 40), outputs=[("MODEL", "MODEL")], widgets=[dit.unet, "default"],
           title="Load Diffusion Model", size=(315, 82))
    g.node(2, dit.clip_loader, (20, 170), outputs=[("CLIP", "CLIP")], widgets=list(dit.clip_widgets),
           size=dit.clip_size)
    g.node(3, "VAELoader", (20, 350), outputs=[("VAE", "VAE")], widgets=[dit.vae], size=(315, 58))


def dit_prompt(g: Graph, node_id: int, pos, text: str, title: str) -> int:
    return g.node(node_id, "CLIPTextEncode", pos, inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], widgets=[text], title=title, size=(400, 130))


def flux_guidance(g: Graph, dit: DiT, node_id: int, pos, title: str) -> int:
    return g.node(node_id, "FluxGuidance", pos, inputs=[("conditioning", "CONDITIONING")],
                  outputs=[("CONDITIONING", "CONDITIONING")], widgets=[dit.guidance], title=title, size=(270, 58))


def mmdit_inject_node(g: Graph, node_id: int, pos) -> None:
    """FPE MMDiT Inject with its defaults: image map, all blocks, the first 20 % of the steps."""
    g.node(node_id, "FPEMMDiTInject", pos, inputs=[("model", "MODEL"), ("fpe_source", "FPE_SOURCE")],
           outputs=[("model", "MODEL"), ("sweep_labels", "FPE_SWEEP_LABELS")], widgets=DIT_INJECT_WIDGETS,
           size=(340, 240), color=FPE_COLOR)


def dit_generated_edit(dit: DiT) -> dict:
    """The generated edit on an MMDiT model: FPE Source Capture -> FPE MMDiT Inject -> KSampler, as the SD1.5
    one; Flux's prompts go through FluxGuidance (cfg 1: the negative is unused), SD3.5's straight in."""
    g = Graph()
    dit_loaders(g, dit)
    dit_prompt(g, 4, (380, 40), DIT_SOURCE_PROMPT, "Source prompt")
    dit_prompt(g, 5, (380, 220), DIT_TARGET_PROMPT, "Target prompt (the edit)")
    dit_prompt(g, 6, (380, 400), "", "Negative prompt (unused at cfg 1)" if dit.guidance else "Negative prompt")
    g.node(7, "EmptySD3LatentImage", (380, 580), outputs=[("LATENT", "LATENT")], widgets=[DIT_SIDE, DIT_SIDE, 1],
           size=(315, 106))
    x = 830
    source, target = 4, 5
    if dit.guidance is not None:
        flux_guidance(g, dit, 8, (830, 40), "FluxGuidance (source)")
        flux_guidance(g, dit, 9, (830, 220), "FluxGuidance (target)")
        source, target, x = 8, 9, 1140
    sampling = [dit.steps, dit.cfg, "euler", "simple"]
    g.node(10, "FPESourceCapture", (x, 40),
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT"), ("sigmas", "SIGMAS")],
           outputs=[("source_latent", "LATENT"), ("fpe_source", "FPE_SOURCE")],
           widgets=[42, "fixed", *sampling, 1.0, "official", OFFICIAL_LAYERS, 0.2, "cond", "auto", "exact", "off"],
           size=(340, 430), color=FPE_COLOR)
    mmdit_inject_node(g, 11, (x, 580))  # below the capture as the page draws it (taller than its size)
    g.node(12, "KSampler", (x + 390, 460),
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT")],
           outputs=[("LATENT", "LATENT")], widgets=[42, "fixed", *sampling, 1.0],
           title="KSampler (target: same seed, steps, sampler)", size=(380, 270))
    decode_node(g, 13, (x + 390, 40), "Decode source")
    decode_node(g, 14, (x + 850, 460), "Decode edit")
    side_by_side_node(g, 15, (x + 850, 40))
    g.node(16, "SaveImage", (x + 1150, 40), inputs=[("images", "IMAGE")],
           widgets=[f"FPE/{dit.save_prefix}side_by_side"], title="Save source | edit", size=(420, 300))
    g.node(17, "SaveImage", (x + 390, 140), inputs=[("images", "IMAGE")], widgets=[f"FPE/{dit.save_prefix}source"],
           title="Save source", size=(380, 270))
    g.node(18, "SaveImage", (x + 1150, 460), inputs=[("images", "IMAGE")], widgets=[f"FPE/{dit.save_prefix}edit"],
           title="Save edit", size=(320, 280))
    g.node(19, "Note", (20, 460), widgets=[NOTE_FLUX_GENERATED if dit.guidance else NOTE_SD35_GENERATED],
           size=(330, 520))
    g.link(1, 0, 10, "model")
    g.link(1, 0, 11, "model")
    for clip_user in (4, 5, 6):
        g.link(2, 0, clip_user, "clip")
    if dit.guidance is not None:
        g.link(4, 0, 8, "conditioning")
        g.link(5, 0, 9, "conditioning")
    g.link(source, 0, 10, "positive")
    g.link(6, 0, 10, "negative")
    g.link(7, 0, 10, "latent_image")
    g.link(10, 1, 11, "fpe_source")
    g.link(11, 0, 12, "model")
    g.link(target, 0, 12, "positive")
    g.link(6, 0, 12, "negative")
    g.link(7, 0, 12, "latent_image")
    g.link(10, 0, 13, "samples")
    g.link(3, 0, 13, "vae")
    g.link(12, 0, 14, "samples")
    g.link(3, 0, 14, "vae")
    g.link(13, 0, 15, "image_a")
    g.link(14, 0, 15, "image_b")
    g.link(15, 0, 16, "images")
    g.link(13, 0, 17, "images")
    g.link(14, 0, 18, "images")
    return g.workflow()


NOTE_FLUX_GENERATED = (
    "Free-Prompt-Editing on Flux.1 dev (FPE MMDiT Inject): the source prompt makes an image, the target prompt "
    "edits it while the layout stays. Needs a current ComfyUI.\n\n"
    "Files: flux1-dev.safetensors in models/diffusion_models, clip_l.safetensors and t5xxl_fp16.safetensors in "
    "models/text_encoders, ae.safetensors in models/vae.\n\n"
    "Both prompts go through FluxGuidance 3.5; cfg stays 1 (Flux dev is guidance-distilled), so the negative "
    "prompt is unused (FPE Source Capture needs one connected). Keep seed, steps, sampler and scheduler the SAME "
    "on the capture and the KSampler. The capture's store_layers, store_custom_layers and precision are for "
    "UNets: unused here. Its store_end 0.2 (the Inject's end) lets it keep a record of the source's image queries "
    "and keys where it fits (the fastest edits; 13 GB at 1024 px, else it replays the source).\n\n"
    "The Inject's defaults: 'image map' in every block over the first 20 % of the steps (end 0.2): flow models "
    "fix the layout early. Closer to the source: raise end (and the capture's store_end with it); stronger "
    "change: lower it.\n\n"
    "Change only the target prompt and queue again: the source is cached.")
NOTE_SD35_GENERATED = (
    "Free-Prompt-Editing on SD3.5 Medium (FPE MMDiT Inject): the source prompt makes an image, the target prompt "
    "edits it while the layout stays. Needs a current ComfyUI.\n\n"
    "Files: sd3.5_medium.safetensors in models/diffusion_models; clip_l.safetensors, clip_g.safetensors and "
    "t5xxl_fp16.safetensors in models/text_encoders; SD3.5's VAE (vae/diffusion_pytorch_model.safetensors of the "
    "model's repository) saved as sd3.5_vae.safetensors in models/vae.\n\n"
    "40 steps, cfg 4.5 (the model card's), euler / simple. Keep seed, steps, cfg, sampler and scheduler the SAME "
    "on the capture and the KSampler. The capture's store_layers, store_custom_layers and precision are for UNets: "
    "unused here. Its store_end 0.2 (the Inject's end) lets it keep a record of the source's image queries and "
    "keys where it fits (the fastest edits).\n\n"
    "The Inject's defaults: 'image map' in every joint block (SD3.5 Medium's image self-attention blocks take "
    "the UNet operation) over the first 20 % of the steps (end 0.2). Closer to the source: raise end (and the "
    "capture's store_end with it); stronger change: lower it.\n\n"
    "Change only the target prompt and queue again: the source is cached.")


def flux_real_image_edit() -> dict:
    """A photo edited on Flux.1 dev: VAE Encode -> FPE Flow Invert (reverse Euler with the source prompt) ->
    FPE MMDiT Inject -> SamplerCustomAdvanced from the inverted noise over the inversion's sigmas."""
    dit = FLUX
    g = Graph()
    dit_loaders(g, dit)
    g.node(4, "LoadImage", (20, 460), outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], widgets=[EXAMPLE_IMAGE, "image"],
           title="Load the photo to edit", size=(315, 360))
    dit_prompt(g, 5, (380, 40), REAL_SOURCE_PROMPT, "Source prompt (describes the photo)")
    dit_prompt(g, 6, (380, 220), REAL_TARGET_PROMPT, "Target prompt (the edit)")
    g.node(7, "VAEEncode", (380, 400), inputs=[("pixels", "IMAGE"), ("vae", "VAE")], outputs=[("LATENT", "LATENT")],
           size=(210, 50))
    flux_guidance(g, dit, 8, (830, 40), "FluxGuidance (source)")
    flux_guidance(g, dit, 9, (830, 220), "FluxGuidance (target)")
    g.node(10, "FPEFlowInvert", (1140, 40),
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT"),
                   ("negative", "CONDITIONING"), ("sigmas", "SIGMAS"), ("vae", "VAE")],
           outputs=[("inverted_noise", "NOISE"), ("fpe_source", "FPE_SOURCE"), ("sigmas", "SIGMAS"),
                    ("report", "STRING")],
           widgets=[dit.steps, "simple", 1.0, 0.2, "auto", "cond", True], size=(360, 560), color=FPE_COLOR)
    mmdit_inject_node(g, 11, (1540, 40))
    g.node(12, "BasicGuider", (1540, 330), inputs=[("model", "MODEL"), ("conditioning", "CONDITIONING")],
           outputs=[("GUIDER", "GUIDER")], title="BasicGuider (target prompt)", size=(270, 50))
    g.node(13, "KSamplerSelect", (1540, 430), outputs=[("SAMPLER", "SAMPLER")], widgets=["euler"], size=(315, 60))
    g.node(14, "SamplerCustomAdvanced", (1540, 540),
           inputs=[("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                   ("latent_image", "LATENT")],
           outputs=[("output", "LATENT"), ("denoised_output", "LATENT")],
           title="SamplerCustomAdvanced (target: inverted noise, same sigmas)", size=(380, 130))
    decode_node(g, 15, (1980, 400), "Decode edit")
    side_by_side_node(g, 16, (1980, 40))
    g.node(17, "SaveImage", (2280, 40), inputs=[("images", "IMAGE")], widgets=["FPE/flux_real_side_by_side"],
           title="Save photo | edit", size=(420, 300))
    g.node(18, "SaveImage", (2280, 400), inputs=[("images", "IMAGE")], widgets=["FPE/flux_real_edit"],
           title="Save edit", size=(320, 300))
    g.node(19, "Note", (380, 720), widgets=[NOTE_FLUX_REAL], size=(400, 460))
    g.link(1, 0, 10, "model")
    g.link(1, 0, 11, "model")
    for clip_user in (5, 6):
        g.link(2, 0, clip_user, "clip")
    g.link(4, 0, 7, "pixels")
    g.link(3, 0, 7, "vae")
    g.link(5, 0, 8, "conditioning")
    g.link(6, 0, 9, "conditioning")
    g.link(8, 0, 10, "positive")
    g.link(7, 0, 10, "latent")
    g.link(3, 0, 10, "vae")
    g.link(10, 1, 11, "fpe_source")
    g.link(11, 0, 12, "model")
    g.link(9, 0, 12, "conditioning")
    g.link(10, 0, 14, "noise")
    g.link(12, 0, 14, "guider")
    g.link(13, 0, 14, "sampler")
    g.link(10, 2, 14, "sigmas")
    g.link(7, 0, 14, "latent_image")
    g.link(14, 0, 15, "samples")
    g.link(3, 0, 15, "vae")
    g.link(4, 0, 16, "image_a")
    g.link(15, 0, 16, "image_b")
    g.link(16, 0, 17, "images")
    g.link(15, 0, 18, "images")
    return g.workflow()


NOTE_FLUX_REAL = (
    "Real-photo editing on Flux.1 dev: FPE Flow Invert runs the flow backwards (reverse Euler) from the photo to "
    "noise with a source prompt that describes the photo, and keeps what the edit needs; SamplerCustomAdvanced "
    "then samples that noise forward with the target prompt while FPE MMDiT Inject keeps the photo's layout. "
    "Needs a current ComfyUI; files as in fpe_flux_generated_edit.\n\n"
    "Load your photo (drag it onto Load Image; sides a multiple of 16). SamplerCustomAdvanced must take Flow "
    "Invert's inverted_noise and sigmas, sampler euler, and the photo's latent.\n\n"
    "Flow Invert's preview shows the photo beside its reconstruction from the inverted noise, with the error: "
    "below ~20 dB use more steps or a source prompt closer to the photo. Its store_end 0.2 (the Inject's end) "
    "lets it keep a record of the photo's image queries and keys where it fits; raise both to edit later "
    "steps.\n\n"
    "Change only the target prompt and queue again: the inversion is cached.")


WORKFLOWS = {
    "fpe_generated_edit.json": generated_edit,
    "fpe_generated_edit_official_schedule.json": lambda: generated_edit(official_schedule=True),
    "fpe_real_image_edit.json": real_image_edit,
    "fpe_sdxl_generated_edit.json": lambda: generated_edit(base=SDXL),
    "fpe_sdxl_real_image_edit.json": lambda: real_image_edit(base=SDXL),
    "fpe_settings_sweep.json": settings_sweep,
    "fpe_real_image_edit_nulltext.json": lambda: real_image_edit(nulltext=True),
    "fpe_attention_maps.json": attention_maps,
    "fpe_local_edit.json": local_edit,
    "fpe_real_image_local_edit.json": real_image_local_edit,
    "fpe_flux_generated_edit.json": lambda: dit_generated_edit(FLUX),
    "fpe_sd35_generated_edit.json": lambda: dit_generated_edit(SD35),
    "fpe_flux_real_image_edit.json": flux_real_image_edit,
}


def main() -> None:
    for name, build in WORKFLOWS.items():
        path = REPO / "workflows" / name
        path.write_text(json.dumps(build(), indent=2) + "\n")
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
