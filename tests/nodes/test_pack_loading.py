"""The pack installs and loads as ComfyUI loads it, does nothing at import, and is registry-ready."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest
import tomllib

from conftest import HOST
from fpe_harness.host import PACK_DIR_NAME, install_pack, pack_module, pack_submodule

REPO = Path(__file__).resolve().parents[2]


def test_loaded_by_comfyuis_own_custom_node_scan():
    import nodes

    module = pack_module()
    assert Path(module.__file__).resolve() == (HOST.pack_dir / "__init__.py").resolve()
    assert HOST.pack_dir.parent == HOST.workdir / "custom_nodes"
    for node_id, cls in module.NODE_CLASS_MAPPINGS.items():
        assert nodes.NODE_CLASS_MAPPINGS[node_id] is cls
        assert node_id in module.NODE_DISPLAY_NAME_MAPPINGS
    if HOST.is_current:
        assert nodes.LOADED_MODULE_DIRS[PACK_DIR_NAME] == str(HOST.pack_dir)


def _host_state():
    """Every attribute of the host's modules (and torch's attention entry points), by identity."""
    import torch

    state = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or name.split(".")[0] not in {"comfy", "nodes", "execution", "folder_paths",
                                                       "comfy_extras", "server", "latent_preview"}:
            continue
        for attr, value in list(vars(mod).items()):
            state[(name, attr)] = id(value)
            if isinstance(value, type) and value.__module__ == name:
                for cattr, cvalue in list(vars(value).items()):
                    state[(name, attr, cattr)] = id(cvalue)
    for attr in ("scaled_dot_product_attention", "softmax", "group_norm", "layer_norm"):
        state[("torch.nn.functional", attr)] = id(getattr(torch.nn.functional, attr))
    return state


def test_importing_the_pack_patches_nothing_and_imports_nothing_else(tmp_path):
    import nodes

    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    probe = "fpe-import-probe"  # a fresh folder name: the 2024 host keys modules by folder name
    copy_dir = install_pack(custom, probe)
    before_state = _host_state()
    before_modules = set(sys.modules)
    before_nodes = dict(nodes.NODE_CLASS_MAPPINGS)
    ok = nodes.load_custom_node(str(copy_dir), ignore=set(nodes.NODE_CLASS_MAPPINGS))
    if asyncio.iscoroutine(ok):
        ok = asyncio.run(ok)
    assert ok is True
    new_modules = set(sys.modules) - before_modules
    pack_prefixes = {m for m in new_modules if m.endswith(probe)}
    assert pack_prefixes, new_modules
    stray = {m for m in new_modules if not any(m == p or m.startswith(p + ".") for p in pack_prefixes)}
    assert not stray, f"importing the pack imported other modules: {sorted(stray)}"
    assert _host_state() == before_state
    assert dict(nodes.NODE_CLASS_MAPPINGS) == before_nodes  # the second copy's ids were ignored
    shutil.rmtree(copy_dir)


def test_pyproject_is_registry_ready():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,99}", project["name"])
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] == {"file": "LICENSE"} and (REPO / "LICENSE").is_file()
    assert project["dependencies"] == []
    assert {"Repository", "Documentation", "Bug Tracker"} <= set(project["urls"])
    assert any(c.startswith("Operating System") for c in project["classifiers"])
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    requirements = [
        line for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert requirements == []


@pytest.mark.skipif(not HOST.is_current, reason="comfy_config (pyproject parsing) exists only in current ComfyUI")
def test_current_comfyui_parses_the_pyproject():
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(HOST.pack_dir))
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert config.project.name == meta["project"]["name"]
    assert config.tool_comfy.publisher_id == meta["tool"]["comfy"]["PublisherId"]


def test_registry_archive_leaves_out_tests_and_dev_files():
    shipped = {p.name for p in HOST.pack_dir.iterdir()}
    assert {"__init__.py", "nodes", "fpe_attention", "workflows", "pyproject.toml", "LICENSE",
            "README.md", "requirements.txt"} <= shipped
    assert not shipped & {"tests", "dev", ".ci", ".git"}


def test_the_web_extension_is_served_from_the_pack():
    import nodes

    module = pack_module()
    web_dir = (HOST.pack_dir / module.WEB_DIRECTORY).resolve()
    assert (web_dir / "fpe_warnings.js").is_file()
    registered = {Path(path).resolve() for path in nodes.EXTENSION_WEB_DIRS.values()}
    assert web_dir in registered
    script = (web_dir / "fpe_warnings.js").read_text()
    assert '"free-prompt-editing.warning"' in script  # the message fpe_attention.notify sends
    assert pack_submodule("fpe_attention.notify").MESSAGE == "free-prompt-editing.warning"


def test_the_registry_icon_is_the_one_the_script_draws(tmp_path):
    import importlib.util

    import numpy as np
    from PIL import Image

    icon = REPO / "docs" / "icon.png"
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["tool"]["comfy"]["Icon"].endswith("/docs/icon.png") and icon.is_file()
    spec = importlib.util.spec_from_file_location("make_icon", REPO / "dev" / "make_icon.py")
    make_icon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_icon)
    make_icon.OUT = tmp_path / "icon.png"
    drawn = make_icon.main()
    with Image.open(icon) as shipped, Image.open(drawn) as fresh:
        assert shipped.size == (400, 400)
        assert np.array_equal(np.asarray(shipped), np.asarray(fresh)), "run: python dev/make_icon.py"
