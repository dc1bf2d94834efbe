"""Draw docs/images/local_edits.png: what a local edit's mask does, on the demo model.

    source dev/env.sh && python dev/make_local_edit_pictures.py

Fixed scenes and the first seed (no picking): a generated two-object scene whose right object changes
colour, limited once by words (LocalBlend) and once by a painted mask, and a drawn 'photo' (never in the
training set) edited through DDIM inversion with a painted mask. Columns: the source (or the photo), the
FPE edit without a mask, the local edit, and the mask FPE Local Mask shows. Everything runs through
ComfyUI's executor with the shipped workflows' nodes (DDIM, cfg 7.5, 128 px; 20 steps generated, 50 for
the photo, as docs/images/demo_edits.png). It prints, per row, the PSNR of the pixels outside the mask
against the source, without and with the mask.
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
from build_workflows import LOCAL_SOURCE_PROMPT, LOCAL_START, LOCAL_TARGET_PROMPT, LOCAL_WORDS  # noqa: E402
from measure_demo_model import PHOTO_SEED0, Bench  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from fpe_headless.demo import lab, world  # noqa: E402
from fpe_headless.demo.checkpoint import DEMO_CHECKPOINT  # noqa: E402
from fpe_headless.drawing import load_font  # noqa: E402

SOURCE, TARGET, WORDS = LOCAL_SOURCE_PROMPT, LOCAL_TARGET_PROMPT, LOCAL_WORDS  # workflows/fpe_local_edit.json's
SEED = 42  # the shipped workflows'
# The demo model's cross-attention is nearly flat (a frozen random text encoder): a word's map outside its
# object is 0.7-0.9 of its peak, so LocalBlend's 0.3 (right for SD1.x) marks the whole frame; 0.9 finds the
# object. See docs/local-edits.md.
DEMO_THRESHOLD = 0.9
PHOTO_SEED = PHOTO_SEED0 + 1  # the first drawn two-object scene
PHOTO_GROW = 5  # image pixels the painted mask reaches past the object
SCALE = 2  # 128 px pictures drawn at 256 px
OUT = REPO / "docs" / "images" / "local_edits.png"


def local_graph(bench: Bench, settings: lab.EditSettings, *, photo: str | None, source: str, target: str,
                variants: list[dict]) -> lab._Graph:
    """The source (a capture, or a photo's DDIM inversion), the unmasked FPE edit, and per variant (FPE Local
    Edit's words, mask, start, threshold) the local edit and its mask (roles "local<i>", "mask<i>"). One
    graph: ComfyUI's cache would hand a second graph the first one's (already read) source picture."""
    g = lab._Graph(bench.name)
    src, tgt, neg = g.text(source), g.text(target), g.text("")
    if photo is None:
        latent = [g.add(lab.EMPTY_LATENT, width=settings.size, height=settings.size, batch_size=1), 0]
        sampling = dict(seed=SEED, steps=settings.steps, cfg=settings.cfg, **lab.SAMPLER)
        capture = g.add("FPESourceCapture", **sampling, **lab._store(settings), model=[g.ckpt, 0], positive=src,
                        negative=neg, latent_image=latent)
        fpe_source = [capture, 1]
        g.decode_and_save("source", [capture, 0])

        def sample(model):
            return g.add("KSampler", **sampling, model=model, positive=tgt, negative=neg, latent_image=latent)
    else:
        image = [g.add("LoadImage", image=photo), 0]
        encoded = [g.add("FPEVAEEncodeMean", sides="crop to a multiple of 8", pixels=image, vae=[g.ckpt, 2]), 0]
        invert = g.add("FPEDDIMInvert", steps=settings.steps, scheduler=lab.SAMPLER["scheduler"], cfg=1.0, denoise=1.0,
                       **lab._store(settings), reconstruction_check=False, model=[g.ckpt, 0], positive=src,
                       latent=encoded, vae=[g.ckpt, 2])
        fpe_source = [invert, 1]
        g.save("source", image)
        g.decode_and_save("vae", encoded)  # the photo through the VAE alone: what a kept background can be

        def sample(model):
            return g.add("KSamplerAdvanced", add_noise="disable", noise_seed=0, steps=settings.steps, cfg=settings.cfg,
                         sampler_name=lab.SAMPLER["sampler_name"], scheduler=lab.SAMPLER["scheduler"], start_at_step=0,
                         end_at_step=10000, return_with_leftover_noise="disable", model=model, positive=tgt,
                         negative=neg, latent_image=[invert, 0])
    inject = lab._inject(g, fpe_source, settings)
    g.decode_and_save("edit", [sample(inject), 0])
    for i, variant in enumerate(variants):
        words = variant.get("words", "")
        extra = {"clip": [g.ckpt, 1]}
        if variant.get("mask"):
            extra["mask"] = [g.add("LoadImageMask", image=variant["mask"], channel="red"), 0]
        local = g.add("FPELocalEdit", model=inject, start=variant.get("start", 0.0), grow=0, feather=0, soft="blend",
                      words=words, source_text=source if words else "", target_text=target if words else "",
                      threshold=variant.get("threshold", 0.3), composite=False, **extra)
        made = sample([local, 0])
        g.decode_and_save(f"local{i}", [made, 0])
        shown = g.add("FPELocalMask", local_edit=[local, 1], samples=[made, 0])
        g.save(f"mask{i}", [g.add("MaskToImage", mask=[shown, 0]), 0])
    return g


def outside_psnr(source: np.ndarray, other: np.ndarray, mask: np.ndarray) -> float:
    keep = mask[..., 0] < 128
    mse = float(np.mean((source.astype(np.float64) - other.astype(np.float64))[keep] ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def painted(mask: np.ndarray, grow: int) -> Image.Image:
    """A loosely painted mask: the object's coverage, grown by ``grow`` px, white on black."""
    picture = Image.fromarray((mask > 0.5).astype(np.uint8) * 255)
    return picture.filter(ImageFilter.MaxFilter(2 * grow + 1)).convert("RGB")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="fpe-local-edit-pictures-"))
    rows = []
    try:
        bench = Bench(DEMO_CHECKPOINT, workdir, print)
        generated = lab.EditSettings()
        half = np.zeros((world.SIZE, world.SIZE, 3), np.uint8)
        half[:, world.SIZE // 2:] = 255  # the right half: the square's side of the frame
        Image.fromarray(half).save(bench.input / "right_half.png")
        variants = [(f"words '{WORDS}', threshold {DEMO_THRESHOLD}, start {LOCAL_START}",
                     dict(words=WORDS, start=LOCAL_START, threshold=DEMO_THRESHOLD)),
                    ("painted mask (the right half)", dict(mask="right_half.png"))]
        pics = bench.run(local_graph(bench, generated, photo=None, source=SOURCE, target=TARGET,
                                     variants=[v for _, v in variants]))
        for i, (label, _) in enumerate(variants):
            rows.append((label, SOURCE, TARGET, [pics[r][0] for r in ("source", "edit", f"local{i}", f"mask{i}")]))
        scene = world.random_scene(PHOTO_SEED, objects=2)
        photo, masks = world.render(scene)
        Image.fromarray(photo).save(bench.input / "photo.png")
        painted(masks[1], PHOTO_GROW).save(bench.input / "photo_mask.png")
        recoloured = next(c for c in ("red", "green", "blue") if c not in (t.colour for t in scene.things))
        target = scene.with_colour(1, recoloured).caption
        pics = bench.run(local_graph(bench, lab.EditSettings(steps=50), photo="photo.png", source=scene.caption,
                                     target=target, variants=[dict(mask="photo_mask.png")]))
        rows.append(("drawn photo, DDIM inversion, painted mask", scene.caption, target,
                     [pics[r][0] for r in ("source", "edit", "local0", "mask0")]))
        vae_only = pics["vae"][0]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for label, source, target, (a, edit, local, mask) in rows:
        print(f"{label}: {source} -> {target}: outside the mask vs the source: FPE edit "
              f"{outside_psnr(a, edit, mask):.1f} dB, local edit {outside_psnr(a, local, mask):.1f} dB")
    a, edit, local, mask = rows[-1][3]
    print(f"the photo through the VAE alone, outside the mask: {outside_psnr(a, vae_only, mask):.1f} dB vs the photo; "
          f"the local edit vs it: {outside_psnr(vae_only, local, mask):.1f} dB")
    side = world.SIZE * SCALE
    label_h, gap, title_h = 22, 6, 22
    width = 4 * side + 5 * gap
    height = len(rows) * (title_h + side + label_h + gap) + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = load_font(12)
    y = gap
    for label, source, target, pictures in rows:
        draw.text((gap + 2, y + 4), f"{label}: '{source}' -> '{target}'", fill=(0, 0, 0), font=font)
        y += title_h
        names = ("photo" if "photo" in label else "source", "FPE edit, no mask", "local edit", "mask")
        for c, (name, picture) in enumerate(zip(names, pictures, strict=True)):
            x = gap + c * (side + gap)
            draw.text((x + 2, y + 4), name, fill=(90, 90, 90), font=font)
            sheet.paste(Image.fromarray(np.asarray(picture)).resize((side, side), Image.NEAREST), (x, y + label_h))
            draw.rectangle((x - 1, y + label_h - 1, x + side, y + label_h + side), outline=(160, 160, 160))
        y += side + label_h + gap
    OUT.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(OUT, optimize=True)
    print(f"wrote {OUT.relative_to(REPO)} ({OUT.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
