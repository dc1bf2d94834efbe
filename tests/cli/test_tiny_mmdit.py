"""The tiny Flux.1-dev and SD3.5-Medium files (fpe_headless.comfy.tiny_mmdit): written in well under a second,
a few MB, byte-identical on every build, loaded by ComfyUI's stock loaders (UNETLoader, DualCLIPLoader flux,
TripleCLIPLoader, VAELoader) with no weight missing, and a stock text-to-image graph of each runs through the
real executor to a finite latent and an image of the asked size, with clearly non-uniform attention."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from conftest import HOST
from fpe_headless.comfy import tiny_mmdit

_supported = pytest.importorskip("comfy.supported_models")
pytestmark = pytest.mark.skipif(
    not hasattr(_supported, "Flux") or not (hasattr(_supported, "SD3") or hasattr(_supported, "SD35")),
    reason="ComfyUI of early 2024 has no Flux/SD3")

WIDTH, HEIGHT = 96, 64  # not square: a swapped width and height shows


@pytest.fixture(scope="module")
def tiny_files():
    """({"flux": loader inputs, "sd35": loader inputs}, seconds to write them), in the host's models folders."""
    tiny_mmdit.register_tiny_mmdit()
    models = HOST.workdir / "models"
    tiny_mmdit.add_model_folders(models)
    start = time.perf_counter()
    files = {"flux": tiny_mmdit.write_tiny_flux(models), "sd35": tiny_mmdit.write_tiny_sd35(models)}
    return files, time.perf_counter() - start


def _graph(family: str, files: dict) -> dict:
    """Stock text-to-image in API format: 4 euler steps, the latent and the image saved. Flux: DualCLIPLoader
    (flux), FluxGuidance, cfg 1; SD3.5: TripleCLIPLoader, cfg 4 (the negative prompt used)."""
    if family == "flux":
        clip = {"class_type": "DualCLIPLoader", "inputs": {k: files[k] for k in ("clip_name1", "clip_name2", "type")}}
    else:
        names = ("clip_name1", "clip_name2", "clip_name3")
        clip = {"class_type": "TripleCLIPLoader", "inputs": {k: files[k] for k in names}}
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": files["unet_name"], "weight_dtype": "default"}},
        "2": clip,
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae_name"]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a photo of a cat on a red sofa"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry"}},
        "8": {"class_type": "EmptySD3LatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["8", 0], "seed": 7,
            "steps": 4, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": f"tiny_{family}"}},
        "13": {"class_type": "SaveLatent",
               "inputs": {"samples": ["9", 0], "filename_prefix": f"latents/tiny_{family}"}},
    }
    if family == "flux":
        graph["10"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 3.5}}
        graph["9"]["inputs"].update(positive=["10", 0], cfg=1.0)
    return graph


def _saved(result, node_id: str, kind: str):
    (entry,) = result.outputs[node_id][kind]
    return HOST.workdir / "output" / entry["subfolder"] / entry["filename"]


def test_files_are_small_quick_and_byte_identical(tiny_files, tmp_path):
    files, seconds = tiny_files
    assert seconds < 5
    models = HOST.workdir / "models"
    written = sorted(p for p in models.rglob("tiny_*.safetensors") if p.parent.name in tiny_mmdit.FOLDERS)
    assert len(written) == 6  # Flux, SD3.5, CLIP-L, CLIP-G, T5-XXL, VAE
    assert sum(p.stat().st_size for p in written) < 24_000_000
    again = tiny_mmdit.write_tiny_sd35(tmp_path) | tiny_mmdit.write_tiny_flux(tmp_path)
    assert again.keys() >= {"unet_name", "clip_name1", "clip_name2", "vae_name"}
    for path in written:
        assert (tmp_path / path.relative_to(models)).read_bytes() == path.read_bytes(), path.name


def test_text_encoder_sizes_come_from_the_weights_of_tiny_encoders_only(tiny_files):
    models = HOST.workdir / "models" / "text_encoders"
    t5 = safetensors.torch.load_file(str(models / tiny_mmdit.T5XXL_FILE))
    name, sizes = tiny_mmdit.text_encoder_sizes(t5)
    assert name == "t5xxl" and sizes.items() >= tiny_mmdit.TINY_TEXT_ENCODERS["t5xxl"].items()
    for clip in ("clip_l", "clip_g"):
        sd = safetensors.torch.load_file(str(models / getattr(tiny_mmdit, f"{clip.upper()}_FILE")))
        assert tiny_mmdit.text_encoder_sizes(sd) == (clip, tiny_mmdit.TINY_TEXT_ENCODERS[clip])
    # a real-width encoder is left to the host's own config
    assert tiny_mmdit.text_encoder_sizes({"shared.weight": torch.zeros(2, 4096),
                                          "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(1)}) is None


@pytest.mark.parametrize("family", ["flux", "sd35"])
def test_stock_graph_runs_through_the_executor(family, tiny_files, caplog):
    from fpe_harness.execute import Executor

    files = tiny_files[0][family]
    with caplog.at_level(logging.WARNING):
        start = time.perf_counter()
        result = Executor().run(_graph(family, files))
        seconds = time.perf_counter() - start
    assert seconds < 30
    # every weight the host's model needs is in the files (the host only warns about missing ones)
    assert not [r.message for r in caplog.records if "missing" in r.message], "weights missing"
    latent = safetensors.torch.load_file(str(_saved(result, "13", "latents")))["latent_tensor"]
    assert latent.shape == (1, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.isfinite(latent).all() and latent.std() > 0.1
    image = np.asarray(Image.open(_saved(result, "12", "images")))
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert image.std() > 2  # a picture, not a constant


@pytest.mark.parametrize("family", ["flux", "sd35"])
def test_attention_is_clearly_non_uniform(family, tiny_files, monkeypatch):
    """Every attention call of a 4-step run: the mean row entropy well below a uniform map's."""
    import comfy.ldm.flux.math as flux_math
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    from fpe_harness.execute import call_node

    entropies: list[float] = []
    module = flux_math if family == "flux" else mmdit
    files = tiny_files[0][family]
    model = call_node("UNETLoader", unet_name=files["unet_name"], weight_dtype="default")[0]
    if family == "flux":
        clip = call_node("DualCLIPLoader", clip_name1=files["clip_name1"], clip_name2=files["clip_name2"],
                         type="flux")[0]
    else:
        clip = call_node("TripleCLIPLoader", clip_name1=files["clip_name1"], clip_name2=files["clip_name2"],
                         clip_name3=files["clip_name3"])[0]
    cond = call_node("CLIPTextEncode", clip=clip, text="a photo of a cat on a red sofa")[0]
    latent = call_node("EmptySD3LatentImage", width=WIDTH, height=HEIGHT, batch_size=1)[0]
    monkeypatch.setattr(module, "optimized_attention", _recording(module.optimized_attention, entropies))
    call_node("KSampler", model=model, seed=7, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple",
              positive=cond, negative=cond, latent_image=latent, denoise=1.0)
    # cfg 1: the conditional pass only; 3 attentions a step (Flux: 1 double + 2 single blocks; SD3.5: 2 joint
    # blocks + the MMDiT-X image self-attention of the first)
    assert len(entropies) == 4 * 3
    assert max(entropies) < 0.9, entropies  # 1.0: uniform


def _recording(attention, entropies: list):
    """``attention`` that also records each call's mean row entropy (1: uniform, 0: one key per query)."""
    def recording(q, k, v, heads, *args, skip_reshape=False, **kwargs):
        qh, kh = q, k
        if not skip_reshape:  # (batch, tokens, heads * width) -> (batch, heads, tokens, width)
            qh, kh = (t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k))
        probs = torch.softmax(qh.float() @ kh.float().transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(probs.shape[-1])
        entropies.append(entropy.mean().item())
        return attention(q, k, v, heads, *args, skip_reshape=skip_reshape, **kwargs)

    return recording
