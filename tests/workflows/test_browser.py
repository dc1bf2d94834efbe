"""The shipped workflows in ComfyUI's real web page: a real server, headless Chromium, a user's steps.

For each file in ``workflows/``: the page loads it from a drop on the canvas, every node must be
known and every widget value valid (see ``ui_graph_check``); the checkpoint widget is switched to
the tiny test model of the same architecture (SD1.5 or SDXL; the Flux.1 / SD3.5 workflows' model,
text encoder and VAE files to the tiny ones of ``tiny_mmdit``, on current ComfyUI only) and, to keep
CPU time small, the image size (Empty Latent Image, Empty SD3 Latent Image, Image Scale, the photo in
Load Image) to 64 px, while steps, seeds, samplers, the FPE settings and the SDXL prompts' size
conditioning stay as shipped; Ctrl+Enter queues it; the run must succeed and its images appear on
their nodes. Screenshots of each graph, as loaded and after the run, the output images and the
server log go to the artefact folder (``FPE_TEST_ARTIFACTS``, default ``test-artifacts/``), under
``browser/<host>/``.

The host is the suite's own (the 2024 web UI, or the current frontend package with COMFYUI_PATH).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from fpe_harness.comfy_server import ComfyServer, artifacts_folder, serving
from fpe_harness.shipped import MMDIT_LOADER_WIDGETS, host_has_mmdit, shipped_params, tiny_mmdit_file, tiny_mmdit_models
from fpe_harness.ui_graph_check import graph_problems, node_label
from fpe_harness.web_ui import FRONTEND_ONLY, WebUI, browsing, chromium_path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "workflows").glob("*.json"))
SIDE = 64
RUN_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(os.environ.get("FPE_SKIP_BROWSER") == "1",
                                reason="FPE_SKIP_BROWSER=1: browser test switched off by hand")


@pytest.fixture(scope="module")
def artifacts(comfy_host) -> Path:
    return artifacts_folder("browser", comfy_host)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Before any server starts: no Chromium is a clear error, not a slow one."""
    return chromium_path()


@pytest.fixture(scope="module")
def server(chromium, comfy_host, tiny_sd15_ckpt, tiny_sdxl_ckpt, tmp_path_factory, artifacts):
    checkpoints = [comfy_host.workdir / "models" / "checkpoints" / name for name in (tiny_sd15_ckpt, tiny_sdxl_ckpt)]
    models = []  # the tiny Flux.1 / SD3.5 files of the MMDiT workflows, where this ComfyUI has those models
    if host_has_mmdit():
        folder = tiny_mmdit_models()
        models = [(file.parent.name, file) for sub in ("diffusion_models", "text_encoders", "vae")
                  for file in sorted((folder / sub).glob("tiny_*.safetensors"))]
    with serving(comfy_host.path, tmp_path_factory.mktemp("user-comfyui"), artifacts, checkpoints, models=models,
                 small_photo_side=SIDE) as comfy:
        yield comfy


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.get_json("/object_info", timeout=60)


@pytest.fixture(scope="module")
def browser(server, artifacts):
    with browsing(server.url, artifacts) as ui:
        yield ui


def load_and_check(ui: WebUI, path: Path, object_info: dict, text: str | None = None) -> list[dict]:
    """Open a fresh page, drop the file on the canvas; fail naming each bad node."""
    ui.open()
    errors_before = len(ui.page_errors)
    ui.drop_workflow(path, text)
    nodes = ui.nodes()
    file_nodes = json.loads(path.read_text() if text is None else text)["nodes"]
    problems = graph_problems(path.name, nodes, object_info, FRONTEND_ONLY, file_nodes, ui.saved_widget_values())
    problems += [f"{path.name}: the page raised: {e}" for e in ui.page_errors[errors_before:]]
    assert not problems, "the web UI loads the workflow wrongly:\n" + "\n".join(problems)
    return nodes


def prepare_for_cpu(ui: WebUI, nodes: list[dict], server: ComfyServer, tiny_for_shipped) -> None:
    """What a tester changes in the widgets: the model (the tiny one of the shipped checkpoint's
    architecture; the MMDiT workflows' diffusion model, text encoders and VAE), and the image size
    (steps etc. stay)."""
    for node in nodes:
        if node["type"] == "CheckpointLoaderSimple":
            shipped = next(w["value"] for w in node["widgets"] if w["name"] == "ckpt_name")
            ui.set_widget(node["id"], "ckpt_name", tiny_for_shipped(shipped))
        elif node["type"] in MMDIT_LOADER_WIDGETS:
            for widget in node["widgets"]:
                if widget["name"] in ("unet_name", "clip_name1", "clip_name2", "clip_name3", "vae_name"):
                    ui.set_widget(node["id"], widget["name"], tiny_mmdit_file(widget["value"]))
        elif node["type"] in ("EmptyLatentImage", "EmptySD3LatentImage", "ImageScale"):
            ui.set_widget(node["id"], "width", SIDE)
            ui.set_widget(node["id"], "height", SIDE)
        elif node["type"] == "LoadImage":
            shown = next(w["value"] for w in node["widgets"] if w["name"] == "image")
            ui.set_widget(node["id"], "image", server.small_photo(shown))


def queue_and_wait(ui: WebUI, server: ComfyServer, workflow: str, nodes: list[dict]) -> dict:
    """Ctrl+Enter, then the finished history entry; failures name the workflow and the node."""
    by_id = {str(n["id"]): n for n in nodes}

    def label(node_id, class_type=None) -> str:
        node = by_id.get(str(node_id)) or {"id": node_id, "type": class_type or "?"}
        return node_label(workflow, node)

    answer = ui.queue()
    body = answer["body"] if isinstance(answer["body"], dict) else {"error": answer["body"]}
    if answer["status"] != 200 or body.get("node_errors"):
        error = body.get("error")
        lines = [f"{workflow}: ComfyUI refused the prompt: {error.get('message') if isinstance(error, dict) else error}"]
        for node_id, found in (body.get("node_errors") or {}).items():
            for err in found.get("errors", []):
                lines.append(f"{label(node_id, found.get('class_type'))}: {err.get('message')}: "
                             f"{err.get('details', '')}")
        pytest.fail("\n".join(lines))
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        history = server.get_json(f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{workflow}: the run did not finish within {RUN_TIMEOUT_S} s\n{server.log_tail()}")
    status = entry["status"]
    if status.get("status_str") != "success":
        lines = [f"{workflow}: the run failed"]
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                exception = str(data.get("exception_type", "")).rsplit(".", 1)[-1]  # the pack's module path is long
                lines.append(f"{label(data.get('node_id'), data.get('node_type'))}: "
                             f"{exception}: {data.get('exception_message')}")
        pytest.fail("\n".join(lines))
    return entry


@pytest.mark.parametrize("path", shipped_params(SHIPPED))
def test_shipped_workflow_loads_queues_and_shows_its_images(path, browser, server, object_info, artifacts,
                                                           tiny_for_shipped):
    nodes = load_and_check(browser, path, object_info)
    browser.screenshot(artifacts / f"{path.stem}.loaded.png")

    prepare_for_cpu(browser, nodes, server, tiny_for_shipped)
    entry = queue_and_wait(browser, server, path.name, nodes)

    shown = {str(n["id"]): n for n in nodes}
    saved = [n for n in nodes if n["type"] == "SaveImage" and n["mode"] == 0]
    assert saved, f"{path.name}: no Save Image node"
    with_images = {}
    for node_id, output in entry["outputs"].items():
        images = output.get("images") or []
        if images:
            with_images[int(node_id)] = images
    missing = [node_label(path.name, n) for n in saved if n["id"] not in with_images]
    assert not missing, "no image saved by: " + ", ".join(missing)
    browser.wait_for_images(sorted(with_images), timeout_s=60)  # the page shows every output image
    browser.screenshot(artifacts / f"{path.stem}.png")
    for node_id, images in with_images.items():
        for image in images:
            folder = {"output": server.output_dir, "temp": server.comfy_dir / "temp"}[image["type"]]
            file = folder / image["subfolder"] / image["filename"]
            assert file.is_file(), f"{node_label(path.name, shown[str(node_id)])}: {file} was not written"
            shutil.copy2(file, artifacts / f"{path.stem}.node{node_id}.{image['filename']}")


def _broken(path: Path, break_it) -> str:
    workflow = json.loads(path.read_text())
    broken = copy.deepcopy(workflow)
    break_it({n["id"]: n for n in broken["nodes"]})
    assert broken != workflow
    return json.dumps(broken)


GENERATED = REPO / "workflows" / "fpe_generated_edit.json"
REAL = REPO / "workflows" / "fpe_real_image_edit.json"


def _swap(values: list, i: int, j: int) -> None:
    values[i], values[j] = values[j], values[i]


@pytest.mark.parametrize(("path", "break_it", "expected"), [
    # FPE Source Capture's steps (50) and cfg (7.5) swapped.
    (GENERATED, lambda n: _swap(n[6]["widgets_values"], 2, 3),
     r"fpe_generated_edit\.json: node 6 'FPE Source Capture' \(FPESourceCapture\): widget 'steps' value 7\.5 is not a whole number"),
    # The seed's "control after generate" value left out of the target KSamplerAdvanced (node 9).
    (REAL, lambda n: n[9]["widgets_values"].pop(2),
     r"fpe_real_image_edit\.json: node 9 'KSamplerAdvanced \(target.*\(KSamplerAdvanced\): widget "
     r"'control_after_generate' value 50 is not one of"),
    # FPE DDIM Invert's scheduler and store_layers swapped.
    (REAL, lambda n: _swap(n[7]["widgets_values"], 1, 4),
     r"fpe_real_image_edit\.json: node 7 'FPE DDIM Invert' \(FPEDDIMInvert\): widget 'scheduler' value 'official' is not one of"),
    # A value too many on FPE Self-Attn Inject: the page has no widget for it.
    (GENERATED, lambda n: n[7]["widgets_values"].append(0.5),
     r"fpe_generated_edit\.json: node 7 'FPE Self-Attn Inject' \(FPESelfAttnInject\): the file has 7 widget "
     r"values, the page keeps 6"),
    # A node type this ComfyUI does not have.
    (GENERATED, lambda n: n[7].update(type="FPESelfAttnInjectRenamed"),
     r"fpe_generated_edit\.json: node 7 \(FPESelfAttnInjectRenamed\): node type is missing"),
], ids=["swapped-steps-cfg", "seed-control-value-missing", "swapped-combo-values", "value-too-many",
        "unknown-node-type"])
def test_a_broken_workflow_fails_naming_the_workflow_and_the_node(path, break_it, expected, browser,
                                                                  object_info):
    with pytest.raises(AssertionError, match=expected):
        load_and_check(browser, path, object_info, text=_broken(path, break_it))


def test_a_swap_of_two_valid_numbers_fails_at_run_time_naming_the_node(browser, server, object_info,
                                                                       tiny_for_shipped):
    """seed and steps of the target KSampler swapped: both are valid integers, so the page loads
    it; FPE's schedule check then stops the run (capture 50 steps, target 42) and names the node
    (current ComfyUI: before the first step, from the whole schedule; 2024: at the first step)."""
    text = _broken(GENERATED, lambda n: _swap(n[8]["widgets_values"], 0, 2))
    nodes = load_and_check(browser, GENERATED, object_info, text=text)
    prepare_for_cpu(browser, nodes, server, tiny_for_shipped)
    with pytest.raises(pytest.fail.Exception,
                       match=r"fpe_generated_edit\.json: node 8 'KSampler \(target.*\(KSampler\): FPEError: the target "
                             r"sampler.*give the target sampler the same steps"):
        queue_and_wait(browser, server, GENERATED.name, nodes)


def test_a_warning_that_changes_the_picture_appears_on_the_page(browser, server, object_info, tiny_for_shipped,
                                                                 artifacts):
    """The target KSampler's seed differs from the capture's: the run succeeds, and FPE's warning is
    shown on the page (a toast on current ComfyUI, the pack's own box in the 2024 UI), not only in
    the server's console."""
    nodes = load_and_check(browser, GENERATED, object_info)
    prepare_for_cpu(browser, nodes, server, tiny_for_shipped)
    target = next(n for n in nodes if n["type"] == "KSampler")
    browser.set_widget(target["id"], "seed", 43)
    queue_and_wait(browser, server, GENERATED.name, nodes)
    shown = browser.wait_for_text("the target sampler starts from other noise than FPE Source Capture", timeout_s=30)
    browser.screenshot(artifacts / "seed-warning.png")
    assert "a different seed" in shown


def test_template_browser_shows_the_workflows_with_their_pictures_and_loads_them(comfy_host, server, browser):
    if not comfy_host.is_current:
        pytest.skip("the 2024 web UI has no template browser (current ComfyUI serves custom_nodes/*/workflows)")
    listed = server.get_json("/api/workflow_templates")
    assert sorted(listed.get("free-prompt-editing", [])) == [p.stem for p in SHIPPED]
    for path in SHIPPED:
        base = f"/api/workflow_templates/free-prompt-editing/{path.stem}"
        assert json.loads(server.get(base + ".json")) == json.loads(path.read_text())
        assert server.get(base + ".jpg") == path.with_suffix(".jpg").read_bytes()

    for path in SHIPPED:  # Templates -> Extensions: free-prompt-editing -> a card, as a user picks one
        browser.open()
        pictures = browser.template_pictures("free-prompt-editing", [p.stem for p in SHIPPED])
        with Image.open(path.with_suffix(".jpg")) as picture:
            assert pictures.get(path.stem) == list(picture.size), f"{path.stem}: card pictures shown: {pictures}"
        browser.pick_template(path.stem, json.loads(path.read_text()))
        assert browser.saved_widget_values() == {n["id"]: n.get("widgets_values", [])
                                                 for n in json.loads(path.read_text())["nodes"]}
