"""The picture nodes on a recorded run: word heatmaps, self-attention components, query points.

Expected maps are built here from an independent explicit-softmax reference (``explicit_maps``) and the
tokenizer's own token list, upsampled and scaled with torch directly.
"""

from __future__ import annotations

import pytest
import torch

from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, TGT, ksampler, latent
from fpe_harness.host import pack_submodule
from fpe_harness.records import H, W, record, recorded
from fpe_harness.records import record_keys as _keys


def _heatmap(rec, samples, clip, text, words, layers=""):
    return call_node("FPEWordHeatmap", fpe_record=rec, samples=samples, clip=clip, text=text, words=words,
                     layers=layers, alpha=0.6)


def _scaled(maps):
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low)


def _expected_word_map(model, sums, counts, positions, size):
    total = 0
    layers = _keys(model)
    for key in layers:
        mean = sums[("cross", *key)] / counts[("cross", *key)]
        n = mean.shape[0]
        h, w = size
        while h * w > n:
            h, w = (h + 1) // 2, (w + 1) // 2
        column = mean[:, positions].sum(dim=1).reshape(1, 1, h, w)
        total = total + torch.nn.functional.interpolate(column, size=size, mode="bilinear", align_corners=False)[0, 0]
    return total / len(layers)


def test_word_heatmaps_equal_explicit_maps_and_differ_by_word(tiny_sd15, fpe_error, caplog):
    model, clip, _ = tiny_sd15
    rec, samples, sums, counts = recorded(model, clip)
    tokens = pack_submodule("fpe_attention.prompt_words").prompt_tokens(clip, SRC)
    assert tokens.words[:6] == ("a", "photo", "of", "green", "ducks", "walking")
    assert tokens.positions[4] == (5,)  # after the start token
    heatmaps, masks = _heatmap(rec, samples, clip, SRC, "ducks, street")
    assert heatmaps.shape == (2, H, W, 3) and masks.shape == (2, H, W)
    size = (H // 8, W // 8)
    for i, word in enumerate(("ducks", "street")):
        expected = _expected_word_map(model, sums, counts, list(tokens.positions[tokens.find(word)[0]]), size)
        expected = _scaled(torch.nn.functional.interpolate(expected[None, None], size=(H, W), mode="bilinear",
                                                           align_corners=False)[0, 0])
        assert float((masks[i] - expected).abs().max()) < 1e-4, word
    assert float((masks[0] - masks[1]).abs().mean()) > 0.05  # a different word looks elsewhere
    assert float(masks.amax()) == 1.0 and float(masks.amin()) == 0.0
    with pytest.raises(fpe_error, match=r"'cat' is not a word of the prompt.*'ducks'"):
        _heatmap(rec, samples, clip, SRC, "cat")
    with pytest.raises(fpe_error, match="text: this prompt is 154 tokens"):
        _heatmap(rec, samples, clip, "ducks " * 80, "ducks")
    # Another prompt of the same length: its words' places may be wrong, which the page is told.
    with caplog.at_level("WARNING", logger="free-prompt-editing"):
        _heatmap(rec, samples, clip, TGT, "ducks")
    assert "does not encode to the prompt" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="free-prompt-editing"):
        _heatmap(rec, samples, clip, SRC, "ducks")
    assert "does not encode" not in caplog.text
    with pytest.raises(fpe_error, match="layers: layer item 'in99'"):
        _heatmap(rec, samples, clip, SRC, "ducks", layers="in99")


def test_weighted_and_multi_token_words(tiny_sd15):
    model, clip, _ = tiny_sd15
    words = pack_submodule("fpe_attention.prompt_words")
    maps = pack_submodule("fpe_attention.attention_maps")
    weighted = words.prompt_tokens(clip, "a photo of (green:1.3) ducks walking on street")
    plain = words.prompt_tokens(clip, SRC)
    assert weighted.words == plain.words and weighted.positions == plain.positions
    long = words.prompt_tokens(clip, "a hippopotamus by the river")
    (label, positions), = maps.word_items(long, "hippopotamus")
    assert len(positions) > 1 and positions == list(range(2, 2 + len(positions)))  # several BPE tokens
    (_, both), = maps.word_items(long, "hippopotamus river")  # one item of two words: all their tokens
    assert both[:-1] == positions and both[-1] == long.positions[long.find("river")[0]][0]
    # On a recorded run a multi-token word's map is the sum of its tokens' maps.
    rec, samples, sums, counts = recorded(model, clip, "a hippopotamus by the river")
    _, masks = _heatmap(rec, samples, clip, "a hippopotamus by the river", "hippopotamus")
    expected = _expected_word_map(model, sums, counts, positions, (H // 8, W // 8))
    expected = _scaled(torch.nn.functional.interpolate(expected[None, None], size=(H, W), mode="bilinear",
                                                       align_corners=False)[0, 0])
    assert float((masks[0] - expected).abs().max()) < 1e-4


def test_sdxl_two_encoders(tiny_sdxl):
    model, clip, _ = tiny_sdxl
    recording, rec = record(model, cross="all", self_layers="none")
    out = ksampler(recording, clip, SRC, latent_image=latent(128, 128), steps=2)
    run = rec.run_for(out)
    assert run.context_length == 77 and len(run.cross) == len(_keys(model))
    _, masks = _heatmap(rec, {"samples": out}, clip, SRC, "ducks, street")
    assert masks.shape == (2, 128, 128) and float((masks[0] - masks[1]).abs().mean()) > 0.01


def test_self_components_and_query_point(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    rec, samples, sums, counts = recorded(model, clip)
    structure = pack_submodule("fpe_attention.structure")
    out = call_node("FPESelfAttnComponents", fpe_record=rec, samples=samples, layers="", components=4,
                    method="full")  # exact, to check the node's wiring (randomized vs full: tests/core/test_attention_analysis.py)
    run = rec.run_for(samples["samples"])
    groups = {run.grids[key] for key in run.self_maps}
    components = out[0]
    assert components.shape == (4 * len(groups), H, W, 3)
    # The finest group's components are those of the explicit reference's mean map over its layers.
    finest = max(groups, key=lambda g: g[0] * g[1])
    keys = [key for key in run.self_maps if run.grids[key] == finest]
    mean = sum(sums[("self", *key)] / counts[("self", *key)] for key in keys) / len(keys)
    heatmaps = pack_submodule("fpe_attention.heatmaps")
    full = structure.top_components(mean, 4, "full")
    expected = heatmaps.colormap(heatmaps.to_image_size(structure.component_grid(full, finest), H, W))
    print(f"components: node vs full SVD of the explicit maps {float((components[:4] - expected).abs().max()):.2e}")
    assert float((components[:4] - expected).abs().max()) < 1e-4  # the node's first row: the finest grid
    with pytest.raises(fpe_error, match="image: it is 96x96 px"):
        call_node("FPESelfAttnComponents", fpe_record=rec, samples=samples, layers="", components=4,
                  method="randomized", image=torch.zeros(1, 96, 96, 3))

    heat, mask = call_node("FPEAttentionQuery", fpe_record=rec, samples=samples, x=0.25, y=0.75, radius=0.0,
                           layers="in4", alpha=0.6)
    assert heat.shape == (1, H, W, 3) and mask.shape == (1, H, W)
    key = ("input", 4, 0)
    h, w = run.grids[key]
    row = min(int(0.75 * h), h - 1) * w + min(int(0.25 * w), w - 1)
    explicit = (sums[("self", *key)] / counts[("self", *key)])[row].reshape(1, 1, h, w)
    expected = _scaled(torch.nn.functional.interpolate(explicit, size=(H, W), mode="bilinear",
                                                       align_corners=False)[0, 0])
    assert float((mask[0] - expected).abs().max()) < 1e-4
    with pytest.raises(fpe_error, match="x: "):
        call_node("FPEAttentionQuery", fpe_record=rec, samples=samples, x=float("nan"), y=0.5, radius=0.0, layers="",
                  alpha=0.6)


def _heatmap_prompt(ckpt, *, seed=1, words="ducks", text=SRC):
    """API prompt: a recording model sampled by a KSampler, its word heatmap (shown, and its mask saved)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": W, "height": H, "batch_size": 1}},
        "5": {"class_type": "FPEAttentionRecord", "inputs": {
            "model": ["1", 0], "cross_layers": "all", "cross_custom_layers": "", "self_layers": "none",
            "self_custom_layers": "", "start_percent": 0.0, "end_percent": 1.0, "rows": "cond", "image": 0}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["5", 0], "seed": seed, "steps": 3, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "7": {"class_type": "FPEWordHeatmap", "inputs": {
            "fpe_record": ["5", 1], "samples": ["6", 0], "clip": ["1", 1], "text": SRC, "words": words,
            "layers": "", "alpha": 0.6}},
        "8": {"class_type": "MaskToImage", "inputs": {"mask": ["7", 1]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "fpe_maps/mask"}},
    }


def _saved(result, node_id="9") -> bytes:
    from conftest import HOST

    image = result.outputs[node_id]["images"][0]
    return (HOST.workdir / image["type"] / image["subfolder"] / image["filename"]).read_bytes()


def test_a_heatmap_never_depends_on_what_ran_before(tiny_sd15_ckpt):
    """A, then B (another seed through the same cached record, failing at its heatmap), then A again: A's
    mask is a fresh server's, bit for bit; so is B's picture drawn after A ran again."""
    from fpe_harness.execute import Executor

    a = _heatmap_prompt(tiny_sd15_ckpt)
    b_failing = _heatmap_prompt(tiny_sd15_ckpt, seed=2, words="cat")
    b = _heatmap_prompt(tiny_sd15_ckpt, seed=2)
    fresh_a, fresh_b = _saved(Executor().run(a)), _saved(Executor().run(b))
    assert fresh_a != fresh_b
    server = Executor()
    first = server.run(a)
    failed = server.run(b_failing, expect_success=False)
    assert not failed.success and "'cat' is not a word" in str(failed.error)
    again = server.run(a)
    assert "5" not in again.executed  # the same cached record object served A, B and A again
    assert _saved(first) == _saved(again) == fresh_a
    assert _saved(server.run(b)) == fresh_b
