"""MMDiT block choice, host-free: presets and the block-list syntax against Flux / SD3 / SD3.5-M tables."""

from __future__ import annotations

import pytest

from fpe_harness.host import pack_submodule


def blocks():
    return pack_submodule("fpe_attention.dit_blocks")


def test_the_block_list_syntax():
    b = blocks()
    flux = b.flux_blocks()
    assert b.parse_dit_blocks("double3", flux) == {("double", 3)}
    assert b.parse_dit_blocks("single10-20, double0", flux) == {("single", i) for i in range(10, 21)} | {("double", 0)}
    assert len(b.parse_dit_blocks("single", flux)) == 38 and len(b.parse_dit_blocks("double single", flux)) == 57
    sd35m = b.sd3_blocks(24, tuple(range(13)))
    assert b.parse_dit_blocks("joint5; self0-12", sd35m) == {("joint", 5)} | {("self", i) for i in range(13)}
    assert flux.describe() == "double0-18, single0-37" and sd35m.describe() == "joint0-23, self0-12"


def test_presets():
    b = blocks()
    flux, sd3, sd35m = b.flux_blocks(), b.sd3_blocks(24), b.sd3_blocks(24, tuple(range(13)))
    assert len(b.preset_blocks("all", flux)) == 57 and len(b.preset_blocks("double-stream only", flux)) == 19
    assert b.preset_blocks("single-stream only", flux) == {("single", i) for i in range(38)}
    assert b.preset_blocks("late single-stream", flux) == {("single", i) for i in range(20, 38)}  # RF-Solver's
    assert b.preset_blocks("all", sd35m) == {("joint", i) for i in range(24)}  # joint attention only
    assert b.preset_blocks("image self-attention", sd35m) == {("self", i) for i in range(13)}
    assert b.preset_blocks("custom", sd3, "joint0-3") == {("joint", i) for i in range(4)}
    assert b.DEFAULT_WINDOW == (0.0, 0.2)


@pytest.mark.parametrize("text, message", [
    ("", r"the block list is empty: name blocks such as double0-18, single0-37"),
    ("double19", r"block item 'double19': this model's double blocks are 0-18"),
    ("single20-10", r"range 20-10 runs backwards"),
    ("joint5", r"this Flux model has no 'joint' blocks \(its blocks: double0-18, single0-37\)"),
    ("double-3", r"cannot read block item 'double-3'"),
    ("x" * 1001, r"the block list is 1001 characters long"),
])
def test_mistakes_name_the_model_s_blocks(text, message):
    b = blocks()
    with pytest.raises(ValueError, match=message):
        b.parse_dit_blocks(text, b.flux_blocks())


def test_a_preset_the_model_lacks_is_named():
    b = blocks()
    with pytest.raises(ValueError, match=r"preset 'single-stream only' selects no block of this SD3 model"):
        b.preset_blocks("single-stream only", b.sd3_blocks(24))
    with pytest.raises(ValueError, match=r"unknown block preset 'most'"):
        b.preset_blocks("most", b.sd3_blocks(24))
