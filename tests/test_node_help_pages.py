"""Every node has a help page where current ComfyUI's node library looks for one, naming its inputs and outputs.

The frontend (comfyui_frontend_package's NodeHelpService) fetches a custom node's help from the pack's web
folder, served at ``/extensions/<custom_nodes folder>/``: first ``docs/<node id>/<locale>.md``, then
``docs/<node id>.md``. The pack ships one page per node as ``web/docs/<node id>.md``, the page every locale
falls back to. These checks read the pack as installed from its registry archive's files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import HOST
from fpe_harness.host import pack_module


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
