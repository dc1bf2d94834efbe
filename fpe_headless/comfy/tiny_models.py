"""Tiny, seeded, randomly initialised checkpoints in real SD1.5, SD2.x (ε and v) and SDXL layouts.

The checkpoints are built from ComfyUI's own model classes at test time (never downloaded, never
committed), saved as ``.safetensors`` in the usual single-file checkpoint layout and loaded back
through ComfyUI's real loaders. ComfyUI only detects architectures it knows, so
:func:`register_tiny_model_configs` adds matching model configs to the running host (tests only).

Weights are drawn per state-dict key from a generator seeded by the key's name, so the files are
byte-identical whichever host builds them. Random initialisation gives near-uniform attention,
which would make any attention edit invisible; self- and cross-attention projections are
therefore scaled up at build time (see ``ATTN_SCALES``) so the maps are clearly non-uniform.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch

SEED = 20240611

# Multipliers applied after initialisation, per attention projection.
# attn1 = self-attention, attn2 = cross-attention.
ATTN_SCALES = {
    "attn1.to_q": 2.0,
    "attn1.to_k": 2.0,
    "attn1.to_out.0": 2.0,
    "attn2.to_q": 4.0,
    "attn2.to_k": 4.0,
    "attn2.to_out.0": 3.0,
}

# The linear-projection layouts (SD2, SDXL) with SD1.5's cross-attention sharpening make a UNet so
# sensitive that one call's batch-layout rounding (1e-7) grows to 1e-5 of its output, which drowns
# exactness tests in float noise; milder cross-attention keeps them at SD1.5's conditioning.
CALM_CROSS_ATTENTION = {"attn2.to_q": 2.0, "attn2.to_k": 2.0}

CLIP_VOCAB = 49408  # the SD1 tokenizer emits ids up to 49407: the vocabulary must stay full size


def tiny_clip_config(hidden: int, layers: int, heads: int, act: str) -> dict:
    """HF-style CLIP text config, as ComfyUI's ``clip_model.CLIPTextModel`` reads it."""
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": act,
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": hidden * 4,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": hidden,
        "torch_dtype": "float32",
        "vocab_size": CLIP_VOCAB,
    }


CLIP_L_TINY = tiny_clip_config(64, 3, 4, "quick_gelu")  # 3 layers: SDXL reads layer -2
CLIP_G_TINY = tiny_clip_config(96, 3, 4, "gelu")
CLIP_H_TINY = tiny_clip_config(80, 3, 4, "gelu")  # SD2's OpenCLIP ViT-H text tower, read at layer -2


@dataclass(frozen=True)
class TinySpec:
    name: str
    unet_config: dict  # full UNetModel config, as ComfyUI's detection derives it from the weights
    match_config: dict  # the subset a registered model config matches on
    clip: str  # "sd1", "sd2" or "sdxl"
    extra: dict = field(default_factory=dict)  # v_prediction: True marks the weights the way SD2-v's are
    resolution: int = 512  # the native image size of the architecture it stands for


def _base_unet(**kw) -> dict:
    cfg = {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "in_channels": 4,
        "out_channels": 4,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    cfg.update(kw)
    return cfg


# SD1.5 layout: 4 levels, 16 attn1 layers with the same (block, id, block_index) keys and token
# counts as SD1.5; widths 32/64/128/128, 8 heads.
SD15_TINY = TinySpec(
    name="tiny_sd15",
    unet_config=_base_unet(
        adm_in_channels=None,
        model_channels=32,
        num_res_blocks=[2, 2, 2, 2],
        channel_mult=[1, 2, 4, 4],
        transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
        transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        transformer_depth_middle=1,
        use_linear_in_transformer=False,
        context_dim=64,
        num_heads=8,
        num_head_channels=-1,
    ),
    match_config={
        "context_dim": 64,
        "model_channels": 32,
        "use_linear_in_transformer": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
    },
    clip="sd1",
)

# SDXL layout: 3 levels, no attention at the top level, 2 transformer layers per block (so
# block_index 0..1 exists, as SDXL's 2/10), linear projections, pooled text embedding + size
# conditioning through ``adm_in_channels`` = pooled width + 6 * 256.
SDXL_TINY = TinySpec(
    name="tiny_sdxl",
    unet_config=_base_unet(
        num_classes="sequential",
        adm_in_channels=CLIP_G_TINY["hidden_size"] + 6 * 256,
        model_channels=32,
        num_res_blocks=[2, 2, 2],
        channel_mult=[1, 2, 4],
        transformer_depth=[0, 0, 2, 2, 2, 2],
        transformer_depth_output=[0, 0, 0, 2, 2, 2, 2, 2, 2],
        transformer_depth_middle=2,
        use_linear_in_transformer=True,
        context_dim=CLIP_L_TINY["hidden_size"] + CLIP_G_TINY["hidden_size"],
        num_heads=-1,
        num_head_channels=16,
    ),
    match_config={
        "model_channels": 32,
        "use_linear_in_transformer": True,
        "transformer_depth": [0, 0, 2, 2, 2, 2],
        "context_dim": CLIP_L_TINY["hidden_size"] + CLIP_G_TINY["hidden_size"],
        "adm_in_channels": CLIP_G_TINY["hidden_size"] + 6 * 256,
        "use_temporal_attention": False,
    },
    clip="sdxl",
    extra={"attn_scales": CALM_CROSS_ATTENTION},
    resolution=1024,
)

# SD2.x layout: SD1.5's levels and layer keys with linear projections in the transformers,
# a wider text context (OpenCLIP-H in the real model) and a fixed head width (64 there, 8 here).
_SD2_UNET = dict(SD15_TINY.unet_config, use_linear_in_transformer=True, context_dim=CLIP_H_TINY["hidden_size"],
                 num_heads=-1, num_head_channels=8)
_SD2_MATCH = {
    "context_dim": CLIP_H_TINY["hidden_size"],
    "model_channels": 32,
    "use_linear_in_transformer": True,
    "adm_in_channels": None,
    "use_temporal_attention": False,
}
SD2_TINY = TinySpec(name="tiny_sd2", unet_config=_SD2_UNET, match_config=_SD2_MATCH, clip="sd2",
                    extra={"attn_scales": CALM_CROSS_ATTENTION})
# ComfyUI tells SD2-v from SD2-ε by the spread of one norm bias (output_blocks.11.1...norm1.bias,
# std > 0.09 in the v checkpoints): the tiny v model carries such a bias, so the host's own
# detection picks v-prediction, as it does for a real 768-v checkpoint.
SD2V_TINY = TinySpec(name="tiny_sd2_v", unet_config=_SD2_UNET, match_config=_SD2_MATCH, clip="sd2",
                     extra={"v_prediction": True, "attn_scales": CALM_CROSS_ATTENTION}, resolution=768)
V_PREDICTION_MARK = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"

TINY_SPECS = {spec.name: spec for spec in (SD15_TINY, SD2_TINY, SD2V_TINY, SDXL_TINY)}

# The real architectures' UNet configs (as ComfyUI's detection reads them from the checkpoints), for
# benchmarks and layer tables with random weights or on the meta device: no download.
FULL_UNET_CONFIGS = {
    "SD1.5": dict(SD15_TINY.unet_config, model_channels=320, context_dim=768),
    "SD2.x": dict(_SD2_UNET, model_channels=320, context_dim=1024, num_head_channels=64),
    "SDXL": dict(SDXL_TINY.unet_config, model_channels=320, context_dim=2048, adm_in_channels=2816,
                 transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 transformer_depth_middle=10, num_head_channels=64),
}


def full_unet_state_dict(architecture: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Seeded random weights for a real architecture's UNet (SD1.5: 3.4 GB, SDXL: 10 GB in fp32),
    drawn tensor by tensor and cast to ``dtype`` as they come, so no fp32 copy of the whole is held."""
    spec = TinySpec(name=architecture, unet_config=FULL_UNET_CONFIGS[architecture], match_config={}, clip="")
    out = {}
    for key, shape in _unet_shapes(spec).items():
        tensor = _fill({key: shape})[key]
        out[key] = tensor if dtype is None else tensor.to(dtype)
    return out


def meta_unet(architecture: str):
    """A real architecture's ComfyUI ``UNetModel`` on the meta device (no memory, no weights)."""
    import comfy.ops  # ComfyUI's: importable once host.boot put it on sys.path
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"), torch.no_grad():
        return UNetModel(**FULL_UNET_CONFIGS[architecture], operations=comfy.ops.disable_weight_init)


# --------------------------------------------------------------------------------------------
# Deterministic weights


def _generator(key: str, seed: int = SEED) -> torch.Generator:
    """A generator seeded by a state-dict key's name (and the family's seed): the same weights on every build."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little"))
    return gen


def _init_tensor(key: str, shape: torch.Size) -> torch.Tensor:
    gen = _generator(key)
    leaf = key.rsplit(".", 1)[-1]
    lowered = key.lower()
    if len(shape) == 0:
        if key.endswith("vae_shift"):
            return torch.zeros(())
        return torch.ones(())  # vae_scale, logit scales
    if "position_ids" in key:
        return torch.arange(shape[-1]).expand(shape).clone().to(torch.int64)
    if "token_embedding" in lowered or "position_embedding" in lowered:
        return torch.randn(shape, generator=gen) * 0.02
    if ("norm" in lowered or "ln_" in lowered) and len(shape) == 1:
        return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    if len(shape) == 1:  # biases
        return (torch.rand(shape, generator=gen) * 2 - 1) * 0.05
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def _fill(named_shapes: dict[str, torch.Size], prefix: str = "", scales: dict | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in named_shapes.items():
        tensor = _init_tensor(prefix + key, shape)
        for pattern, scale in (scales or ATTN_SCALES).items():
            if f".{pattern}." in f".{key}" and key.endswith("weight"):
                tensor = tensor * scale
        out[prefix + key] = tensor.contiguous()
    return out


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Building blocks from the host's own classes


def _unet_shapes(spec: TinySpec) -> dict[str, torch.Size]:
    import comfy.ops  # ComfyUI's: importable once host.boot put it on sys.path
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"), torch.no_grad():
        unet = UNetModel(**spec.unet_config, operations=comfy.ops.disable_weight_init)
    return _shapes(unet)


def _clip_shapes(config: dict) -> dict[str, torch.Size]:
    import comfy.clip_model  # ComfyUI's: importable once host.boot put it on sys.path
    import comfy.ops

    with torch.device("meta"), torch.no_grad():
        model = comfy.clip_model.CLIPTextModel(config, None, None, comfy.ops.disable_weight_init)
    return _shapes(model)


def _taesd_shapes() -> dict[str, torch.Size]:
    import comfy.taesd.taesd  # ComfyUI's: importable once host.boot put it on sys.path

    with torch.device("meta"), torch.no_grad():
        vae = comfy.taesd.taesd.TAESD()
    shapes = _shapes(vae)
    # The current host also has a ``vae_shift``; both hosts load the file with strict=False.
    shapes.setdefault("vae_shift", torch.Size([]))
    return shapes


def _hf_clip_to_open_clip(sd: dict[str, torch.Tensor], prefix: str, n_layers: int) -> dict[str, torch.Tensor]:
    """HF CLIP text weights -> the open_clip layout SDXL (CLIP-G) and SD2 (CLIP-H) checkpoints store."""
    out = {}
    for i in range(n_layers):
        src = f"text_model.encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for w in ("weight", "bias"):
            out[dst + f"attn.in_proj_{w}"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.{w}"] for p in ("q", "k", "v")], dim=0
            )
            out[dst + f"attn.out_proj.{w}"] = sd[src + f"self_attn.out_proj.{w}"]
            out[dst + f"ln_1.{w}"] = sd[src + f"layer_norm1.{w}"]
            out[dst + f"ln_2.{w}"] = sd[src + f"layer_norm2.{w}"]
            out[dst + f"mlp.c_fc.{w}"] = sd[src + f"mlp.fc1.{w}"]
            out[dst + f"mlp.c_proj.{w}"] = sd[src + f"mlp.fc2.{w}"]
    out[prefix + "token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out[prefix + "ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    out[prefix + "text_projection"] = sd["text_projection.weight"].transpose(0, 1).contiguous()
    return out


def build_state_dict(spec: TinySpec) -> dict[str, torch.Tensor]:
    sd = _fill(_unet_shapes(spec), "model.diffusion_model.", {**ATTN_SCALES, **spec.extra.get("attn_scales", {})})
    sd.update(_fill(_taesd_shapes(), "first_stage_model."))
    if spec.clip == "sd1":
        sd.update(_fill(_clip_shapes(CLIP_L_TINY), "cond_stage_model.transformer."))
    elif spec.clip == "sd2":
        sd.update(_open_clip(CLIP_H_TINY, "clip_h:", "cond_stage_model.model."))
    else:
        sd.update(_fill(_clip_shapes(CLIP_L_TINY), "conditioner.embedders.0.transformer."))
        sd.update(_open_clip(CLIP_G_TINY, "clip_g:", "conditioner.embedders.1.model."))
    if spec.extra.get("v_prediction"):
        sd[V_PREDICTION_MARK] = torch.randn(sd[V_PREDICTION_MARK].shape, generator=_generator(V_PREDICTION_MARK)) * 0.2
    return {k: v for k, v in sd.items() if not k.endswith("position_ids")}


def _open_clip(config: dict, seed_prefix: str, prefix: str) -> dict[str, torch.Tensor]:
    """A text tower drawn in HF layout (seeded under ``seed_prefix``), stored in open_clip layout."""
    hf = _fill(_clip_shapes(config), seed_prefix)
    hf = {k[len(seed_prefix):]: v for k, v in hf.items()}
    return _hf_clip_to_open_clip(hf, prefix, config["num_hidden_layers"])


def write_checkpoint(spec: TinySpec, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = build_state_dict(spec)
    safetensors.torch.save_file(sd, str(path), metadata={"fpe_tiny_model": spec.name, "seed": str(SEED)})
    return path


def write_controlnet(spec: TinySpec, path: Path) -> Path:
    """A ControlNet for ``spec``'s UNet in the original (``control_model.``) layout, random weights.

    The zero convolutions get random weights too, so the control visibly changes the result.
    """
    import comfy.ops  # ComfyUI's: importable once host.boot put it on sys.path
    from comfy.cldm.cldm import ControlNet

    accepted = inspect.signature(ControlNet.__init__).parameters
    config = {k: v for k, v in spec.unet_config.items() if k in accepted}
    with torch.device("meta"), torch.no_grad():
        net = ControlNet(**config, hint_channels=3, operations=comfy.ops.disable_weight_init)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(_fill(_shapes(net), "control_model."), str(path))
    return path


# --------------------------------------------------------------------------------------------
# Registration of the tiny architectures with the running host (tests only)

_REGISTERED: list = []


def register_tiny_model_configs(config_dir: Path) -> None:
    """Insert model configs for the tiny layouts at the front of ComfyUI's detection list."""
    if _REGISTERED:
        return
    import comfy.supported_models as supported_models  # ComfyUI's: importable once host.boot put it on sys.path
    from comfy import sd1_clip, sdxl_clip, supported_models_base

    config_dir.mkdir(parents=True, exist_ok=True)
    # The 2024 host reads text-encoder configs from a path only, the current one also from a dict.
    l_path = config_dir / "tiny_clip_l.json"
    g_path = config_dir / "tiny_clip_g.json"
    h_path = config_dir / "tiny_clip_h.json"
    l_path.write_text(json.dumps(CLIP_L_TINY))
    g_path.write_text(json.dumps(CLIP_G_TINY))
    h_path.write_text(json.dumps(CLIP_H_TINY))
    try:
        from comfy.text_encoders import sd2_clip  # current ComfyUI
    except ImportError:
        from comfy import sd2_clip  # ComfyUI of early 2024

    class TinyClipL(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, **kwargs):
            kwargs.setdefault("return_projected_pooled", False)
            super().__init__(device=device, dtype=dtype, textmodel_json_config=str(l_path), **kwargs)

    class TinySD1Clip(sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, **kwargs):
            kwargs.pop("clip_model", None)
            super().__init__(device=device, dtype=dtype, clip_model=TinyClipL, **kwargs)

    class TinyClipH(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, **kwargs):
            for unused in ("layer", "layer_idx", "textmodel_json_config", "special_tokens", "return_projected_pooled"):
                kwargs.pop(unused, None)
            super().__init__(device=device, dtype=dtype, layer="hidden", layer_idx=-2, textmodel_json_config=str(h_path),
                             special_tokens={"start": 49406, "end": 49407, "pad": 0}, **kwargs)

    class TinySD2Clip(sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, **kwargs):
            kwargs.pop("clip_model", None)
            kwargs.pop("clip_name", None)
            super().__init__(device=device, dtype=dtype, clip_name="h", clip_model=TinyClipH, **kwargs)

    class TinySDXLClip(sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None, **_):
            torch.nn.Module.__init__(self)
            extra = {} if model_options is None else {"model_options": model_options}
            self.clip_l = sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=str(l_path), **extra,
            )
            self.clip_g = sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=str(g_path), special_tokens={"start": 49406, "end": 49407, "pad": 0},
                **extra,
            )
            self.dtypes = {dtype}

    class TinySD15(supported_models.SD15):
        unet_config = dict(SD15_TINY.match_config)
        unet_extra_config = {"num_heads": 8, "num_head_channels": -1}

        def clip_target(self, state_dict=None):
            return supported_models_base.ClipTarget(sd1_clip.SD1Tokenizer, TinySD1Clip)

    class TinySDXL(supported_models.SDXL):
        unet_config = dict(SDXL_TINY.match_config)
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

        def clip_target(self, state_dict=None):
            return supported_models_base.ClipTarget(sdxl_clip.SDXLTokenizer, TinySDXLClip)

    class TinySD2(supported_models.SD20):  # the host's own SD2 class decides ε or v from the weights
        unet_config = dict(SD2_TINY.match_config)
        unet_extra_config = dict(getattr(supported_models.SD20, "unet_extra_config", {}), num_heads=-1,
                                 num_head_channels=8)

        def clip_target(self, state_dict=None):
            return supported_models_base.ClipTarget(sd2_clip.SD2Tokenizer, TinySD2Clip)

    for cls in (TinySDXL, TinySD2, TinySD15):
        supported_models.models.insert(0, cls)
        _REGISTERED.append(cls)
