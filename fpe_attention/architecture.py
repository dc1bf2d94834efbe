"""Which model family a loaded MODEL is, read from the host's own model classes.

FPE edits UNet self-attention (attn1), so it serves SD1.x, SD2.x (ε and v) and SDXL with their
fine-tunes; everything else (DiT / MMDiT families such as SD3, Flux, AuraFlow, HunyuanDiT, Stable
Cascade) is refused by name. The family only names things and gates the SD1.5-specific preset;
which layers exist is always read from the loaded modules (``layers.unet_attn1_layers``).
"""

from __future__ import annotations

from .errors import FPEError

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
    from .schedule import model_sampling_of

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
        f"SD2.x or SDXL checkpoint")
