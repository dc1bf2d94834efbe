"""Structure in self-attention maps (paper §3, Fig. 3): the top SVD components, and where a point attends.

The paper shows that the leading components of a self-attention map draw the object's outline, which is
why injecting self-attention keeps the layout. The convention is Prompt-to-Prompt's
``show_self_attention_comp`` (the code base the FPE authors' Fig. 3 comes from): centre each query row
over the keys, take the SVD, and read each right singular vector (one value per key token) as a picture
on the token grid.

The maps are N x N with N up to 4096 and more (64x64 latent tokens), so a full SVD (O(N³)) is too slow to
run per preview: ``randomized`` finds the top k with a seeded randomized range finder with power
iterations (Halko, Martinsson & Tropp 2011), O(N² (k + oversample)). ``full`` is the exact reference.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from .errors import FPEError
from .heatmaps import normalise
from .validate import check_number

METHODS = ("randomized", "full")
MAX_COMPONENTS = 32  # per token grid: the paper shows 6; each is one picture at image size


@dataclass(frozen=True)
class Components:
    """The top k right singular vectors of a row-centred attention map."""

    vectors: torch.Tensor  # [k, N], orthonormal rows, one value per key token; sign fixed (``_fix_signs``)
    values: torch.Tensor  # [k] singular values, descending
    explained: torch.Tensor  # [k] each component's share of the centred map's squared Frobenius norm


@dataclass(frozen=True)
class Query:
    """Where a query point (or a disc of query tokens) attends."""

    map: torch.Tensor  # [h, w], the mean of the selected query rows on the token grid
    tokens: torch.Tensor  # [M] long, the selected query tokens (row-major indices into the h x w grid)


def top_components(attention: torch.Tensor, k: int, method: str = "randomized", *, oversample: int = 10,
                   iterations: int = 4, seed: int = 0) -> Components:
    """The top ``k`` components of a self-attention map [N, N] (rows are queries), by ``method``."""
    n = _square(attention)
    k = check_count("k", k, 1, n)
    if method not in METHODS:
        raise FPEError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    oversample = check_count("oversample", oversample, 0)
    iterations = check_count("iterations", iterations, 0)
    dtype = torch.float64 if attention.dtype == torch.float64 else torch.float32
    centred = attention.to(dtype)
    centred = centred - centred.mean(dim=1, keepdim=True)
    if method == "full":
        _, values, vh = torch.linalg.svd(centred, full_matrices=False)
        values, vectors = values[:k], vh[:k]
    else:
        values, vectors = _randomized(centred, k, min(k + oversample, n), iterations, seed)
    total = torch.linalg.vector_norm(centred).square()  # no N x N temporary
    explained = values.square() / total if total > 0 else torch.zeros_like(values)
    return Components(_fix_signs(vectors).contiguous(), values.contiguous(), explained)


def _randomized(centred: torch.Tensor, k: int, width: int, iterations: int, seed: int):
    # The sketch is drawn on the CPU from its own generator and then moved: the same seed gives the same
    # pictures on every device, and no global RNG (the sampler's) is read or advanced.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sketch = torch.randn(centred.shape[1], width, generator=generator, dtype=centred.dtype)
    q = torch.linalg.qr(centred @ sketch.to(centred.device)).Q
    # Power iterations sharpen the decay of the spectrum the sketch sees; the QR after each product keeps
    # the small directions from drowning in rounding (Halko et al., Algorithm 4.4).
    for _ in range(iterations):
        q = torch.linalg.qr(centred.T @ q).Q
        q = torch.linalg.qr(centred @ q).Q
    _, values, vh = torch.linalg.svd(q.T @ centred, full_matrices=False)
    return values[:k], vh[:k]


def _fix_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Each vector with the sign that makes its heavier tail positive, so pictures do not flip between runs.

    The sign of sum(v³) is continuous in v, so two methods that agree closely on v agree on its sign (a
    "largest entry positive" rule can flip on a near-tie between two opposite entries). A vector symmetric
    under negation (sum(v³) ≈ 0) falls back to its entry of largest magnitude being positive.
    """
    cubes = vectors.pow(3).sum(dim=1)
    scale = vectors.abs().amax(dim=1).pow(3)
    largest = vectors.gather(1, vectors.abs().argmax(dim=1, keepdim=True))[:, 0]
    tied = cubes.abs() <= 1e-6 * scale
    sign = torch.where(tied, torch.sign(largest), torch.sign(cubes))
    return vectors * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]


def component_grid(components: Components, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The components as pictures on the token grid: [k, h, w], each min-max normalised to 0..1.

    A component of singular value ~0 (a uniform map has only those) is an arbitrary direction of the null
    space, not structure: it is drawn blank.
    """
    vectors, values = components.vectors, components.values
    h, w = _grid(grid_hw, vectors.shape[1], "components")
    pictures = normalise(vectors.reshape(-1, h, w))
    null = values <= torch.finfo(values.dtype).eps * vectors.shape[1] * values.max()
    return torch.where(null.to(pictures.device)[:, None, None], torch.zeros_like(pictures), pictures)


def query_tokens(grid_hw: tuple[int, int], x: float, y: float, radius: float = 0.0) -> torch.Tensor:
    """The query tokens at (x, y) (fractions of the width and height, (0, 0) top left): [M] long, row-major.

    ``radius`` 0 selects the token under the point; otherwise every token whose centre lies within
    ``radius`` (a fraction of the image's shorter side) of the point, and always the token under it, so a
    disc smaller than a token still selects one. Tokens are square in the image, so distances are measured
    in token widths.
    """
    h, w = _grid(grid_hw, None, "grid_hw")
    x = check_number("x", x, 0.0, 1.0)
    y = check_number("y", y, 0.0, 1.0)
    radius = check_number("radius", radius, 0.0)
    row, col = min(int(y * h), h - 1), min(int(x * w), w - 1)
    nearest = torch.tensor([row * w + col])
    if radius == 0:
        return nearest
    rows = (torch.arange(h, dtype=torch.float64) + 0.5 - y * h)[:, None]
    cols = (torch.arange(w, dtype=torch.float64) + 0.5 - x * w)[None, :]
    inside = (rows.square() + cols.square() <= (radius * min(h, w)) ** 2).flatten()
    inside[nearest] = True
    return inside.nonzero()[:, 0]


def query_attention(attention: torch.Tensor, grid_hw: tuple[int, int], x: float, y: float,
                    radius: float = 0.0) -> Query:
    """Where the query point (x, y), or the disc of ``radius`` around it, attends (see ``query_tokens``)."""
    n = _square(attention)
    h, w = _grid(grid_hw, n, "attention")
    tokens = query_tokens((h, w), x, y, radius)
    dtype = torch.float64 if attention.dtype == torch.float64 else torch.float32
    rows = attention[tokens.to(attention.device)].to(dtype)
    return Query(rows.mean(dim=0).reshape(h, w), tokens)


def _square(attention) -> int:
    if not isinstance(attention, torch.Tensor) or attention.ndim != 2 or attention.shape[0] != attention.shape[1]:
        shape = list(attention.shape) if isinstance(attention, torch.Tensor) else type(attention).__name__
        raise FPEError(f"attention: expected a square self-attention map [N, N] (queries x keys), got {shape}")
    if attention.shape[0] == 0:
        raise FPEError("attention: the map is empty (0 tokens)")
    if not attention.is_floating_point() or not bool(torch.isfinite(attention).all()):
        raise FPEError("attention: the map must hold finite floating-point values")
    return attention.shape[0]


def check_count(name: str, value, low: int, high: int | None = None) -> int:
    try:
        whole = None if isinstance(value, bool) else operator.index(value)  # ints and numpy ints, not floats
    except TypeError:
        whole = None
    if whole is None:
        raise FPEError(f"{name}: expected a whole number, got {value!r}")
    value = whole
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise FPEError(f"{name}: {value} is out of range: set a whole number {span}")
    return value


def _grid(grid_hw, tokens: int | None, what: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in grid_hw)
        valid = h > 0 and w > 0 and (h, w) == tuple(grid_hw)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise FPEError(f"grid_hw: expected (height, width) in tokens, two positive whole numbers; got {grid_hw!r}")
    if tokens is not None and h * w != tokens:
        raise FPEError(f"grid_hw: a {h}x{w} token grid has {h * w} tokens, but {what} has {tokens}")
    return h, w

