"""Check a workflow as the web page shows it after loading: every node known, every widget value valid.

The page assigns a file's ``widgets_values`` to widgets by position, so a value in the wrong slot
(two values swapped, the seed's "control after generate" value missing) loads silently and only
fails, or quietly does something else, later. Here each widget the page shows is checked against
the server's node definitions (``/object_info``: type, range, choices) and against the widget's own
choices (for UI-only widgets such as "control after generate"). Every problem is one line naming
the workflow and the node.
"""

from __future__ import annotations

MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


def node_label(workflow: str, node: dict) -> str:
    title = node.get("title")
    named = f" '{title}'" if title and title != node["type"] else ""
    return f"{workflow}: node {node['id']}{named} ({node['type']})"


def _input_specs(definition: dict) -> dict:
    specs = {}
    for section in ("required", "optional"):
        specs.update((definition.get("input") or {}).get(section) or {})
    return specs


def _combo_choices(spec) -> list | None:
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return list(opts.get("options") or [])
    return None


# Choices a model picker lists besides files: Load VAE's built-in decoders (current ComfyUI).
BUILT_IN_MODEL_CHOICES = {"pixel_space", "taesd", "taesdxl", "taesd3", "taef1"}


def _is_model_file_list(choices: list, value) -> bool:
    """A model picker: the file named in a shared workflow is the author's, not necessarily the user's."""
    names = [c for c in choices if isinstance(c, str) and c not in BUILT_IN_MODEL_CHOICES] + [value]
    return all(isinstance(n, str) and n.lower().endswith(MODEL_FILE_SUFFIXES) for n in names)


def widget_problem(spec, widget: dict) -> str | None:
    """Why ``widget['value']`` does not fit the input ``spec``, or None."""
    value = widget["value"]
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    choices = _combo_choices(spec)
    if choices is not None:
        if value in choices or _is_model_file_list(choices, value):
            return None
        shown = choices if len(choices) <= 12 else choices[:12] + ["..."]
        return f"value {value!r} is not one of {shown}"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"value {value!r} is not a number ({kind})"
        if kind == "INT" and float(value) != int(value):
            return f"value {value!r} is not a whole number (INT)"
        low, high = opts.get("min"), opts.get("max")
        if low is not None and value < low or high is not None and value > high:
            return f"value {value!r} is outside [{low}, {high}]"
        return None
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"value {value!r} is not a boolean"
    if kind == "STRING" and not isinstance(value, str):
        return f"value {value!r} is not text"
    return None


def graph_problems(workflow: str, nodes: list[dict], object_info: dict, frontend_only: set[str],
                   file_nodes: list[dict], saved_values: dict[int, list]) -> list[str]:
    """Every missing node type and every misplaced widget value, one line each. ``file_nodes`` are
    the file's nodes, ``saved_values`` what the page would save for each: values the page has no
    widget for are dropped when it saves, so a value too many is misplaced too."""
    problems = []
    shown = {n["id"]: n for n in nodes}
    for node in file_nodes:
        given, kept = len(node.get("widgets_values") or []), len(saved_values.get(node["id"], []))
        if given != kept:
            problems.append(f"{node_label(workflow, shown.get(node['id'], node))}: the file has {given} widget "
                            f"values, the page keeps {kept}")
    for node in nodes:
        label = node_label(workflow, node)
        if node["type"] in frontend_only:
            continue
        definition = object_info.get(node["type"])
        if definition is None or not node["registered"]:
            problems.append(f"{label}: node type is missing (not installed on this ComfyUI)")
            continue
        if node["has_errors"]:
            problems.append(f"{label}: the page marks the node with an error")
        specs = _input_specs(definition)
        for widget in node["widgets"]:
            spec = specs.get(widget["name"])
            if spec is not None and isinstance(spec, (list, tuple)) and spec:
                why = widget_problem(spec, widget)
            elif widget["values"] is not None and widget["type"] == "combo":  # UI-only, e.g. control after generate
                why = None if widget["value"] in widget["values"] else (
                    f"value {widget['value']!r} is not one of {widget['values']}")
            else:
                continue
            if why:
                problems.append(f"{label}: widget '{widget['name']}' {why}")
    return problems
