"""Where the committed demo checkpoint lives, and what its file says about itself."""

from __future__ import annotations

from pathlib import Path

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "fpe_demo_world.safetensors"
DEMO_NAME = DEMO_CHECKPOINT.name
DEMO_METADATA = {"fpe_demo_model": "drawn world v1", "layout": "tiny_sd15", "size": "128"}
