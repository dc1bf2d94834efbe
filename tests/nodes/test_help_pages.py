"""Every node has a help page where current ComfyUI's node library looks for one, naming its inputs and outputs.

The frontend (comfyui_frontend_package's NodeHelpService) fetches a custom node's help from the pack's web
folder, served at ``/extensions/<custom_nodes folder>/``: first ``docs/<node id>/<locale>.md``, then
``docs/<node id>.md``. The pack ships one page per node as ``web/docs/<node id>.md``, the page every locale
falls back to. These checks read the pack as installed from its registry archive's files.

The browser tests (current ComfyUI only: the 2024 web UI has no help panel; off with FPE_SKIP_BROWSER=1)
open the real page on a real server in headless Chromium and look where a user looks: the node
library's "?" button on each node's entry, and the selection toolbox's info button on nodes of a
shipped workflow. Without a page the frontend shows a fallback built from the node definition (its
DESCRIPTION and tables naming the inputs), so the panel must show what only the page has: its
headings (``## Example``, ``## Common errors`` ...) and its opening sentence.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import HOST
from fpe_harness.comfy_server import artifacts_folder, serving
from fpe_harness.host import pack_module
from fpe_harness.web_ui import browsing, chromium_path

REPO = Path(__file__).resolve().parents[2]


def _help_dir() -> Path:
    module = pack_module()
    return Path(module.__file__).resolve().parent / module.WEB_DIRECTORY / "docs"


def _nodes() -> dict[str, type]:
    return dict(pack_module().NODE_CLASS_MAPPINGS)


def _inputs(cls) -> list[str]:
    declared = cls.INPUT_TYPES()
    return [name for section in ("required", "optional") for name in (declared.get(section) or {})]


def test_every_registered_node_has_a_help_page():
    help_dir = _help_dir()
    assert help_dir.is_dir(), f"{help_dir} is missing from the installed pack (the registry archive)"
    missing = sorted(node_id for node_id in _nodes() if not (help_dir / f"{node_id}.md").is_file())
    assert not missing, f"nodes without a help page (write web/docs/<node id>.md): {missing}"


def test_no_help_page_for_a_node_that_does_not_exist():
    nodes = _nodes()
    help_dir = _help_dir()
    pages = sorted(help_dir.iterdir())
    orphans = [p.name for p in pages
               if not ((p.is_file() and p.suffix == ".md" and p.stem in nodes)
                       or (p.is_dir() and p.name in nodes))]  # docs/<node id>/<locale>.md: translations
    assert not orphans, f"help pages (or files) in web/docs/ for no registered node: {orphans}"


@pytest.mark.parametrize("node_id", sorted(_nodes()))
def test_help_page_names_every_input_and_output(node_id):
    cls = _nodes()[node_id]
    text = (_help_dir() / f"{node_id}.md").read_text(encoding="utf-8")
    title = pack_module().NODE_DISPLAY_NAME_MAPPINGS[node_id]
    assert text.splitlines()[0] == f"# {title}", f"{node_id}: the page should open with '# {title}'"
    named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", text))  # names are written as `code`
    missing_inputs = [name for name in _inputs(cls) if name not in named]
    assert not missing_inputs, f"{node_id}: the help page does not name the inputs {missing_inputs}"
    missing_outputs = [name for name in cls.RETURN_NAMES if name not in named]
    assert not missing_outputs, f"{node_id}: the help page does not name the outputs {missing_outputs}"
    for section in ("## Inputs", "## Outputs", "## Example", "## Common errors"):
        assert section in text, f"{node_id}: the help page has no '{section}' section"
    menu = cls.CATEGORY.replace("/", " → ")  # where the page says to find the node is where it is
    assert f"*In the node menu: {menu}.*" in text, f"{node_id}: the page should say it is in '{menu}'"


def test_the_frontend_finds_each_page_where_the_server_serves_the_pack():
    """The URL the node library builds, ``/extensions/<folder>/docs/<node id>.md`` (folder: the second part of
    the node's ``python_module``, before any ``@version``), maps onto the folder ComfyUI serves under it."""
    import nodes

    if not HOST.is_current:
        pytest.skip("ComfyUI of early 2024 has no node help panel and no python_module for custom nodes")
    for node_id, cls in _nodes().items():
        module = getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes")
        parts = module.split(".")
        assert len(parts) >= 2 and parts[0] == "custom_nodes", (node_id, module)
        folder = parts[1].split("@")[0]
        served = nodes.EXTENSION_WEB_DIRS.get(folder)
        assert served is not None, f"{node_id}: ComfyUI serves no web folder under /extensions/{folder}/"
        assert (Path(served) / "docs" / f"{node_id}.md").is_file(), node_id


# -- the page as the browser shows it (current ComfyUI) ----------------------------------------------


def _page_text(node_id: str) -> str:
    return (_help_dir() / f"{node_id}.md").read_text(encoding="utf-8")


def _headings(markdown: str) -> list[str]:
    return [line.lstrip("#").strip() for line in markdown.splitlines() if re.match(r"#{1,4} ", line)]


def _opening_sentence(markdown: str) -> str:
    """The first sentence of the page's first paragraph, as text (no ``**``, backticks or link targets)."""
    paragraph = []
    for line in markdown.splitlines()[1:]:
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            break
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", " ".join(paragraph)).replace("**", "").replace("`", "")
    return re.split(r"(?<=\.) ", text, maxsplit=1)[0]


def _flat(text: str) -> str:
    return " ".join(text.split())


def not_our_page(node_id: str, definition: dict, shown: dict) -> list[str]:
    """Why what the panel shows is not ``web/docs/<node id>.md`` (empty: it is)."""
    markdown = _page_text(node_id)
    problems = []
    if shown["fallback"] or not shown["markdown"]:
        problems.append("the panel shows the frontend's fallback (the node's description and input table), "
                        f"not web/docs/{node_id}.md")
    if shown["headings"] != _headings(markdown):
        problems.append(f"headings shown {shown['headings']}, the page has {_headings(markdown)}")
    sentence = _opening_sentence(markdown)
    if sentence not in _flat(shown["text"]):
        problems.append(f"the page's opening sentence is not shown: {sentence!r}")
    declared = definition.get("input") or {}
    names = [n for section in ("required", "optional") for n in (declared.get(section) or {})]
    names += list(definition.get("output_name") or [])
    missing = [n for n in names if n not in shown["code"]]
    if missing:
        problems.append(f"inputs/outputs not named as code: {missing}")
    return [f"{node_id} ({definition.get('display_name')}): {p}" for p in problems]


@pytest.fixture(scope="module")
def help_artifacts() -> Path:
    return artifacts_folder("help-pages", HOST)


@pytest.fixture(scope="module")
def help_server(tmp_path_factory, help_artifacts):
    """A user's ComfyUI with the pack installed (no models: nothing runs), on current ComfyUI only."""
    if os.environ.get("FPE_SKIP_BROWSER") == "1":
        pytest.skip("FPE_SKIP_BROWSER=1: browser test switched off by hand")
    if not HOST.is_current:
        pytest.skip("the 2024 web UI has no node help panel")
    chromium_path()  # before the server starts: no Chromium is a clear error, not a slow one
    with serving(HOST.path, tmp_path_factory.mktemp("help-comfyui"), help_artifacts) as comfy:
        yield comfy


@pytest.fixture(scope="module")
def help_browser(help_server, help_artifacts):
    with browsing(help_server.url, help_artifacts) as ui:
        yield ui


@pytest.fixture(scope="module")
def pack_definitions(help_server) -> dict:
    """The pack's node definitions as the page gets them (``/object_info``)."""
    info = help_server.get_json("/object_info", timeout=60)
    definitions = {node_id: info[node_id] for node_id in _nodes() if node_id in info}
    assert sorted(definitions) == sorted(_nodes()), "the server lacks some of the pack's nodes"
    return definitions


def test_without_a_page_the_panel_shows_the_fallback_and_the_check_tells_it_apart(help_browser, pack_definitions):
    """The control: the page's URL answered 404 (as for a pack without web/docs), the frontend shows the
    node's DESCRIPTION and input table; ``not_our_page`` must refuse that."""
    node_id = "FPESideBySide"
    definition = pack_definitions[node_id]
    help_browser.open()
    help_browser.page.route(f"**/extensions/*/docs/{node_id}.md", lambda route: route.fulfill(status=404, body="404"))
    shown = help_browser.node_library_help(definition["display_name"])
    assert shown["fallback"] and not shown["markdown"], shown
    assert _flat(definition["description"])[:60] in _flat(shown["text"])
    problems = not_our_page(node_id, definition, shown)
    assert any("fallback" in p for p in problems) and any("headings" in p for p in problems), problems


def test_node_library_help_button_shows_each_node_help_page(help_browser, pack_definitions, help_artifacts):
    """Nodes sidebar, the node's name typed in its search box, the entry's "?" button: the page of every node."""
    help_browser.open()
    problems = []
    for node_id, definition in pack_definitions.items():
        picture = help_artifacts / f"node-library.{node_id}.png" if node_id == "FPESourceCapture" else None
        shown = help_browser.node_library_help(definition["display_name"], screenshot=picture)
        problems += not_our_page(node_id, definition, shown)
    assert not problems, "the node library's help does not show the pack's pages:\n" + "\n".join(problems)


def test_selection_info_button_shows_the_help_page_of_nodes_on_the_canvas(help_browser, pack_definitions,
                                                                        help_artifacts):
    """The real-image workflow dropped on the canvas; each FPE node clicked on its title bar, then the
    selection toolbox's info button: the right-hand panel's Info tab shows the node's page."""
    path = REPO / "workflows" / "fpe_real_image_edit.json"
    nodes = [n for n in json.loads(path.read_text())["nodes"] if n["type"] in pack_definitions]
    assert len(nodes) >= 3, [n["type"] for n in nodes]
    help_browser.open()
    help_browser.drop_workflow(path)
    problems = []
    for node in nodes:
        definition = pack_definitions[node["type"]]
        shown = help_browser.node_info_panel(node["id"], node.get("title") or definition["display_name"])
        problems += not_our_page(node["type"], definition, shown)
    help_browser.page.screenshot(path=str(help_artifacts / "info-panel.png"))
    assert not problems, "the selection's info panel does not show the pack's pages:\n" + "\n".join(problems)
