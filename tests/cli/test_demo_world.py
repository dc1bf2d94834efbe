"""The demo model's drawn world, its reader and its hand-set VAE (fpe_headless/demo)."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

from fpe_headless.comfy import tiny_models
from fpe_headless.demo import vae, world
from fpe_headless.demo.checkpoint import DEMO_CHECKPOINT


def test_a_scene_is_drawn_the_same_from_its_seed_and_differs_across_seeds():
    a, b = world.render(world.random_scene(5)), world.render(world.random_scene(5))
    assert np.array_equal(a[0], b[0]) and all(np.array_equal(x, y) for x, y in zip(a[1], b[1], strict=True))
    assert not np.array_equal(a[0], world.render(world.random_scene(6))[0])
    assert a[0].shape == (world.SIZE, world.SIZE, 3) and a[0].dtype == np.uint8


def test_captions_follow_the_grammar_and_name_objects_left_to_right():
    scene = world.random_scene(3, objects=2, colour="red", shape="star", ground="sand")
    first, second = scene.things
    assert scene.caption == f"a red star and a {second.colour} {second.shape} on sand"
    assert first.box[2] <= second.box[0]  # left half, right half
    assert world.random_scene(4, objects=1, colour="blue", shape="circle", ground="grass").caption == \
        "a blue circle on grass"
    assert scene.with_colour(0, "green").caption.startswith("a green star and")


def test_the_reader_reads_every_drawn_scene_back_exactly():
    """Over 300 seeded scenes (one and two objects, every ground): colour, shape and mask from pixels alone."""
    wrong, ious = [], []
    for seed in range(300):
        scene = world.random_scene(seed)
        picture, masks = world.render(scene)
        seen = world.read(picture, len(scene.things))
        assert len(seen) == len(scene.things), seed
        for thing, mask, found in zip(scene.things, masks, seen, strict=True):
            if (found.colour, found.shape) != (thing.colour, thing.shape):
                wrong.append((seed, thing, found.colour, found.shape))
            ious.append(world.iou(mask > 0.5, found.mask))
    assert wrong == []
    assert min(ious) > 0.9 and np.median(ious) > 0.97  # only anti-aliased edge pixels differ


def test_the_reader_sees_nothing_on_a_bare_ground_and_tells_colours_apart_by_hue():
    ground = world.render(world.Scene((), "grass", 1))[0]
    assert world.read(ground, 1) == []
    for name, rgb in world.COLOURS.items():
        picture = np.full((40, 40, 3), 128, dtype=np.uint8)
        picture[10:30, 10:30] = rgb
        assert world.read(picture, 1)[0].colour == name
        # a generated ground may come out saturated: it is still ground, the object on it still an object
        other = next(c for c in world.COLOURS.values() if c != rgb)
        picture[:] = other
        picture[10:30, 10:30] = rgb
        assert [(s.colour, s.size) for s in world.read(picture, 2)] == [(name, 20.0)]


def test_the_hand_set_taesd_is_the_closed_form_encoder_through_the_hosts_vae():
    """ComfyUI's own TAESD with vae.state_dict's weights encodes exactly as vae.encode (float32 sums)."""
    import comfy.sd  # ComfyUI's: importable once the host booted

    sd = vae.state_dict(tiny_models._taesd_shapes())
    host_vae = comfy.sd.VAE(sd=sd)
    pictures = torch.from_numpy(np.stack([world.render(world.random_scene(s))[0] for s in range(4)])).float() / 255
    with torch.no_grad():
        through_host = host_vae.encode(pictures) * 0.18215  # what SD1.x's latent format gives the UNet
    expected = vae.encode(pictures.permute(0, 3, 1, 2))
    assert through_host.shape == (4, 4, world.SIZE // 8, world.SIZE // 8)
    assert torch.allclose(through_host.float(), expected, atol=1e-5, rtol=0)
    # and its hand-set decoder gives the 8 x 8 block means back (flat blocks exactly, up to the tanh clamp)
    flat = torch.full((1, 3, 64, 64), 0.5)
    flat[:, 0] = 0.6
    with torch.no_grad():
        back = host_vae.decode(host_vae.encode(flat.permute(0, 2, 3, 1)))
    assert torch.allclose(back.float(), flat.permute(0, 2, 3, 1), atol=0.02)


@pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not in this checkout")
def test_the_committed_demo_checkpoint_is_fp16_under_25_mb_with_the_hand_set_encoder():
    assert DEMO_CHECKPOINT.stat().st_size <= 25_000_000
    weights = safetensors.torch.load_file(str(DEMO_CHECKPOINT))
    assert {t.dtype for t in weights.values()} == {torch.float16}
    hand_set = vae.state_dict(tiny_models._taesd_shapes())
    for key, value in hand_set.items():
        if key.startswith("taesd_encoder."):  # fp16 rounding of the hand-set values, nothing more
            assert torch.allclose(weights["first_stage_model." + key].float(), value, atol=1e-3, rtol=1e-3), key


def test_caption_words_name_the_colours_and_shapes_of_a_world_caption_and_nothing_else():
    assert world.caption_words("a red circle on grass") == "red, circle"
    assert world.caption_words("A blue square and a blue star on sand") == "blue, square, star"
    for other in ("a photo of a white horse in the park", "a red circle on the moon", "a red circle"):
        assert world.caption_words(other) is None
    for seed in range(50):  # every caption the world writes
        scene = world.random_scene(seed)
        assert world.caption_words(scene.caption).split(", ")[:2] == [scene.things[0].colour, scene.things[0].shape]
