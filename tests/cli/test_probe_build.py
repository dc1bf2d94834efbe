"""fpe probe build: the sets' counts, one sample's maps against maps built explicitly from the layers' own
q and k, a killed build resumed without recomputing, and the tiny model's colour words told apart."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fpe_harness.attention import explicit_maps
from fpe_harness.execute import call_node, node_class
from fpe_harness.graphs import ksampler, latent
from fpe_harness.host import pack_submodule
from fpe_headless.comfy.jobs import InProcessRunner
from fpe_headless.probe import build as probing
from fpe_headless.probe.store import ProbeData
from fpe_headless.probe.train import ProbeSettings, probe


class Killed(BaseException):
    pass


class CountingRunner(InProcessRunner):
    def __init__(self, executor, kill_at=None):
        super().__init__(executor)
        self.ran, self.kill_at = [], kill_at

    def run_one(self, job):
        if self.kill_at is not None and len(self.ran) == self.kill_at:
            raise Killed
        self.ran.append(int(job.key))
        return super().run_one(job)


def test_sets_have_the_papers_counts_and_interleave_classes():
    assert len(probing.plan(probing.SETS["color-car"])) == 2000
    assert len(probing.plan(probing.SETS["animal-park"])) == 2000
    assert len(probing.plan(probing.SETS["color-car"], small=True)) == 200
    # 35 known objects: 6 seeds each keep ~200 per colour (the paper: 100 objects x 2 seeds)
    assert len(probing.plan(probing.SETS["color-object"])) == 10 * 35 * 6
    assert len(probing.plan(probing.SETS["color-object"], objects=tuple(f"o{i}" for i in range(100)))) == 2000
    samples = probing.plan(probing.SETS["color-car-car"], seeds=3)
    assert [s.label for s in samples[:10]] == list(range(10)) and len(samples) == 30
    assert samples[0].prompt == "a red car" and samples[0].word == "car"
    assert probing.plan(probing.SETS["animal-park"])[0].prompt == "a dog standing in the park"
    assert probing.article("elephant") == "an"
    again = probing.plan(probing.SETS["color-car"], seeds=3)
    assert [s.seed for s in again] == [s.seed for s in probing.plan(probing.SETS["color-car"], seeds=3)]
    # the seeds are shared by the classes ('a red car' and 'a blue car' from the same noise), as the paper's
    # "ten categories of color words using 200 random seeds"
    assert len({s.seed for s in again}) == 3 and len({s.seed for s in again[:10]}) == 1
    assert [s.seed for s in again[:20]] == [s.seed for s in probing.plan(probing.SETS["color-car"], seeds=5)[:20]]


@pytest.mark.parametrize("kind", ["cross", "self"])
def test_saved_maps_equal_explicit_maps(kind, tiny_sd15, comfy_host):
    """What FPE Save Attention Maps writes = maps from the layers' own q/k, built in the test in the same run
    (the record sits before the test's attention replaces, which see the same q and k)."""
    size = 64 if kind == "cross" else 256  # 256 px: a 32x32-token level, 1024 > 256, is area-resized
    model, clip, _ = tiny_sd15
    keys = [layer.key for layer in pack_submodule("fpe_attention.layers").model_attn1_layers(model)]
    recording, record = call_node("FPEAttentionRecord", model=model, cross_layers="all" if kind == "cross" else "none",
                                  cross_custom_layers="", self_layers="all" if kind == "self" else "none",
                                  self_custom_layers="", start_percent=0.0, end_percent=1.0, rows="cond", image=0)
    reference, sums, counts, _ = explicit_maps(recording, keys)
    samples = ksampler(reference, clip, "a red car", latent_image=latent(size, size), steps=2, sampler="ddim",
                       scheduler="ddim_uniform")
    saved = node_class("FPESaveAttentionMaps")().save(record, {"samples": samples}, clip, "a red car",
                                                      "red" if kind == "cross" else "", 256, "fpe_test/maps")
    ui = saved["ui"]["fpe_maps"][0]
    data = (comfy_host.workdir / "temp" / ui["subfolder"] / ui["filename"]).read_bytes()
    names, maps = probing.read_maps(data, kind)
    assert len(maps) == len(keys) == 16
    worst = 0.0
    for name, got, key in zip(names, maps, keys, strict=True):
        mean = sums[(kind, *key)] / counts[(kind, *key)]
        if kind == "cross":
            side = math.isqrt(mean.shape[0])
            expected = mean[:, 2].reshape(side, side)  # tokens: <start> a red car: 'red' is position 2
        else:
            n = mean.shape[0]
            step = n // 256 if n > 256 else 1  # area resize to 256 x 256: the mean of step x step blocks
            expected = mean.reshape(n // step, step, n // step, step).mean(dim=(1, 3))
        assert got.shape == expected.shape and got.shape[0] <= 256, name
        worst = max(worst, float((got - expected).abs().max() / expected.abs().max()))
    print(f"{kind}: saved vs explicit maps, max relative error {worst:.2e}")
    assert worst < 1e-5


def test_killed_build_resumes_and_colour_words_are_separable(executor, tiny_sd15_ckpt, tmp_path):
    probe_set = probing.ProbeSet("four-colours", "cross", ("red", "blue", "green", "yellow"), ("a {c} car",),
                                 "{c}", 15)
    samples = probing.plan(probe_set, seeds=25)
    settings = probing.BuildSettings(checkpoint=tiny_sd15_ckpt, steps=1, size=64)
    out = tmp_path / "set"
    first = CountingRunner(executor, kill_at=21)
    with pytest.raises(Killed):
        probing.build(probe_set, samples, settings, out, first, say=lambda s: None, shard_size=8)
    stored = ProbeData(out)
    # what finished is flushed on the way out (a SIGKILL would lose at most the unwritten shard's samples)
    assert stored.indexes.tolist() == list(range(21))
    second = CountingRunner(executor)
    outcome = probing.build(probe_set, samples, settings, out, second, say=lambda s: None, shard_size=8)
    assert second.ran == list(range(21, 100)) and outcome.failed == []
    data = ProbeData(out)
    assert len(data) == 100 and data.labels.tolist() == [s.label for s in samples]
    with pytest.raises(ValueError, match="other settings"):
        probing.build(probe_set, samples, probing.BuildSettings(checkpoint=tiny_sd15_ckpt, steps=2, size=64), out,
                      CountingRunner(executor), say=lambda s: None)

    # The tiny CLIP embeds the four colour words differently, so their cross-attention maps differ: a probe
    # tells them apart. Chance is 1/4 on 20 test samples; the 99.9 % upper bound of a chance classifier's
    # accuracy is 0.25 + 3.09 * sqrt(0.25 * 0.75 / 20) = 0.55: the best layer must clear it.
    result = probe(data, ProbeSettings(epochs=30))
    n_test = result.n_test
    bound = 0.25 + 3.09 * math.sqrt(0.25 * 0.75 / n_test)
    print(f"tiny model, 4 colours: best layer {float(result.accuracy.max()):.2f}, mean "
          f"{float(result.accuracy.mean()):.2f}, chance bound {bound:.2f} (n_test {n_test})")
    assert n_test == 20 and float(torch.as_tensor(result.accuracy).max()) > bound

    # the command line over that set: train (and the shuffled-label control), then the report
    from fpe_headless.probe import cli as probe_cli

    assert probe_cli.main(["train", str(out), "--epochs", "3"], "fpe probe") == 0
    assert probe_cli.main(["train", str(out), "--epochs", "3", "--shuffled-labels"], "fpe probe") == 0
    report_dir = tmp_path / "report"
    assert probe_cli.main(["report", str(out / "probe_result.json"), str(out / "probe_result_shuffled.json"),
                           "--out", str(report_dir)], "fpe probe") == 0
    text = (report_dir / "report.md").read_text()
    assert text.count("| Class | Layer 1 | Layer 2 |") == 2 and "| Avg. |" in text
    assert (report_dir / "accuracy_heatmap.png").is_file() and (report_dir / "table_2.csv").is_file()
    assert probe_cli.main(["train", str(tmp_path / "nothing")], "fpe probe") == 2


def test_the_verdict_compares_one_prompt_family_only():
    from fpe_headless.probe.cli import comparable
    from fpe_headless.probe.train import ProbeResult, ProbeSettings

    def result(set_name, kind, shuffled=False, size=512):
        return ProbeResult(classes=["red", "blue"], layers=["in1.0"], per_class=np.ones((1, 2)),
                           accuracy=np.ones(1), confusion=np.zeros((1, 2, 2)),
                           settings=ProbeSettings(shuffled_labels=shuffled), n_train=8, n_test=2,
                           test_per_class=[1, 1], ood=False,
                           dataset={"set": set_name, "kind": kind, "checkpoint": "m", "size": size, "steps": 50})

    cross, self_ = result("color-car", "cross"), result("self-color-car", "self")
    assert comparable(cross, self_)
    assert not comparable(result("color-car-a", "cross"), self_)  # the word 'a' is not the colour
    assert not comparable(cross, result("self-color-car", "self", shuffled=True))  # a control
    assert not comparable(cross, result("self-color-car", "self", size=256))  # other generations


def test_save_maps_names_its_input_and_the_next_prompt_is_fresh(tiny_sd15, comfy_host):
    """A stranger's mistake (a word not in the prompt) is an error naming 'word'; the same node right after,
    with the right word, saves the maps of that run."""
    model, clip, _ = tiny_sd15
    recording, record = call_node("FPEAttentionRecord", model=model, cross_layers="all", cross_custom_layers="",
                                  self_layers="none", self_custom_layers="", start_percent=0.0, end_percent=1.0,
                                  rows="cond", image=0)
    samples = ksampler(recording, clip, "a red car", latent_image=latent(64, 64), steps=1)
    node = node_class("FPESaveAttentionMaps")()
    error = pack_submodule("fpe_attention.errors").FPEError
    with pytest.raises(error, match="^word: 'blue' is not a word of the prompt"):
        node.save(record, {"samples": samples}, clip, "a red car", "blue", 256, "fpe_test/maps")
    ui = node.save(record, {"samples": samples}, clip, "a red car", "red", 256, "fpe_test/maps")["ui"]["fpe_maps"][0]
    names, maps = probing.read_maps((comfy_host.workdir / "temp" / ui["subfolder"] / ui["filename"]).read_bytes(),
                                    "cross")
    assert len(maps) == 16 and all(torch.isfinite(m).all() for m in maps)


def test_a_bad_filename_prefix_is_one_error_naming_it_and_the_next_save_works(tiny_sd15, comfy_host):
    """filename_prefix from an API prompt: too long, a NUL, absolute, out of the temp folder, or a folder that is
    a file; each is an FPEError naming the input and the fix (not the file system's or ComfyUI's own error), and
    the same node right after, with a good name, saves the run's maps."""
    model, clip, _ = tiny_sd15
    recording, record = call_node("FPEAttentionRecord", model=model, cross_layers="all", cross_custom_layers="",
                                  self_layers="none", self_custom_layers="", start_percent=0.0, end_percent=1.0,
                                  rows="cond", image=0)
    samples = {"samples": ksampler(recording, clip, "a red car", latent_image=latent(64, 64), steps=1)}
    node = node_class("FPESaveAttentionMaps")()
    error = pack_submodule("fpe_attention.errors").FPEError
    temp = comfy_host.workdir / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    (temp / "fpe_test_a_file").write_bytes(b"")  # a subfolder name that is a file: only the save can tell
    outside = "/tmp/fpe_test_prefix_outside"
    for prefix, says in [("x" * 10_000, "too long"), ("fpe_test/ma\x00ps", "control character"),
                         ("fpe_test/ma\nps", "control character"), ("../../fpe_test_escape", "leads out"),
                         (outside, "absolute path"), ("", "empty"), ("fpe_test/..", "names no file"),
                         ("fpe_test_a_file/maps", "cannot write")]:
        with pytest.raises(error, match="^filename_prefix: ") as e:
            node.save(record, samples, clip, "a red car", "red", 256, prefix)
        assert says in str(e.value) and "subfolder/name inside ComfyUI's temp folder" in str(e.value), str(e.value)
        assert len(str(e.value)) < 400
    assert not any(Path(outside).parent.glob(Path(outside).name + "*"))
    assert not any(temp.parent.parent.glob("fpe_test_escape*"))
    ui = node.save(record, samples, clip, "a red car", "red", 256, "fpe_test/after_bad")["ui"]["fpe_maps"][0]
    names, maps = probing.read_maps((temp / ui["subfolder"] / ui["filename"]).read_bytes(), "cross")
    assert len(maps) == 16 and all(torch.isfinite(m).all() for m in maps)


def test_a_released_run_names_the_node_that_freed_it(tiny_sd15):
    """release_run frees the run's maps; a Word Heatmap of that run ComfyUI happens to execute after it must say
    so (naming the node), not blame a record setting that is already right."""
    model, clip, _ = tiny_sd15
    recording, record = call_node("FPEAttentionRecord", model=model, cross_layers="all", cross_custom_layers="",
                                  self_layers="none", self_custom_layers="", start_percent=0.0, end_percent=1.0,
                                  rows="cond", image=0)
    samples = {"samples": ksampler(recording, clip, "a red car", latent_image=latent(64, 64), steps=1)}
    heatmap = {"fpe_record": record, "samples": samples, "clip": clip, "text": "a red car", "words": "red",
               "layers": "", "alpha": 0.6}
    call_node("FPEWordHeatmap", **heatmap)  # before the release: the picture
    node_class("FPESaveAttentionMaps")().save(record, samples, clip, "a red car", "red", 256, "fpe_test/maps",
                                              release_run=True, unique_id="12")
    error = pack_submodule("fpe_attention.errors").FPEError
    for read in (lambda: call_node("FPEWordHeatmap", **heatmap),
                 lambda: node_class("FPESaveAttentionMaps")().save(record, samples, clip, "a red car", "red", 256,
                                                                   "fpe_test/maps")):
        with pytest.raises(error, match=r"FPE Save Attention Maps \(node 12\) freed its maps \(release_run on\)") as e:
            read()
        assert "cross_layers" not in str(e.value)
    # A new run on the same record is recorded and shown as usual.
    again = {"samples": ksampler(recording, clip, "a red car", latent_image=latent(64, 64), steps=1, seed=7)}
    call_node("FPEWordHeatmap", **{**heatmap, "samples": again})


def _release_prompt(ckpt, prefix, release, heatmap=False):
    """Record -> KSampler -> FPE Save Attention Maps (release_run as given), and optionally a Word Heatmap."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red car"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "FPEAttentionRecord", "inputs": {
            "model": ["1", 0], "cross_layers": "all", "cross_custom_layers": "", "self_layers": "none",
            "self_custom_layers": "", "start_percent": 0.0, "end_percent": 1.0, "rows": "cond", "image": 0}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "seed": 1, "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "10": {"class_type": "FPESaveAttentionMaps", "inputs": {
            "fpe_record": ["7", 1], "samples": ["9", 0], "clip": ["1", 1], "text": "a red car", "word": "red",
            "self_side": 256, "filename_prefix": prefix, "release_run": release}},
    }
    if heatmap:
        prompt["11"] = {"class_type": "FPEWordHeatmap", "inputs": {
            "fpe_record": ["7", 1], "samples": ["9", 0], "clip": ["1", 1], "text": "a red car", "words": "red",
            "layers": "", "alpha": 0.6}}
        prompt["12"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "fpe_test/hm"}}
    return prompt


def _maps(comfy_host, result):
    ui = result.outputs["10"]["fpe_maps"][0]
    return probing.read_maps((comfy_host.workdir / "temp" / ui["subfolder"] / ui["filename"]).read_bytes(), "cross")[1]


def test_a_prompt_after_a_release_records_anew(executor, tiny_sd15_ckpt, comfy_host):
    """release_run frees the run; the next prompt (only the file name changed, the sampler cached otherwise)
    must not depend on that: the record node runs again, the sampler samples again, the maps are the same."""
    first = executor.run(_release_prompt(tiny_sd15_ckpt, "fpe_test/a", True))
    again = executor.run(_release_prompt(tiny_sd15_ckpt, "fpe_test/b", True))
    assert "9" in again.executed  # sampled anew, not served from the cache with freed maps
    for a, b in zip(_maps(comfy_host, first), _maps(comfy_host, again), strict=True):
        assert torch.equal(a, b)
    # A (no release, a heatmap), B (release), A again: the same as the first A.
    a1 = executor.run(_release_prompt(tiny_sd15_ckpt, "fpe_test/c", False, heatmap=True))
    executor.run(_release_prompt(tiny_sd15_ckpt, "fpe_test/d", True, heatmap=False))
    a2 = executor.run(_release_prompt(tiny_sd15_ckpt, "fpe_test/c", False, heatmap=True))
    for a, b in zip(_maps(comfy_host, a1), _maps(comfy_host, a2), strict=True):
        assert torch.equal(a, b)


def test_a_nan_latent_shows_no_run(tiny_sd15):
    """A latent with NaN (an fp16 overflow) matched nothing but compared as close to the newest run."""
    model, clip, _ = tiny_sd15
    recording, record = call_node("FPEAttentionRecord", model=model, cross_layers="all", cross_custom_layers="",
                                  self_layers="none", self_custom_layers="", start_percent=0.0, end_percent=1.0,
                                  rows="cond", image=0)
    a = ksampler(recording, clip, "a red car", latent_image=latent(64, 64), steps=1, seed=1)
    ksampler(recording, clip, "a red car", latent_image=latent(64, 64), steps=1, seed=2)
    broken = a.clone()
    broken[:, :, :4] = float("nan")
    error = pack_submodule("fpe_attention.errors").FPEError
    with pytest.raises(error, match="^samples: the latent holds NaN or infinite values"):
        call_node("FPEWordHeatmap", fpe_record=record, samples={"samples": broken}, clip=clip, text="a red car",
                  words="red", layers="", alpha=0.6)


def test_the_demo_sets_probe_the_colour_words_of_the_drawn_world(monkeypatch):
    """demo-colour (the colour word's cross-attention maps) and self-demo-colour (the self-attention maps) over
    the demo model's captions: its 6 colours, every shape on every ground, seeds shared by the colours; and
    without --checkpoint the build runs at the demo model's steps and size (the tiny random model's where the
    demo model's file is not there)."""
    from fpe_headless import shared
    from fpe_headless.demo import world
    from fpe_headless.probe import cli as probe_cli

    for name, kind in (("demo-colour", "cross"), ("self-demo-colour", "self")):
        probe_set = probing.SETS[name]
        assert probe_set.kind == kind and probe_set.classes == tuple(world.COLOURS) and "demo model" in probe_set.about
        samples = probing.plan(probe_set)
        per_prompt = math.ceil(probing.PAPER_SAMPLES // 6 / 16)  # 16 shape-ground objects, ~2000 samples
        assert len(samples) == 6 * 16 * per_prompt == 2016 and len(probing.plan(probe_set, small=True)) == 6 * 16 * 2
        assert [s.label for s in samples[:12]] == list(range(6)) * 2  # classes interleaved
        assert len({s.seed for s in samples[:6]}) == 1  # 'a red circle on grass' and 'a blue ...' share the noise
        seen = set()
        for sample in samples:
            words = sample.prompt.split()
            colour, shape, ground = words[1], words[2], words[4]
            assert colour == probe_set.classes[sample.label] and sample.word == (colour if kind == "cross" else "")
            scene = world.random_scene(0, objects=1, colour=colour, shape=shape, ground=ground)
            assert scene.caption == sample.prompt  # the captions the demo model was trained on
            seen.add((shape, ground))
        assert seen == {(s, g) for s in world.SHAPES for g in world.GROUNDS}
        assert probe_set.word_label == ("<colour>" if kind == "cross" else "(self-attention)")

    for present, expect in ((True, (shared.DEMO_STEPS, shared.DEMO_SIZE)),
                            (False, (shared.TINY_STEPS, probe_cli.TINY_PROBE_SIZE))):
        monkeypatch.setattr(shared, "demo_model_present", lambda present=present: present)
        assert probe_cli.build_defaults(None, []) == expect
        assert probe_cli.build_defaults(Path("model.safetensors"), []) == (50, 512)  # a checkpoint: the official
        assert probe_cli.build_defaults(None, ["http://127.0.0.1:8188"]) == (50, 512)
