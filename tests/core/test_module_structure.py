"""The house rules of the pack's code, read from its source: one-way imports, concepts in their module.

Static checks (``ast``, no host needed beyond the session's): they fail when a later change puts a
concept back in the wrong place, which no behaviour test would notice.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "fpe_attention"
NODES = REPO / "nodes"


def _relative_imports(path: Path) -> set[str]:
    """The pack modules ``path`` imports (``fpe_attention.x`` / ``nodes.x``), wherever the import sits."""
    package = path.parent.name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package if node.level == 1 else None
            module = node.module or ""
            if node.level == 2:  # from ..fpe_attention.x import y
                base, _, module = module.partition(".")
            if module:
                found.add(f"{base}.{module.split('.')[0]}")
            else:  # from . import x
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    return {f"{p.parent.name}.{p.stem}": _relative_imports(p)
            for folder in (CORE, NODES) for p in folder.glob("*.py") if p.stem != "__init__"}


def test_the_core_never_imports_the_nodes_and_has_no_cycles():
    graph = _graph()
    for module, imports in graph.items():
        if module.startswith("fpe_attention."):
            assert not {m for m in imports if m.startswith("nodes.")}, module
    state: dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for target in graph.get(module, ()):
            assert state.get(target) != 1, f"import cycle: {' -> '.join(path + [target])}"
            if target in graph and not state.get(target):
                visit(target, path + [target])
        state[module] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [module])


def test_nodes_that_sample_for_themselves_do_not_import_the_recording_feature():
    graph = _graph()
    for module in ("fpe_attention.inversion", "fpe_attention.nulltext", "nodes.invert", "nodes.nulltext"):
        assert "fpe_attention.recording" not in graph[module], module
        assert "fpe_attention.run_observers" in graph[module] or module == "nodes.nulltext", module


def test_word_to_token_mapping_is_its_own_module():
    graph = _graph()
    for module in ("fpe_attention.attention_maps", "nodes.attention_maps", "nodes.probe"):
        assert "fpe_attention.cross" not in graph[module], module
        assert "fpe_attention.prompt_words" in graph[module], module


# Attribute probes that tell ComfyUI versions apart: they belong in host_versions.py only.
HOST_PROBES = ("get_model_object", "add_wrapper_with_key", "object_patches", "fix_empty_latent_channels",
               "spacial_compression_encode", "attn_precision")


def test_host_version_differences_live_in_one_module():
    for path in [*CORE.glob("*.py"), *NODES.glob("*.py")]:
        if path.name == "host_versions.py":
            continue
        probed = {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
        probed |= {node.value for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}  # getattr(x, "name")
        assert not probed & set(HOST_PROBES), path.name


def test_the_node_registry_holds_no_logic():
    tree = ast.parse((NODES / "__init__.py").read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "AnnAssign", "Assign"}, kinds  # docstring, imports, the two mappings
    assert not any(isinstance(node, (ast.FunctionDef, ast.ClassDef)) for node in ast.walk(tree))


def test_a_layer_choice_is_resolved_in_one_place():
    """Nodes resolve a preset + block list with ``choose_layers`` (which names the input at fault); none
    re-derives the label or calls ``select_layers`` itself."""
    for path in NODES.glob("*.py"):
        text = path.read_text()
        assert "select_layers(" not in text and '== "custom" else' not in text, path.name
