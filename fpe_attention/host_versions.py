"""What differs between the ComfyUI versions the pack runs on, in one place.

The pack supports ComfyUI of early 2024 (the tests' default host) and current ComfyUI (0.8.x). Where
their APIs differ, the difference is read here, by what the host offers (never by version number),
so every other module asks one question and gets the same answer on both hosts.
"""

from __future__ import annotations

import types

import torch


def model_sampling_of(model):
    """The ``model_sampling`` object a sampler will use, a node's object patch included
    (ModelSamplingDiscrete, ModelSamplingSD3, ...)."""
    getter = getattr(model, "get_model_object", None)
    if getter is not None:  # current ComfyUI resolves object patches itself
        return getter("model_sampling")
    patched = getattr(model, "object_patches", {}).get("model_sampling")  # ComfyUI of early 2024
    return patched if patched is not None else model.model.model_sampling


def ksampler_model(model):
    """What ``comfy.samplers.KSampler`` must be given to compute this model's sigmas."""
    if getattr(model, "get_model_object", None) is not None:  # current ComfyUI reads model_sampling itself
        return model
    # ComfyUI of early 2024 reads ``.model_sampling`` from what it is given, object patches unseen
    return types.SimpleNamespace(model_sampling=model_sampling_of(model))


def fix_empty_latent_channels(model, latent_image: torch.Tensor) -> torch.Tensor:
    """Current ComfyUI widens an empty latent to the model's channels before sampling, as its KSampler does."""
    import comfy.sample

    fix = getattr(comfy.sample, "fix_empty_latent_channels", None)  # current ComfyUI only
    return fix(model, latent_image) if fix is not None else latent_image


def add_outer_sample_wrapper(patched, key: str, wrapper) -> bool:
    """Run ``wrapper`` around every sampling run of ``patched``; False where the host has no wrappers
    (ComfyUI of early 2024: callers then tell runs apart by their first sigma)."""
    add_wrapper = getattr(patched, "add_wrapper_with_key", None)
    if add_wrapper is None:
        return False
    import comfy.patcher_extension

    add_wrapper(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, key, wrapper)
    return True


def host_attention(q, k, v, heads: int, module, extra_options: dict):
    """The attention the host's CrossAttention would compute on these q, k, v (its selected kernel)."""
    from comfy.ldm.modules import attention

    if hasattr(module, "attn_precision"):  # ComfyUI since 2024; transformer_options since about 0.3.6x
        try:
            return attention.optimized_attention(q, k, v, heads, attn_precision=module.attn_precision,
                                                 transformer_options=extra_options)
        except TypeError:
            return attention.optimized_attention(q, k, v, heads, attn_precision=module.attn_precision)
    return attention.optimized_attention(q, k, v, heads)


def vae_downscale_ratio(vae) -> int:
    """Pixels per latent cell of a VAE (8 for SD's)."""
    ratio = getattr(vae, "spacial_compression_encode", None)  # current ComfyUI
    if callable(ratio):
        ratio = ratio()
    else:
        ratio = getattr(vae, "downscale_ratio", 8)  # ComfyUI of early 2024
    return ratio if isinstance(ratio, int) else 8


def entry_uuid(entry) -> str | None:
    """A conditioning entry's id inside a sampling run (current ComfyUI); None on early 2024, which
    gives entries no ids (callers then pair entries in the order the host runs them)."""
    return entry.get("uuid") if isinstance(entry, dict) else None
