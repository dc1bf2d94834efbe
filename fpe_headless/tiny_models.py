"""Tiny, seeded, randomly initialised checkpoints in real SD1.5 and SDXL layouts.

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
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class TinySpec:
    name: str
    unet_config: dict  # full UNetModel config, as ComfyUI's detection derives it from the weights
    match_config: dict  # the subset a registered model config matches on
    clip: str  # "sd1" or "sdxl"
    extra: dict = field(default_factory=dict)


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
)

TINY_SPECS = {spec.name: spec for spec in (SD15_TINY, SDXL_TINY)}


# --------------------------------------------------------------------------------------------
# Deterministic weights


def _generator(key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{SEED}:{key}".encode()).digest()
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


def _fill(named_shapes: dict[str, torch.Size], prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in named_shapes.items():
        tensor = _init_tensor(prefix + key, shape)
        for pattern, scale in ATTN_SCALES.items():
            if f".{pattern}." in f".{key}" and key.endswith("weight"):
                tensor = tensor * scale
        out[prefix + key] = tensor.contiguous()
    return out


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Building blocks from the host's own classes


def _unet_shapes(spec: TinySpec) -> dict[str, torch.Size]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"), torch.no_grad():
        unet = UNetModel(**spec.unet_config, operations=comfy.ops.disable_weight_init)
    return _shapes(unet)


def _clip_shapes(config: dict) -> dict[str, torch.Size]:
    import comfy.clip_model
    import comfy.ops

    with torch.device("meta"), torch.no_grad():
        model = comfy.clip_model.CLIPTextModel(config, None, None, comfy.ops.disable_weight_init)
    return _shapes(model)


def _taesd_shapes() -> dict[str, torch.Size]:
    import comfy.taesd.taesd

    with torch.device("meta"), torch.no_grad():
        vae = comfy.taesd.taesd.TAESD()
    shapes = _shapes(vae)
    # The current host also has a ``vae_shift``; both hosts load the file with strict=False.
    shapes.setdefault("vae_shift", torch.Size([]))
    return shapes


def _hf_clip_to_open_clip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text weights -> the open_clip layout SDXL checkpoints store for CLIP-G."""
    out = {}
    n_layers = CLIP_G_TINY["num_hidden_layers"]
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
    sd = _fill(_unet_shapes(spec), "model.diffusion_model.")
    sd.update(_fill(_taesd_shapes(), "first_stage_model."))
    if spec.clip == "sd1":
        sd.update(_fill(_clip_shapes(CLIP_L_TINY), "cond_stage_model.transformer."))
    else:
        sd.update(_fill(_clip_shapes(CLIP_L_TINY), "conditioner.embedders.0.transformer."))
        clip_g = _fill(_clip_shapes(CLIP_G_TINY), "clip_g:")
        clip_g = {k[len("clip_g:"):]: v for k, v in clip_g.items()}
        sd.update(_hf_clip_to_open_clip(clip_g, "conditioner.embedders.1.model."))
    return {k: v for k, v in sd.items() if not k.endswith("position_ids")}


def write_checkpoint(spec: TinySpec, path: Path) -> Path:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    sd = build_state_dict(spec)
    safetensors.torch.save_file(sd, str(path), metadata={"fpe_tiny_model": spec.name, "seed": str(SEED)})
    return path


def write_controlnet(spec: TinySpec, path: Path) -> Path:
    """A ControlNet for ``spec``'s UNet in the original (``control_model.``) layout, random weights.

    The zero convolutions get random weights too, so the control visibly changes the result.
    """
    import inspect

    import comfy.ops
    import safetensors.torch
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
    import comfy.supported_models as supported_models
    from comfy import sd1_clip, sdxl_clip, supported_models_base

    config_dir.mkdir(parents=True, exist_ok=True)
    # The 2024 host reads text-encoder configs from a path only, the current one also from a dict.
    l_path = config_dir / "tiny_clip_l.json"
    g_path = config_dir / "tiny_clip_g.json"
    l_path.write_text(json.dumps(CLIP_L_TINY))
    g_path.write_text(json.dumps(CLIP_G_TINY))

    class TinyClipL(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, **kwargs):
            kwargs.setdefault("return_projected_pooled", False)
            super().__init__(device=device, dtype=dtype, textmodel_json_config=str(l_path), **kwargs)

    class TinySD1Clip(sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, **kwargs):
            kwargs.pop("clip_model", None)
            super().__init__(device=device, dtype=dtype, clip_model=TinyClipL, **kwargs)

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

    for cls in (TinySDXL, TinySD15):
        supported_models.models.insert(0, cls)
        _REGISTERED.append(cls)
