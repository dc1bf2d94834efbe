"""The source of an MMDiT edit (issue 27): what FPE Source Capture keeps when the model is Flux or SD3.

A stored record of an MMDiT's image queries and keys does not fit: Flux at 1024² holds 4096 image tokens × 3072
channels, two tensors per block, 57 blocks, i.e. about 2.8 GB per step in bf16 and ~80 GB for a whole run. So an
MMDiT source always replays (``replay``): it keeps each stored evaluation's model input and conditioning (a few
MB in all) and the edit runs the source's rows beside the target's in the same model call, where the attention
override hands the target the source's queries and keys on the spot.
"""

from __future__ import annotations

import math

import torch

from .dit_model import require_dit
from .errors import FPEError
from .source import FPESource, model_signature, weights_fingerprint
from .steps import step_window
from .validate import check_latent

STORAGE_FIX = "set storage to 'auto' or 'replay' (an MMDiT source replays its model inputs)"


def check_dit_inputs(model, samples, latent_name: str, prompts: dict) -> None:
    """Before sampling: the latent's channels and the prompts' width are what this MMDiT takes, so a VAE or text
    encoder of another family is named instead of failing inside the model with a shape error."""
    layout = require_dit(model, "FPE Source Capture")
    channels = getattr(getattr(model.model, "latent_format", None), "latent_channels", 16)
    if getattr(samples, "ndim", 0) == 4 and int(samples.shape[1]) != channels:
        raise FPEError(
            f"{latent_name}: the latent has {int(samples.shape[1])} channels but {layout.family} takes {channels}: "
            f"use an empty latent node for SD3/Flux (EmptySD3LatentImage) or encode with this model's VAE")
    width = layout.text_width(model)
    for name, conditioning in prompts.items():
        for entry in conditioning or []:
            tensor = entry[0] if isinstance(entry, (list, tuple)) and entry else None
            if width and hasattr(tensor, "shape") and len(tensor.shape) == 3 and int(tensor.shape[-1]) != width:
                raise FPEError(
                    f"{name}: the prompt is encoded {int(tensor.shape[-1])} wide, but {layout.family} takes {width}: "
                    f"encode it with this model's text encoders (Flux: clip_l + t5xxl; SD3: clip_l, clip_g, t5xxl)")


def dit_source(model, *, samples: torch.Tensor, sigmas: torch.Tensor, schedule_origin: str, cfg: float, settings,
               evaluations: int, rows: int, maker: str, kinds: frozenset) -> FPESource:
    """An empty replay ``FPESource`` for an MMDiT run over ``sigmas`` (``capture.new_source`` checked the schedule's
    shape and finiteness for UNets; here the same checks by the same names)."""
    layout = require_dit(model, maker)
    if settings.storage == "cpu":
        raise FPEError(f"storage: an MMDiT source keeps no layer record (Flux's image queries and keys take about 80 "
                       f"GB for a 1024 px run): {STORAGE_FIX}")
    if settings.cross != "off":
        raise FPEError("store_cross: cross-attention records are for UNet models; an MMDiT has no separate "
                       "cross-attention: set store_cross to 'off'")
    check_latent(samples, "latent_image" if maker == "FPE Source Capture" else "latent")
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise FPEError("sigmas: the schedule needs at least 2 values (1 step)")
    if not bool(torch.isfinite(sigmas).all()):
        raise FPEError("sigmas: the schedule holds NaN or infinite values")
    rises = [i for i in range(int(sigmas.shape[0]) - 1) if float(sigmas[i + 1]) > float(sigmas[i])]
    if rises:
        i = rises[0]
        raise FPEError(f"sigmas: the schedule rises at step {i} (sigma {float(sigmas[i]):.6g} -> "
                       f"{float(sigmas[i + 1]):.6g}), but {maker} samples from noise towards the image over falling "
                       f"sigmas: remove the node that reverses the schedule")
    steps = int(sigmas.shape[0]) - 1
    window = step_window(steps, 0.0, settings.store_end)
    batch = int(samples.shape[0])
    keys = layout.blocks.keys()
    return FPESource(
        signature=model_signature(model), layers=[], latent_shape=tuple(int(x) for x in samples.shape),
        schedule=[float(s) for s in sigmas], schedule_origin=schedule_origin,
        stored_layers=frozenset(keys), stored_window=window,
        stored_kinds=kinds, layer_setting="all (storage replay)",
        store_end=settings.store_end, cfg=cfg, storage_device="replay", maker=maker,
        weights=weights_fingerprint(model), planned_bytes=evaluations * rows * batch * math.prod(samples.shape[1:]) * 4,
        replay={}, auto_replay=False)
