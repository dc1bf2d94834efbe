"""UI-format -> API-format conversion, as the web UI does it, and every shipped workflow runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from fpe_harness.shipped import shipped_params, shrink, use_tiny_checkpoints
from fpe_headless.comfy.workflow import WorkflowError, load_workflow, to_api, widget_slots

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHIPPED = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture
def ui():
    return load_workflow(FIXTURES / "txt2img_tiny_sd15.json")


def _node(wf, node_id):
    return next(n for n in wf["nodes"] if n["id"] == node_id)


def test_widget_values_and_links_map_to_named_inputs(ui):
    api = to_api(ui)
    assert set(api) == {"3", "4", "5", "6", "7", "8", "9"}
    ks = api["3"]
    assert ks["class_type"] == "KSampler"
    # "fixed" (control after generate) is a UI-only value stored after the seed: it is skipped.
    assert ks["inputs"] == {
        "seed": 42, "steps": 6, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
    }
    assert api["5"]["inputs"] == {"width": 96, "height": 64, "batch_size": 1}
    assert api["6"]["_meta"]["title"] == "Positive prompt"


def test_seed_and_upload_widgets_carry_one_extra_ui_value():
    assert ("seed", 1) in widget_slots("KSampler")
    assert ("noise_seed", 1) in widget_slots("KSamplerAdvanced")
    assert widget_slots("LoadImage")[0] == ("image", 1)  # the upload button's value follows
    assert ("steps", 0) in widget_slots("KSampler")


def test_swapped_or_missing_widget_values_are_reported_with_the_node(ui):
    wf = copy.deepcopy(ui)
    _node(wf, 3)["widgets_values"] = [42, 6, 7.5, "euler", "normal", 1.0]  # control value dropped
    with pytest.raises(WorkflowError, match=r"node 3 \(KSampler\)"):
        to_api(wf)
    wf = copy.deepcopy(ui)
    _node(wf, 4)["type"] = "NoSuchLoader"
    with pytest.raises(WorkflowError, match=r"node 4 \(NoSuchLoader\).*not installed"):
        to_api(wf)


def test_frontend_only_nodes_resolve_like_the_web_ui(ui):
    wf = copy.deepcopy(ui)
    # Reroute between the checkpoint's MODEL and the KSampler.
    wf["nodes"].append({"id": 20, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 100}],
                        "outputs": [{"name": "", "type": "MODEL", "links": [101]}], "widgets_values": []})
    wf["links"] = [link for link in wf["links"] if link[0] != 1]
    wf["links"] += [[100, 4, 0, 20, 0, "MODEL"], [101, 20, 0, 3, 0, "MODEL"]]
    _node(wf, 3)["inputs"][0]["link"] = 101
    # A PrimitiveNode driving the seed (a widget converted to an input).
    wf["nodes"].append({"id": 21, "type": "PrimitiveNode", "mode": 0, "inputs": [],
                        "outputs": [{"name": "INT", "type": "INT", "links": [102], "widget": {"name": "seed"}}],
                        "widgets_values": [1234, "fixed"]})
    wf["links"].append([102, 21, 0, 3, 4, "INT"])
    _node(wf, 3)["inputs"].append({"name": "seed", "type": "INT", "link": 102, "widget": {"name": "seed"}})
    # A note, a bypassed latent upscale in the latent path, and a muted extra save node.
    wf["nodes"].append({"id": 22, "type": "Note", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["hi"]})
    wf["nodes"].append({"id": 23, "type": "LatentUpscaleBy", "mode": 4,
                        "inputs": [{"name": "samples", "type": "LATENT", "link": 103}],
                        "outputs": [{"name": "LATENT", "type": "LATENT", "links": [104]}],
                        "widgets_values": ["nearest-exact", 1.5]})
    wf["links"] = [link for link in wf["links"] if link[0] != 2]
    wf["links"] += [[103, 5, 0, 23, 0, "LATENT"], [104, 23, 0, 3, 3, "LATENT"]]
    _node(wf, 3)["inputs"][3]["link"] = 104
    wf["nodes"].append({"id": 24, "type": "SaveImage", "mode": 2,
                        "inputs": [{"name": "images", "type": "IMAGE", "link": None}], "outputs": [],
                        "widgets_values": ["muted"]})
    api = to_api(wf)
    assert set(api) == {"3", "4", "5", "6", "7", "8", "9"}
    assert api["3"]["inputs"]["model"] == ["4", 0]
    assert api["3"]["inputs"]["seed"] == 1234
    assert api["3"]["inputs"]["latent_image"] == ["5", 0]


def test_api_format_input_is_rejected_clearly():
    with pytest.raises(WorkflowError, match="not a UI-format workflow"):
        to_api({"3": {"class_type": "KSampler", "inputs": {}}})


@pytest.mark.parametrize("path", shipped_params(SHIPPED))
def test_shipped_workflow_runs_through_the_executor(path, executor, tiny_for_shipped):
    wf = use_tiny_checkpoints(load_workflow(path), tiny_for_shipped)
    result = executor.run(shrink(to_api(wf)))
    assert result.success and result.outputs


def test_swapped_widget_values_of_another_type_are_reported(ui):
    wf = copy.deepcopy(ui)
    _node(wf, 3)["widgets_values"] = [42, "fixed", 7.5, 6, "euler", "normal", 1.0]  # steps <-> cfg
    with pytest.raises(WorkflowError, match=r"node 3 \(KSampler\): widget 'steps'"):
        to_api(wf)
