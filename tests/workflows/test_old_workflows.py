"""Workflows saved by early versions of the pack keep working (``tests/fixtures/old_workflows/``).

Each file is a shipped workflow exactly as an early release saved it (see that folder's README); the
part of its name before the ``-`` names today's shipped version of the same workflow. The early files
predate optional widgets added since, so their FPE nodes hold fewer widget values than today's.

* Through the product's converter (``fpe_headless.comfy.workflow``) and ComfyUI's executor, on the
  tiny models at the CPU test size (``shrink``; both hosts): the old file runs, the pack's nodes and
  every Save Image node run, and each saves images of the test size. The files in ``SAME_AS_SHIPPED``
  (today: all) equal today's shipped graph in substance (the same nodes, links and input values once
  a widget the old file lacks takes its declared default; titles aside): checked, and both must give
  the same pixels.
* In the web page (a real server, headless Chromium; both hosts, off with FPE_SKIP_BROWSER=1): dropped
  on the canvas, the file loads with no "missing nodes" dialog, every node of the pack shows with its
  display name as title, the file's widget values stay where they were and the widgets it lacks
  show their defaults. A copy with one node type renamed must bring that dialog up (the control).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import HOST
from fpe_harness.comfy_server import artifacts_folder, serving
from fpe_harness.execute import Executor, node_class
from fpe_harness.host import pack_module
from fpe_harness.shipped import shrink, use_tiny_checkpoints
from fpe_harness.ui_graph_check import graph_problems, node_label
from fpe_harness.web_ui import FRONTEND_ONLY, browsing, chromium_path
from fpe_headless.comfy.workflow import load_workflow, to_api

REPO = Path(__file__).resolve().parents[2]
OLD = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "old_workflows").glob("*.json"))
SIDE = 64  # shrink's image side
DIALOG_WAIT_S = 2.0  # both web UIs report missing nodes as soon as the graph is configured
# Old files whose graph is today's shipped one in substance (titles aside; the widgets they lack take
# their defaults, which are the shipped values): their pictures must be today's, pixel for pixel.
SAME_AS_SHIPPED = {"fpe_generated_edit-0.1.0", "fpe_real_image_edit-0.2.0"}


def _pack_types() -> set[str]:
    return set(pack_module().NODE_CLASS_MAPPINGS)


def shipped_version(path: Path) -> Path:
    return REPO / "workflows" / f"{path.stem.split('-')[0]}.json"


def test_each_old_workflow_has_a_shipped_version_today():
    assert OLD, "no old workflows in tests/fixtures/old_workflows"
    for path in OLD:
        assert shipped_version(path).is_file(), f"{path.name}: no workflows/{shipped_version(path).name}"


# -- the executor (both hosts) -------------------------------------------------------------------


def _api(path: Path, tiny_for_shipped) -> dict:
    return shrink(to_api(use_tiny_checkpoints(load_workflow(path), tiny_for_shipped)))


def _declared_default(class_type: str, name: str):
    declared = node_class(class_type).INPUT_TYPES()
    for section in ("required", "optional"):
        spec = (declared.get(section) or {}).get(name)
        if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
            return True, spec[1]["default"]
    return False, None


def _substance(api: dict) -> dict:
    """Node id -> (class, inputs), a widget input the prompt leaves out given its declared default."""
    out = {}
    for node_id, node in api.items():
        inputs = dict(node["inputs"])
        declared = node_class(node["class_type"]).INPUT_TYPES()
        for name in (declared.get("optional") or {}):
            has_default, default = _declared_default(node["class_type"], name)
            if name not in inputs and has_default:
                inputs[name] = default
        out[node_id] = (node["class_type"], inputs)
    return out


def _run(api: dict, workflow: str) -> dict:
    """Run on a fresh executor (no cache from other tests); (node id, n) -> pixels."""
    result = Executor().run(api)
    must_run = _pack_types() | {"SaveImage"}  # others may be served from a twin's output (two empty prompts)
    not_run = [k for k, v in api.items() if v["class_type"] in must_run and k not in result.executed]
    assert not not_run, f"{workflow}: these nodes did not run: {not_run} (ran: {result.executed})"
    images = {}
    for node_id, out in result.outputs.items():
        for n, image in enumerate(out.get("images") or []):
            file = HOST.workdir / image["type"] / image["subfolder"] / image["filename"]
            images[(node_id, n)] = np.asarray(Image.open(file).convert("RGB"))
    saving = [k for k, v in api.items() if v["class_type"] == "SaveImage"]
    missing = [api[k]["_meta"]["title"] for k in saving if (k, 0) not in images]
    assert not missing, f"{workflow}: no image saved by {missing}"
    for (node_id, _), pixels in images.items():
        if api[node_id]["class_type"] == "SaveImage":  # one picture, or two side by side
            assert pixels.shape in ((SIDE, SIDE, 3), (SIDE, 2 * SIDE, 3)), (
                f"{workflow}: '{api[node_id]['_meta']['title']}' saved an image of {pixels.shape}")
    return images


@pytest.mark.parametrize("path", OLD, ids=[p.stem for p in OLD])
def test_old_workflow_converts_and_runs_like_todays_shipped_version(path, tiny_for_shipped):
    old = _api(path, tiny_for_shipped)
    old_images = _run(old, path.name)
    if path.stem not in SAME_AS_SHIPPED:
        return  # another graph or other settings than today's: that it runs and saves its images is the test

    shipped_path = shipped_version(path)
    shipped = _api(shipped_path, tiny_for_shipped)
    assert _substance(old) == _substance(shipped), (
        f"{path.name} no longer equals today's {shipped_path.name} in substance; if the shipped workflow "
        f"changed on purpose, take {path.stem!r} out of SAME_AS_SHIPPED")
    shipped_images = _run(shipped, shipped_path.name)
    assert sorted(old_images) == sorted(shipped_images)
    differ = [f"node {k} '{old[k]['_meta']['title']}' image {n}" for (k, n) in old_images
              if not np.array_equal(old_images[(k, n)], shipped_images[(k, n)])]
    assert not differ, f"{path.name} and today's {shipped_path.name} make different pictures: {differ}"


# -- the web page (both hosts) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def old_artifacts() -> Path:
    return artifacts_folder("old-workflows", HOST)


@pytest.fixture(scope="module")
def old_server(tmp_path_factory, old_artifacts):
    """A user's ComfyUI with the pack installed (no models: the page only loads the files)."""
    if os.environ.get("FPE_SKIP_BROWSER") == "1":
        pytest.skip("FPE_SKIP_BROWSER=1: browser test switched off by hand")
    chromium_path()  # before the server starts: no Chromium is a clear error, not a slow one
    with serving(HOST.path, tmp_path_factory.mktemp("old-workflows-comfyui"), old_artifacts) as comfy:
        yield comfy


@pytest.fixture(scope="module")
def old_browser(old_server, old_artifacts):
    with browsing(old_server.url, old_artifacts) as ui:
        yield ui


@pytest.fixture(scope="module")
def old_object_info(old_server) -> dict:
    return old_server.get_json("/object_info", timeout=60)


def test_a_node_type_this_comfyui_lacks_brings_up_the_missing_nodes_dialog(old_browser):
    """The control for the test below: the dialog it looks for does appear, naming the type."""
    path = OLD[0]
    workflow = json.loads(path.read_text())
    renamed = next(n for n in workflow["nodes"] if n["type"] in _pack_types())
    renamed["type"] = "FPENoSuchNodeType"
    old_browser.open()
    old_browser.drop_workflow(path, json.dumps(workflow))
    shown = old_browser.wait_for_missing_nodes_dialog(timeout_s=10)
    assert "FPENoSuchNodeType" in shown, shown


@pytest.mark.parametrize("path", OLD, ids=[p.stem for p in OLD])
def test_old_workflow_loads_in_the_page_with_every_pack_node_and_its_title(path, old_browser, old_object_info,
                                                                           old_artifacts):
    workflow = json.loads(path.read_text())
    ui = old_browser
    ui.open()
    errors_before = len(ui.page_errors)
    ui.drop_workflow(path)
    ui.page.wait_for_timeout(DIALOG_WAIT_S * 1000)
    ui.screenshot(old_artifacts / f"{path.stem}.loaded.png")
    assert not ui.missing_nodes_dialogs(), f"{path.name}: {ui.missing_nodes_dialogs()}"
    assert not ui.page_errors[errors_before:], f"{path.name}: the page raised {ui.page_errors[errors_before:]}"

    nodes = ui.nodes()
    saved = ui.saved_widget_values()
    # Every node known and every widget value valid (the value counts are compared below: the file has fewer).
    problems = graph_problems(path.name, nodes, old_object_info, FRONTEND_ONLY, [], saved)
    pack = _pack_types()
    file_nodes = {n["id"]: n for n in workflow["nodes"]}
    in_file = sorted(n["type"] for n in workflow["nodes"] if n["type"] in pack)
    assert in_file, f"{path.name} holds none of the pack's nodes"
    assert sorted(n["type"] for n in nodes if n["type"] in pack) == in_file
    for node in nodes:
        if node["type"] not in pack:
            continue
        label = node_label(path.name, node)
        title = file_nodes[node["id"]].get("title") or old_object_info[node["type"]]["display_name"]
        if node["title"] != title:
            problems.append(f"{label}: shown with the title {node['title']!r}, not {title!r}")
        given, kept = file_nodes[node["id"]].get("widgets_values") or [], saved.get(node["id"], [])
        if kept[:len(given)] != given:
            problems.append(f"{label}: the file's widget values {given} became {kept[:len(given)]}")
        if len(node["widgets"]) != len(kept):
            problems.append(f"{label}: {len(node['widgets'])} widgets shown, {len(kept)} values saved")
            continue
        for widget, value in zip(node["widgets"][len(given):], kept[len(given):], strict=True):
            has_default, default = _declared_default(node["type"], widget["name"])
            if not has_default or value != default:
                problems.append(f"{label}: widget '{widget['name']}', which the file lacks, shows {value!r}, "
                                f"not its default {default!r}")
    assert not problems, "the web page loads the old workflow wrongly:\n" + "\n".join(problems)
