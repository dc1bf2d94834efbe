"""Every size or count a node derives from its inputs is bounded, with an error naming the input (issue 23, item 12).

The bounds: a picture side at most ComfyUI's MAX_RESOLUTION (16384 px), one output batch at most 2**27
pixels, at most 64 heatmaps (words) and 32 components per token grid. Oversized inputs are stride-0
views (``expand``), so the tests allocate nothing: the bounds must hold before the node does.
"""

from __future__ import annotations

import pytest
import torch

from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC
from fpe_harness.records import H, W, recorded


def _flat(*shape):
    """An IMAGE of ``shape`` that takes no memory (one grey pixel, broadcast)."""
    return torch.full((1, 1, 1, 3), 0.5).expand(*shape)


def test_side_by_side_refuses_a_picture_wider_than_comfyui_makes(fpe_error):
    square = torch.rand(1, 64, 64, 3)
    # The case: a 1-px-high image beside a 64-px one, scaled to 64 px high (aspect kept): 512,064 px wide.
    with pytest.raises(fpe_error, match=r"image_b: side by side, 1 image\(s\) of 8001x1 px, 512064 px wide at "
                                        r"image_a's height of 64 px make a picture 512128x64 px .*at most 16384 px a "
                                        r"side.*similar shape"):
        call_node("FPESideBySide", image_a=square, image_b=_flat(1, 1, 8001, 3))
    with pytest.raises(fpe_error, match=r"image_a: side by side, 300 image\(s\) of 64x64 px make a picture "
                                        r"19264x64 px .*FPE Sweep Grid"):
        call_node("FPESideBySide", image_a=_flat(300, 64, 64, 3), image_b=square)
    with pytest.raises(fpe_error, match=r"image_a: .* make a picture 16392x16392 px"):
        call_node("FPESideBySide", image_a=_flat(1, 16392, 8196, 3), image_b=_flat(1, 16392, 8196, 3))
    # Within the bound an odd shape is still laid out, aspect kept: 2x100 px at 64 px high is 3200 px wide.
    thin = torch.rand(1, 2, 100, 3)
    both = call_node("FPESideBySide", image_a=square, image_b=thin)[0]
    assert both.shape == (1, 64, 64 + 3200, 3)
    assert torch.equal(both[0, :, :64], square[0])


def test_word_heatmap_bounds_words_and_pixels(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    rec, samples, _, _ = recorded(model, clip)

    def heatmap(words, image=None):
        return call_node("FPEWordHeatmap", fpe_record=rec, samples=samples, clip=clip, text=SRC, words=words,
                         layers="", alpha=0.6, image=image)

    with pytest.raises(fpe_error, match=r"words: 65 items \(at most 64 heatmaps in one node\): name fewer words"):
        heatmap(", ".join(["ducks"] * 65))
    # 64 heatmaps on a 2048x1536 picture (the record's 4:3) are 201 megapixels: refused before drawing.
    with pytest.raises(fpe_error, match=r"image: 64 pictures of 2048x1536 px are 201 megapixels \(at most 134 in "
                                        r"one output\): name fewer words, or connect a smaller image"):
        heatmap(", ".join(["ducks"] * 64), _flat(1, 1536, 2048, 3))
    with pytest.raises(fpe_error, match=r"image: the picture would be 21856x16392 px .*at most 16384 px a side"):
        heatmap("ducks", _flat(1, 16392, 21856, 3))
    heatmaps, _ = heatmap(", ".join(["ducks"] * 64))  # the bound itself is allowed
    assert heatmaps.shape == (64, H, W, 3)


def test_components_and_query_bound_counts_and_pixels(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    rec, samples, _, _ = recorded(model, clip)

    def components(count, image=None):
        return call_node("FPESelfAttnComponents", fpe_record=rec, samples=samples, layers="", components=count,
                         method="randomized", image=image)

    # A linked INT reaches the node without the widget's max: 5000 components would be 5000 pictures per grid.
    for count in (5000, 0, 2.5):
        with pytest.raises(fpe_error, match=r"components: .* set a whole number from 1 to 32|"
                                            r"components: expected a whole number"):
            components(count)
    # 32 per grid over the record's 4 grids (12x16, 6x8, 3x4 and 2x2 tokens): 32 + 32 + 12 + 4 = 80 pictures.
    with pytest.raises(fpe_error, match=r"image: 80 pictures of 2048x1536 px .*set fewer components"):
        components(32, _flat(1, 1536, 2048, 3))
    assert components(32)[0].shape == (80, H, W, 3)
    with pytest.raises(fpe_error, match=r"image: the picture would be 21856x16392 px"):
        call_node("FPEAttentionQuery", fpe_record=rec, samples=samples, x=0.5, y=0.5, radius=0.0, layers="",
                  alpha=0.6, image=_flat(1, 16392, 21856, 3))


def test_nan_pixels_are_named_not_drawn_black(tiny_sd15, fpe_error):
    """An fp16 VAE that overflows decodes NaN: the pictures would be black without a word."""
    model, clip, _ = tiny_sd15
    rec, samples, _, _ = recorded(model, clip)
    broken = torch.rand(1, 64, 64, 3)
    broken[0, 3, 5] = float("nan")
    with pytest.raises(fpe_error, match=r"^image_b: the image holds NaN or infinite pixels"):
        call_node("FPESideBySide", image_a=torch.rand(1, 64, 64, 3), image_b=broken)
    with pytest.raises(fpe_error, match=r"^image: the picture holds NaN or infinite pixels"):
        call_node("FPEWordHeatmap", fpe_record=rec, samples=samples, clip=clip, text=SRC, words="ducks", layers="",
                  alpha=0.6, image=torch.full((1, H, W, 3), float("inf")))
