"""Which model family a loaded MODEL is, read from the host's own model classes.

FPE edits UNet self-attention (attn1), so it serves SD1.x, SD2.x (ε and v) and SDXL with their
fine-tunes; everything else (DiT / MMDiT families such as SD3, Flux, AuraFlow, HunyuanDiT, Stable
Cascade) is refused by name. The family only names things and gates the SD1.5-specific preset;
which layers exist is always read from the loaded modules (``layers.unet_attn1_layers``).
"""

from __future__ import annotations

from .errors import FPEError
from .host_versions import model_sampling_of

# ComfyUI's model config classes (comfy.supported_models), most specific first; fine-tunes and
# distillations subclass these, so the class hierarchy names their family.
_FAMILIES = (("SDXLRefiner", "SDXL Refiner"), ("SDXL", "SDXL"), ("SD20", "SD2.x"), ("SD15", "SD1.x"))


def family(model) -> str:
    """'SD1.x', 'SD2.x', 'SDXL', 'SDXL Refiner', or the host's model class name for anything else."""
    inner = getattr(model, "model", None)
    config = getattr(inner, "model_config", None)
    names = [cls.__name__ for cls in type(config).__mro__] if config is not None else []
    for name, label in _FAMILIES:
        if name in names:
            return label
    return type(inner).__name__


def prediction(model) -> str:
    """'eps', 'v_prediction', ... as the host's model_sampling runs it (ModelSamplingDiscrete may change it)."""
    sampling = model_sampling_of(model)
    labels = {"V_PREDICTION": "v_prediction", "EDM": "edm", "X0": "x0", "EPS": "eps", "CONST": "flow"}
    for cls in type(sampling).__mro__:  # the most derived first: ComfyUI's EDM subclasses V_PREDICTION
        if cls.__name__ in labels:
            return labels[cls.__name__]
    return "unknown"


def unet_of(model):
    """The UNet of a ComfyUI MODEL, or an FPEError naming what the model is instead."""
    inner = getattr(model, "model", None)
    backbone = getattr(inner, "diffusion_model", None)
    if all(hasattr(backbone, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        return backbone
    raise FPEError(
        f"model: FPE edits the self-attention layers of UNet models (SD1.x, SD2.x, SDXL and their fine-tunes); this "
        f"model is {type(inner).__name__} with a {type(backbone).__name__} backbone, which has none: load an SD1.x, "
        f"SD2.x or SDXL checkpoint (Flux.1, SD3 and SD3.5 are edited by FPE MMDiT Inject)")


def transformer_layers(diffusion_model):
    """(key, transformer layer, level) of a ComfyUI ``UNetModel``'s transformer layers, in forward order;
    ``level``: the 2x downsamplings before it. The key is what attention patches see."""
    level = 0
    blocks = [("input", i, b) for i, b in enumerate(diffusion_model.input_blocks)]
    blocks += [("middle", 0, diffusion_model.middle_block)]
    blocks += [("output", i, b) for i, b in enumerate(diffusion_model.output_blocks)]
    for block_name, block_id, block in blocks:
        for module in block:
            kind = type(module).__name__
            if kind == "Downsample":
                level += 1
            elif kind == "Upsample":
                level -= 1
            for index, transformer in enumerate(getattr(module, "transformer_blocks", None) or ()):
                yield (block_name, block_id, index), transformer, level


def check_inputs_fit(model, samples, latent_name: str, prompts: dict) -> None:
    """Before sampling: the latent's channels and each prompt's width are what this model takes, so a VAE
    or CLIP of another model family is named instead of failing inside the UNet with a shape error.
    ``prompts``: input name -> CONDITIONING (None: not connected)."""
    inner = getattr(model, "model", None)
    # Every UNet family FPE serves takes 4-channel latents; the 2024 host's latent formats do not say so.
    channels = getattr(getattr(inner, "latent_format", None), "latent_channels", 4)
    if getattr(samples, "ndim", 0) == 4 and int(samples.shape[1]) != channels:
        raise FPEError(
            f"{latent_name}: the latent has {int(samples.shape[1])} channels but {family(model)} takes {channels}: "
            f"encode the image with this checkpoint's VAE (another model family's latent does not fit)")
    widths = {int(t.attn2.to_k.in_features) for _, t, _ in transformer_layers(unet_of(model))
              if getattr(getattr(t, "attn2", None), "to_k", None) is not None
              and hasattr(t.attn2.to_k, "in_features")}
    if len(widths) != 1:
        return  # no cross-attention to check against (or an unusual layout): the host will say
    width = widths.pop()
    for name, conditioning in prompts.items():
        for entry in conditioning or []:
            tensor = entry[0] if isinstance(entry, (list, tuple)) and entry else None
            if hasattr(tensor, "shape") and len(tensor.shape) == 3 and int(tensor.shape[-1]) != width:
                raise FPEError(
                    f"{name}: the prompt is encoded {int(tensor.shape[-1])} wide, but {family(model)}'s "
                    f"cross-attention takes {width}: encode it with the CLIP of the same checkpoint as the model")
