"""Test helpers: the pack's FPE nodes and the stock sampler, called as the executor calls them."""

from __future__ import annotations

from .execute import call_node
from .reference import encode

SRC = "a photo of green ducks walking on street"
TGT = "a photo of rubber ducks walking on street"
# 240x288 px -> a 30x36 latent: level-0 layers see 1080 tokens (> 32x32, not edited by the official
# rule), the deeper levels 270 / 72 / 20 (edited): the rule cuts through this model.
W, H = 240, 288
# The tiny SDXL layout has attention at levels 1 and 2 only (as SDXL): at 720x384 px (a 90x48 latent)
# level 1 sees 1080 tokens (dropped by the official rule) and level 2 276 (kept).
EDIT_SIZES = {"tiny_sdxl": (720, 384)}


def edit_size(architecture: str) -> tuple[int, int]:
    """(width, height) in px where the official rule keeps some attention levels of ``architecture``
    and drops others."""
    return EDIT_SIZES.get(architecture, (W, H))


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


def encoded_photo(width=W, height=H, batch=1, seed=11):
    """A smooth random 'photo' latent for the tiny models.

    The tiny random UNet predicts noise with a std of ~0.07 instead of 1, so inverted noise is ~15x
    smaller than a real model's. A photo latent this large (~20x a real one) gives the inverted
    latent the magnitude real models see at the top (model inputs of order 1); with a realistic
    scale the tiny model is fed near-constant inputs there and amplifies float rounding ~100x.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 4, height // 64 + 2, width // 64 + 2, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(height // 8, width // 8), mode="bicubic",
                                             align_corners=False)
    return {"samples": smooth * 80.0 + 10.0 * torch.randn(batch, 4, height // 8, width // 8, generator=g)}


def invert(model, clip, latent_image, *, text="", steps=6, scheduler="normal", cfg=1.0, denoise=1.0,
           negative=None, store_layers="official", store_custom_layers="in4", store_end=0.8, store_rows="cond",
           storage="auto", precision="exact", check=False, sigmas=None, vae=None):
    """FPE DDIM Invert as the executor calls it: (inverted LATENT, FPE_SOURCE, report)."""
    extra = {}
    if negative is not None:
        extra["negative"] = encode(clip, negative)
    if sigmas is not None:
        extra["sigmas"] = sigmas
    if vae is not None:
        extra["vae"] = vae
    return call_node(
        "FPEDDIMInvert", model=model, positive=encode(clip, text), latent=latent_image, steps=steps,
        scheduler=scheduler, cfg=cfg, denoise=denoise, store_layers=store_layers,
        store_custom_layers=store_custom_layers, store_end=store_end, store_rows=store_rows, storage=storage,
        precision=precision, reconstruction_check=check, **extra)


def sample_back(model, clip, inverted, *, text=TGT, steps=6, cfg=7.5, sampler="ddim", scheduler="normal",
                negative="", add_noise="disable", seed=0):
    """KSamplerAdvanced from the inverted latent, noise off (the real-image edit's target side)."""
    return call_node(
        "KSamplerAdvanced", model=model, add_noise=add_noise, noise_seed=seed, steps=steps, cfg=cfg,
        sampler_name=sampler, scheduler=scheduler, positive=encode(clip, text), negative=encode(clip, negative),
        latent_image=inverted, start_at_step=0, end_at_step=10000,
        return_with_leftover_noise="disable")[0]["samples"]


def toy_model(model, eps_of):
    """``model`` with its noise prediction replaced by ``eps_of(x_VP)`` (D(x, σ) = x − σ·ε): a smooth
    or x-independent ε makes the inversion's exact behaviour checkable."""
    import torch

    def wrapper(apply_model, args):
        x, sigma = args["input"], args["timestep"].reshape(-1, 1, 1, 1)
        return x - sigma * eps_of(x / torch.sqrt(1 + sigma**2))

    toy = model.clone()
    toy.set_model_unet_function_wrapper(wrapper)
    return toy


def stored_at(source, kind, step, occurrence=0, entry=0):
    """The stored layer inputs of ``source`` for one chunk kind (0 cond, 1 uncond), conditioning entry
    and schedule step (None if nothing was stored there); host-independent key lookup."""
    for key, layer_map in source.entries.items():
        if (key.kind, key.sigma, key.occurrence, key.entry[1], key.entry[2]) == (kind, ("s", step), occurrence,
                                                                                 entry, 0):
            return layer_map
    return None


def capture_with(model, clip, positive, latent_image, *, steps=6, cfg=7.5, sampler="euler", seed=42, **store):
    """FPE Source Capture with a ready CONDITIONING as the source prompt (e.g. a combined one)."""
    settings = {"store_layers": "official", "store_custom_layers": "in4", "store_end": 0.8, "store_rows": "cond",
                "storage": "auto", "precision": "exact", **store}
    return call_node("FPESourceCapture", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                     scheduler="normal", positive=positive, negative=encode(clip, ""), latent_image=latent_image,
                     denoise=1.0, **settings)


def ksampler_with(model, source, clip, positive, latent_image, *, steps=6, cfg=7.5, sampler="euler", seed=42,
                  **inject_settings):
    """The target side with a ready CONDITIONING: FPE Self-Attn Inject, then KSampler; the latent's samples."""
    return call_node("KSampler", model=inject(model, source, **inject_settings), seed=seed, steps=steps, cfg=cfg,
                     sampler_name=sampler, scheduler="normal", positive=positive, negative=encode(clip, ""),
                     latent_image=latent_image, denoise=1.0)[0]["samples"]
