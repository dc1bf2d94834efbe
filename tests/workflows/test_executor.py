"""ComfyUI's real PromptExecutor runs UI-format workflows end to end on the tiny model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import HOST
from fpe_harness.execute import PromptFailed, call_node
from fpe_headless.comfy.workflow import load_workflow, to_api

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def txt2img(tiny_sd15_ckpt):
    return to_api(load_workflow(FIXTURES / "txt2img_tiny_sd15.json"))


def _saved_image(result, node_id="9") -> np.ndarray:
    images = result.outputs[node_id]["images"]
    assert len(images) == 1 and images[0]["type"] == "output"
    path = HOST.workdir / "output" / images[0]["subfolder"] / images[0]["filename"]
    return np.asarray(Image.open(path))


def test_stock_txt2img_runs_through_the_executor_and_matches_direct_node_calls(executor, txt2img, tiny_sd15):
    result = executor.run(txt2img)
    saved = _saved_image(result)
    assert saved.shape == (64, 96, 3)  # EmptyLatentImage 96x64 -> 12x8 latent -> 96x64 image
    assert saved.std() > 5  # a picture, not a constant
    # The same graph by direct node calls gives the same pixels, bit for bit.
    model, clip, vae = tiny_sd15
    latent = call_node("EmptyLatentImage", width=96, height=64, batch_size=1)[0]
    samples = call_node(
        "KSampler", model=model, seed=42, steps=6, cfg=7.5, sampler_name="euler", scheduler="normal",
        positive=call_node("CLIPTextEncode", clip=clip, text="a photo of a cat sitting on a red sofa")[0],
        negative=call_node("CLIPTextEncode", clip=clip, text="blurry, low quality")[0],
        latent_image=latent, denoise=1.0,
    )[0]
    image = call_node("VAEDecode", vae=vae, samples=samples)[0][0].numpy()
    expected = np.clip(255.0 * image, 0, 255).astype(np.uint8)
    assert np.array_equal(saved, expected)


def test_requeue_reuses_cached_outputs_and_reruns_only_what_changed(executor, txt2img):
    executor.run(txt2img)
    again = executor.run(txt2img)
    assert again.executed == []  # nothing changed: every output comes from the cache
    changed = copy.deepcopy(txt2img)
    changed["6"]["inputs"]["text"] = "a photo of a dog"
    rerun = executor.run(changed)
    assert set(rerun.executed) == {"6", "3", "8", "9"}
    assert {"4", "5", "7"} <= set(rerun.cached)


def test_validation_error_names_the_bad_input(executor, txt2img):
    bad = copy.deepcopy(txt2img)
    bad["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    with pytest.raises(PromptFailed, match="ckpt_name"):
        executor.run(bad)


def test_runtime_error_is_reported_with_node_and_message(executor, txt2img, tiny_sdxl_ckpt):
    # An SDXL text encoder (160-wide context) feeding the SD1.5-layout UNet (64) fails in sampling.
    bad = copy.deepcopy(txt2img)
    bad["10"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sdxl_ckpt}}
    bad["6"]["inputs"]["clip"] = ["10", 1]
    result = executor.run(bad, expect_success=False)
    assert not result.success
    assert result.error["node_id"] == "3" and result.error["node_type"] == "KSampler"
    assert result.error["exception_message"]


def test_call_node_runs_v1_and_v3_nodes(tiny_sd15):
    import comfy.samplers

    model = tiny_sd15[0]
    sampler = call_node("KSamplerSelect", sampler_name="euler")[0]  # a V3 node in current ComfyUI
    assert isinstance(sampler, comfy.samplers.KSAMPLER)
    sigmas = call_node("BasicScheduler", model=model, scheduler="normal", steps=5, denoise=1.0)[0]
    # comfy.samplers.KSampler takes the ModelPatcher in current ComfyUI, the inner model in 2024.
    target = model if HOST.is_current else model.model
    expected = comfy.samplers.KSampler(target, steps=5, device="cpu", sampler="euler", scheduler="normal").sigmas
    assert sigmas.shape == (6,) and torch.equal(sigmas, expected)
