"""FPE Official DDIM Sigmas: the authors' DDIM timesteps (980 ... 20, 0) as a SIGMAS list."""

from __future__ import annotations

from ..fpe_attention.errors import FPEError
from ..fpe_attention.host_versions import model_sampling_of
from ..fpe_attention.schedule import official_ddim_sigmas
from .common import EDIT


class FPEOfficialDDIMSigmas:
    DISPLAY_NAME = "FPE Official DDIM Sigmas"
    CATEGORY = EDIT
    FUNCTION = "sigmas"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("steps + 1 sigmas: sigma(980), ..., sigma(20), sigma(0), sigma(0). Use with the ddim (or "
                       "euler) sampler in FPE Source Capture's sigmas input and in SamplerCustom.",)
    DESCRIPTION = ("The official FPE notebooks' DDIM schedule (timesteps 1000//steps apart from 0, ending at "
                   "alpha_bar_0), for exact reproduction. ComfyUI's ddim_uniform (981 ... 1, then 0) differs slightly.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model whose noise schedule converts timesteps to sigmas."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                                  "tooltip": "Number of DDIM steps (official: 50)."}),
            },
        }

    def sigmas(self, model, steps):
        if not 1 <= steps <= 1000:
            raise FPEError(f"steps: must lie in 1..1000, got {steps}")
        return (official_ddim_sigmas(model_sampling_of(model), steps),)
