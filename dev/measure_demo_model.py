"""Measure the demo model with the drawn world's reader: text control, FPE edits vs a control, shape
edits, real drawn scenes (DDIM and null-text inversion), a settings sweep. Prints tables (the source of
docs/BENCHMARKS.md's demo section) and writes them as JSON.

    source dev/env.sh && python dev/measure_demo_model.py                  # everything, ~25 min on 2 cores
    source dev/env.sh && python dev/measure_demo_model.py --only control --seeds 4   # a part, fewer seeds

Everything runs through ComfyUI's real executor with the shipped workflows' nodes (DDIM, ddim_uniform,
cfg 7.5, 128 px). The control of an edit is the same target prompt and seed sampled without FPE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fpe_headless.comfy import host as host_mod  # noqa: E402
from fpe_headless.comfy import tiny_models  # noqa: E402
from fpe_headless.comfy.executor import Executor  # noqa: E402
from fpe_headless.demo import lab, world  # noqa: E402
from fpe_headless.demo.checkpoint import DEMO_CHECKPOINT  # noqa: E402

PARTS = ("control", "colour", "shape", "real", "sweep")
SWEEP_ENDS = (0.2, 0.5, 0.8, 1.0)
PHOTO_SEED0 = 10_000_000  # drawn 'photos': seeds far from the training scenes'


def pct(flags) -> float:
    flags = list(flags)
    return 100.0 * sum(flags) / max(1, len(flags))


def summary(scores: list[lab.EditScore], colour: bool = True) -> dict:
    ious = np.array([s.iou for s in scores])
    out = {"n": len(scores), "iou_median": float(np.median(ious)), "iou_p10": float(np.percentile(ious, 10)),
           "found": pct(s.found for s in scores)}
    if colour:
        out["colour_right"] = pct(s.colour_right for s in scores)
    return out


class Bench:
    def __init__(self, checkpoint: Path, workdir: Path, say):
        self.say = say
        self.host = host_mod.boot(Path(os.environ.get("FPE_COMFYUI_HOST") or os.environ["COMFYUI_PATH"]).resolve(),
                                  workdir, quiet=True)
        tiny_models.register_tiny_model_configs(workdir / "tiny_configs")
        (workdir / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint.resolve())
        self.name = checkpoint.name
        self.executor = Executor()
        self.output = workdir / "output"
        self.input = workdir / "input"

    def run(self, graph) -> lab.Pictures:
        return lab.run(graph, self.executor, self.output)

    # -- parts -----------------------------------------------------------------------------------

    def control(self, seeds: int) -> dict:
        """Is the prompted colour and shape drawn? Every colour x shape, grounds cycling, ``seeds`` each."""
        colour_ok, shape_ok, found = [], [], []
        read_as = {shape: {} for shape in world.SHAPES}  # prompted shape -> what the reader saw, counted
        for k, (colour, shape) in enumerate((c, s) for c in world.COLOURS for s in world.SHAPES):
            text = f"a {colour} {shape} on {world.GROUNDS[k % len(world.GROUNDS)]}"
            for picture in self.run(lab.generation_graph(self.name, text, 1000 + k, seeds, lab.EditSettings()))["generated"]:
                seen = world.read(picture, 1)
                found.append(bool(seen))
                colour_ok.append(bool(seen) and seen[0].colour == colour)
                shape_ok.append(bool(seen) and seen[0].shape == shape)
                got = seen[0].shape if seen else "(none)"
                read_as[shape][got] = read_as[shape].get(got, 0) + 1
        return {"n": len(found), "object_found": pct(found), "colour_right": pct(colour_ok), "shape_right": pct(shape_ok),
                "shape_read_as": read_as}

    def colour_edits(self, seeds: int, settings: lab.EditSettings | None = None, pairs=None, control: bool = True) -> dict:
        """Every ordered colour pair (shape and ground cycling): FPE edit vs control, against the source."""
        settings = settings or lab.EditSettings()
        fpe, plain = [], []
        pairs = pairs or [(a, b) for a in world.COLOURS for b in world.COLOURS if a != b]
        for k, (a, b) in enumerate(pairs):
            shape, ground = world.SHAPES[k % 4], world.GROUNDS[(k // 4) % 4]
            pics = self.run(lab.generated_edit_graph(self.name, f"a {a} {shape} on {ground}",
                                                     f"a {b} {shape} on {ground}", 2000 + k, seeds, settings,
                                                     control=control))
            for i, (src, edit) in enumerate(zip(pics["source"], pics["edit"], strict=True)):
                fpe.append(lab.score_edit(src, edit, b))
                if control:
                    plain.append(lab.score_edit(src, pics["control"][i], b))
        return {"fpe": summary(fpe), "control": summary(plain) if control else None, "pairs": len(pairs)}

    def shape_edits(self, seeds: int) -> dict:
        fpe, control = [], []
        for k, colour in enumerate(world.COLOURS):
            ground = world.GROUNDS[k % 4]
            pics = self.run(lab.generated_edit_graph(self.name, f"a {colour} circle on {ground}",
                                                     f"a {colour} square on {ground}", 3000 + k, seeds, lab.EditSettings()))
            for src, edit, ctl in zip(pics["source"], pics["edit"], pics["control"], strict=True):
                fpe.append(lab.score_edit(src, edit, None))
                control.append(lab.score_edit(src, ctl, None))

        def shapes(scores):
            shifts = np.array([s.centroid_shift for s in scores if s.found])
            return {"n": len(scores), "centroid_shift_median": float(np.median(shifts)) if len(shifts) else None,
                    "within_10pct": pct(shifts <= 0.10), "shape_changed": pct(not s.shape_kept for s in scores if s.found)}

        return {"fpe": shapes(fpe), "control": shapes(control)}

    def real(self, scenes: int) -> dict:
        rows = []
        for i in range(scenes):
            target_colour = list(world.COLOURS)[(i + 3) % 6]
            scene = world.random_scene(PHOTO_SEED0 + i, objects=1)
            if scene.things[0].colour == target_colour:
                target_colour = list(world.COLOURS)[(i + 4) % 6]
            photo_name = f"demo_photo_{i}.png"
            picture = world.render(scene)[0]
            Image.fromarray(picture).save(self.input / photo_name)
            target = scene.with_colour(0, target_colour).caption
            row = {"scene": scene.caption, "target": target}
            for label, kwargs in (("ddim", {}), ("nulltext", {"null_text": True})):
                settings = lab.EditSettings(steps=50)
                pics = self.run(lab.real_edit_graph(self.name, photo_name, scene.caption, target, settings, **kwargs))
                score = lab.score_edit(picture, pics["edit"][0], target_colour)
                row[label] = {"psnr": lab.psnr(picture, pics["reconstruction"][0]), "iou": score.iou,
                              "colour_right": score.colour_right}
            rows.append(row)
        out = {"scenes": scenes}
        for label in ("ddim", "nulltext"):
            out[label] = {"psnr_mean": float(np.mean([r[label]["psnr"] for r in rows])),
                          "iou_median": float(np.median([r[label]["iou"] for r in rows])),
                          "colour_right": pct(r[label]["colour_right"] for r in rows)}
        out["nulltext_gain_db"] = out["nulltext"]["psnr_mean"] - out["ddim"]["psnr_mean"]
        out["rows"] = rows
        return out

    def sweep(self, seeds: int) -> list[dict]:
        pairs = [("red", "blue"), ("yellow", "purple"), ("green", "orange"), ("blue", "yellow"),
                 ("purple", "green"), ("orange", "red")]
        rows = []
        # at 128 px (16 x 16 latent) every level has <= 32 x 32 tokens, so "official" is every layer
        choices = [("official", "official", ""), ("official relative", "official relative", ""),
                   ("paper 4-14", "paper 4-14", ""), ("encoder + mid (in, mid)", "custom", "in,mid"),
                   ("decoder (out)", "custom", "out")]
        for label, layers, custom in choices:
            for end in SWEEP_ENDS:
                settings = lab.EditSettings(layers=layers, custom_layers=custom or lab.EditSettings.custom_layers, end=end)
                result = self.colour_edits(seeds, settings, pairs, control=False)
                rows.append({"layers": label, "end": end, **result["fpe"]})
                self.say(f"    sweep {label} end {end}: IoU {result['fpe']['iou_median']:.3f}, "
                         f"colour {result['fpe']['colour_right']:.0f} %")
        control = self.colour_edits(seeds, lab.EditSettings(end=0.0), pairs)["control"]
        rows.append({"layers": "(no FPE)", "end": 0.0, **control})
        return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    p.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    p.add_argument("--seeds", type=int, default=20, help="seeds per colour pair (and per shape edit)")
    p.add_argument("--control-seeds", type=int, default=9, help="seeds per colour x shape prompt (24 prompts)")
    p.add_argument("--scenes", type=int, default=12, help="drawn real scenes")
    p.add_argument("--sweep-seeds", type=int, default=6)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    workdir = Path(tempfile.mkdtemp(prefix="fpe-measure-"))
    results = {"checkpoint": args.checkpoint.name}
    try:
        bench = Bench(args.checkpoint, workdir, say)
        say(f"host: {bench.host.label}")
        for part in args.only or PARTS:
            started = time.monotonic()
            if part == "control":
                results[part] = bench.control(args.control_seeds)
            elif part == "colour":
                results[part] = bench.colour_edits(args.seeds)
            elif part == "shape":
                results[part] = bench.shape_edits(args.seeds)
            elif part == "real":
                results[part] = bench.real(args.scenes)
            else:
                results[part] = bench.sweep(args.sweep_seeds)
            shown = {k: v for k, v in results[part].items() if k != "rows"} if isinstance(results[part], dict) else results[part]
            say(f"{part} ({time.monotonic() - started:.0f} s): {json.dumps(shown, indent=1)}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
