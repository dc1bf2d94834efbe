"""Pictures of a recorded run: word heatmaps, self-attention components, where a point attends."""

from __future__ import annotations

import torch

from ..fpe_attention import notify
from ..fpe_attention.attention_maps import (
    check_text,
    chosen_layers,
    layer_names,
    self_groups,
    text_differs,
    word_items,
    word_maps,
)
from ..fpe_attention.drawing import captioned
from ..fpe_attention.errors import FPEError
from ..fpe_attention.heatmaps import check_picture, colormap, mark_point, normalise, overlay, to_image_size
from ..fpe_attention.prompt_words import prompt_tokens
from ..fpe_attention.structure import (
    MAX_COMPONENTS,
    METHODS,
    check_count,
    component_grid,
    query_attention,
    top_components,
)
from ..fpe_attention.validate import check_number
from .common import ATTENTION_MAPS
from .images import finite_pixels
from .preview import preview_ui

RECORD = ("FPE_ATTENTION_RECORD", {"tooltip": "From FPE Attention Record (whose model the sampler used)."})
SAMPLES = ("LATENT", {"tooltip": "The output latent of the sampler that used the recording model (for FPE DDIM "
                                 "Invert: its inverted_latent). It picks the run to show and makes this node run "
                                 "after sampling."})
LAYERS = ("STRING", {"default": "", "multiline": False,
                     "tooltip": "Recorded layers to use, as a block list (in4,in5,mid0,out3-8 · in7.0-4 · #4-14); "
                                "empty: every recorded layer."})
CLIP = ("CLIP", {"tooltip": "The CLIP model that encoded the prompt; its tokenizer finds the words' tokens "
                            "(multi-token words, (word:1.2) weights, SDXL's two encoders)."})
TEXT = ("STRING", {"default": "", "multiline": True,
                   "tooltip": "The recorded prompt exactly as it was encoded (the positive prompt for rows 'cond', "
                              "the negative for 'uncond')."})
ALPHA = ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                   "tooltip": "Opacity of the heatmap over the image (0: the image only, 1: the heatmap only)."})
IMAGE = ("IMAGE", {"tooltip": "Optional: the decoded picture to draw on (VAE Decode of the same latent). Without "
                              "it the maps are drawn on grey at the latent's size x 8."})
MAX_WORDS = 64  # one heatmap each: more is a pasted list, not words to compare
_SMALLER = "connect a smaller image (e.g. Upscale Image By 0.5 of the decoded one)"


def _canvas(run, image, what: str) -> tuple[torch.Tensor, int, int]:
    """The background [H, W, 3] the maps are drawn on: the recorded image's picture, or grey."""
    h, w = run.latent_hw
    if image is None:
        check_picture("samples", 1, h * 8, w * 8, "connect a smaller image to draw on (image)")
        return torch.full((h * 8, w * 8, 3), 0.25), h * 8, w * 8
    if image.ndim != 4 or image.shape[-1] != 3:
        raise FPEError(f"image: expected an IMAGE (batch, height, width, 3), got shape {tuple(image.shape)}")
    height, width = int(image.shape[1]), int(image.shape[2])
    check_picture("image", 1, height, width, _SMALLER)
    if not finite_pixels(image):
        raise FPEError("image: the picture holds NaN or infinite pixels (a VAE decode of a broken latent?): connect "
                       "the decoded picture of the recorded sampler, or leave image unconnected to draw on grey")
    if abs(height / width - h / w) > 0.02 * (h / w):
        raise FPEError(f"image: it is {width}x{height} px but the recorded latent is {w * 8}x{h * 8}: connect the "
                       f"decoded picture of the sampler whose {what} you are looking at")
    b = run.settings.image if image.shape[0] > run.settings.image else 0
    return image[b].float().cpu(), height, width


def _self_attention(record, samples, layers, alpha, image):
    """What the self-attention pictures start from: (alpha, run, its chosen layers, canvas, height, width)."""
    alpha = check_number("alpha", alpha, 0.0, 1.0)
    run = record.run_for(samples["samples"])
    keys = chosen_layers(record, run, "self", layers, "layers")
    return (alpha, run, keys, *_canvas(run, image, "self-attention"))


def _notes(record, run) -> str:
    """What the record could not show as asked, on the page as well as in the caption."""
    notes = [f"{reason} ({count} calls)" for reason, count in run.skipped.items()]
    if record.replaced:
        notes.append(f"another node replaces the attention ({', '.join(record.replaced)}): the maps are the "
                     f"layers' own softmax, not what that node computed")
    if not notes:
        return ""
    text = "; ".join(notes)
    notify.warn("attention record", f"{run.describe()}: {text}")
    return f" · {text}"


class FPEWordHeatmap:
    DISPLAY_NAME = "FPE Word Heatmap"
    CATEGORY = ATTENTION_MAPS
    FUNCTION = "draw"
    OUTPUT_NODE = True  # shows its pictures even with nothing connected
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("heatmaps", "masks")
    OUTPUT_TOOLTIPS = ("One picture per word: its cross-attention heatmap over the image.",
                       "One mask per word: the heatmap scaled to 0..1 (e.g. for masked edits or compositing).")
    DESCRIPTION = ("Where each word of the prompt looks (paper Figure 3, top): the cross-attention maps of the word's "
                   "tokens, averaged over the recorded steps and the chosen layers, upsampled to the image. The "
                   "paper's finding: these maps carry the word's meaning (a probe can tell colours and animals "
                   "apart from them), which is why replacing them leaks the source's category into an edit.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "fpe_record": RECORD,
                "samples": SAMPLES,
                "clip": CLIP,
                "text": TEXT,
                "words": ("STRING", {"default": "", "multiline": False,
                                     "tooltip": "Words of the prompt, comma separated: one heatmap each. 'red car' "
                                                "(two words in one item) sums both words' attention."}),
                "layers": LAYERS,
                "alpha": ALPHA,
            },
            "optional": {"image": IMAGE},
        }

    def draw(self, fpe_record, samples, clip, text, words, layers, alpha, image=None):
        alpha = check_number("alpha", alpha, 0.0, 1.0)
        run = fpe_record.run_for(samples["samples"])
        tokens = prompt_tokens(clip, text)
        check_text(run, tokens)
        mismatch = ""
        if text_differs(run, clip.encode_from_tokens(clip.tokenize(text))):
            mismatch = " · TEXT DIFFERS FROM THE RECORDED PROMPT"
            notify.warn("word heatmap", "the text does not encode to the prompt the recorded sampler used, so the "
                                        "words' places may be another prompt's: paste the prompt exactly as encoded "
                                        "(custom prompt nodes with their own weighting also trigger this)")
        items = word_items(tokens, words)
        if len(items) > MAX_WORDS:
            raise FPEError(f"words: {len(items)} items (at most {MAX_WORDS} heatmaps in one node): name fewer words, "
                           "or split them over several FPE Word Heatmap nodes")
        keys = chosen_layers(fpe_record, run, "cross", layers, "layers")
        canvas, height, width = _canvas(run, image, "heatmaps")
        check_picture("image", len(items), height, width, f"name fewer words, or {_SMALLER}")
        heat = normalise(to_image_size(word_maps(run, keys, items), height, width))
        pictures = overlay(canvas, heat, alpha)
        notes = _notes(fpe_record, run)
        shown = torch.cat([captioned(pictures[i:i + 1],
                                     f"'{label}' · {run.describe()} · {len(keys)} layers{notes}{mismatch}")
                           for i, (label, _) in enumerate(items)])
        return {"ui": preview_ui(shown, "fpe_word_heatmap"), "result": (pictures, heat)}


class FPESelfAttnComponents:
    DISPLAY_NAME = "FPE Self-Attn Components"
    CATEGORY = ATTENTION_MAPS
    FUNCTION = "draw"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("components",)
    OUTPUT_TOOLTIPS = ("The top components of the self-attention map, one picture each, for each token grid of the "
                       "chosen layers (finest first).",)
    DESCRIPTION = ("What the self-attention maps hold (paper Figure 3, bottom): the top-k SVD components of the "
                   "recorded self-attention map (averaged over heads, steps and the chosen layers of one resolution), "
                   "each drawn over the image grid. The first ones outline the objects: self-attention carries layout "
                   "and shape, which is why FPE replaces it to keep the source's structure.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "fpe_record": RECORD,
                "samples": SAMPLES,
                "layers": LAYERS,
                "components": ("INT", {"default": 6, "min": 1, "max": MAX_COMPONENTS,
                                       "tooltip": "How many components per resolution (the paper shows the top 6)."}),
                "method": (list(METHODS), {
                    "default": "randomized",
                    "tooltip": "'randomized': a seeded randomized SVD, O(N²k) (0.5 s at 64x64 tokens on a CPU). "
                               "'full': the exact SVD, O(N³) (about 20 s at 64x64 tokens on a CPU)."}),
            },
            "optional": {"image": IMAGE, "alpha": ALPHA},
        }

    def draw(self, fpe_record, samples, layers, components, method, image=None, alpha=0.6):
        components = check_count("components", components, 1, MAX_COMPONENTS)  # a linked INT skips the widget's max
        alpha, run, keys, canvas, height, width = _self_attention(fpe_record, samples, layers, alpha, image)
        grids = {run.grids[key] for key in keys}
        count = sum(min(components, h * w) for h, w in grids)
        check_picture("image", count, height, width, f"set fewer components, choose fewer layers, or {_SMALLER}")
        pictures, captions = [], []
        for grid, mean, group in self_groups(run, keys):
            k = min(int(components), grid[0] * grid[1])
            found = top_components(mean, k, method)
            maps = to_image_size(component_grid(found, grid), height, width)
            drawn = overlay(canvas, maps, alpha) if image is not None else colormap(maps)
            for i in range(k):
                pictures.append(drawn[i:i + 1])
                captions.append(f"{grid[1]}x{grid[0]} tokens · component {i + 1} "
                                f"({100 * float(found.explained[i]):.0f}%) · {layer_names(group)}")
        notes = _notes(fpe_record, run)
        out = torch.cat(pictures)
        shown = torch.cat([captioned(p, f"{c} · {run.describe()}{notes}") for p, c in zip(pictures, captions, strict=True)])
        return {"ui": preview_ui(shown, "fpe_self_attn_components"), "result": (out,)}


class FPEAttentionQuery:
    DISPLAY_NAME = "FPE Attention Query"
    CATEGORY = ATTENTION_MAPS
    FUNCTION = "draw"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("heatmap", "mask")
    OUTPUT_TOOLTIPS = ("Where the chosen point (or region) of the image attends, over the image, point marked.",
                       "The same map scaled to 0..1.")
    DESCRIPTION = ("Where one point of the image looks in self-attention: the recorded self-attention rows of the "
                   "query tokens at (x, y) (or within radius), averaged over the chosen layers (each upsampled to "
                   "the image). A point on an object usually attends to the whole object: the structure FPE keeps.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "fpe_record": RECORD,
                "samples": SAMPLES,
                "x": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Horizontal position of the query point, as a fraction of the width "
                                           "(0 left, 1 right)."}),
                "y": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Vertical position of the query point, as a fraction of the height "
                                           "(0 top, 1 bottom)."}),
                "radius": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "Query region around the point, as a fraction of the shorter side "
                                                "(0: the single token under the point)."}),
                "layers": LAYERS,
                "alpha": ALPHA,
            },
            "optional": {"image": IMAGE},
        }

    def draw(self, fpe_record, samples, x, y, radius, layers, alpha, image=None):
        alpha, run, keys, canvas, height, width = _self_attention(fpe_record, samples, layers, alpha, image)
        total = torch.zeros((1, height, width))
        for grid, mean, group in self_groups(run, keys):
            found = query_attention(mean, grid, x, y, radius)
            total += to_image_size(found.map, height, width) * len(group)
        heat = normalise(total / len(keys))
        picture = mark_point(overlay(canvas, heat, alpha)[0], x, y, region=radius)[None]
        caption = f"query ({x:.2f}, {y:.2f}) r {radius:.2f} · {run.describe()} · {len(keys)} layers{_notes(fpe_record, run)}"
        return {"ui": preview_ui(captioned(picture, caption), "fpe_attention_query"), "result": (picture, heat)}
