"""The shipped workflows at a CPU-test size: pointed at the tiny models, few steps, small pictures."""

from __future__ import annotations

import json
from pathlib import Path

# The MMDiT workflows (Flux.1, SD3.5) load their files with these nodes; ComfyUI of early 2024 has no Flux or SD3.
MMDIT_NODES = {"UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "FluxGuidance", "EmptySD3LatentImage",
               "FPEMMDiTInject", "FPEFlowInvert"}
NO_MMDIT = "ComfyUI of early 2024 has no Flux/SD3 nodes"


def is_mmdit(path: Path) -> bool:
    """Whether a shipped workflow is one of the MMDiT (Flux.1 / SD3.5) ones."""
    return any(node["type"] in MMDIT_NODES for node in json.loads(Path(path).read_text())["nodes"])


def host_has_mmdit() -> bool:
    """Whether the running host has Flux and SD3 (current ComfyUI), as tests/cli/test_tiny_mmdit.py asks."""
    import comfy.supported_models as supported

    return hasattr(supported, "Flux") and (hasattr(supported, "SD3") or hasattr(supported, "SD35"))


def shipped_params(paths) -> list:
    """pytest params of shipped workflows, the MMDiT ones skipped on a host without Flux/SD3."""
    import pytest

    mmdit_skip = pytest.mark.skipif(not host_has_mmdit(), reason=NO_MMDIT)
    return [pytest.param(p, id=p.stem, marks=[mmdit_skip] if is_mmdit(p) else []) for p in paths]


def shrink(api: dict, steps: int | None = None, side: int = 64) -> dict:
    """The same graph at a CPU-test size: few steps (3; 5 with FPE MMDiT Inject, whose default end 0.2 edits no
    step of 3), small latents, small photos."""
    from PIL import Image

    from fpe_harness.host import host

    if steps is None:
        steps = 5 if any(node["class_type"] == "FPEMMDiTInject" for node in api.values()) else 3
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


# The files the MMDiT workflows load -> the tiny stand-ins of fpe_headless.comfy.tiny_mmdit (attribute names).
SHIPPED_MMDIT_FILES = {
    "flux1-dev.safetensors": "FLUX_FILE", "sd3.5_medium.safetensors": "SD35_FILE",
    "clip_l.safetensors": "CLIP_L_FILE", "clip_g.safetensors": "CLIP_G_FILE", "t5xxl_fp16.safetensors": "T5XXL_FILE",
    "ae.safetensors": "VAE_FILE", "sd3.5_vae.safetensors": "VAE_FILE",
}
# The loaders' file widgets, in the order the page stores them.
MMDIT_LOADER_WIDGETS = {"UNETLoader": (0,), "DualCLIPLoader": (0, 1), "TripleCLIPLoader": (0, 1, 2), "VAELoader": (0,)}
_TINY_MMDIT_DIRS: list[Path] = []


def tiny_mmdit_models() -> Path:
    """The host's models folder holding the tiny Flux and SD3.5 files (written and registered once per session)."""
    from fpe_harness.host import host
    from fpe_headless.comfy import tiny_mmdit

    if not _TINY_MMDIT_DIRS:
        models = host().workdir / "models"
        tiny_mmdit.register_tiny_mmdit()
        tiny_mmdit.add_model_folders(models)
        tiny_mmdit.write_tiny_flux(models)
        tiny_mmdit.write_tiny_sd35(models)
        _TINY_MMDIT_DIRS.append(models)
    return _TINY_MMDIT_DIRS[0]


def tiny_mmdit_file(shipped: str) -> str:
    """The tiny file that stands in for a file an MMDiT workflow loads."""
    from fpe_headless.comfy import tiny_mmdit

    assert shipped in SHIPPED_MMDIT_FILES, (
        f"a shipped workflow loads {shipped!r}: name its tiny stand-in in SHIPPED_MMDIT_FILES (tests/fpe_harness/"
        "shipped.py)")
    return getattr(tiny_mmdit, SHIPPED_MMDIT_FILES[shipped])


def use_tiny_checkpoints(wf: dict, tiny_for_shipped) -> dict:
    """Point every model loader of a UI-format workflow at the tiny model of its architecture: checkpoints
    (SD1.5, SDXL) through ``tiny_for_shipped``, the MMDiT workflows' diffusion model, text encoder and VAE
    files at the tiny Flux / SD3.5 files (written on first use)."""
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = tiny_for_shipped(node["widgets_values"][0])
        elif node["type"] in MMDIT_LOADER_WIDGETS:
            tiny_mmdit_models()
            for slot in MMDIT_LOADER_WIDGETS[node["type"]]:
                node["widgets_values"][slot] = tiny_mmdit_file(node["widgets_values"][slot])
    return wf
