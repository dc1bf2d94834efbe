"""FPE Local Edit and FPE Local Mask: limit an FPE edit to a region (a mask, or words' attention)."""

from __future__ import annotations

from ..fpe_attention.local_edit import SOFT, local_edit_model, output_mask
from .common import EDIT
from .preview import preview_ui


class FPELocalEdit:
    DISPLAY_NAME = "FPE Local Edit"
    CATEGORY = EDIT
    FUNCTION = "limit"
    RETURN_TYPES = ("MODEL", "FPE_LOCAL_EDIT")
    RETURN_NAMES = ("model", "local_edit")
    OUTPUT_TOOLTIPS = (
        "The edit, acting only inside the mask: outside it the target follows the source at every step (a generated "
        "source bit for bit; a real photo's inverted trajectory). Sample the target with it as with the Inject's model.",
        "For FPE Local Mask, with the target sampler's LATENT: shows (and outputs) the mask the run used.")
    DESCRIPTION = (
        "Limits FPE Self-Attn Inject's edit to a region. Outside the mask the target's model input and denoised "
        "output are the source's at every step, inside they are the edit's (Prompt-to-Prompt's LocalBlend, for any "
        "sampler). The region: a MASK (painted, any size, soft values allowed), or words whose cross-attention "
        "finds it as sampling goes (LocalBlend), or both (the words' mask inside the MASK). On a real photo a Set "
        "Latent Noise Mask on the target latent works too. Changing only these settings re-runs no source.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model output of FPE Self-Attn Inject (or FPE Attention Replace)."}),
                "start": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "First step with the blend, as a fraction of the steps (int(steps*start)). 0: the "
                               "background is the source from the first step. With words, Prompt-to-Prompt starts at "
                               "0.2, once the word maps have settled."}),
                "grow": ("INT", {
                    "default": 0, "min": -64, "max": 64,
                    "tooltip": "Grow (positive) or shrink (negative) the mask by this many latent pixels (8 image "
                               "pixels each), before feathering."}),
                "feather": ("INT", {
                    "default": 0, "min": 0, "max": 64,
                    "tooltip": "Soften the mask's edge over this many latent pixels (a Gaussian), so the edit fades "
                               "into the background. 0: a hard edge."}),
                "soft": (list(SOFT), {
                    "default": "blend",
                    "tooltip": "How values between 0 and 1 act. 'blend': a pixel of 0.3 is 30 % edit, 70 % source "
                               "at every step. 'thresholds' (as Differential Diffusion): a pixel joins the edit once "
                               "the denoising is past its value (0.3: the last 30 %), so soft edges change less."}),
                "words": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Words whose cross-attention makes the mask (LocalBlend), e.g. 'cat, dog': each word "
                               "is looked up in source_text and target_text; the source words' mask and the target "
                               "words' mask are joined. Empty: the MASK alone. Needs clip."}),
                "source_text": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": "The source prompt exactly as encoded for the capture (checked), for the words."}),
                "target_text": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": "The target prompt exactly as encoded for the target sampler (checked), for the words."}),
                "threshold": ("FLOAT", {
                    "default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "Word masks: a pixel is in the mask where the words' attention, max-pooled and "
                               "divided by its peak, exceeds this (LocalBlend: 0.3). Lower: a larger region."}),
                "composite": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Real photos: at the last step put the photo's own latent outside the mask instead of "
                               "the source branch's (null-text: its reconstruction). A truer background, but the "
                               "model never saw it next to the edit, so a seam may show at the mask's edge. DDIM "
                               "Invert's background already ends on the photo's latent."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Where to edit (1) and where to keep the source (0); any resolution of "
                                             "the image's aspect; one mask, or one per target image."}),
                "clip": ("CLIP", {"tooltip": "The CLIP that encoded the prompts: finds the words' tokens."}),
            },
        }

    def limit(self, model, start, grow, feather, soft, words, source_text, target_text, threshold, composite,
              mask=None, clip=None):
        patched, settings = local_edit_model(model, mask=mask, clip=clip, source_text=source_text,
                                             target_text=target_text, words=words, threshold=threshold, start=start,
                                             grow=grow, feather=feather, soft=soft, composite=composite)
        return (patched, settings)


class FPELocalMask:
    DISPLAY_NAME = "FPE Local Mask"
    CATEGORY = EDIT
    FUNCTION = "show"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("The mask the local edit used at its last step, at the image's size (1 = edited): reuse it, "
                       "e.g. for ImageCompositeMasked.",)
    DESCRIPTION = ("Shows the mask of a local edit run: for words, the LocalBlend mask found while sampling; for a "
                   "MASK, the mask after grow and feather, at the image's size.")
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "local_edit": ("FPE_LOCAL_EDIT", {"tooltip": "The local_edit output of FPE Local Edit."}),
                "samples": ("LATENT", {"tooltip": "The LATENT of the sampler that used FPE Local Edit's model: tells "
                                                  "which run's mask to show."}),
            },
        }

    def show(self, local_edit, samples):
        mask = output_mask(local_edit, samples["samples"])
        picture = mask[..., None].expand(-1, -1, -1, 3).contiguous()
        return {"ui": preview_ui(picture, "fpe_local_mask"), "result": (mask,)}
