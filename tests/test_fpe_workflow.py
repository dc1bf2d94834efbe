"""The shipped generated-image workflow through ComfyUI's executor: outputs and caching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from test_workflow_conversion import shrink

from fpe_headless.workflow import load_workflow, to_api

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "fpe_generated_edit.json"


def _api(ckpt):
    wf = load_workflow(WORKFLOW)
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = ckpt
    return shrink(to_api(wf))


def _node_id(api, class_type, title=None):
    return next(k for k, v in api.items()
                if v["class_type"] == class_type and (title is None or v["_meta"]["title"].startswith(title)))


def test_workflow_saves_source_edit_and_side_by_side(executor, tiny_sd15_ckpt, comfy_host):
    api = _api(tiny_sd15_ckpt)
    capture = api[_node_id(api, "FPESourceCapture")]["inputs"]
    sampler = api[_node_id(api, "KSampler")]["inputs"]
    for key in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"):
        assert capture[key] == sampler[key], key
    result = executor.run(api)
    images = {}
    for node_id, out in result.outputs.items():
        for image in out.get("images", []):
            path = comfy_host.workdir / "output" / image["subfolder"] / image["filename"]
            images[api[node_id]["_meta"]["title"]] = np.asarray(Image.open(path))
    source, edit, both = images["Save source"], images["Save edit"], images["Save source | edit"]
    assert source.shape == edit.shape == (64, 64, 3)
    assert both.shape == (64, 128, 3)
    assert np.array_equal(both[:, :64], source) and np.array_equal(both[:, 64:], edit)


def test_changing_only_the_target_prompt_does_not_rerun_the_capture(executor, tiny_sd15_ckpt):
    api = _api(tiny_sd15_ckpt)
    capture_id = _node_id(api, "FPESourceCapture")
    target_id = _node_id(api, "CLIPTextEncode", "Target prompt")
    executor.run(api)
    api[target_id]["inputs"]["text"] = "a photo of wooden ducks walking on street"
    result = executor.run(api)
    assert capture_id not in result.executed
    assert _node_id(api, "KSampler") in result.executed and target_id in result.executed
    assert _node_id(api, "FPESelfAttnInject") not in result.executed  # its inputs did not change either


REAL_WORKFLOW = WORKFLOW.parent / "fpe_real_image_edit.json"


def test_real_image_workflow_previews_the_reconstruction_and_caches_the_inversion(executor, tiny_sd15_ckpt,
                                                                                  comfy_host):
    wf = load_workflow(REAL_WORKFLOW)
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = tiny_sd15_ckpt
    api = shrink(to_api(wf))
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
    target_id = _node_id(api, "CLIPTextEncode", "Target prompt")
    api[target_id]["inputs"]["text"] = "a photo of a golden apple on a wooden table"
    again = executor.run(api)
    assert invert_id not in again.executed and _node_id(api, "KSamplerAdvanced") in again.executed
