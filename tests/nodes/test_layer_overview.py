"""FPE Layer Overview: the model's transformer layers at a size, and which ones a layers setting edits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fpe_harness.execute import call_node
from fpe_harness.graphs import latent
from fpe_harness.host import pack_submodule
from fpe_headless.comfy import tiny_models

SD15_NAMES = ["in1.0", "in2.0", "in4.0", "in5.0", "in7.0", "in8.0", "mid0.0"] + [f"out{i}.0" for i in range(3, 12)]
SD15_OFFICIAL_512 = {"in4.0", "in5.0", "in7.0", "in8.0", "mid0.0"} | {f"out{i}.0" for i in range(3, 9)}


def _modules():
    return (pack_submodule("fpe_attention.overview"), pack_submodule("fpe_attention.layers"),
            pack_submodule("nodes.overview"))


def _rows(model, preset, latent_hw=(64, 64), custom="", family="SD1.x"):
    overview, layers, _ = _modules()
    selection = layers.select_layers(preset, custom, layers.model_attn1_layers(model), family)
    return overview.layer_overview(model, *latent_hw, selection), selection


def _overview(model, layers="official", custom_layers="in4", width=512, height=512, **extra):
    return call_node("FPELayerOverview", model=model, width=width, height=height, layers=layers,
                     custom_layers=custom_layers, **extra)


def test_official_at_512_px_is_the_layer_walker_with_the_1024_token_rule(tiny_sd15):
    model = tiny_sd15[0]
    _, layers, _ = _modules()
    rows, selection = _rows(model, "official")
    walker = layers.model_attn1_layers(model)
    assert [(r.number, r.name, r.key, r.level, r.heads, r.channels) for r in rows] == [
        (a.number, a.name, a.key, a.level, a.heads, a.channels) for a in walker]
    assert [r.name for r in rows] == SD15_NAMES
    assert [r.selected for r in rows] == [selection.includes(a.key, a.tokens(64, 64)) for a in walker]
    # the tiny model has SD1.5's block structure: 4096 tokens at in1/in2/out9-11 fall out, 11 of 16 stay
    assert {r.name for r in rows if r.selected} == SD15_OFFICIAL_512
    assert {r.tokens for r in rows if not r.selected} == {4096}
    assert [r.grid for r in rows[:7]] == [(64, 64), (64, 64), (32, 32), (32, 32), (16, 16), (16, 16), (8, 8)]
    assert all(r.grid[0] * r.grid[1] == r.tokens for r in rows)
    assert all(r.has_cross and r.context_dim == 64 and r.heads == 8 for r in rows)  # tiny SD1.5: context 64


def test_all_custom_and_odd_sizes(tiny_sd15):
    model = tiny_sd15[0]
    assert all(r.selected for r in _rows(model, "all")[0])
    rows, _ = _rows(model, "custom", custom="in4, out3-5, #16")
    assert [r.name for r in rows if r.selected] == ["in4.0", "out3.0", "out4.0", "out5.0", "out11.0"]
    rows, _ = _rows(model, "official relative", latent_hw=(96, 96))  # 768 px: relative keeps the paper's 11
    assert {r.name for r in rows if r.selected} == SD15_OFFICIAL_512
    rows, _ = _rows(model, "official", latent_hw=(13, 7))  # ceil-halving, as the stride-2 convolutions do
    assert [r.grid for r in rows if r.level >= 2] == [(4, 2), (4, 2), (2, 1), (4, 2), (4, 2), (4, 2)]
    assert all(r.selected for r in rows)


def test_sdxl_blocks_of_several_transformer_layers(tiny_sdxl):
    model = tiny_sdxl[0]
    overview, layers, _ = _modules()
    rows, _ = _rows(model, "custom", latent_hw=(128, 128), custom="in7.1, out0", family="SDXL")
    walker = layers.model_attn1_layers(model)
    assert [r.key for r in rows] == [a.key for a in walker] and len(rows) == 22
    assert [r.name for r in rows if r.selected] == ["in7.1", "out0.0", "out0.1"]
    groups = overview.group_rows(rows)
    names = [overview.group_name(g) for g in groups]
    # a block splits where the selection does; alike neighbours stay one row
    assert names[:4] == ["in4.0-1", "in5.0-1", "in7.0", "in7.1"] and "out0.0-1" in names
    assert [r for g in groups for r in g] == rows
    assert overview.group_numbers(groups[0]) == "1-2"


def test_real_sdxl_layout_official_and_relative():
    overview, layers, _ = _modules()
    model = SimpleNamespace(model=SimpleNamespace(diffusion_model=tiny_models.meta_unet("SDXL")))  # no weights
    walker = layers.model_attn1_layers(model)
    assert len(walker) == 70
    official = layers.select_layers("official", "", walker, "SDXL")
    rows = overview.layer_overview(model, 128, 128, official)
    assert sum(r.selected for r in rows) == 60 and {r.grid for r in rows if not r.selected} == {(64, 64)}
    assert {r.context_dim for r in rows} == {2048} and {r.heads for r in rows} == {10, 20}
    assert [overview.group_name(g) for g in overview.group_rows(rows)] == [
        "in4.0-1", "in5.0-1", "in7.0-9", "in8.0-9", "mid0.0-9", "out0.0-9", "out1.0-9", "out2.0-9", "out3.0-1",
        "out4.0-1", "out5.0-1"]
    assert not any(r.selected for r in overview.layer_overview(model, 192, 192, official))  # 1536 px: none
    relative = layers.select_layers("official relative", "", walker, "SDXL")
    assert sum(r.selected for r in overview.layer_overview(model, 192, 192, relative)) == 60


def test_the_picture_highlights_the_edited_rows(tiny_sd15):
    model = tiny_sd15[0]
    picture, _, _ = _modules()  # the picture's layout lives beside the table it draws
    image, text = _overview(model)
    assert image.shape == (1, picture.HEADER_H + 16 * picture.ROW_H + 8, picture.WIDTH, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    pixels = (image[0] * 255).round().to(torch.int64)
    for i, name in enumerate(SD15_NAMES):
        y = picture.HEADER_H + i * picture.ROW_H + picture.ROW_H // 2
        bar = tuple(pixels[y, picture.BAR_X + 1].tolist())
        assert bar == (picture.SELECTED if name in SD15_OFFICIAL_512 else picture.UNSELECTED), name
        # the row's background too, outside the bar
        assert (tuple(pixels[y, picture.WIDTH - 4].tolist()) == picture.SELECTED_BACKGROUND) == (name in SD15_OFFICIAL_512)
    lines = text.splitlines()
    assert lines[0] == "SD1.x, 512x512 px (latent 64x64), layers 'official': selects 11 of 16 self-attention layers"
    assert len(lines) == 2 + 16
    assert lines[2].split()[:2] == ["1", "in1.0"] and "4096" in lines[2] and "EDITED" not in lines[2]
    assert "EDITED" in lines[5] and "in5.0" in lines[5] and "cross (ctx 64)" in lines[5]
    # 'all' lights every bar
    everything = (_overview(model, layers="all")[0][0] * 255).round().to(torch.int64)
    ys = [picture.HEADER_H + i * picture.ROW_H + picture.ROW_H // 2 for i in range(16)]
    assert all(tuple(everything[y, picture.BAR_X + 1].tolist()) == picture.SELECTED for y in ys)


def test_sdxl_picture_groups_blocks_and_the_node_shows_a_preview(tiny_sdxl):
    model = tiny_sdxl[0]
    overview, _, node = _modules()
    with torch.inference_mode():
        out = node.FPELayerOverview().overview(model, 1024, 1024, "custom", "in7.0-1,in8.0", None)
    image, text = out["result"]
    assert out["ui"]["images"] and out["ui"]["text"] == [text]
    assert "SDXL, 1024x1024 px" in text and "selects 3 of 22" in text and len(text.splitlines()) == 2 + 22
    # in4, in5, in7 (both), in8.0, in8.1, mid, out0-5: 12 picture rows for 22 layers
    assert image.shape[1] == overview.HEADER_H + 12 * overview.ROW_H + 8


def test_a_latent_overrides_width_and_height(tiny_sd15):
    model = tiny_sd15[0]
    with_latent = _overview(model, width=512, height=512, latent=latent(128, 96))
    plain = _overview(model, width=128, height=96)
    assert with_latent[1] == plain[1] and torch.equal(with_latent[0], plain[0])
    assert with_latent[1].splitlines()[0].startswith("SD1.x, 128x96 px (latent 16x12)")
    assert "selects 16 of 16" in with_latent[1]  # at most 16x12 tokens everywhere: official keeps all
    assert "selects 11 of 16" in _overview(model, width=512, height=512)[1]


def test_setting_mistakes_are_named(tiny_sd15, tiny_sdxl, fpe_error):
    model = tiny_sd15[0]
    with pytest.raises(fpe_error, match=r"custom_layers: layer item 'in99': in block numbers go up to 8 in this model"):
        _overview(model, layers="custom", custom_layers="in4,in99")
    with pytest.raises(fpe_error, match=r"layers: the 'paper 4-14' preset numbers SD1.5's"):
        _overview(tiny_sdxl[0], layers="paper 4-14")
    for shape in ((4, 8), (1, 4, 0, 8), (1, 4, 2, 8, 8)):  # not an image latent: 2-D, empty, a video's 5-D
        with pytest.raises(fpe_error, match=r"latent: expected an image LATENT \[batch, channels, height, width\]"):
            _overview(model, latent={"samples": torch.zeros(*shape)})
    foreign = SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2)))
    with pytest.raises(fpe_error, match=r"model: FPE edits the self-attention layers of UNet models"):
        _overview(foreign)


def test_the_node_is_registered_with_tooltips():
    from fpe_harness.host import pack_module

    pack = pack_module()
    cls = pack.NODE_CLASS_MAPPINGS["FPELayerOverview"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["FPELayerOverview"] == "FPE Layer Overview"
    assert cls.CATEGORY == "Free Prompt Editing/attention maps" and cls.DESCRIPTION
    declared = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in declared[section].items():
            assert len(spec[1].get("tooltip", "")) > 20, name
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == 2
    assert declared["required"]["layers"][1]["default"] == "official"
    assert declared["required"]["custom_layers"][1]["default"] == pack_submodule("fpe_attention.layers").OFFICIAL_CUSTOM
