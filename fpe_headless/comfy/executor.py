"""Run API-format prompts the way a ComfyUI server does, without the server.

:class:`Executor` runs a prompt through ComfyUI's real ``validate_prompt`` and ``PromptExecutor``
with a stand-in for the web server that records every message the server would send to the page
(progress, executed nodes, errors, and the pack's warnings). One executor keeps its caches across
runs, as a server does between queued prompts. A failure is one line naming the node and ComfyUI's
message (:class:`PromptFailed`); the traceback stays on the exception for whoever wants it.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
from dataclasses import dataclass, field

from .host import host


def node_class(class_type: str):
    import nodes  # ComfyUI's: importable once host.boot put it on sys.path

    try:
        return nodes.NODE_CLASS_MAPPINGS[class_type]
    except KeyError:
        raise KeyError(f"node type {class_type!r} is not registered in this ComfyUI") from None


class RecordingServer:
    """The part of ``server.PromptServer`` that the executor (and the pack) use: it records messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@dataclass
class PromptResult:
    prompt_id: str
    success: bool
    outputs: dict  # node id -> ui output dict (e.g. {"images": [...]})
    messages: list = field(default_factory=list)
    node_errors: dict = field(default_factory=dict)  # outputs ComfyUI dropped at validation (the rest ran)

    @property
    def executed(self) -> list[str]:
        """Node ids that actually ran (not served from cache), in execution order."""
        return [d["node"] for e, d in self.messages if e == "executing" and d.get("node") is not None]

    @property
    def cached(self) -> list[str]:
        for event, data in self.messages:
            if event == "execution_cached":
                return list(data["nodes"])
        return []

    @property
    def error(self) -> dict | None:
        for event, data in self.messages:
            if event == "execution_error":
                return data
        return None

    def events(self, name: str) -> list[dict]:
        return [data for event, data in self.messages if event == name]


class PromptFailed(RuntimeError):
    """A prompt that did not validate or failed while running; ``str()`` is one line."""

    def __init__(self, message: str, result: PromptResult | None = None, traceback: str = ""):
        super().__init__(message)
        self.result = result
        self.traceback = traceback


def _label(prompt: dict, node_id) -> str:
    node = prompt.get(str(node_id), {})
    title = node.get("_meta", {}).get("title")
    kind = node.get("class_type", "?")
    return f"node {node_id} '{title}' ({kind})" if title and title != kind else f"node {node_id} ({kind})"


def _one_line(text) -> str:
    return " ".join(str(text).split())


def validation_message(prompt: dict, error: dict, node_errors: dict) -> str:
    parts = []
    for node_id, info in (node_errors or {}).items():
        for item in info.get("errors", []):
            detail = item.get("details") or item.get("message", "")
            parts.append(f"{_label(prompt, node_id)}: {_one_line(detail)}")
    if not parts:
        parts.append(_one_line(f"{error.get('message', '')} {error.get('details', '')}".strip()))
    return "the prompt did not validate: " + "; ".join(parts)


_counter = itertools.count()


class Executor:
    def __init__(self):
        import execution  # ComfyUI's: importable once host.boot put it on sys.path

        self.server = RecordingServer()
        _attach_to_pack_messages(self.server)
        if host().is_current:
            self.executor = execution.PromptExecutor(
                self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 16.0}
            )
        else:
            self.executor = execution.PromptExecutor(self.server)

    def validate(self, prompt: dict):
        import execution  # ComfyUI's: importable once host.boot put it on sys.path

        if host().is_current:
            prompt_id = str(uuid.uuid4())
            return asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        return execution.validate_prompt(prompt)

    def run(self, prompt: dict, expect_success: bool = True) -> PromptResult:
        valid = self.validate(prompt)
        if not valid[0]:
            raise PromptFailed(validation_message(prompt, valid[1] or {}, valid[3]))
        outputs = valid[2]
        prompt_id = f"fpe-headless-{next(_counter)}"
        start = len(self.server.messages)
        self.server.client_id = "fpe-headless"
        _attach_to_pack_messages(self.server)
        self.executor.execute(prompt, prompt_id, {"client_id": "fpe-headless"}, outputs)
        messages = self.server.messages[start:]
        if host().is_current:
            ui = dict(self.executor.history_result.get("outputs", {}))
        else:
            ui = dict(self.executor.outputs_ui)
        result = PromptResult(prompt_id, bool(self.executor.success), ui, messages, dict(valid[3] or {}))
        if expect_success and not result.success:
            err = result.error or {}
            raise PromptFailed(
                f"{_label(prompt, err.get('node_id'))} failed: {err.get('exception_type', '').split('.')[-1]}: "
                f"{_one_line(err.get('exception_message', ''))}", result, "".join(err.get("traceback", [])))
        return result


def _attach_to_pack_messages(recorder: RecordingServer) -> None:
    """Let nodes that talk to the page (``server.PromptServer.instance``) reach the recorder, unless a
    real server runs in this process."""
    server_module = sys.modules.get("server")
    if server_module is None:
        try:
            import server as server_module
        except Exception:  # a ComfyUI whose server module cannot load headless: nothing to reach
            return
    prompt_server = getattr(server_module, "PromptServer", None)
    if prompt_server is None:
        return
    current = getattr(prompt_server, "instance", None)
    if current is None or isinstance(current, RecordingServer):
        prompt_server.instance = recorder
