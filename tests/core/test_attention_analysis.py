"""Attention analysis math (paper §3, Fig. 3): SVD components of self-attention, query maps, heatmap rendering.

Pure torch on small synthetic maps. The expectations are built here independently: the full SVD of the
row-centred map (Prompt-to-Prompt's convention), explicit rows of the map, and token selection measured
in pixels rather than in the token units the pack uses.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from fpe_harness.host import pack_submodule


@pytest.fixture(scope="module")
def structure(comfy_host):
    return pack_submodule("fpe_attention.structure")


@pytest.fixture(scope="module")
def heatmaps(comfy_host):
    return pack_submodule("fpe_attention.heatmaps")


def realistic_map(h: int, w: int, *, d: int = 64, seed: int = 0) -> torch.Tensor:
    """softmax(QKᵀ/√d) with Q, K from a few smooth regions and waves on the grid (low rank) plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    pos = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    centres = torch.rand(5, 2, generator=g)
    bumps = torch.exp(-((pos[:, None] - centres[None]) ** 2).sum(-1) / (2 * 0.12 ** 2))
    waves = torch.cat([torch.sin(math.pi * f * pos) for f in (1, 2, 3)], dim=1)
    features = torch.cat([bumps, waves], dim=1)
    project = torch.randn(features.shape[1], d, generator=g) * 2.5
    q = features @ project + 0.3 * torch.randn(h * w, d, generator=g)
    k = features @ project + 0.3 * torch.randn(h * w, d, generator=g)
    return torch.softmax(q @ k.T / math.sqrt(d), dim=1)


def disc_mask(h: int, w: int, cx: float, cy: float, r: float) -> torch.Tensor:
    """Tokens whose centre lies in the disc (centre and radius in token units), flattened row-major."""
    rows = torch.arange(h)[:, None] + 0.5 - cy
    cols = torch.arange(w)[None, :] + 0.5 - cx
    return (rows ** 2 + cols ** 2 <= r ** 2).flatten()


def centred_svd(attention: torch.Tensor):
    centred = attention.double() - attention.double().mean(dim=1, keepdim=True)
    _, values, vh = torch.linalg.svd(centred)
    return values, vh, centred.square().sum()


# --- components -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["randomized", "full"])
def test_components_are_orthonormal_and_descending(structure, method):
    attention = realistic_map(16, 16)
    comps = structure.top_components(attention, 6, method)
    assert comps.vectors.shape == (6, 256) and comps.values.shape == (6,) and comps.explained.shape == (6,)
    assert comps.vectors.dtype == torch.float32
    gram = comps.vectors @ comps.vectors.T
    assert torch.allclose(gram, torch.eye(6), atol=1e-4)
    assert bool((comps.values[:-1] >= comps.values[1:]).all()) and bool((comps.values > 0).all())
    # Each component's share of the centred map's energy, against a float64 reference.
    values, _, total = centred_svd(attention)
    assert torch.allclose(comps.explained.double(), values[:6] ** 2 / total, rtol=1e-3)
    assert 0 < float(comps.explained.sum()) <= 1
    # The centring puts every component orthogonal to the all-ones vector (each row of the map sums to 1).
    assert float(comps.vectors.sum(dim=1).abs().max()) < 1e-4


def test_randomized_matches_full(structure):
    attention = realistic_map(16, 16)
    full = structure.top_components(attention, 6, "full")
    fast = structure.top_components(attention, 6, "randomized")
    values, _, _ = centred_svd(attention)
    # Directions are only defined where the singular value is separated from its neighbours: require a clear
    # gap (> 2%) on each side for every compared component, so the comparison below cannot pass vacuously.
    gaps = torch.minimum(values[:6] - values[1:7], torch.cat([values[:1], values[:5] - values[1:6]]))
    assert bool((gaps / values[:6] > 0.02).all()), f"the test map lost its spectral gaps: {gaps / values[:6]}"
    error = ((fast.values - full.values).abs() / full.values).max()
    assert float(error) < 1e-3
    # The sign rule is the same for both: the vectors agree with their signs, not only up to sign.
    cosines = (fast.vectors * full.vectors).sum(dim=1)
    assert bool((cosines > 0.999).all()), cosines
    print(f"\nN=256 k=6: max relative singular value error {float(error):.2e}, min cos {float(cosines.min()):.6f}")


def test_randomized_is_seeded_and_keeps_float64(structure):
    attention = realistic_map(16, 16)
    before = torch.random.get_rng_state()
    a = structure.top_components(attention, 4, seed=3)
    b = structure.top_components(attention, 4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is neither read nor advanced
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.values, b.values)
    wide = structure.top_components(attention.double(), 4)
    assert wide.vectors.dtype == wide.values.dtype == torch.float64
    values, _, _ = centred_svd(attention)
    assert torch.allclose(wide.values, values[:4], rtol=1e-4)
    # k = N: the sketch spans everything; still orthonormal, the last value ~0 (the centring's null space).
    small = realistic_map(4, 4)
    every = structure.top_components(small, 16)
    assert torch.allclose(every.vectors @ every.vectors.T, torch.eye(16), atol=1e-4)
    assert float(every.values[-1]) < 1e-5


def test_first_component_outlines_a_planted_object(structure):
    h = w = 24
    inside = disc_mask(h, w, cx=10.0, cy=13.0, r=6.0)
    g = torch.Generator().manual_seed(1)
    logits = 0.5 * torch.randn(h * w, h * w, generator=g)
    logits[inside[:, None] & inside[None, :]] += 3.0  # the object's tokens attend to each other; the rest spreads
    attention = torch.softmax(logits, dim=1)
    first = structure.top_components(attention, 6).vectors[0]
    # AUROC of the component's values as an inside/outside classifier, sign included (the object comes out
    # bright: it is the minority region, the heavier tail).
    ins, outs = first[inside], first[~inside]
    auroc = float((ins[:, None] > outs[None, :]).double().mean())
    assert auroc > 0.99, auroc
    picture = structure.component_grid(structure.top_components(attention, 6), (h, w))
    assert picture.shape == (6, h, w)
    assert float(picture.min()) == 0.0 and float(picture.max()) == 1.0
    threshold = 0.5 * (picture[0].flatten()[inside].median() + picture[0].flatten()[~inside].median())
    separated = ((picture[0].flatten() > threshold) == inside).double().mean()
    assert float(separated) > 0.95


def test_component_validation(structure):
    attention = realistic_map(4, 4)
    for k in (0, 17, 2.0, True):
        with pytest.raises(ValueError, match="^k:"):
            structure.top_components(attention, k)
    for bad in (torch.zeros(4, 5), torch.zeros(16), torch.zeros(0, 0)):
        with pytest.raises(ValueError, match="^attention:"):
            structure.top_components(bad, 1)
    with pytest.raises(ValueError, match="^attention:"):
        structure.top_components(torch.full((4, 4), float("nan")), 1)
    with pytest.raises(ValueError, match="^method:"):
        structure.top_components(attention, 2, "lanczos")
    with pytest.raises(ValueError, match="^grid_hw:"):
        structure.component_grid(structure.top_components(attention, 2), (3, 5))


def test_component_grid_of_a_constant_vector_or_a_uniform_map_is_zeros(structure):
    comps = structure.Components(torch.full((1, 6), 6 ** -0.5), torch.ones(1), torch.ones(1))
    picture = structure.component_grid(comps, (2, 3))
    assert torch.equal(picture, torch.zeros(1, 2, 3))
    # A uniform map has no structure: its (arbitrary) null-space components are drawn blank, not as speckle.
    uniform = structure.top_components(torch.full((6, 6), 1 / 6), 2)
    assert torch.equal(structure.component_grid(uniform, (2, 3)), torch.zeros(2, 2, 3))


def test_timing(structure):
    # Printed, not asserted: N=4096 is a 64x64 latent's finest attention level.
    for side in (32, 64):
        attention = torch.softmax(torch.randn(side * side, side * side, generator=torch.Generator().manual_seed(0)),
                                  dim=1)
        start = time.perf_counter()
        comps = structure.top_components(attention, 6)
        print(f"\nrandomized k=6 at N={side * side}: {time.perf_counter() - start:.3f} s "
              f"({torch.get_num_threads()} thread(s))")
        assert torch.allclose(comps.vectors @ comps.vectors.T, torch.eye(6), atol=1e-4)


# --- query points -----------------------------------------------------------------------------------------

def expected_tokens(h, w, x, y, radius, px=8):
    """The selection measured in pixels of an image px times the grid, with explicit loops."""
    width, height = w * px, h * px
    qx, qy, reach = x * width, y * height, radius * min(width, height)
    chosen = {min(int(qy) // px, h - 1) * w + min(int(qx) // px, w - 1)}
    for r in range(h):
        for c in range(w):
            if ((c + 0.5) * px - qx) ** 2 + ((r + 0.5) * px - qy) ** 2 <= reach ** 2:
                chosen.add(r * w + c)
    return sorted(chosen)


def test_query_attention_reads_rows(structure):
    h, w = 12, 16  # not square: a swapped height and width shows
    attention = realistic_map(h, w)
    single = structure.query_attention(attention, (h, w), 0.37, 0.61)
    token = int(0.61 * h) * w + int(0.37 * w)
    assert single.tokens.tolist() == [token] == expected_tokens(h, w, 0.37, 0.61, 0.0)
    assert torch.equal(single.map, attention[token].reshape(h, w))
    corner = structure.query_attention(attention, (h, w), 1.0, 1.0)
    assert corner.tokens.tolist() == [h * w - 1]

    region = structure.query_attention(attention, (h, w), 0.37, 0.61, radius=0.15)
    tokens = expected_tokens(h, w, 0.37, 0.61, 0.15)
    assert region.tokens.tolist() == tokens and len(tokens) > 5
    assert torch.allclose(region.map, attention[tokens].mean(dim=0).reshape(h, w), atol=1e-7)
    assert abs(float(region.map.sum()) - 1) < 1e-5  # a mean of rows of a row-stochastic map
    # A disc narrower than a token still selects the token under the point.
    assert structure.query_attention(attention, (h, w), 0.37, 0.61, radius=1e-3).tokens.tolist() == [token]


def test_query_validation(structure):
    attention = realistic_map(4, 4)
    for name, args in (("x", (-0.1, 0.5, 0.0)), ("x", (float("nan"), 0.5, 0.0)), ("y", (0.5, 1.5, 0.0)),
                       ("y", (0.5, float("inf"), 0.0)), ("radius", (0.5, 0.5, -0.1)),
                       ("radius", (0.5, 0.5, float("nan")))):
        with pytest.raises(ValueError, match=f"^{name}:"):
            structure.query_attention(attention, (4, 4), *args)
    with pytest.raises(ValueError, match="^grid_hw:"):
        structure.query_attention(attention, (2, 4), 0.5, 0.5)


# --- rendering --------------------------------------------------------------------------------------------

def test_colormap_endpoints_and_lightness(heatmaps):
    values = torch.linspace(0, 1, 1001)
    colours = heatmaps.colormap(values)
    assert colours.shape == (1001, 3) and float(colours.min()) >= 0 and float(colours.max()) <= 1
    assert float(colours[0].max()) < 0.05  # near black
    assert float(colours[-1].min()) > 0.6 and float(colours[-1, 0]) > 0.95  # pale yellow
    assert torch.equal(colours[0], heatmaps.ANCHORS[0]) and torch.equal(colours[-1], heatmaps.ANCHORS[-1])
    luma = colours @ torch.tensor([0.2126, 0.7152, 0.0722])
    assert bool((luma[1:] - luma[:-1] >= -1e-6).all()) and float(luma[-1] - luma[0]) > 0.9
    assert heatmaps.colormap(torch.zeros(2, 5, 7)).shape == (2, 5, 7, 3)
    assert torch.equal(heatmaps.colormap(torch.tensor([-1.0, 2.0, float("nan")])),
                       heatmaps.colormap(torch.tensor([0.0, 1.0, 0.0])))


def test_overlay(heatmaps):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(20, 30, 3, generator=g)
    heat = torch.rand(2, 20, 30, generator=g)
    out = heatmaps.overlay(image, heat)
    assert out.shape == (2, 20, 30, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(heatmaps.overlay(image, heat, alpha=0.0), image.expand(2, -1, -1, -1))
    assert torch.equal(heatmaps.overlay(image, heat, alpha=1.0), heatmaps.colormap(heat))
    assert heatmaps.overlay(image[None].expand(2, -1, -1, -1), heat[0]).shape == (2, 20, 30, 3)
    with pytest.raises(ValueError, match="^heat:"):
        heatmaps.overlay(image, torch.rand(2, 10, 30))
    with pytest.raises(ValueError, match="^heat:"):
        heatmaps.overlay(image[None].expand(3, -1, -1, -1), heat)
    with pytest.raises(ValueError, match="^image:"):
        heatmaps.overlay(torch.rand(20, 30, 4), heat)
    with pytest.raises(ValueError, match="^alpha:"):
        heatmaps.overlay(image, heat, alpha=1.5)


def test_to_image_size_and_normalise(heatmaps):
    constant = torch.full((3, 4), 0.3)
    up = heatmaps.to_image_size(constant, 24, 32)
    assert up.shape == (1, 24, 32) and bool((up == 0.3).all())
    maps = torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(0))
    up = heatmaps.to_image_size(maps, 37, 41)
    assert up.shape == (2, 37, 41)
    for before, after in zip(maps, up, strict=True):
        assert float(after.min()) >= float(before.min()) and float(after.max()) <= float(before.max())
    stretched = heatmaps.normalise(up)
    assert torch.allclose(stretched.amin(dim=(1, 2)), torch.zeros(2)) and torch.allclose(
        stretched.amax(dim=(1, 2)), torch.ones(2))
    assert torch.equal(heatmaps.normalise(constant), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="^height:"):
        heatmaps.to_image_size(maps, 0, 4)


def test_mark_point(heatmaps):
    image = torch.full((64, 80, 3), 0.5)
    marked = heatmaps.mark_point(image, 0.5, 0.25, radius_px=6.0, region=0.25)
    assert marked.shape == image.shape and torch.equal(image, torch.full((64, 80, 3), 0.5))  # input untouched
    cx, cy = 40, 16  # pixel (row 16, column 40) has its centre 0.5 px from the point
    assert torch.allclose(marked[cy, cx + 6], torch.tensor(heatmaps.MARK_COLOUR), atol=0.3)  # on the ring
    assert torch.equal(marked[cy, cx], image[cy, cx])  # the point itself stays visible
    assert torch.allclose(marked[cy + 16, cx], torch.tensor(heatmaps.MARK_COLOUR), atol=0.3)  # region outline
    assert torch.equal(marked[60, 5], image[60, 5])  # far away: untouched
