"""Run nodes and prompts the way ComfyUI does.

* :func:`call_node` instantiates a node class and calls its ``FUNCTION`` inside
  ``torch.inference_mode()`` (as the executor does), returning the output tuple.
* :class:`Executor` (the product's, ``fpe_headless.comfy.executor``) runs an API-format prompt through
  ComfyUI's real ``validate_prompt`` and ``PromptExecutor``; one executor keeps its caches across
  runs, as a ComfyUI server does between queued prompts.
"""

from __future__ import annotations

import asyncio
import inspect

import torch

from fpe_headless.comfy.executor import Executor, PromptFailed, PromptResult, node_class  # noqa: F401 - for the tests


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


