"""README's first command: the headless FPE edit (``bash run.sh`` = ``python -m fpe_headless``), as a
user meets it: in a fresh process, from wherever they stand, with their mistakes."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image, ImageFilter

from conftest import HOST
from fpe_headless import drawing, shared, workflows
from fpe_headless.comfy.workflow import load_workflow, to_api
from fpe_headless.demo import lab, world
from fpe_headless.edit import main_job

REPO = Path(__file__).resolve().parents[2]


def run_main(*args, cwd=None, tmpdir=None, timeout=300):
    env = dict(os.environ, FPE_COMFYUI_HOST=str(HOST.path), OMP_NUM_THREADS="1", FPE_PROG="bash run.sh",
               PYTHONPATH=str(REPO))
    if tmpdir is None and cwd is not None:  # the command's own TMPDIR: another process's leftovers stay out of it
        tmpdir = Path(cwd) / ".tmpdir"
        tmpdir.mkdir(exist_ok=True)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-m", "fpe_headless", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("workflow", "prefix"), [("fpe_generated_edit", ""), ("fpe_sdxl_generated_edit", "sdxl_")],
                         ids=["sd15", "sdxl"])
def test_headless_fpe_edit_writes_source_edit_and_side_by_side_where_the_user_stands(tmp_path, workflow, prefix):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    workflow_args = ("--workflow", workflow) if workflow != main_job.DEFAULT_WORKFLOW else ()
    done = run_main(*workflow_args, "--steps", 2, "--size", 64,
                    "--target-prompt", "a photo of wooden ducks walking on street", cwd=tmp_path, tmpdir=scratch)
    assert done.returncode == 0, done.stderr[-3000:]
    if prefix or not shared.demo_model_present():
        assert "pictures are MEANINGLESS" in done.stdout  # SDXL: the tiny random model, said loudly
    else:
        assert "Running the demo model" in done.stdout and "MEANINGLESS" not in done.stdout
    assert f"ran 14 nodes of {workflow}.json" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr  # no import noise of unrelated ComfyUI nodes
    out = tmp_path / "output"  # ./output of where the command ran
    source, edit, both = (np.asarray(Image.open(out / f"{prefix}{name}.png"))
                          for name in ("source", "edit", "side_by_side"))
    assert source.shape == edit.shape == (64, 64, 3) and both.shape == (64, 128, 3)
    assert np.array_equal(both, np.concatenate([source, edit], axis=1))
    assert not np.array_equal(source, edit)
    assert list(scratch.iterdir()) == []  # the work folder (tiny model included) is gone


demo_model = pytest.mark.skipif(not shared.demo_model_present(), reason="the demo checkpoint is not in this checkout")


@demo_model
def test_run_sh_with_no_options_edits_the_demo_world_red_circle_to_blue_keeping_its_outline(tmp_path):
    done = run_main(cwd=tmp_path)  # exactly the README's first command: no options at all
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Running the demo model" in done.stdout
    out = tmp_path / "output"
    source, edit = (np.asarray(Image.open(out / f"{name}.png").convert("RGB")) for name in ("source", "edit"))
    assert source.shape == (shared.DEMO_SIZE, shared.DEMO_SIZE, 3)
    seen_source, seen_edit = world.read(source, 1), world.read(edit, 1)
    assert [(s.colour, s.shape) for s in seen_source] == [("red", "circle")]
    assert [(s.colour, s.shape) for s in seen_edit] == [("blue", "circle")]
    assert lab.score_edit(source, edit, "blue").iou > 0.8  # the outline kept (a plain 'blue circle' lands elsewhere)


@demo_model
def test_run_sh_real_image_workflow_edits_a_scene_drawn_at_run_time(tmp_path):
    done = run_main("--workflow", "fpe_real_image_edit", "--steps", 10, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    edit = np.asarray(Image.open(tmp_path / "output" / "real_edit.png").convert("RGB"))
    photo = world.render(world.random_scene(main_job.DEMO_PHOTO_SEED, objects=1, colour="red", shape="circle",
                                            ground="grass"))[0]
    assert edit.shape == photo.shape
    score = lab.score_edit(photo, edit, "blue")
    assert score.found and score.colour_right and score.iou > 0.7


def test_headless_real_image_edit_keeps_the_photo_aspect(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((61, 72, 3)) * 255).astype(np.uint8)).save(photo)
    done = run_main("--workflow", "fpe_real_image_edit", "--image", photo, "--steps", 3, "--size", 48,
                    "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FPEDDIMInvert: reconstruction latent RMSE" in done.stdout and "dB" in done.stdout
    edit, both, check = (np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
                         for name in ("real_edit", "real_side_by_side", "reconstruction_check"))
    # 72x61 with its short side at 48: 57x48, center-cropped to multiples of 8: 56x48 (not squashed to 48x48).
    assert edit.shape == (48, 56, 3)
    assert both.shape == (48, 112, 3) and check.shape[1] == 2 * 56


def test_headless_sdxl_real_image_edit_scales_the_photo_to_size_and_sets_both_prompt_texts(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((61, 72, 3)) * 255).astype(np.uint8)).save(photo)
    data = json.loads((REPO / "workflows" / "fpe_sdxl_real_image_edit.json").read_text())
    job = argparse.Namespace(**{**vars(main_job.parser("x").parse_args([])), "size": 48,
                                "target_prompt": "a photo of a golden apple"})
    prompt = to_api(data)
    workflows.apply_settings(prompt, workflows.Job(REPO, Path("w.json"), data, None, photo, tmp_path, job), "x.safetensors",
                            tmp_path)
    target = next(n["inputs"] for n in prompt.values() if n["_meta"]["title"].startswith("Target prompt"))
    assert target["text_g"] == target["text_l"] == "a photo of a golden apple"
    scale = next(n["inputs"] for n in prompt.values() if n["class_type"] == "ImageScale")
    assert (scale["width"], scale["height"]) == (48, 48)

    done = run_main("--workflow", "fpe_sdxl_real_image_edit", "--image", photo, "--steps", 3, "--size", 48,
                    "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "put an SDXL checkpoint" in done.stdout and "dB" in done.stdout
    edit, both = (np.asarray(Image.open(tmp_path / "out" / f"{name}.png")) for name in ("sdxl_real_edit",
                                                                                        "sdxl_real_side_by_side"))
    assert edit.shape == (48, 48, 3) and both.shape == (48, 96, 3)  # the workflow's Image Scale: size x size


def _text_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("not a model")
    return path


def _truncated_jpeg(tmp_path):
    whole = tmp_path / "whole.jpg"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a download that stopped half way
    return cut


def _real_workflow_wanting(tmp_path, photo):
    workflow = json.loads((REPO / "workflows" / "fpe_real_image_edit.json").read_text())
    next(node for node in workflow["nodes"] if node["type"] == "LoadImage")["widgets_values"][0] = photo
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(workflow))
    return path


def _workflow_with_a_repeated_key(tmp_path):
    text = (REPO / "workflows" / "fpe_generated_edit.json").read_text()
    path = tmp_path / "twice.json"
    path.write_text(text.replace('{', '{"version": 0.1, ', 1))  # the file's own "version" follows: twice
    return path


def _photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (120, 90, 60)).save(path)
    return path


def _lora_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    safetensors.torch.save_file({"lora_unet_down_blocks_0.alpha": torch.ones(1)}, str(path))
    return path


@pytest.mark.parametrize("make_args, message", [
    (lambda t: ["--checkpoint", t / "missing.safetensors"], r"--checkpoint .*missing.safetensors: no such file"),
    (lambda t: ["--checkpoint", _text_file(t, "renamed.safetensors")],
     r"--checkpoint .*renamed.safetensors: not a safetensors file \(renamed or damaged\?\)"),
    (lambda t: ["--checkpoint", _text_file(t, "notes.txt")], r"--checkpoint .*notes.txt: not a checkpoint file"),
    (lambda t: ["--checkpoint", _lora_file(t)], r"--checkpoint .*lora.safetensors: holds no Stable Diffusion UNet"),
    (lambda t: ["--workflow", "fpe_no_such_edit"], r"--workflow fpe_no_such_edit: no such file, and no shipped "
                                                    r"workflow of that name \(shipped: fpe_attention_maps, fpe_flux_generated_edit, "),
    (lambda t: ["--workflow", _workflow_with_a_repeated_key(t)],
     r"--workflow .*twice.json: the key 'version' appears twice in one JSON object"),
    (lambda t: ["--target-prompt", " "], r"--target-prompt '': an empty target prompt edits toward nothing"),
    (lambda t: ["--out", _text_file(t, "taken")], r"--out .*taken: is a file; give a folder"),
    (lambda t: ["--out", _text_file(t, "file") / "sub"], r"--out .*file/sub: cannot write there"),
    (lambda t: ["--steps", 0], r"--steps 0: must be 1 to 10000"),
    (lambda t: ["--seed", -1], r"--seed -1: must be 0 to 18446744073709551615"),
    (lambda t: ["--size", 100], r"--size 100: must be a multiple of 8 \(e\.g\. 96 or 104\)"),
    (lambda t: ["--cfg", "nan"], r"--cfg nan: must be a number from 0 to 100"),
    (lambda t: ["--image", t / "photo.png"], r"--image: fpe_generated_edit.json edits a generated image"),
    (lambda t: ["--invert-cfg", 2], r"--invert-cfg: fpe_generated_edit.json has no FPE DDIM Invert"),
    (lambda t: ["--workflow", "fpe_real_image_edit_nulltext", "--invert-cfg", 2],
     r"--invert-cfg: fpe_real_image_edit_nulltext.json has no FPE DDIM Invert"),
    (lambda t: ["--workflow", "fpe_real_image_edit", "--image", _text_file(t, "photo.png")],
     r"--image .*photo.png: not an image Pillow can read"),
    (lambda t: ["--workflow", "fpe_real_image_edit", "--image", _truncated_jpeg(t)],
     r"--image .*cut.jpg: not an image Pillow can read"),
    (lambda t: ["--mask", t / "mask.png"], r"--mask: fpe_generated_edit.json loads no painted mask"),
    (lambda t: ["--workflow", "fpe_real_image_local_edit", "--image", _photo(t)],
     r"--mask: fpe_real_image_local_edit.json edits inside a mask painted on its own photo; for --image photo.png"),
    (lambda t: ["--workflow", "fpe_real_image_local_edit", "--mask", _text_file(t, "mask.png")],
     r"--mask .*mask.png: not an image Pillow can read"),
    (lambda t: ["--workflow", _real_workflow_wanting(t, "my_holiday.png")],
     r"--workflow mine.json: its Load Image wants 'my_holiday.png', which only your ComfyUI's input folder has: "
     r"pass the photo with --image"),
])
def test_user_mistakes_are_one_line_with_the_fix_before_comfyui_starts(tmp_path, make_args, message):
    done = run_main(*make_args(tmp_path), cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bash run.sh: error: "), done.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert done.stdout == ""  # ComfyUI never started


def test_a_failing_prompt_is_one_line_naming_the_node_and_leaves_nothing_behind(tmp_path):
    workflow = json.loads((REPO / "workflows" / "fpe_generated_edit.json").read_text())
    inject = next(node for node in workflow["nodes"] if node["type"] == "FPESelfAttnInject")
    inject["widgets_values"][3] = 1.0  # end past the capture's store_end 0.8
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "edit.json").write_text(json.dumps(workflow))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = run_main("--workflow", "mine/edit.json", "--steps", 2, "--size", 64, cwd=tmp_path, tmpdir=scratch)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and "Exception during processing" not in done.stderr, done.stderr
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], done.stderr  # one line, the last
    assert lines[-1].startswith("bash run.sh: error: edit.json: node 7 (FPESelfAttnInject) failed: FPEError: end "
                                "1.0 edits steps 0..1 of 2, but FPE Source Capture stored steps 0..0")
    assert list(scratch.iterdir()) == []


def test_help_names_run_sh_and_every_default():
    done = run_main("--help", timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: bash run.sh")
    text = " ".join(done.stdout.split())
    for expected in ("(default: fpe_generated_edit)", "(default: output)", "--invert-cfg", "short side",
                     "fpe_real_image_edit"):
        assert expected in text, expected


def test_cfg_sets_the_edit_and_invert_cfg_the_inversion(tmp_path, tiny_sd15_ckpt):
    data = load_workflow(REPO / "workflows" / "fpe_real_image_edit.json")
    args = main_job.parser("run.sh").parse_args(["--cfg", "5.5", "--invert-cfg", "2", "--seed", "7", "--steps", "9"])
    job = workflows.Job(HOST.path, REPO / "workflows" / "fpe_real_image_edit.json", data, None, None, tmp_path, args)
    prompt = to_api(data)
    workflows.apply_settings(prompt, job, tiny_sd15_ckpt, HOST.workdir / "input")
    by_type = {node["class_type"]: node["inputs"] for node in prompt.values()}
    assert by_type["KSamplerAdvanced"]["cfg"] == 5.5 and by_type["FPEDDIMInvert"]["cfg"] == 2.0
    assert by_type["KSamplerAdvanced"]["steps"] == 9 == by_type["FPEDDIMInvert"]["steps"]
    assert isinstance(args, argparse.Namespace)


def test_cfg_reaches_the_null_text_tuning_and_the_prompts_their_roles(tmp_path, tiny_sd15_ckpt):
    path = REPO / "workflows" / "fpe_real_image_edit_nulltext.json"
    data = load_workflow(path)
    args = main_job.parser("run.sh").parse_args(["--cfg", "5.5", "--source-prompt", "a cat", "--negative", "blurry"])
    job = workflows.Job(HOST.path, path, data, None, None, tmp_path, args)
    prompt = to_api(data)
    workflows.apply_settings(prompt, job, tiny_sd15_ckpt, HOST.workdir / "input")
    by_type = {node["class_type"]: node["inputs"] for node in prompt.values()}
    assert by_type["KSamplerAdvanced"]["cfg"] == 5.5 == by_type["FPENullTextInvert"]["cfg"]
    nulltext = by_type["FPENullTextInvert"]
    assert prompt[nulltext["positive"][0]]["inputs"]["text"] == "a cat"
    assert prompt[nulltext["negative"][0]]["inputs"]["text"] == "blurry"


def test_a_pack_inside_a_comfyui_runs_with_that_comfyui(tmp_path, monkeypatch):
    from fpe_headless.comfy import host

    fake = tmp_path / "ComfyUI"
    (fake / "comfy").mkdir(parents=True)
    (fake / "nodes.py").write_text("")
    (fake / "custom_nodes").mkdir()
    link = fake / "custom_nodes" / "free-prompt-editing"
    link.symlink_to(REPO, target_is_directory=True)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.delenv("FPE_COMFYUI_HOST", raising=False)
    monkeypatch.setenv("PWD", str(tmp_path))
    assert host.find_comfyui() is None  # a pack outside any ComfyUI: run.sh or --comfyui must say which
    monkeypatch.setenv("PWD", str(link))  # `cd ComfyUI/custom_nodes/free-prompt-editing`
    assert host.find_comfyui() == fake
    assert host.find_comfyui(str(tmp_path / "other")) == tmp_path / "other"


def test_attention_maps_workflow_follows_the_prompts_and_keeps_every_picture(tmp_path):
    """--target-prompt reaches the edit's Word Heatmap (its text, and the swapped word), and the two heatmap
    and component nodes each keep their own files."""
    path = REPO / "workflows" / "fpe_attention_maps.json"
    args = main_job.parser("run.sh").parse_args(["--target-prompt", "a photo of a zebra in the park"])
    data = load_workflow(path)
    job = workflows.Job(HOST.path, path, data, None, None, tmp_path, args)
    prompt = to_api(data)
    workflows.apply_settings(prompt, job, "tiny.safetensors", HOST.workdir / "input")
    heatmaps = {node["inputs"]["text"]: node["inputs"]["words"] for node in prompt.values()
                if node["class_type"] == "FPEWordHeatmap"}
    assert heatmaps == {"a photo of a white horse in the park": "white, horse",
                        "a photo of a zebra in the park": "zebra"}
    done = run_main("--workflow", "fpe_attention_maps", "--steps", 2, "--size", 64,
                    "--target-prompt", "a photo of a zebra in the park", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "output").iterdir())
    # one file per output node (item 15): source heatmaps (white, horse: a grid), the edit's (zebra: as saved)
    assert names == ["attention_maps_side_by_side.png", "layer_overview.png", "self_attn_components.png",
                     "self_attn_components_node16.png", "word_heatmap.png", "word_heatmap_node15.png"]


# Runs the main job with tile_images watched: each batch's pictures, as the node saved them, are kept
# (copied in batch order) before the work folder goes, so a test can compare the grid's tiles with them.
_WATCHED_MAIN = """
import json, shutil, sys
from pathlib import Path
from fpe_headless.edit import main_job
keep, seen, tile = Path(sys.argv[1]), {}, main_job.tile_images
def watched(files, title):
    seen[title] = [str(shutil.copy2(f, keep / f"{len(seen)}_{k}.png")) for k, f in enumerate(files)]
    (keep / "seen.json").write_text(json.dumps(seen))
    return tile(files, title)
main_job.tile_images = watched
sys.exit(main_job.main(sys.argv[2:]))
"""


def test_attention_maps_workflow_writes_one_captioned_grid_per_batch_node(tmp_path):
    """48 self_attn_components_*.png files were one per image: a batch is now one grid holding every image."""
    kept = tmp_path / "kept"
    kept.mkdir()
    env = dict(os.environ, FPE_COMFYUI_HOST=str(HOST.path), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = (kept, "--workflow", "fpe_attention_maps", "--steps", 2, "--size", 64, "--out", tmp_path / "out")
    done = subprocess.run([sys.executable, "-c", _WATCHED_MAIN, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    # 6 output nodes, 6 files: the word heatmaps (2 words each) and components are batches, the rest single
    assert len(written) == 6 and not any(re.search(r"_\d+\.png$", name) for name in written), written
    seen = json.loads((kept / "seen.json").read_text())
    # components: 6 per token grid, at most one per token: the 64 px latent's 8x8, 4x4, 2x2 and 1x1 grids
    expected = {"word_heatmap": (2, 9), "word_heatmap_node15": (2, 15), "self_attn_components": (6 + 6 + 4 + 1, 10),
                "self_attn_components_node16": (6 + 6 + 4 + 1, 16)}
    assert sorted(title.split(" · ")[0] for title in seen) == sorted(expected)
    for title, files in seen.items():
        name = title.split(" · ")[0]
        count, node = expected[name]
        assert f"node {node} (" in title and title.endswith(f"{len(files)} images")
        assert len(files) == count
        grid = np.asarray(Image.open(tmp_path / "out" / f"{name}.png").convert("RGB"))
        pictures = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        width, height, corners = drawing.tile_layout([(p.shape[1], p.shape[0]) for p in pictures])
        assert grid.shape[0] == height and grid.shape[1] >= width
        for k, (picture, (x, y)) in enumerate(zip(pictures, corners, strict=True)):
            assert np.array_equal(grid[y:y + picture.shape[0], x:x + picture.shape[1]], picture), (name, k)
        assert len(set(map(bytes, (p.tobytes() for p in pictures)))) == len(pictures)  # distinct images, not one
        assert (grid[:drawing.TILE_LINE, :] > 200).any()  # the title is drawn


def test_local_edit_workflow_follows_the_prompts(tmp_path):
    """fpe edit --workflow fpe_local_edit: FPE Local Edit's texts follow the prompts and its words become the
    words the new prompts differ by (as `fpe batch --local words` picks them); the mask it used is saved."""
    path = REPO / "workflows" / "fpe_local_edit.json"
    target = "a blue circle and a green square on stone"
    args = main_job.parser("run.sh").parse_args(["--source-prompt", "a blue circle and a yellow star on stone",
                                                 "--target-prompt", target])
    data = load_workflow(path)
    job = workflows.Job(HOST.path, path, data, None, None, tmp_path, args)
    prompt = to_api(data)
    workflows.apply_settings(prompt, job, "tiny.safetensors", HOST.workdir / "input")
    (local,) = [node["inputs"] for node in prompt.values() if node["class_type"] == "FPELocalEdit"]
    assert (local["source_text"], local["target_text"], local["words"]) == (
        "a blue circle and a yellow star on stone", target, "yellow, star, green, square")
    done = run_main("--workflow", "fpe_local_edit", "--steps", 2, "--size", 64, "--target-prompt",
                    "a blue circle and a purple square on stone", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "output").iterdir())
    assert names == ["local_edit.png", "local_mask.png", "local_side_by_side.png"]


@demo_model
def test_local_edits_on_the_demo_model_find_their_region(tmp_path):
    """fpe_real_image_local_edit on the drawn scene: the scene's own object is the painted mask, so the circle
    turns blue and the ground outside the mask stays the photo's; fpe_local_edit: the words' mask (at the demo
    model's threshold) is a region, not the whole frame."""
    done = run_main("--workflow", "fpe_real_image_local_edit", "--steps", 10, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mask is empty" not in done.stdout
    out = tmp_path / "output"
    edit = np.asarray(Image.open(next(out.glob("*edit.png"))).convert("RGB")).astype(np.float64)
    mask = np.asarray(Image.open(out / "local_mask.png").convert("L")) > 127
    scene = world.random_scene(main_job.DEMO_PHOTO_SEED, objects=1, colour="red", shape="circle", ground="grass")
    photo, coverage = world.render(scene)
    assert mask.shape == photo.shape[:2] and 0 < mask.mean() < 0.5 and mask[coverage[0] > 0.5].all()
    seen = world.read(edit.astype(np.uint8), 1)
    assert seen and seen[0].colour == "blue"
    far = ~np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(9))).astype(bool)
    assert lab.psnr(edit[far], photo[far].astype(np.float64)) > 24  # the demo VAE's own round trip is ~27 dB

    (tmp_path / "words").mkdir()
    done = run_main("--workflow", "fpe_local_edit", "--steps", 10, cwd=tmp_path / "words")
    assert done.returncode == 0, done.stderr[-3000:]
    words = np.asarray(Image.open(tmp_path / "words" / "output" / "local_mask.png").convert("L")) > 127
    assert 0 < words.mean() < 0.9


MMDIT_HOST = HOST.kind != "2024"  # ComfyUI of early 2024 has no Flux or SD3
mmdit_host = pytest.mark.skipif(not MMDIT_HOST, reason="ComfyUI of early 2024 has no Flux/SD3 nodes")


@mmdit_host
@pytest.mark.parametrize(("workflow", "prefix", "outputs"), [
    ("fpe_flux_generated_edit", "flux_", ("source", "edit", "side_by_side")),
    ("fpe_sd35_generated_edit", "sd35_", ("source", "edit", "side_by_side")),
    ("fpe_flux_real_image_edit", "flux_real_", ("edit", "side_by_side"))])
def test_flux_and_sd35_workflows_run_headless_on_tiny_models(tmp_path, workflow, prefix, outputs):
    done = run_main("--workflow", workflow, "--steps", 6, "--size", 64, "--target-prompt", "a photo of a red fox",
                    "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pictures are MEANINGLESS" in done.stdout and "Traceback" not in done.stdout + done.stderr
    images = {name: np.asarray(Image.open(tmp_path / "out" / f"{prefix}{name}.png")) for name in outputs}
    assert images["edit"].shape == (64, 64, 3) and images["side_by_side"].shape == (64, 128, 3)
    left = images["side_by_side"][:, :64]
    assert not np.array_equal(left, images["edit"])  # the source (or the photo) beside a different edit
    if "real" in workflow:
        assert "FPEFlowInvert: reconstruction latent RMSE" in done.stdout


@mmdit_host  # the 2024 host's loaders take other widgets
def test_flux_workflow_settings_reach_their_nodes(tmp_path):
    data = load_workflow(REPO / "workflows" / "fpe_flux_real_image_edit.json")
    args = main_job.parser("run.sh").parse_args(["--invert-cfg", "1.5", "--steps", "9", "--size", "96",
                                                 "--source-prompt", "a photo of a pear", "--target-prompt", "a fox"])
    job = workflows.Job(HOST.path, REPO / "workflows" / "fpe_flux_real_image_edit.json", data, None, None, tmp_path,
                        args)
    assert job.mmdit == "flux" and not job.sdxl
    prompt = to_api(data)
    roles = workflows.prompt_roles(prompt)  # through FluxGuidance to the prompts
    assert len(roles["source"]) == 1 and len(roles["target"]) == 1
    workflows.apply_settings(prompt, job, shared.TINY_MMDIT, HOST.workdir / "input")
    by_type = {node["class_type"]: node["inputs"] for node in prompt.values()}
    assert by_type["FPEFlowInvert"]["cfg"] == 1.5 and by_type["FPEFlowInvert"]["steps"] == 9
    assert prompt[roles["source"][0]]["inputs"]["text"] == "a photo of a pear"
    assert prompt[roles["target"][0]]["inputs"]["text"] == "a fox"
    assert by_type["UNETLoader"]["unet_name"] == shared.mmdit_files("flux")["unet_name"]
    assert by_type["DualCLIPLoader"]["type"] == "flux"
    sd35 = load_workflow(REPO / "workflows" / "fpe_sd35_generated_edit.json")
    assert shared.mmdit_family(sd35) == "sd35"
    sd35_prompt = to_api(sd35)
    workflows.apply_settings(sd35_prompt, workflows.Job(HOST.path, REPO, sd35, None, None, tmp_path, args),
                             shared.TINY_MMDIT, HOST.workdir / "input")
    latent = next(node["inputs"] for node in sd35_prompt.values() if node["class_type"] == "EmptySD3LatentImage")
    assert latent["width"] == latent["height"] == 96


def test_flux_workflows_need_no_checkpoint_and_a_current_comfyui(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(checkpoint))
    done = run_main("--workflow", "fpe_flux_generated_edit", "--checkpoint", checkpoint, cwd=tmp_path)
    assert done.returncode == 2 and "--checkpoint: fpe_flux_generated_edit.json loads a Flux/SD3.5" in done.stderr
    if not MMDIT_HOST:
        done = run_main("--workflow", "fpe_flux_generated_edit", cwd=tmp_path)
        assert done.returncode == 2 and "has no Flux or SD3 models (ComfyUI of early 2024)" in done.stderr
