"""The shipped workflows through ComfyUI's executor (SD1.5, SDXL, Flux.1 and SD3.5, on the tiny models): outputs and
caching. The Flux.1 and SD3.5 ones skip on ComfyUI of early 2024, which has neither."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from fpe_harness.shipped import NO_MMDIT, host_has_mmdit, shipped_params, shrink, use_tiny_checkpoints
from fpe_headless.comfy.workflow import load_workflow, to_api

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
GENERATED = [WORKFLOWS / "fpe_generated_edit.json", WORKFLOWS / "fpe_sdxl_generated_edit.json"]
MMDIT_GENERATED = [WORKFLOWS / "fpe_flux_generated_edit.json", WORKFLOWS / "fpe_sd35_generated_edit.json"]
MMDIT_REAL = WORKFLOWS / "fpe_flux_real_image_edit.json"
INJECTS = ("FPESelfAttnInject", "FPEMMDiTInject")
REAL = [WORKFLOWS / "fpe_real_image_edit.json", WORKFLOWS / "fpe_sdxl_real_image_edit.json"]
PROMPT_NODES = ("CLIPTextEncode", "CLIPTextEncodeSDXL")


def _api(path, tiny_for_shipped, **size):
    return shrink(to_api(use_tiny_checkpoints(load_workflow(path), tiny_for_shipped)), **size)


def _node_id(api, class_type, title=None):
    types = class_type if isinstance(class_type, tuple) else (class_type,)
    return next(k for k, v in api.items()
                if v["class_type"] in types and (title is None or v["_meta"]["title"].startswith(title)))


def _set_prompt(api, node_id, text):
    """The prompt of a CLIPTextEncode, or both texts of a CLIPTextEncodeSDXL."""
    inputs = api[node_id]["inputs"]
    for key in ("text", "text_g", "text_l"):
        if key in inputs:
            inputs[key] = text


@pytest.mark.parametrize("path", shipped_params(GENERATED + MMDIT_GENERATED))
def test_workflow_saves_source_edit_and_side_by_side(path, executor, tiny_for_shipped, comfy_host):
    api = _api(path, tiny_for_shipped)
    capture = api[_node_id(api, "FPESourceCapture")]["inputs"]
    sampler = api[_node_id(api, "KSampler")]["inputs"]
    for key in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"):
        assert capture[key] == sampler[key], key
    result = executor.run(api)
    images = {}
    for node_id, out in result.outputs.items():
        for image in out.get("images", []):
            file = comfy_host.workdir / "output" / image["subfolder"] / image["filename"]
            images[api[node_id]["_meta"]["title"]] = np.asarray(Image.open(file))
    source, edit, both = images["Save source"], images["Save edit"], images["Save source | edit"]
    assert source.shape == edit.shape == (64, 64, 3)
    assert both.shape == (64, 128, 3)
    assert np.array_equal(both[:, :64], source) and np.array_equal(both[:, 64:], edit)
    assert source.std() > 2 and edit.std() > 2  # pictures, not constants


@pytest.mark.parametrize("path", shipped_params(GENERATED + MMDIT_GENERATED))
def test_changing_only_the_target_prompt_does_not_rerun_the_capture(path, executor, tiny_for_shipped):
    api = _api(path, tiny_for_shipped)
    capture_id = _node_id(api, "FPESourceCapture")
    target_id = _node_id(api, PROMPT_NODES, "Target prompt")
    executor.run(api)
    _set_prompt(api, target_id, "a photo of wooden ducks walking on street")
    result = executor.run(api)
    assert capture_id not in result.executed
    assert _node_id(api, "KSampler") in result.executed and target_id in result.executed
    assert _node_id(api, INJECTS) not in result.executed  # its inputs did not change either


@pytest.mark.parametrize("path", REAL, ids=[p.stem for p in REAL])
def test_real_image_workflow_previews_the_reconstruction_and_caches_the_inversion(path, executor, tiny_for_shipped,
                                                                                  comfy_host):
    api = _api(path, tiny_for_shipped)
    invert_id = _node_id(api, "FPEDDIMInvert")
    invert, sampler = api[invert_id]["inputs"], api[_node_id(api, "KSamplerAdvanced")]["inputs"]
    assert invert["reconstruction_check"] is True and invert["cfg"] == 1.0
    assert sampler["add_noise"] == "disable" and sampler["sampler_name"] == "ddim"
    for key in ("steps", "scheduler"):
        assert invert[key] == sampler[key], key
    result = executor.run(api)
    preview = result.outputs[invert_id]
    assert "dB" in preview["text"][0]
    image = preview["images"][0]
    shown = np.asarray(Image.open(comfy_host.workdir / image["type"] / image["subfolder"] / image["filename"]))
    assert shown.shape[1] == 128 and shown.shape[0] > 64  # photo | reconstruction, caption strip below
    target_id = _node_id(api, PROMPT_NODES, "Target prompt")
    _set_prompt(api, target_id, "a photo of a golden apple on a wooden table")
    again = executor.run(api)
    assert invert_id not in again.executed and _node_id(api, "KSamplerAdvanced") in again.executed


@pytest.mark.parametrize("path", [GENERATED[1], REAL[1]], ids=lambda p: p.stem)
def test_sdxl_workflows_make_1024_px_images_with_matching_size_conditioning(path):
    api = to_api(load_workflow(path))
    sizes = {(n["inputs"]["width"], n["inputs"]["height"]) for n in api.values()
             if n["class_type"] in ("EmptyLatentImage", "ImageScale")}
    assert sizes == {(1024, 1024)}
    prompts = [n for n in api.values() if n["class_type"] in PROMPT_NODES]
    assert [n["class_type"] for n in prompts] == ["CLIPTextEncodeSDXL"] * 3  # source, target, negative
    for p in (n["inputs"] for n in prompts):
        assert p["text_g"] == p["text_l"]  # the same prompt for both text encoders
        assert (p["width"], p["height"], p["crop_w"], p["crop_h"], p["target_width"], p["target_height"]) == (
            1024, 1024, 0, 0, 1024, 1024)
    fpe = [n["inputs"] for n in api.values() if n["class_type"] in ("FPESourceCapture", "FPEDDIMInvert")]
    assert [(n["store_layers"], n["precision"]) for n in fpe] == [("official", "fp16")]


LOCAL = [WORKFLOWS / "fpe_local_edit.json", WORKFLOWS / "fpe_real_image_local_edit.json"]


@pytest.mark.parametrize("path", LOCAL, ids=[p.stem for p in LOCAL])
def test_local_edit_workflows_show_their_mask(path, executor, tiny_for_shipped, comfy_host, caplog):
    api = _api(path, tiny_for_shipped)
    local = api[_node_id(api, "FPELocalEdit")]["inputs"]
    painted = any(node["class_type"] == "LoadImageMask" for node in api.values())
    assert painted == (path.stem == "fpe_real_image_local_edit")
    if painted:  # the painted mask reaches the node, from the channel it was painted in
        loader = next(node["inputs"] for node in api.values() if node["class_type"] == "LoadImageMask")
        assert loader["channel"] in ("red", "green", "blue", "alpha") and isinstance(local["mask"], list)
    else:
        assert local["words"].strip() and local["source_text"] and local["target_text"]
    with caplog.at_level("WARNING"):
        result = executor.run(api)
    assert "mask is empty" not in caplog.text
    image = result.outputs[_node_id(api, "FPELocalMask")]["images"][0]
    shown = np.asarray(Image.open(comfy_host.workdir / image["type"] / image["subfolder"] / image["filename"]))
    assert shown.shape[:2] == (64, 64)
    if painted:  # the apple's region: some of the picture, not all of it
        assert 0 < (shown[..., 0] > 127).mean() < 1


def _saved_images(result, api, comfy_host) -> dict:
    """{Save Image title: pixels} of a run."""
    images = {}
    for node_id, out in result.outputs.items():
        for image in out.get("images", []):
            if image["type"] == "output":
                file = comfy_host.workdir / "output" / image["subfolder"] / image["filename"]
                images[api[node_id]["_meta"]["title"]] = np.asarray(Image.open(file))
    return images


@pytest.mark.skipif(not host_has_mmdit(), reason=NO_MMDIT)
@pytest.mark.parametrize("path", MMDIT_GENERATED, ids=[p.stem for p in MMDIT_GENERATED])
def test_mmdit_edit_differs_from_a_plain_run_of_the_target(path, executor, tiny_for_shipped, comfy_host):
    """The Inject changes the picture: the same target KSampler on the unpatched model gives another image
    (10 steps: the default end 0.2 edits 2)."""
    api = _api(path, tiny_for_shipped, steps=10)
    sampler_id = _node_id(api, "KSampler")
    api["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": path.stem},
                  "_meta": {"title": "Save the edit's latent"}}
    result = executor.run(api)
    (entry,) = result.outputs["900"]["latents"]
    latent = safetensors.torch.load_file(str(comfy_host.workdir / "output" / entry["subfolder"] / entry["filename"]))
    assert latent["latent_tensor"].shape == (1, 16, 8, 8) and torch.isfinite(latent["latent_tensor"]).all()
    edit = _saved_images(result, api, comfy_host)["Save edit"]
    api[sampler_id]["inputs"]["model"] = api[_node_id(api, "FPEMMDiTInject")]["inputs"]["model"]  # the loader's
    plain = _saved_images(executor.run(api), api, comfy_host)["Save edit"]
    assert edit.shape == plain.shape == (64, 64, 3)
    changed = (edit != plain).any(axis=-1).mean()
    assert changed > 0.05, changed  # of the pixels (the tiny VAE's pictures are mostly dark: few move far)


@pytest.mark.skipif(not host_has_mmdit(), reason=NO_MMDIT)
@pytest.mark.parametrize("path", MMDIT_GENERATED + [MMDIT_REAL], ids=lambda p: p.stem)
def test_mmdit_workflows_use_the_models_settings_and_the_injects_defaults(path):
    from fpe_harness.execute import input_types

    api = to_api(load_workflow(path))
    flux = "flux" in path.stem
    loader = next(n["inputs"] for n in api.values() if n["class_type"] in ("DualCLIPLoader", "TripleCLIPLoader"))
    if flux:
        assert loader["type"] == "flux"
    assert next(n["inputs"] for n in api.values() if n["class_type"] == "UNETLoader")["unet_name"] == (
        "flux1-dev.safetensors" if flux else "sd3.5_medium.safetensors")
    guidance = [n["inputs"]["guidance"] for n in api.values() if n["class_type"] == "FluxGuidance"]
    assert guidance == ([3.5, 3.5] if flux else [])  # source and target, each through FluxGuidance
    sizes = {(n["inputs"]["width"], n["inputs"]["height"]) for n in api.values()
             if n["class_type"] == "EmptySD3LatentImage"}
    assert sizes == (set() if path == MMDIT_REAL else {(1024, 1024)})
    fpe = next(n["inputs"] for n in api.values() if n["class_type"] in ("FPESourceCapture", "FPEFlowInvert"))
    assert fpe["cfg"] == (1.0 if flux else 4.5) and fpe["scheduler"] == "simple"
    assert fpe["store_end"] >= 0.2 and fpe["store_rows"] == "cond"
    declared = {**input_types("FPEMMDiTInject")["required"], **input_types("FPEMMDiTInject").get("optional", {})}
    inject = next(n["inputs"] for n in api.values() if n["class_type"] == "FPEMMDiTInject")
    for name, value in inject.items():
        if not isinstance(value, list):  # a widget, not a link: the node's default
            assert value == declared[name][1]["default"], name


@pytest.mark.skipif(not host_has_mmdit(), reason=NO_MMDIT)
def test_flux_real_image_workflow_previews_the_reconstruction_and_caches_the_inversion(executor, tiny_for_shipped,
                                                                                       comfy_host):
    api = _api(MMDIT_REAL, tiny_for_shipped)
    invert_id, sampler_id = _node_id(api, "FPEFlowInvert"), _node_id(api, "SamplerCustomAdvanced")
    invert, sampler = api[invert_id]["inputs"], api[sampler_id]["inputs"]
    assert invert["reconstruction_check"] is True and invert["cfg"] == 1.0 and isinstance(invert["vae"], list)
    # the target samples the inverted noise over the inversion's sigmas, with euler, from the photo's latent
    assert sampler["noise"] == [invert_id, 0] and sampler["sigmas"] == [invert_id, 2]
    assert sampler["latent_image"] == invert["latent"]
    assert api[sampler["sampler"][0]]["inputs"]["sampler_name"] == "euler"
    result = executor.run(api)
    preview = result.outputs[invert_id]
    assert "dB" in preview["text"][0]
    image = preview["images"][0]
    shown = np.asarray(Image.open(comfy_host.workdir / image["type"] / image["subfolder"] / image["filename"]))
    assert shown.shape[1] == 128 and shown.shape[0] > 64  # photo | reconstruction, caption strip below
    saved = _saved_images(result, api, comfy_host)
    assert saved["Save edit"].shape == (64, 64, 3) and saved["Save photo | edit"].shape == (64, 128, 3)
    assert np.array_equal(saved["Save photo | edit"][:, 64:], saved["Save edit"])
    assert saved["Save edit"].std() > 2
    target_id = _node_id(api, PROMPT_NODES, "Target prompt")
    _set_prompt(api, target_id, "a photo of a golden apple on a wooden table")
    again = executor.run(api)
    assert invert_id not in again.executed and sampler_id in again.executed
    assert _node_id(api, "FPEMMDiTInject") not in again.executed


@pytest.mark.skipif(not host_has_mmdit(), reason=NO_MMDIT)
@pytest.mark.parametrize("path", MMDIT_GENERATED + [MMDIT_REAL], ids=[p.stem for p in MMDIT_GENERATED + [MMDIT_REAL]])
def test_mmdit_a_then_a_failing_b_then_a_gives_a_fresh_a(path, tiny_for_shipped, comfy_host):
    """One server: A, then B failing inside the edit (a target latent of another size), then A again: the same
    latent as the first A and as A on a fresh executor (nothing of B's run is kept)."""
    from fpe_harness.execute import Executor

    api = _api(path, tiny_for_shipped, steps=10)
    sampler_id = _node_id(api, ("KSampler", "SamplerCustomAdvanced"))
    api["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": path.stem},
                  "_meta": {"title": "Save the edit's latent"}}

    def latent(result):
        (entry,) = result.outputs["900"]["latents"]
        return safetensors.torch.load_file(str(comfy_host.workdir / "output" / entry["subfolder"] /
                                               entry["filename"]))["latent_tensor"]

    b = copy.deepcopy(api)
    b["901"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 96, "height": 96, "batch_size": 1},
                "_meta": {"title": "another size"}}
    if api[sampler_id]["class_type"] == "KSampler":
        b[sampler_id]["inputs"]["latent_image"] = ["901", 0]
        expected = "the target latent is 96x96 px"
    else:  # the photo's noise is the inverted photo's size
        b[sampler_id]["inputs"]["latent_image"] = ["901", 0]
        expected = "the target latent is 96x96 px but FPE Flow Invert inverted a 64x64 px photo"
    server = Executor()
    first = latent(server.run(api))
    failed = server.run(b, expect_success=False)
    assert not failed.success and expected in failed.error["exception_message"], failed.error
    rerun = server.run(api)
    assert sampler_id in rerun.executed  # the edit ran again after the failed one (not a cached output)
    again, fresh = latent(rerun), latent(Executor().run(api))
    assert torch.equal(first, again) and torch.equal(first, fresh)
