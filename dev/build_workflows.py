"""Write the shipped example workflows (UI format) from compact descriptions.

    python dev/build_workflows.py        # rewrites workflows/*.json

Each node lists its linked inputs and outputs with their types and its widget values in the
order the web UI stores them (a seed widget is followed by its "control after generate" value).
The test suite converts and runs every shipped file through ComfyUI's executor.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_LAYERS = "in4,in5,in7,in8,mid0,out3-8"
SOURCE_PROMPT = "a photo of green ducks walking on street"
TARGET_PROMPT = "a photo of rubber ducks walking on street"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"


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


def generated_edit(official_schedule: bool = False) -> dict:
    """The official example edit; with ``official_schedule`` over the authors' exact DDIM timesteps
    (980 ... 20, 0) through FPE Official DDIM Sigmas and SamplerCustom."""
    g = Graph()
    g.node(1, "CheckpointLoaderSimple", (20, 300), outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
           widgets=[CHECKPOINT], size=(315, 100))
    g.node(2, "CLIPTextEncode", (380, 60), inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
           widgets=[SOURCE_PROMPT], title="Source prompt", size=(400, 110))
    g.node(3, "CLIPTextEncode", (380, 210), inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
           widgets=[TARGET_PROMPT], title="Target prompt (the edit)", size=(400, 110))
    g.node(4, "CLIPTextEncode", (380, 360), inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
           widgets=[""], title="Negative prompt", size=(400, 110))
    g.node(5, "EmptyLatentImage", (380, 510), outputs=[("LATENT", "LATENT")], widgets=[512, 512, 1], size=(315, 106))
    capture_title = "FPE Source Capture (steps/scheduler/denoise come from sigmas)" if official_schedule else None
    g.node(6, "FPESourceCapture", (830, 40),
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT"), ("sigmas", "SIGMAS")],
           outputs=[("source_latent", "LATENT"), ("fpe_source", "FPE_SOURCE")],
           widgets=[42, "fixed", 50, 7.5, "ddim", "ddim_uniform", 1.0, "official", OFFICIAL_LAYERS, 0.8, "cond",
                    "auto", "exact"],
           title=capture_title, size=(340, 430), color=FPE_COLOR)
    g.node(7, "FPESelfAttnInject", (830, 510), inputs=[("model", "MODEL"), ("fpe_source", "FPE_SOURCE")],
           outputs=[("model", "MODEL")], widgets=["official", OFFICIAL_LAYERS, 0.0, 0.8, "cond only"],
           size=(340, 190), color=FPE_COLOR)
    if official_schedule:
        g.node(16, "FPEOfficialDDIMSigmas", (380, 660), inputs=[("model", "MODEL")], outputs=[("sigmas", "SIGMAS")],
               widgets=[50], size=(315, 60), color=FPE_COLOR)
        g.node(17, "KSamplerSelect", (380, 760), outputs=[("SAMPLER", "SAMPLER")], widgets=["ddim"], size=(315, 60))
        g.node(8, "SamplerCustom", (1220, 420),
               inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
               outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], widgets=[True, 42, "fixed", 7.5],
               title="SamplerCustom (target: same seed and sigmas)", size=(340, 230))
    else:
        g.node(8, "KSampler", (1220, 420),
               inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("latent_image", "LATENT")],
               outputs=[("LATENT", "LATENT")], widgets=[42, "fixed", 50, 7.5, "ddim", "ddim_uniform", 1.0],
               title="KSampler (target: same seed, steps, sampler, scheduler)", size=(340, 270))
    g.node(9, "VAEDecode", (1220, 40), inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")],
           title="Decode source", size=(210, 50))
    g.node(10, "VAEDecode", (1600, 420), inputs=[("samples", "LATENT"), ("vae", "VAE")],
           outputs=[("IMAGE", "IMAGE")], title="Decode edit", size=(210, 50))
    g.node(11, "FPESideBySide", (1600, 40), inputs=[("image_a", "IMAGE"), ("image_b", "IMAGE")],
           outputs=[("image", "IMAGE")], size=(260, 50), color=FPE_COLOR)
    g.node(12, "SaveImage", (1900, 40), inputs=[("images", "IMAGE")], widgets=["FPE/side_by_side"],
           title="Save source | edit", size=(420, 300))
    g.node(13, "SaveImage", (1220, 140), inputs=[("images", "IMAGE")], widgets=["FPE/source"],
           title="Save source", size=(320, 250))
    g.node(14, "SaveImage", (1900, 420), inputs=[("images", "IMAGE")], widgets=["FPE/edit"],
           title="Save edit", size=(320, 280))
    note = NOTE_OFFICIAL_SCHEDULE if official_schedule else NOTE_GENERATED
    g.node(15, "Note", (20, 480), widgets=[note], size=(330, 300))
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


WORKFLOWS = {
    "fpe_generated_edit.json": generated_edit,
    "fpe_generated_edit_official_schedule.json": lambda: generated_edit(official_schedule=True),
}


def main() -> None:
    for name, build in WORKFLOWS.items():
        path = REPO / "workflows" / name
        path.write_text(json.dumps(build(), indent=2) + "\n")
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
