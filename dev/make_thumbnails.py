"""Write workflows/<name>.jpg, the template browser's picture of each shipped workflow.

    COMFYUI_PATH=/path/to/current/ComfyUI bash dev/thumbnails.sh            # every workflow
    COMFYUI_PATH=/path/to/current/ComfyUI bash dev/thumbnails.sh fpe_sdxl_generated_edit ...  # these only

Each picture is the graph as current ComfyUI's frontend draws it (a real server and headless
Chromium, as in the browser test; focus mode, no minimap), scaled to THUMBNAIL_SIZE, stamped with
the sha256 of its workflow file in the JPEG comment. tests/workflows/test_thumbnails.py fails when a
workflow changes and its picture was not made again. Run after dev/build_workflows.py.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

THUMBNAIL_SIZE = (960, 540)
STAMP_PREFIX = "fpe-workflow-sha256:"


def stamp(workflow: Path) -> bytes:
    return (STAMP_PREFIX + hashlib.sha256(workflow.read_bytes()).hexdigest()).encode()


def main() -> int:
    import os

    from PIL import Image

    from fpe_harness.comfy_server import ComfyServer
    from fpe_harness.host import detect_kind
    from fpe_harness.web_ui import WebUI

    host = Path(os.environ.get("FPE_COMFYUI_HOST") or os.environ.get("COMFYUI_PATH") or "")
    if not (host / "nodes.py").is_file() or detect_kind(host)[0] != "current":
        sys.exit("make_thumbnails: set COMFYUI_PATH to a current ComfyUI (the template browser is its frontend's)")
    workflows = sorted((REPO / "workflows").glob("*.json"))
    if len(sys.argv) > 1:  # only the named ones (a name with or without .json)
        wanted = {Path(arg).name.removesuffix(".json") for arg in sys.argv[1:]}
        unknown = sorted(wanted - {w.stem for w in workflows})
        if unknown:
            sys.exit(f"make_thumbnails: no workflows/<name>.json for {', '.join(unknown)}")
        workflows = [w for w in workflows if w.stem in wanted]
    with tempfile.TemporaryDirectory(prefix="fpe-thumbnails-") as tmp, \
            ComfyServer(host, Path(tmp), None) as server, WebUI(server.url) as ui:
        ui.viewport = {"width": 1920, "height": 1080}  # big enough for the frontend to draw node text
        for workflow in workflows:
            ui.open()
            ui.drop_workflow(workflow)
            if not ui.hide_chrome():
                sys.exit("make_thumbnails: this frontend has no focus mode; use a current ComfyUI")
            shot = ui.screenshot(Path(tmp) / f"{workflow.stem}.png", margin=24)
            picture = Image.open(shot).convert("RGB").resize(THUMBNAIL_SIZE, Image.LANCZOS)
            target = workflow.with_suffix(".jpg")
            picture.save(target, "JPEG", quality=85, optimize=True, comment=stamp(workflow))
            print(f"wrote {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
