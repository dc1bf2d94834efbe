"""FPE Sweep Latent and FPE Sweep Grid: the target batch of a settings sweep, and its labelled grid."""

from __future__ import annotations

from ..fpe_attention.errors import FPEError
from ..fpe_attention.sweep import draw_grid, read_labels, sweep_latent
from ..fpe_attention.validate import check_latent
from .common import COMPARE
from .images import _rgb

_LABELS_TOOLTIP = "The sweep_labels output of the FPE Self-Attn Inject whose model samples these images."


class FPESweepLatent:
    DISPLAY_NAME = "FPE Sweep Latent"
    CATEGORY = COMPARE
    FUNCTION = "repeat"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("One copy of the latent per sweep setting, each drawing the noise a batch of 1 gets from the "
                       "seed: connect it to the target sampler's latent_image.",)
    DESCRIPTION = ("The target latent of a settings sweep: the source's latent repeated once per setting, every copy "
                   "with the source's noise, so image k is exactly the edit with setting k.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "latent": ("LATENT", {"tooltip": "The latent the source was made from (Empty Latent Image with "
                                                 "batch_size 1, or FPE DDIM Invert's inverted latent)."}),
                "sweep_labels": ("FPE_SWEEP_LABELS", {"tooltip": _LABELS_TOOLTIP}),
            },
        }

    def repeat(self, latent, sweep_labels):
        if not isinstance(latent, dict) or "samples" not in latent:
            raise FPEError("latent: connect a LATENT (e.g. Empty Latent Image)")
        check_latent(latent["samples"], "latent")
        rows, columns = read_labels(sweep_labels)
        return (sweep_latent(latent, len(rows) * len(columns)),)


class FPESweepGrid:
    DISPLAY_NAME = "FPE Sweep Grid"
    CATEGORY = COMPARE
    FUNCTION = "grid"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("One image: the sweep's images in rows and columns with their settings as titles (the source "
                       "first, if connected).",)
    DESCRIPTION = "Lays out a settings sweep's images as a titled grid (rows: the first settings, columns: the last)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The decoded images of the sampler that used the Inject's model, one "
                                                "per setting, in batch order."}),
                "sweep_labels": ("FPE_SWEEP_LABELS", {"tooltip": _LABELS_TOOLTIP}),
            },
            "optional": {
                "source": ("IMAGE", {"tooltip": "The decoded source image, shown as an extra first column titled "
                                                "'source' (the first image of a batch)."}),
            },
        }

    def grid(self, images, sweep_labels, source=None):
        images = _rgb(images, "images")
        rows, columns = read_labels(sweep_labels)
        if source is not None:
            source = _rgb(source, "source").to(images.device)
        return (draw_grid(images, rows, columns, source),)
