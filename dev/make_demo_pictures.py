"""Draw docs/images/demo_edits.png: FPE edits on the demo model, next to the same prompt without FPE.

    source dev/env.sh && python dev/make_demo_pictures.py

Rows are fixed edits with the first seeds (no picking): generated colour and shape edits, and a real
drawn scene (never in the training set) edited through DDIM inversion. Columns: the source (or the
photo), the FPE edit, and the target prompt with the same seed and no FPE. Everything runs through
ComfyUI's executor with the shipped workflows' nodes (DDIM, 20 steps, cfg 7.5, 128 px).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO)]

import numpy as np  # noqa: E402
from measure_demo_model import PHOTO_SEED0, Bench  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from fpe_headless.demo import lab, world  # noqa: E402
from fpe_headless.demo.checkpoint import DEMO_CHECKPOINT  # noqa: E402
from fpe_headless.drawing import load_font  # noqa: E402

GENERATED = [("a red circle on grass", "a blue circle on grass"),
             ("a yellow square on sand", "a purple square on sand"),
             ("a green triangle on sky", "a orange triangle on sky"),
             ("a blue circle on stone", "a blue square on stone")]
SCALE = 2  # 128 px pictures drawn at 256 px
OUT = REPO / "docs" / "images" / "demo_edits.png"


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="fpe-demo-pictures-"))
    rows = []
    try:
        bench = Bench(DEMO_CHECKPOINT, workdir, print)
        for source, target in GENERATED:
            pics = bench.run(lab.generated_edit_graph(bench.name, source, target, 42, 1, lab.EditSettings()))
            rows.append(((source, pics["source"][0]), (target + " · FPE", pics["edit"][0]),
                         (target + " · no FPE", pics["control"][0])))
        scene = world.random_scene(PHOTO_SEED0 + 1, objects=1, colour="red", shape="star", ground="sand")
        photo = world.render(scene)[0]
        Image.fromarray(photo).save(workdir / "input" / "demo_photo.png")
        target = scene.with_colour(0, "green").caption
        real = bench.run(lab.real_edit_graph(bench.name, "demo_photo.png", scene.caption, target,
                                             lab.EditSettings(steps=50)))
        plain = bench.run(lab.generation_graph(bench.name, target, 42, 1, lab.EditSettings()))
        rows.append(((f"drawn photo: {scene.caption}", photo), (target + " · FPE", real["edit"][0]),
                     (target + " · no FPE", plain["generated"][0])))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    side = world.SIZE * SCALE
    label_h, gap = 22, 6
    width = 3 * side + 4 * gap
    height = len(rows) * (side + label_h + gap) + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = load_font(12)
    for r, row in enumerate(rows):
        y = gap + r * (side + label_h + gap)
        for c, (label, picture) in enumerate(row):
            x = gap + c * (side + gap)
            draw.text((x + 2, y + 4), label, fill=(0, 0, 0), font=font)
            sheet.paste(Image.fromarray(np.asarray(picture)).resize((side, side), Image.NEAREST), (x, y + label_h))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(OUT, optimize=True)
    print(f"wrote {OUT.relative_to(REPO)} ({OUT.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
