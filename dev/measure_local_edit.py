"""Measure FPE Local Edit (issue 26): its cost against the unmasked edit, and what it keeps on the demo model.

    source dev/env.sh && python dev/measure_local_edit.py --json /tmp/local_edit.json   # everything
    source dev/env.sh && python dev/measure_local_edit.py --only cost --repeats 3       # one part
    source dev/env.sh && python dev/measure_local_edit.py --only semantics --seeds 4

Cost (``--only cost``): sampling time in this process, the pack's nodes called as the executor calls
them, on the tiny SD1.5 layout (random weights, 256 px, 10 steps) and on the demo model (128 px and
256 px, 20 steps); DDIM / ddim_uniform, cfg 7.5, official layers, end 0.8. Timed, in interleaved rounds
after one warm-up round: a plain KSampler; the FPE edit (Inject + KSampler); the same with FPE Local Edit
and a MASK (the right half); with words (start 0.2); FPE Source Capture as it is now (it records each
evaluation's x and denoised output and LocalBlend's word maps) and with its word maps turned off (the
capture module's ``word_mask_layers`` made to choose no layer, in this process only). Only the sampler
call is timed: the patched models are built before it (FPE Local Edit's own call, which encodes the
prompts for words, is timed apart). Median of ``--repeats`` rounds (the samplers' order rotates each
round); the ratio of the local edit to the unmasked edit is the issue's goal (<= 1.02x). A last run of
each is instrumented: the seconds spent inside the local edit's own hooks (and the capture's word-map
and x/D recorders), as a share of that run, which this shared machine's noise does not drown.

Semantics (``--only semantics``): two-object scenes of the drawn world on the demo model, 128 px, 20
steps, through ComfyUI's real executor. Per scene: the caption of world.random_scene(seed, objects=2)
is the source prompt (FPE Source Capture, seed = the scene's); one object (the left one in even scenes,
the right one in odd ones) gets a colour neither object has in the target prompt. The source picture is
read with the world's reader; scenes where it does not find two objects are skipped (counted). Then, from the same (cached)
capture: the unmasked FPE edit; FPE Local Edit with a MASK (the edited object's region as the reader
sees it in the source, grown by ``--grow-px`` pixels, entering the graph as a PNG through Load Image
(as Mask)); FPE Local Edit with words (the edited object's old and new colour words, start 0.2) at each
``--thresholds`` value. Each is compared with the source: PSNR of the kept object's pixels (its mask in
the source), PSNR of the ground (pixels farther than ``--margin`` px from both objects), whether the
reader finds the edited object with the target colour, and the kept object still with its colour.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO)]

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from fpe_headless.comfy import tiny_models  # noqa: E402
from fpe_headless.demo import lab, world  # noqa: E402
from fpe_headless.demo.checkpoint import DEMO_CHECKPOINT  # noqa: E402

PARTS = ("cost", "semantics")
SCENE_SEED0 = 7_000_000  # two-object scenes: far from the training scenes' seeds (20260604 onward)
WORD_START = 0.2  # Prompt-to-Prompt's LocalBlend starts at 20 % of the steps
PSNR_CAP = 99.0  # dB: identical pixels (infinite PSNR) count as this in means
# The tiny SD1.5 layout's prompts (dev/benchmark.py's): the edited word, and FPE Local Edit's words.
TINY_PROMPTS = ("a photo of green ducks walking on street", "a photo of rubber ducks walking on street",
                "green, rubber")
DEMO_PROMPTS = ("a red circle and a blue square on grass", "a red circle and a yellow square on grass",
                "blue, yellow")


def say(text: str) -> None:
    print(text, flush=True)


def call_node(class_type: str, **inputs):
    """Call a (V1) node the way the executor does: its function, under inference mode; its output tuple."""
    import torch

    from fpe_headless.comfy.executor import node_class

    cls = node_class(class_type)
    if not hasattr(cls, "FUNCTION"):
        raise RuntimeError(f"{class_type} is not a V1 node; this script calls only V1 nodes")
    with torch.inference_mode():
        out = getattr(cls(), cls.FUNCTION)(**inputs)
    if isinstance(out, dict):  # {"ui": ..., "result": ...}
        return out.get("result", ())
    return out


def pack_submodule(dotted: str):
    """A module of the pack as ComfyUI's custom-node loader imported it (the module the nodes use)."""
    from fpe_headless.comfy import host as host_mod

    return importlib.import_module(f"{host_mod.host().pack_module_name}.{dotted}")


@contextlib.contextmanager
def word_maps_off():
    """FPE Source Capture without LocalBlend's word maps: its layer choice returns no layer."""
    capture = pack_submodule("fpe_attention.capture")
    original = capture.word_mask_layers
    capture.word_mask_layers = lambda *args, **kwargs: frozenset()
    try:
        yield
    finally:
        capture.word_mask_layers = original


@contextlib.contextmanager
def hook_clock(targets: list[tuple[str, str, str]]):
    """Time spent inside the given methods ((module, class, method) of the pack), summed per method, while
    the block runs: the local edit's own work, measured inside sampling (shared-machine noise scales it
    with the run, it does not drown it)."""
    spent: dict[str, float] = {}
    saved = []
    for module, cls_name, method in targets:
        cls = getattr(pack_submodule(module), cls_name)
        original = cls.__dict__[method]
        name = f"{cls_name}.{method}"
        spent[name] = 0.0

        def timed(*args, _original=original, _name=name, **kwargs):
            t0 = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_name] += time.perf_counter() - t0

        setattr(cls, method, timed)
        saved.append((cls, method, original))
    try:
        yield spent
    finally:
        for cls, method, original in saved:
            setattr(cls, method, original)


LOCAL_HOOKS = [("fpe_attention.local_edit", "LocalRun", "blend_input"),
               ("fpe_attention.local_edit", "LocalRun", "blend_denoised"),
               ("fpe_attention.local_edit", "TargetWordMaps", "__call__")]
CAPTURE_HOOKS = [("fpe_attention.capture", "CaptureRecorder", "_record_words"),
                 ("fpe_attention.capture", "CaptureRecorder", "end_evaluation")]


def table(rows: list[list], headers: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    for r in [headers, ["-" * w for w in widths]] + rows:
        say(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


# --------------------------------------------------------------------------------------------
# Cost


def cost_row(label: str, ckpt_name: str, side: int, steps: int, repeats: int, prompts) -> dict:
    """Median sampling times of plain / FPE edit / local edit (mask, words) and capture with and without
    word maps, for one model and size."""
    import torch

    model, clip = call_node("CheckpointLoaderSimple", ckpt_name=ckpt_name)[:2]
    source_text, target_text, words = prompts
    src, tgt, neg = (call_node("CLIPTextEncode", clip=clip, text=t)[0] for t in (source_text, target_text, ""))
    latent = {"samples": torch.zeros(1, 4, side // 8, side // 8)}
    common = dict(seed=42, steps=steps, cfg=7.5, sampler_name="ddim", scheduler="ddim_uniform", negative=neg,
                  latent_image=latent, denoise=1.0)
    store = dict(store_layers="official", store_custom_layers="", store_end=0.8, store_rows="cond",
                 storage="auto", precision="exact", store_cross="off")
    half = torch.zeros(1, side, side)
    half[:, :, side // 2:] = 1.0  # the right half

    def capture():
        return call_node("FPESourceCapture", model=model, positive=src, **store, **common)

    def inject(source):
        return call_node("FPESelfAttnInject", model=model, fpe_source=source, layers="official", custom_layers="",
                         start=0.0, end=0.8, branches="cond only", sweep="")[0]

    def local(injected, **kw):
        values = dict(start=0.0, grow=0, feather=0, soft="blend", words="", source_text="", target_text="",
                      threshold=0.3, composite=False)
        values.update(kw)
        return call_node("FPELocalEdit", model=injected, **values)[0]

    def sample(patched, positive):
        return call_node("KSampler", model=patched, positive=positive, **common)

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    _, (_, source) = timed(capture)  # warm-up: model load, kernels
    injected = inject(source)
    word_kw = dict(words=words, source_text=source_text, target_text=target_text, start=WORD_START, clip=clip)
    for patched in (model, injected, local(injected, mask=half), local(injected, **word_kw)):
        sample(patched, tgt)
    with word_maps_off():
        capture()
    kinds = ("plain", "edit", "mask", "words", "capture", "capture_no_words", "node_mask", "node_words")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    local_bytes = 0
    sampled = ("plain", "edit", "mask", "words")
    for r in range(repeats):  # interleaved rounds: slow drifts of a shared machine hit every kind alike
        t, (_, source) = timed(capture)
        times["capture"].append(t)
        local_bytes = source.local_nbytes
        with word_maps_off():
            times["capture_no_words"].append(timed(capture)[0])
        injected = inject(source)
        t, masked = timed(lambda i=injected: local(i, mask=half))
        times["node_mask"].append(t)
        t, worded = timed(lambda i=injected: local(i, **word_kw))
        times["node_words"].append(t)
        models = {"plain": model, "edit": injected, "mask": masked, "words": worded}
        for kind in sampled[r % 4:] + sampled[:r % 4]:  # each kind takes each place in the round in turn
            times[kind].append(timed(lambda m=models[kind]: sample(m, tgt))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: max(v) / min(v) - 1 for k, v in times.items()}
    # One more run of each, instrumented: the seconds spent inside the local edit's own hooks.
    hooks = {}
    for kind, patched in (("mask", models["mask"]), ("words", models["words"])):
        with hook_clock(LOCAL_HOOKS) as spent:
            t = timed(lambda p=patched: sample(p, tgt))[0]
        hooks[kind] = {"run_s": t, "hooks_s": sum(spent.values()), "by_hook_s": dict(spent)}
    with hook_clock(CAPTURE_HOOKS) as spent:
        t = timed(capture)[0]
    hooks["capture"] = {"run_s": t, "hooks_s": sum(spent.values()), "by_hook_s": dict(spent)}
    return {"model": label, "side": side, "steps": steps, "repeats": repeats, "median_s": med, "spread": spread,
            "times_s": times, "local_kib": local_bytes / 2**10, "hooks": hooks,
            "mask_vs_edit": med["mask"] / med["edit"], "words_vs_edit": med["words"] / med["edit"],
            "edit_vs_plain": med["edit"] / med["plain"],
            "capture_vs_no_words": med["capture"] / med["capture_no_words"]}


def cost(bench, args) -> list[dict]:
    tiny = bench.host.workdir / "models" / "checkpoints" / "tiny_sd15.safetensors"
    if not tiny.exists():
        tiny_models.write_checkpoint(tiny_models.SD15_TINY, tiny)
    rows = []
    plan = []
    if args.tiny_side:
        plan.append(("tiny SD1.5 layout (random)", tiny.name, args.tiny_side, args.tiny_steps, TINY_PROMPTS))
    plan += [("demo model", bench.name, side, args.steps, DEMO_PROMPTS) for side in args.sizes]
    for label, name, side, steps, prompts in plan:
        started = time.monotonic()
        row = cost_row(label, name, side, steps, args.repeats, prompts)
        rows.append(row)
        m = row["median_s"]
        say(f"  {label} {side} px / {steps} steps ({time.monotonic() - started:.0f} s): edit {m['edit']:.2f} s, "
            f"mask {row['mask_vs_edit']:.3f}x, words {row['words_vs_edit']:.3f}x, capture vs no word maps "
            f"{row['capture_vs_no_words']:.3f}x")
    say("")
    table([[r["model"], f"{r['side']} px / {r['steps']}", f"{r['median_s']['plain']:.2f}",
            f"{r['median_s']['edit']:.2f} ({r['edit_vs_plain']:.2f}x)",
            f"{r['median_s']['mask']:.2f} ({r['mask_vs_edit']:.3f}x)",
            f"{r['median_s']['words']:.2f} ({r['words_vs_edit']:.3f}x)",
            f"{1000 * r['median_s']['node_mask']:.0f} / {1000 * r['median_s']['node_words']:.0f}",
            f"{r['median_s']['capture']:.2f}", f"{r['median_s']['capture_no_words']:.2f}",
            f"{r['capture_vs_no_words']:.3f}x", f"{r['local_kib']:.0f}",
            f"{100 * r['spread']['edit']:.0f} %"] for r in rows],
          ["model", "size/steps", "plain s", "FPE edit s", "+ mask s (vs edit)", "+ words s (vs edit)",
           "Local Edit node ms (mask / words)", "capture s", "capture, no word maps s", "capture vs no word maps",
           "local record KiB", "edit spread"])
    say("\nInside the hooks (one instrumented run each; share of that run's time):")

    def share(h):
        return f"{1000 * h['hooks_s']:.1f} ms ({100 * h['hooks_s'] / h['run_s']:.2f} %)"

    table([[r["model"], f"{r['side']} px / {r['steps']}", share(r["hooks"]["mask"]), share(r["hooks"]["words"]),
            share(r["hooks"]["capture"])] for r in rows],
          ["model", "size/steps", "mask: LocalRun blends", "words: blends + target word maps",
           "capture: word maps + x/D record"])
    return rows


# --------------------------------------------------------------------------------------------
# Semantics


def pick_edit(scene: world.Scene, index: int) -> tuple[int, str]:
    """Which object to recolour (alternating left / right) and to what: a colour neither object has."""
    edited = index % 2
    taken = {t.colour for t in scene.things}
    colours = list(world.COLOURS)
    start = colours.index(scene.things[edited].colour)
    new = next(colours[(start + k) % len(colours)] for k in range(3, 3 + len(colours))
               if colours[(start + k) % len(colours)] not in taken)
    return edited, new


def scenes():
    """Two-object scenes whose objects differ in colour (a colour word names one object), seeded in order."""
    seed = SCENE_SEED0
    while True:
        scene = world.random_scene(seed, objects=2)
        if scene.things[0].colour != scene.things[1].colour:
            yield scene
        seed += 1


def psnr_on(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float | None:
    if not where.any():
        return None
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64))[where] ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0 ** 2 / mse))


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask.copy()
    image = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * pixels + 1))
    return np.asarray(image) > 127


def matching(seen: list, mask: np.ndarray):
    """The object the reader found whose mask overlaps ``mask`` most (None: none overlaps)."""
    best = max(seen, key=lambda s: np.logical_and(s.mask, mask).sum(), default=None)
    return best if best is not None and np.logical_and(best.mask, mask).any() else None


def score(source: np.ndarray, picture: np.ndarray, before: list, edited: int, new_colour: str,
          margin: int) -> dict:
    kept = 1 - edited
    ground = ~dilate(np.logical_or(before[0].mask, before[1].mask), margin)
    after = world.read(picture, objects=2)
    got_edited = matching(after, before[edited].mask)
    got_kept = matching(after, before[kept].mask)
    return {"kept_psnr": psnr_on(source, picture, before[kept].mask),
            "ground_psnr": psnr_on(source, picture, ground),
            "edited_psnr": psnr_on(source, picture, before[edited].mask),
            "colour_right": got_edited is not None and got_edited.colour == new_colour,
            "kept_colour": got_kept is not None and got_kept.colour == before[kept].colour,
            "edited_iou": world.iou(before[edited].mask, got_edited.mask) if got_edited is not None else 0.0}


def scene_graph(bench, scene_caption: str, target: str, seed: int, settings: lab.EditSettings,
                variants: list[tuple[str, dict]] | None) -> lab._Graph:
    """Phase 1 (``variants`` None): the source only. Phase 2: the same first nodes (so both hosts' caches serve
    the capture: the 2024 executor keys them by node id), the FPE edit and each local edit ("local:<name>",
    and "mask:<name>" for FPE Local Mask's mask of a words run)."""
    g = lab._Graph(bench.name)
    src, tgt, neg = g.text(scene_caption), g.text(target), g.text("")
    latent = [g.add(lab.EMPTY_LATENT, width=settings.size, height=settings.size, batch_size=1), 0]
    sampling = dict(seed=seed, steps=settings.steps, cfg=settings.cfg, **lab.SAMPLER)
    capture = g.add("FPESourceCapture", **sampling, **lab._store(settings), model=[g.ckpt, 0], positive=src,
                    negative=neg, latent_image=latent)
    g.capture_id = capture
    if variants is None:
        g.decode_and_save("source", [capture, 0])
        return g
    inject = lab._inject(g, [capture, 1], settings)

    def sample(model):
        return g.add("KSampler", **sampling, model=model, positive=tgt, negative=neg, latent_image=latent)

    g.decode_and_save("edit", [sample(inject), 0])
    for name, variant in variants:
        extra = {"clip": [g.ckpt, 1]}
        if "mask" in variant:
            extra["mask"] = [g.add("LoadImageMask", image=variant["mask"], channel="red"), 0]
        words = variant.get("words", "")
        local = g.add("FPELocalEdit", model=inject, start=variant.get("start", 0.0), grow=0, feather=0,
                      soft="blend", words=words, source_text=scene_caption if words else "",
                      target_text=target if words else "", threshold=variant.get("threshold", 0.3),
                      composite=False, **extra)
        made = sample([local, 0])
        g.decode_and_save(f"local:{name}", [made, 0])
        if words:
            shown = g.add("FPELocalMask", local_edit=[local, 1], samples=[made, 0])
            g.save(f"mask:{name}", [g.add("MaskToImage", mask=[shown, 0]), 0])
    return g


def summarise(rows: list[dict], method: str) -> dict:
    got = [r["methods"][method] for r in rows]

    def stats(key):
        values = [g[key] for g in got if g[key] is not None]
        if not values:
            return None
        return {"median": float(np.median(values)), "mean": float(np.mean(values)),
                "p10": float(np.percentile(values, 10))}

    out = {"n": len(got), "kept_psnr": stats("kept_psnr"), "ground_psnr": stats("ground_psnr"),
           "edited_psnr": stats("edited_psnr"), "edited_iou": stats("edited_iou"),
           "colour_right": 100.0 * sum(g["colour_right"] for g in got) / max(1, len(got)),
           "kept_colour": 100.0 * sum(g["kept_colour"] for g in got) / max(1, len(got))}
    if got and "mask_area" in got[0]:
        out["mask_area"] = stats("mask_area")
    return out


def semantics(bench, args) -> dict:
    settings = lab.EditSettings(steps=args.steps)
    rows, skipped, source_reruns = [], [], 0
    tries = 0
    for index, scene in enumerate(scenes()):
        if len(rows) >= args.seeds or tries >= args.max_tries:
            break
        tries += 1
        started = time.monotonic()
        edited, new_colour = pick_edit(scene, index)
        old_colour = scene.things[edited].colour
        target = scene.with_colour(edited, new_colour).caption
        seed = scene.seed
        source = bench.run(scene_graph(bench, scene.caption, target, seed, settings, None))["source"][0]
        before = world.read(source, objects=2)
        if len(before) < 2:
            skipped.append({"seed": seed, "caption": scene.caption, "objects_found": len(before)})
            say(f"    seed {seed}: '{scene.caption}': the reader finds {len(before)} object(s) in the source, skipped")
            continue
        mask_file = f"local_mask_{seed}.png"
        painted = dilate(before[edited].mask, args.grow_px)
        Image.fromarray(painted.astype(np.uint8) * 255).convert("RGB").save(bench.input / mask_file)
        variants = [("mask", {"mask": mask_file})]
        variants += [(f"words {t:g}", {"words": f"{old_colour}, {new_colour}", "start": WORD_START, "threshold": t})
                     for t in args.thresholds]
        graph = scene_graph(bench, scene.caption, target, seed, settings, variants)
        result = bench.executor.run(graph.nodes)
        if graph.capture_id in result.executed:
            source_reruns += 1  # changing only the local edit must not re-run the source
        pics = pictures(graph, result, bench.output)
        (bench.input / mask_file).unlink()
        methods = {"FPE edit (no mask)": score(source, pics["edit"][0], before, edited, new_colour, args.margin)}
        methods["local, mask"] = score(source, pics["local:mask"][0], before, edited, new_colour, args.margin)
        methods["local, mask"]["mask_area"] = float(painted.mean())
        for t in args.thresholds:
            name = f"words {t:g}"
            scored = score(source, pics[f"local:{name}"][0], before, edited, new_colour, args.margin)
            scored["mask_area"] = float((pics[f"mask:{name}"][0][..., 0] > 127).mean())
            methods[f"local, {name}"] = scored
        read_as = [f"{s.colour} {s.shape}" for s in before]
        read_right = [s.colour for s in before] == [t.colour for t in scene.things]
        rows.append({"seed": seed, "caption": scene.caption, "target": target, "edited": edited,
                     "source_read_as": read_as, "source_read_as_captioned": read_right, "methods": methods})
        say(f"    seed {seed} ({time.monotonic() - started:.0f} s): '{scene.caption}' (read: {', '.join(read_as)}) -> "
            f"{'left' if edited == 0 else 'right'} {new_colour}: kept object PSNR / target colour: "
            + ", ".join(f"{name} {m['kept_psnr']:.1f} / {'yes' if m['colour_right'] else 'no'}"
                        for name, m in methods.items()))
    names = list(rows[0]["methods"]) if rows else []
    summary = {name: summarise(rows, name) for name in names}
    say("")
    say(f"{len(rows)} scenes ({len(skipped)} skipped: the reader did not find two objects in the source); "
        f"sources whose colours read as captioned: {sum(r['source_read_as_captioned'] for r in rows)}/{len(rows)}; "
        f"source re-run by a changed local edit: {source_reruns}")

    def cell(s, key, fmt="{:.1f}"):
        v = s[key]
        return "-" if v is None else f"{fmt.format(v['median'])} ({fmt.format(v['p10'])})"

    table([[name, str(s["n"]), cell(s, "kept_psnr"), cell(s, "ground_psnr"), cell(s, "edited_psnr"),
            f"{s['colour_right']:.0f} %", f"{s['kept_colour']:.0f} %", cell(s, "edited_iou", "{:.2f}"),
            cell(s, "mask_area", "{:.2f}") if "mask_area" in s else "-"] for name, s in summary.items()],
          ["method", "n", "kept object PSNR dB median (p10)", f"ground PSNR (>{args.margin} px away)",
           "edited object PSNR", "edited: target colour", "kept: colour kept", "edited IoU", "mask area"])
    return {"scenes": rows, "skipped": skipped, "source_reruns": source_reruns, "summary": summary,
            "grow_px": args.grow_px, "margin_px": args.margin, "thresholds": args.thresholds,
            "word_start": WORD_START, "steps": args.steps}


def pictures(graph: lab._Graph, result, output_dir: Path) -> dict[str, list[np.ndarray]]:
    """``lab.run``'s reading of the saved pictures, for a result already run (the executed nodes are needed)."""
    out = {}
    for role, node_id in graph.saves.items():
        files = [output_dir / i["subfolder"] / i["filename"] for i in result.outputs[node_id]["images"]]
        out[role] = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        for f in files:
            f.unlink()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    p.add_argument("--repeats", type=int, default=5, help="cost: timed rounds per kind (median)")
    p.add_argument("--steps", type=int, default=20, help="demo model: DDIM steps (cost and semantics)")
    p.add_argument("--sizes", default="128,256", help="cost: demo model sizes in px, comma-separated")
    p.add_argument("--tiny-side", type=int, default=256, help="cost: tiny SD1.5 layout size in px (0: skip it)")
    p.add_argument("--tiny-steps", type=int, default=10)
    p.add_argument("--seeds", type=int, default=20, help="semantics: two-object scenes to score")
    p.add_argument("--max-tries", type=int, help="semantics: scenes to try at most (default 2 x seeds)")
    p.add_argument("--grow-px", type=int, default=4, help="semantics: the painted mask reaches this far past the object")
    p.add_argument("--margin", type=int, default=8, help="semantics: ground = pixels farther than this from both objects")
    p.add_argument("--thresholds", default="0.3,0.9", help="semantics: word-mask thresholds (LocalBlend's 0.3; "
                                                           "the demo model's flat attention needs ~0.9)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    args.max_tries = args.max_tries or 2 * args.seeds

    from measure_demo_model import Bench  # boots nothing on import

    workdir = Path(tempfile.mkdtemp(prefix="fpe-measure-local-"))
    results: dict = {"checkpoint": args.checkpoint.name, "argv": sys.argv[1:] if argv is None else list(argv)}
    try:
        bench = Bench(args.checkpoint, workdir, say)
        import comfy.utils
        import torch

        comfy.utils.set_progress_bar_enabled(False)  # the samplers' progress bars: noise in the log

        results["host"] = bench.host.label
        results["torch"] = torch.__version__
        results["threads"] = torch.get_num_threads()
        say(f"host: {bench.host.label}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
        for part in args.only or PARTS:
            started = time.monotonic()
            say(f"{part}:")
            results[part] = cost(bench, args) if part == "cost" else semantics(bench, args)
            results[f"{part}_seconds"] = time.monotonic() - started
            say(f"{part}: {time.monotonic() - started:.0f} s\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
