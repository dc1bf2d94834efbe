"""The shipped workflows at a CPU-test size: pointed at the tiny models, few steps, small pictures."""

from __future__ import annotations

from pathlib import Path


def shrink(api: dict, steps: int = 3, side: int = 64) -> dict:
    """The same graph at a CPU-test size: few steps, small latents, small photos."""
    from PIL import Image

    from fpe_harness.host import host

    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":  # a side x side copy of the shipped example photo
            small = f"{Path(inputs['image']).stem}_{side}px.png"
            input_dir = host().workdir / "input"
            Image.open(input_dir / inputs["image"]).convert("RGB").resize((side, side)).save(input_dir / small)
            inputs["image"] = small
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = steps
        for key in ("width", "height"):
            if isinstance(inputs.get(key), int):
                inputs[key] = side
    return api


def use_tiny_checkpoints(wf: dict, tiny_for_shipped) -> dict:
    """Point every checkpoint loader of a UI-format workflow at the tiny model of its architecture."""
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = tiny_for_shipped(node["widgets_values"][0])
    return wf
