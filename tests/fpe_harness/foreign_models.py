"""Tiny models without UNet attention (DiT / MMDiT families), built from the host's own classes.

Each is what ComfyUI's loaders make of a checkpoint of that family: the host's config class
(``comfy.supported_models``) with a tiny ``unet_config``, its ``get_model`` (the host's
``model_base`` class and backbone), random weights, wrapped in a ``comfy.model_patcher.ModelPatcher``
on the CPU. A few hundred thousand parameters each: built in well under a second, a few MB.

Which exist depends on the host: ComfyUI of early 2024 has Stable Cascade (stage C's ``StageC``)
but no SD3 or Flux; current ComfyUI has SD3 (MMDiT), Flux, AuraFlow and more.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ForeignSpec:
    config: str  # the comfy.supported_models class
    latent_channels: int  # of the family's latent format (the 2024 host's formats do not say)
    unet_config: dict = field(default_factory=dict)  # tiny, as comfy.model_detection would detect it


SPECS = {
    # Stable Cascade stage C (prior): StageC, a stack of ResBlock/TimestepBlock/AttnBlock levels; both hosts.
    "Stable_Cascade_C": ForeignSpec("Stable_Cascade_C", 16, {
        "stable_cascade_stage": "c", "c_in": 16, "c_out": 16, "c_r": 16, "c_cond": 32, "c_hidden": [32, 32],
        "nhead": [2, 2], "blocks": [[1, 1], [1, 1]], "block_repeat": [[1, 1], [1, 1]],
        "level_config": ["CTA", "CTA"], "c_clip_text": 32, "c_clip_text_pooled": 32, "c_clip_img": 32,
        "c_clip_seq": 4}),
    # SD3: the MMDiT (joint blocks; hidden size 64 * depth), as detected from an SD3 checkpoint.
    "SD3": ForeignSpec("SD3", 16, {
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
        "adm_in_channels": 32,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
        "num_patches": 64, "pos_embed_max_size": 8, "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": []}),
    # SD3.5-Medium: the MMDiT-X (an image-only self-attention in the first joint blocks) with RMS q/k norms.
    "SD35M": ForeignSpec("SD3", 16, {
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
        "adm_in_channels": 32,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
        "num_patches": 64, "pos_embed_max_size": 8, "pos_embed_scaling_factor": None, "qk_norm": "rms",
        "x_block_self_attn_layers": [0]}),
    # Flux (dev): double- and single-stream DiT blocks.
    "Flux": ForeignSpec("Flux", 16, {
        "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "vec_in_dim": 32,
        "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1,
        "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True,
        "txt_ids_dims": []}),
    # AuraFlow: its own MMDiT (double then single layers), SDXL latents; the config class is picked by
    # the text width 2048 (Pile-T5), kept (a 2048 x 64 projection).
    "AuraFlow": ForeignSpec("AuraFlow", 4, {
        "cond_seq_dim": 2048, "max_seq": 64, "n_double_layers": 1, "n_layers": 2, "dim": 64, "n_heads": 2,
        "global_conddim": 64, "patch_size": 2, "in_channels": 4, "out_channels": 4}),
}


def available() -> list[str]:
    """The foreign families this host's ComfyUI has (config class present), in SPECS order."""
    import comfy.supported_models

    return [name for name, spec in SPECS.items() if hasattr(comfy.supported_models, spec.config)]


# Attention projections of the MMDiT blocks (Flux's single blocks project q, k, v in ``linear1``): N(0, 0.02)
# weights give near-uniform attention, in which any attention edit is invisible; the edit tests scale them up.
ATTENTION_WEIGHTS = ("qkv.weight", "linear1.weight", "norm.query_norm.scale", "norm.key_norm.scale", "ln_q.weight",
                     "ln_k.weight")


def build(name: str, seed: int = 0, attention_scale: float = 1.0, scale: float = 0.02):
    """A ModelPatcher (CPU) of a tiny, randomly initialised model of family ``name`` (weights N(0, ``scale``²);
    attention projections times ``attention_scale``)."""
    import comfy.model_patcher
    import comfy.supported_models

    spec = SPECS[name]
    config_class = getattr(comfy.supported_models, spec.config)
    unet_config = dict(spec.unet_config)
    assert config_class.matches(unet_config), f"{spec.config} does not match its tiny unet_config"
    config = config_class(unet_config)
    config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = config.get_model({}, "", device=cpu)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # The host builds with weight-init disabled (uninitialised memory), as a loader fills them next.
        # Only the backbone's: model_sampling's buffers (the flow shift's sigmas) are the host's schedule.
        backbone = model.diffusion_model
        for key, tensor in list(backbone.named_parameters()) + list(backbone.named_buffers()):
            if tensor.is_floating_point():
                factor = attention_scale if key.endswith(ATTENTION_WEIGHTS) else 1.0
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * scale * factor)
    model = model.to(cpu).eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def size_bytes(patcher) -> int:
    return sum(t.numel() * t.element_size() for t in list(patcher.model.parameters()) + list(patcher.model.buffers()))


def empty_latent(name: str, batch: int = 1, height: int = 8, width: int = 8, fill: float = 0.0) -> dict:
    """A LATENT of the family's channel count (``fill`` 0: empty, as an empty-latent node makes)."""
    generator = torch.Generator().manual_seed(1)
    samples = torch.randn(batch, SPECS[name].latent_channels, height, width, generator=generator) * fill
    return {"samples": samples}


class ForwardCalled(AssertionError):
    pass


@contextlib.contextmanager
def forbid_forward(patcher):
    """Within: any call of the model (``apply_model``) or its backbone's forward fails and is recorded.

    Yields the list of calls, to assert that none was made even if a node caught the failure.
    """
    calls: list[str] = []
    inner = patcher.model

    def apply_model(*args, **kwargs):
        calls.append("apply_model")
        raise ForwardCalled(f"{type(inner).__name__}.apply_model was called")

    def pre_hook(module, args):
        calls.append("diffusion_model.forward")
        raise ForwardCalled(f"{type(module).__name__}.forward was called")

    handle = inner.diffusion_model.register_forward_pre_hook(pre_hook)
    inner.apply_model = apply_model  # an instance attribute shadows the method
    try:
        yield calls
    finally:
        handle.remove()
        del inner.apply_model
