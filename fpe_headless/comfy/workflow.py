"""Convert a UI-format workflow (what ComfyUI's web page saves) into an API-format prompt.

The mapping follows what the web UI does when a user presses Queue, using the node classes'
declared inputs from the running host:

* widget values (``widgets_values``) are matched in order to the node's widget inputs (required
  then optional; INT/FLOAT/STRING/BOOLEAN and combos, unless ``forceInput``). The UI stores extra,
  non-serialised values after some widgets: the "control after generate" value after ``seed`` /
  ``noise_seed`` or any input declaring ``control_after_generate``, and the upload button of a node
  whose combo declares ``image_upload`` (after the last required widget: Load Image (as Mask) stores
  image, channel, upload). Those are skipped.
* links become ``[origin_node_id, origin_slot]``; a link into a widget input overrides its value.
* frontend-only nodes are resolved as the UI does: ``Reroute`` passes its input through,
  ``PrimitiveNode`` supplies its value to the widgets it feeds, ``Note``/``MarkdownNote`` vanish;
  muted nodes (mode 2) are dropped and bypassed nodes (mode 4) pass a same-typed input through.

Unknown node types and value-count mismatches raise :class:`WorkflowError` naming the node.
"""

from __future__ import annotations

import json
from pathlib import Path

from .executor import node_class

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
VIRTUAL_NODES = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    pass


def _is_widget(spec) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _required_widgets(class_type: str) -> set[str]:
    decl = node_class(class_type).INPUT_TYPES()
    return {name for name, spec in (decl.get("required") or {}).items()
            if isinstance(spec, (tuple, list)) and spec and _is_widget(spec)}


def _required_end(slots: list[tuple[str, int]], required: set[str]) -> int:
    """How many values the required widgets take (with their UI-only extras)."""
    pos = end = 0
    for name, extra in slots:
        pos += 1 + extra
        if name in required:
            end = pos
    return end


def widget_slots(class_type: str) -> list[tuple[str, int]]:
    """(input name, number of extra UI-only values stored after it), in UI order."""
    decl = node_class(class_type).INPUT_TYPES()
    slots = []
    for section in ("required", "optional"):
        upload = False
        for name, spec in (decl.get(section) or {}).items():
            if not isinstance(spec, (tuple, list)) or not spec or not _is_widget(spec):
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            extra = 0
            if spec[0] == "INT" and (name in SEED_NAMES or opts.get("control_after_generate")):
                extra = 1
            elif (isinstance(spec[0], list) or spec[0] == "COMBO") and opts.get("control_after_generate"):
                extra = 2  # control mode + filter list
            upload = upload or (section == "required" and bool(opts.get("image_upload")))
            slots.append((name, extra))
        if upload:  # both pages add the upload button as the last required input: after the last required widget
            name, extra = slots[-1]
            slots[-1] = (name, extra + 1)
    return slots


_PY_TYPES = {"INT": (int,), "FLOAT": (int, float), "STRING": (str,), "BOOLEAN": (bool,)}


def _check_types(node: dict, class_type: str, named: dict) -> None:
    """A value in the wrong slot usually has the wrong type: say which node and input."""
    decl = node_class(class_type).INPUT_TYPES()
    specs = {**(decl.get("optional") or {}), **(decl.get("required") or {})}
    for name, value in named.items():
        kind = specs[name][0]
        if isinstance(kind, list) or kind == "COMBO":
            ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        else:
            allowed = _PY_TYPES.get(kind, (object,))
            ok = isinstance(value, allowed) and (kind == "BOOLEAN" or not isinstance(value, bool))
        if not ok:
            raise WorkflowError(f"{_label(node)}: widget {name!r} ({kind if isinstance(kind, str) else 'COMBO'}) "
                                f"got {value!r}: widget values are out of order or belong to another version")


def _label(node: dict) -> str:
    return f"node {node.get('id')} ({node.get('type')}{', ' + repr(node['title']) if node.get('title') else ''})"


def load_workflow(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def to_api(workflow: dict) -> dict:
    if "nodes" not in workflow or "links" not in workflow:
        raise WorkflowError("not a UI-format workflow (no 'nodes' / 'links'): is it already API format?")
    nodes_by_id = {node["id"]: node for node in workflow["nodes"]}
    links = {}
    for link in workflow["links"]:
        if isinstance(link, dict):  # newer serialisation
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"])
        else:
            link_id, origin, origin_slot, target, target_slot = link[:5]
            links[link_id] = (origin, origin_slot, target, target_slot)

    def resolve(link_id, wanted_type):
        """Follow a link back through Reroute / bypassed nodes to a real output."""
        seen = set()
        while link_id is not None:
            if link_id in seen:
                raise WorkflowError(f"link cycle through link {link_id}")
            seen.add(link_id)
            origin, slot, _, _ = links[link_id]
            node = nodes_by_id[origin]
            if node["type"] == "Reroute":
                link_id = node["inputs"][0].get("link")
                continue
            if node.get("mode") == BYPASSED:
                candidates = [i for i in node.get("inputs", []) if i.get("link") is not None
                              and i.get("type") == wanted_type]
                link_id = candidates[0]["link"] if candidates else None
                continue
            if node.get("mode") == MUTED:
                return None
            if node["type"] == "PrimitiveNode":
                return ("value", node["widgets_values"][0])
            return ("link", [str(origin), int(slot)])
        return None

    prompt = {}
    for node in workflow["nodes"]:
        ctype = node["type"]
        if ctype in VIRTUAL_NODES or node.get("mode") in (MUTED, BYPASSED):
            continue
        try:
            slots = widget_slots(ctype)
        except KeyError:
            raise WorkflowError(f"{_label(node)}: node type {ctype!r} is not installed in this ComfyUI") from None
        values = node.get("widgets_values") or []
        if isinstance(values, dict):
            named = dict(values)
        else:
            named = {}
            pos = 0
            ends = set()  # where the values may end: after any slot
            for name, extra in slots:
                if pos < len(values):
                    named[name] = values[pos]
                pos += 1 + extra
                ends.add(pos)
            # A workflow saved before an optional widget was added lacks its value (the page keeps the default).
            short = len(values) in ends and len(values) >= _required_end(slots, _required_widgets(ctype))
            if pos != len(values) and not short:
                raise WorkflowError(
                    f"{_label(node)}: has {len(values)} widget values but its widgets {[n for n, _ in slots]} "
                    f"take {pos}: the workflow does not match this node's inputs"
                )
            _check_types(node, ctype, named)
        inputs = dict(named)
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            got = resolve(inp["link"], inp.get("type"))
            if got is None:  # fed by a muted node or nothing: the input is left unset
                inputs.pop(inp["name"], None)
            else:  # a PrimitiveNode's value, or [origin_id, slot]
                inputs[inp["name"]] = got[1]
        prompt[str(node["id"])] = {
            "class_type": ctype,
            "inputs": inputs,
            "_meta": {"title": node.get("title") or ctype},
        }
    return prompt
