"""Test helpers: the pack's FPE nodes and the stock sampler, called as the executor calls them."""

from __future__ import annotations

from .execute import call_node
from .reference import encode

SRC = "a photo of green ducks walking on street"
TGT = "a photo of rubber ducks walking on street"
# 240x288 px -> a 30x36 latent: level-0 layers see 1080 tokens (> 32x32, not edited by the official
# rule), the deeper levels 270 / 72 / 20 (edited): the rule cuts through this model.
W, H = 240, 288


def latent(width=W, height=H, batch=1):
    return call_node("EmptyLatentImage", width=width, height=height, batch_size=batch)[0]


def capture(model, clip, text=SRC, *, seed=42, steps=6, cfg=7.5, sampler="euler", scheduler="normal",
            latent_image=None, denoise=1.0, negative="", store_layers="official", store_custom_layers="in4",
            store_end=0.8, store_rows="cond", storage="auto", precision="exact", sigmas=None):
    extra = {} if sigmas is None else {"sigmas": sigmas}
    return call_node(
        "FPESourceCapture", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
        positive=encode(clip, text), negative=encode(clip, negative),
        latent_image=latent_image if latent_image is not None else latent(), denoise=denoise,
        store_layers=store_layers, store_custom_layers=store_custom_layers, store_end=store_end,
        store_rows=store_rows, storage=storage, precision=precision, **extra)


def inject(model, source, *, layers="official", custom_layers="in4", start=0.0, end=0.8, branches="cond only"):
    return call_node("FPESelfAttnInject", model=model, fpe_source=source, layers=layers, custom_layers=custom_layers,
                     start=start, end=end, branches=branches)[0]


def ksampler(model, clip, text=TGT, *, seed=42, steps=6, cfg=7.5, sampler="euler", scheduler="normal",
             latent_image=None, negative="", denoise=1.0):
    return call_node(
        "KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
        positive=encode(clip, text), negative=encode(clip, negative),
        latent_image=latent_image if latent_image is not None else latent(), denoise=denoise)[0]["samples"]


def max_abs(a, b):
    return float((a.float() - b.float()).abs().max())
