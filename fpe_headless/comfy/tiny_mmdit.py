"""Tiny, seeded, randomly initialised Flux.1-dev and SD3.5-Medium model files for ComfyUI's stock loaders.

What a Flux or SD3.5 workflow loads, at a few MB: the diffusion model (``UNETLoader``), its text
encoders (``DualCLIPLoader`` type ``flux``: CLIP-L + T5-XXL; ``TripleCLIPLoader``: CLIP-L + CLIP-G +
T5-XXL) and a 16-channel VAE (``VAELoader``). Built from the host's own classes at test time (never
downloaded, never committed), in the layouts of the real files, so the host's own detection reads them.
Current ComfyUI only: ComfyUI of early 2024 has no Flux or SD3.

The host cannot make everything tiny from the weights alone, so :func:`register_tiny_mmdit` (tests
only, like ``tiny_models.register_tiny_model_configs``) adds three things to the running host:

* a model config for the tiny Flux: the host reads Flux's width from the weights but fixes its heads
  (24) and rotary axes (16, 56, 56), which forces a width of 3072; the tiny one has 2 heads of 32.
  (SD3.5's MMDiT needs nothing: the host derives depth, width and heads from the weights.)
* text-encoder sizes read from the weights: the host builds CLIP-L, CLIP-G and T5-XXL from fixed JSON
  configs (T5-XXL: 4.7 billion parameters) whatever the file holds; for encoders narrower than any
  real one (``TINY_MAX_WIDTH``) it now takes width, depth and feed-forward size from the weight shapes.
  CLIP's head count is not in its weights: tiny CLIPs have heads of ``CLIP_HEAD_WIDTH``.
* the tiny T5's output zero-padded to T5-XXL's width (4096), as SD3's text encoder pads CLIP's: SD3
  stacks CLIP and T5 tokens and needs both 4096 wide, and the diffusion models' text projections then
  have their real input width.

Vocabularies stay full size (the host's real tokenizers emit ids up to 49407 and 32127), so the token
embeddings dominate the files; everything else is small. The VAE is a 16-channel TAESD (the host's
AutoencoderKL has fixed 128..512 channels, 84M parameters), loaded by ``VAELoader`` as a single file.

Weights are drawn per state-dict key from a generator seeded by the key's name, so the files are
byte-identical whichever host builds them. Both DiTs normalise queries and keys (RMSNorm with a learnt
scale), which takes the projections' scale out of the attention logits: the q/k norm scales are raised
instead (``QK_NORM_SCALE``) so the attention maps are clearly non-uniform.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from pathlib import Path

import safetensors.torch
import torch

from . import tiny_models

SEED = 20250107

# Loader folders (as ``folder_paths`` names them) and the file names written into them.
FOLDERS = ("diffusion_models", "text_encoders", "vae")
FLUX_FILE = "tiny_flux1_dev.safetensors"
SD35_FILE = "tiny_sd35_medium.safetensors"
CLIP_L_FILE = "tiny_clip_l.safetensors"
CLIP_G_FILE = "tiny_clip_g.safetensors"
T5XXL_FILE = "tiny_t5xxl.safetensors"
VAE_FILE = "tiny_vae_16ch_taesd.safetensors"

T5XXL_WIDTH = 4096  # what Flux and SD3 read from T5-XXL, and SD3 pads CLIP's output to
TINY_MAX_WIDTH = 256  # narrower than any real text encoder: only such ones get their sizes from the weights
CLIP_HEAD_WIDTH = 16

# Size overrides of the host's own JSON configs (clip_l: sd1_clip_config.json, clip_g: clip_config_bigg.json,
# t5xxl: t5_config_xxl.json); activations, special tokens and vocabularies stay the host's.
# CLIP-L needs 3 layers (SD3 reads layer -2); the host tells CLIP-G from CLIP-L by a 31st layer.
TINY_TEXT_ENCODERS = {
    "clip_l": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 32 // CLIP_HEAD_WIDTH,
               "num_hidden_layers": 3, "projection_dim": 32},
    "clip_g": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 32 // CLIP_HEAD_WIDTH,
               "num_hidden_layers": 32, "projection_dim": 32},
    "t5xxl": {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2},
}
_HOST_TEXT_CONFIGS = {"clip_l": "sd1_clip_config.json", "clip_g": "clip_config_bigg.json",
                      "t5xxl": "text_encoders/t5_config_xxl.json"}
POOLED_WIDTH = {"flux": TINY_TEXT_ENCODERS["clip_l"]["hidden_size"],  # CLIP-L's pooled output, unprojected
                "sd3": TINY_TEXT_ENCODERS["clip_l"]["hidden_size"] + TINY_TEXT_ENCODERS["clip_g"]["projection_dim"]}

# Flux.1-dev: double-stream then single-stream blocks, guidance embedding, 16 latent channels in 2x2 patches.
# The rotary axes keep Flux's proportions (16, 56, 56 of 128) within a head of 32.
FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "hidden_size": 64,
    "num_heads": 2, "axes_dim": [4, 14, 14], "mlp_ratio": 4.0, "theta": 10000, "depth": 1, "depth_single_blocks": 2,
    "vec_in_dim": POOLED_WIDTH["flux"], "context_in_dim": T5XXL_WIDTH, "qkv_bias": True, "guidance_embed": True,
    "txt_ids_dims": [], "yak_mlp": False, "txt_norm": False,
}
FLUX_HEADS = {"num_heads": FLUX_CONFIG["num_heads"], "axes_dim": FLUX_CONFIG["axes_dim"]}

# SD3.5-Medium: the MMDiT-X (an image-only self-attention in the first joint blocks; SD3.5-M: 13 of 24), RMS
# q/k norms, a stored 2D sine-cosine position table cropped to the image (64 patches a side: up to 1024 px).
# The host makes width 64 * depth and one head per 64, so depth 2 gives 2 heads and one ordinary and one last
# (pre-only) context block. SD3.5-M has no register tokens or context processor.
SD35_DEPTH = 2
SD35_POS_EMBED_SIZE = 64
SD35_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": SD35_DEPTH, "input_size": None,
    "adm_in_channels": POOLED_WIDTH["sd3"],
    "context_embedder_config": {"target": "torch.nn.Linear",
                                "params": {"in_features": T5XXL_WIDTH, "out_features": 64 * SD35_DEPTH}},
    "num_patches": SD35_POS_EMBED_SIZE ** 2, "pos_embed_max_size": SD35_POS_EMBED_SIZE, "qk_norm": "rms",
    "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [0],
}

# Attention: q, k, v projections drawn with this spread (Flux's single blocks project q, k, v and the MLP
# input in one ``linear1``), and the q/k RMSNorm scales set to this: logits of spread about its square.
QKV_STD = 0.15
QK_NORM_SCALE = 2.0
QKV_WEIGHTS = ("qkv.weight", "linear1.weight")
QK_NORM_SCALES = ("norm.query_norm.scale", "norm.key_norm.scale", "ln_q.weight", "ln_k.weight")
EMBEDDINGS = ("token_embedding.weight", "position_embedding.weight", "shared.weight", "relative_attention_bias.weight")

# Stored in half precision, as the real files are: half the size, and the host computes on the CPU in float32.
HALF = torch.float16


# --------------------------------------------------------------------------------------------
# Deterministic weights


def _generator(key: str) -> torch.Generator:
    return tiny_models._generator(key, SEED)


def _init_tensor(key: str, shape: torch.Size) -> torch.Tensor:
    gen = _generator(key)
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) == 0:
        return torch.zeros(()) if key.endswith("vae_shift") else torch.ones(())  # vae_scale
    if key.endswith(QK_NORM_SCALES):
        return torch.full(shape, QK_NORM_SCALE)
    if key.endswith(EMBEDDINGS):
        return torch.randn(shape, generator=gen) * 0.02
    if key.endswith(QKV_WEIGHTS):
        return torch.randn(shape, generator=gen) * QKV_STD
    if len(shape) == 1 and ("norm" in key or ".ln_" in key):
        return torch.ones(shape) if leaf in ("weight", "scale") else torch.zeros(shape)
    if len(shape) == 1:  # biases
        return (torch.rand(shape, generator=gen) * 2 - 1) * 0.05
    return torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))


def _fill(named_shapes: dict[str, torch.Size], seed_prefix: str) -> dict[str, torch.Tensor]:
    return {k: _init_tensor(seed_prefix + k, s).to(HALF).contiguous() for k, s in named_shapes.items()}


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Building blocks from the host's own classes (on the meta device: shapes only)


def _meta(build):
    import comfy.ops  # ComfyUI's: importable once host.boot put it on sys.path

    with torch.device("meta"), torch.no_grad():
        return build(comfy.ops.disable_weight_init)


def text_encoder_config(name: str) -> dict:
    """The host's JSON config of a text encoder with the tiny sizes."""
    import comfy.sd1_clip  # ComfyUI's: importable once host.boot put it on sys.path

    config = json.loads((Path(comfy.sd1_clip.__file__).parent / _HOST_TEXT_CONFIGS[name]).read_text())
    return {**config, **TINY_TEXT_ENCODERS[name]}


def _clip_state_dict(name: str) -> dict[str, torch.Tensor]:
    import comfy.clip_model

    model = _meta(lambda ops: comfy.clip_model.CLIPTextModel(text_encoder_config(name), None, None, ops))
    return _fill(_shapes(model), f"{name}:")


def _t5_state_dict() -> dict[str, torch.Tensor]:
    import comfy.text_encoders.t5

    model = _meta(lambda ops: comfy.text_encoders.t5.T5(text_encoder_config("t5xxl"), None, None, ops))
    return _fill(_shapes(model), "t5xxl:")


def _vae_state_dict() -> dict[str, torch.Tensor]:
    import comfy.taesd.taesd

    model = _meta(lambda ops: comfy.taesd.taesd.TAESD(latent_channels=16))
    return _fill(_shapes(model), "vae16:")


def flux_state_dict() -> dict[str, torch.Tensor]:
    import comfy.ldm.flux.model

    model = _meta(lambda ops: comfy.ldm.flux.model.Flux(**FLUX_CONFIG, operations=ops))
    return _fill(_shapes(model), "flux:")


def sd35_state_dict() -> dict[str, torch.Tensor]:
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    model = _meta(lambda ops: mmdit.OpenAISignatureMMDITWrapper(**SD35_CONFIG, operations=ops))
    sd = _fill(_shapes(model), "sd35:")
    # SD3's position table is the 2D sine-cosine one, cropped around the image's centre.
    table = mmdit.get_2d_sincos_pos_embed(64 * SD35_DEPTH, SD35_POS_EMBED_SIZE)
    sd["pos_embed"] = torch.from_numpy(table).to(HALF).unsqueeze(0).contiguous()
    return sd


def _save(sd: dict[str, torch.Tensor], path: Path, name: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata entry: safetensors writes several in a random order, and the files would differ byte-wise.
    safetensors.torch.save_file(sd, str(path), metadata={"fpe_tiny_model": f"{name}, seed {SEED}"})
    return path.name


def _write_shared(models_dir: Path, clip_g: bool) -> None:
    models_dir = Path(models_dir)
    _save(_clip_state_dict("clip_l"), models_dir / "text_encoders" / CLIP_L_FILE, "tiny_clip_l")
    if clip_g:
        _save(_clip_state_dict("clip_g"), models_dir / "text_encoders" / CLIP_G_FILE, "tiny_clip_g")
    _save(_t5_state_dict(), models_dir / "text_encoders" / T5XXL_FILE, "tiny_t5xxl")
    _save(_vae_state_dict(), models_dir / "vae" / VAE_FILE, "tiny_vae_16ch_taesd")


def write_tiny_flux(models_dir: Path) -> dict:
    """Write a tiny Flux.1-dev (diffusion_models/), CLIP-L and T5-XXL (text_encoders/) and a 16-channel VAE
    (vae/) under ``models_dir``; returns the loader inputs that load them:
    UNETLoader ``unet_name``, DualCLIPLoader ``clip_name1``, ``clip_name2`` and ``type``, VAELoader ``vae_name``."""
    models_dir = Path(models_dir)
    _save(flux_state_dict(), models_dir / "diffusion_models" / FLUX_FILE, "tiny_flux1_dev")
    _write_shared(models_dir, clip_g=False)
    return {"unet_name": FLUX_FILE, "clip_name1": CLIP_L_FILE, "clip_name2": T5XXL_FILE, "type": "flux",
            "vae_name": VAE_FILE}


def write_tiny_sd35(models_dir: Path) -> dict:
    """Write a tiny SD3.5-Medium MMDiT (diffusion_models/), CLIP-L, CLIP-G and T5-XXL (text_encoders/) and a
    16-channel VAE (vae/) under ``models_dir``; returns the loader inputs that load them:
    UNETLoader ``unet_name``, TripleCLIPLoader ``clip_name1..3``, VAELoader ``vae_name``.
    (DualCLIPLoader type ``sd3`` with CLIP-L and CLIP-G, no T5, loads them too.)"""
    models_dir = Path(models_dir)
    _save(sd35_state_dict(), models_dir / "diffusion_models" / SD35_FILE, "tiny_sd35_medium")
    _write_shared(models_dir, clip_g=True)
    return {"unet_name": SD35_FILE, "clip_name1": CLIP_L_FILE, "clip_name2": CLIP_G_FILE, "clip_name3": T5XXL_FILE,
            "vae_name": VAE_FILE}


def add_model_folders(models_dir: Path) -> None:
    """Make the running host's loaders list the files under ``models_dir`` (diffusion_models/, text_encoders/, vae/)."""
    import folder_paths  # ComfyUI's: importable once host.boot put it on sys.path

    for folder in FOLDERS:
        (Path(models_dir) / folder).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(folder, str(Path(models_dir) / folder))


# --------------------------------------------------------------------------------------------
# What the host needs to load them (tests only)


def text_encoder_sizes(sd: dict) -> tuple[str, dict] | None:
    """(the host's model name, config sizes) of a tiny text encoder's state dict (HF CLIP or T5 layout),
    read from its weight shapes; None for any other, so real encoders load exactly as before."""
    if "text_model.embeddings.token_embedding.weight" in sd:
        width = sd["text_model.embeddings.token_embedding.weight"].shape[1]
        if width > TINY_MAX_WIDTH:
            return None
        layers = 0
        while f"text_model.encoder.layers.{layers}.mlp.fc1.weight" in sd:
            layers += 1
        name = "clip_g" if layers > 30 else "clip_l"  # the host's own test (a 31st layer)
        return name, {"hidden_size": width, "num_hidden_layers": layers, "projection_dim": width,
                      "intermediate_size": sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                      "num_attention_heads": max(1, width // CLIP_HEAD_WIDTH)}
    if "shared.weight" in sd and "encoder.block.0.layer.0.SelfAttention.q.weight" in sd:
        width = sd["shared.weight"].shape[1]
        if width > TINY_MAX_WIDTH:
            return None
        layers = 0
        while f"encoder.block.{layers}.layer.0.SelfAttention.q.weight" in sd:
            layers += 1
        buckets, heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
        return "t5xxl", {"d_model": width, "num_layers": layers, "num_heads": heads,
                         "d_kv": sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
                         "d_ff": sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
                         "relative_attention_num_buckets": buckets}
    return None


_REGISTERED: list = []


def register_tiny_mmdit() -> None:
    """Let the running host load the tiny files (see the module's docstring); real models are unaffected."""
    if _REGISTERED:
        return
    import comfy.sd  # ComfyUI's: importable once host.boot put it on sys.path
    import comfy.supported_models as supported_models
    import comfy.text_encoders.sd3_clip as sd3_clip

    class TinyFlux(supported_models.Flux):
        unet_config = {"image_model": "flux", "guidance_embed": True, "hidden_size": FLUX_CONFIG["hidden_size"]}
        unet_extra_config = dict(FLUX_HEADS)

    supported_models.models.insert(0, TinyFlux)

    # The host builds a text encoder from its JSON config (a model_options entry "<name>_model_config" overrides
    # it), then loads the weights: the sizes go in on the way, where the weights are already at hand.
    clip_init = comfy.sd.CLIP.__init__
    signature = inspect.signature(clip_init)

    @functools.wraps(clip_init)
    def init_with_tiny_sizes(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        state_dicts = bound.arguments.get("state_dict")
        sizes = [text_encoder_sizes(sd) for sd in state_dicts] if isinstance(state_dicts, list) else []
        if any(sizes):
            options = dict(bound.arguments.get("model_options") or {})
            for name, config in filter(None, sizes):
                options[f"{name}_model_config"] = {**options.get(f"{name}_model_config", {}), **config}
            bound.arguments["model_options"] = options
        clip_init(*bound.args, **bound.kwargs)

    comfy.sd.CLIP.__init__ = init_with_tiny_sizes

    # T5-XXL's output is 4096 wide; the tiny one's is zero-padded to that, as SD3 pads CLIP's.
    encode = sd3_clip.T5XXLModel.encode_token_weights

    @functools.wraps(encode)
    def encode_at_t5xxl_width(self, token_weight_pairs):
        out = encode(self, token_weight_pairs)
        missing = T5XXL_WIDTH - out[0].shape[-1]
        if missing <= 0:
            return out
        return (torch.nn.functional.pad(out[0], (0, missing)), *out[1:])

    sd3_clip.T5XXLModel.encode_token_weights = encode_at_t5xxl_width
    _REGISTERED.append((TinyFlux, clip_init, encode))
