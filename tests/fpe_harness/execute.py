"""Run nodes and prompts the way ComfyUI does.

* :func:`call_node` instantiates a node class and calls its ``FUNCTION`` inside
  ``torch.inference_mode()`` (as the executor does), returning the output tuple.
* :class:`Executor` runs an API-format prompt through ComfyUI's real ``validate_prompt`` and
  ``PromptExecutor``, with a minimal stand-in for the web server that records every message.
  One executor keeps its caches across runs, as a ComfyUI server does between queued prompts.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import uuid
from dataclasses import dataclass, field

import torch

from .host import host


def node_class(class_type: str):
    import nodes

    try:
        return nodes.NODE_CLASS_MAPPINGS[class_type]
    except KeyError:
        raise KeyError(f"node type {class_type!r} is not registered in this ComfyUI") from None


def input_types(class_type: str) -> dict:
    cls = node_class(class_type)
    return cls.INPUT_TYPES()


def _is_v3(cls) -> bool:
    try:
        from comfy_api.internal import _ComfyNodeInternal
    except ImportError:  # the 2024 host has no V3 nodes
        return False
    return isinstance(cls, type) and issubclass(cls, _ComfyNodeInternal)


def call_node(class_type: str, **inputs):
    """Call a node as the executor does (V1 instance method or V3 locked class clone).

    Returns the node's output tuple.
    """
    cls = node_class(class_type)
    with torch.inference_mode():
        if _is_v3(cls):
            from comfy_api.internal import make_locked_method_func

            cls.VALIDATE_CLASS()
            clone = cls.PREPARE_CLASS_CLONE({"hidden_inputs": {}})
            func = make_locked_method_func(cls, cls.FUNCTION, clone)
        else:
            func = getattr(cls(), cls.FUNCTION)
        out = func(**inputs)
        if inspect.isawaitable(out):
            out = asyncio.run(out)
    if hasattr(out, "args") and hasattr(out, "result"):  # V3 NodeOutput
        return out.args
    if isinstance(out, dict):  # {"ui": ..., "result": ...}
        return out.get("result", ())
    return out


class StubServer:
    """The part of ``server.PromptServer`` that the executor uses, recording every message."""

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


class PromptFailed(AssertionError):
    def __init__(self, message: str, result: PromptResult | None = None):
        super().__init__(message)
        self.result = result


@dataclass
class PromptResult:
    prompt_id: str
    success: bool
    outputs: dict  # node id -> ui output dict (e.g. {"images": [...]})
    messages: list = field(default_factory=list)

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


_counter = itertools.count()


class Executor:
    def __init__(self):
        import execution

        self.server = StubServer()
        if host().is_current:
            self.executor = execution.PromptExecutor(
                self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 16.0}
            )
        else:
            self.executor = execution.PromptExecutor(self.server)

    def validate(self, prompt: dict):
        import execution

        if host().is_current:
            prompt_id = str(uuid.uuid4())
            return asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        return execution.validate_prompt(prompt)

    def run(self, prompt: dict, expect_success: bool = True) -> PromptResult:
        valid = self.validate(prompt)
        if not valid[0]:
            raise PromptFailed(f"prompt did not validate: {valid[1]} {valid[3]}")
        outputs = valid[2]
        prompt_id = f"fpe-test-{next(_counter)}"
        start = len(self.server.messages)
        self.server.client_id = "fpe-test-client"
        self.executor.execute(prompt, prompt_id, {"client_id": "fpe-test-client"}, outputs)
        messages = self.server.messages[start:]
        if host().is_current:
            ui = dict(self.executor.history_result.get("outputs", {}))
        else:
            ui = dict(self.executor.outputs_ui)
        result = PromptResult(prompt_id, bool(self.executor.success), ui, messages)
        if expect_success and not result.success:
            err = result.error or {}
            raise PromptFailed(
                f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
                f"{err.get('exception_type')}: {err.get('exception_message')}\n"
                + "".join(err.get("traceback", [])),
                result,
            )
        return result
