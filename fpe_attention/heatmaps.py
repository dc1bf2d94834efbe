"""Attention maps as pictures (paper Fig. 3): upsampled to the image, coloured, laid over it, in plain torch.

Everything is ComfyUI's IMAGE layout (channels last, float32 in 0..1) and works on any device, so the
previews need neither matplotlib nor a trip through PIL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import FPEError
from .validate import check_number

# An approximation of matplotlib's 'inferno' (black, purple, red, orange, pale yellow) by 11 anchors at
# 0, 0.1, ..., 1, linearly interpolated in sRGB. The anchors are close to, not exactly, inferno's
# samples; their lightness rises monotonically, so brighter always means more attention, also in grey.
_INFERNO = (
    "000004", "160b39", "420a68", "6a176e", "932667", "bc3754", "dd513a", "f37819", "fca50a", "f6d746", "fcffa4",
)
ANCHORS = torch.tensor([[int(c[i:i + 2], 16) / 255.0 for i in (0, 2, 4)] for c in _INFERNO])

MARK_COLOUR = (0.0, 1.0, 1.0)  # cyan: a hue inferno never uses, with a black edge for light images

# Bounds on the pictures the nodes make from their inputs (item 12): a picture side at most ComfyUI's
# MAX_RESOLUTION (nodes.py, the same on every host since 2023: the largest image its own nodes make or
# load), and one output batch at most 2**27 pixels (1.5 GiB as a float32 RGB IMAGE, before its
# previews): SDXL's 3 token grids x 32 components at 1024 px, or 64 words at 1024 px, fit.
MAX_SIDE = 16384
MAX_PIXELS = 2 ** 27


def check_picture(name: str, count: int, height: int, width: int, fix: str) -> None:
    """An FPEError naming ``name`` (and ``fix``) when ``count`` pictures of height x width px exceed the bounds."""
    if max(height, width) > MAX_SIDE:
        raise FPEError(f"{name}: the picture would be {width}x{height} px (width x height; at most {MAX_SIDE} px a "
                       f"side, ComfyUI's largest image): {fix}")
    if count * height * width > MAX_PIXELS:
        raise FPEError(f"{name}: {count} pictures of {width}x{height} px are {count * height * width / 1e6:.0f} "
                       f"megapixels (at most {MAX_PIXELS / 1e6:.0f} in one output): {fix}")


def to_image_size(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Token-grid maps [B, h, w] or [h, w] at image size: [B, height, width], bilinear.

    Bilinear with align_corners=False (as DAAM upsamples its heatmaps) averages neighbouring tokens, so
    the result stays within each map's range, where bicubic would overshoot at sharp edges; each map is
    clamped to its own range anyway, against rounding.
    """
    maps = _batch(maps, "maps")
    height, width = _size("height", height), _size("width", width)
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    out = F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return torch.minimum(torch.maximum(out, low), high)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map [B, H, W] (or [H, W]) stretched to 0..1 by its own min and max; a constant map gives zeros.

    A map whose spread is within rounding of its values counts as constant, so a flat map does not turn
    its rounding noise into full-contrast speckle.
    """
    maps = _batch(maps, "maps")
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    spread = high - low
    flat = spread <= torch.finfo(maps.dtype).eps * torch.maximum(low.abs(), high.abs())
    out = (maps - low) / torch.where(flat, torch.ones_like(spread), spread)
    return torch.where(flat, torch.zeros_like(out), out).clamp(0, 1)


def colormap(values: torch.Tensor) -> torch.Tensor:
    """Values in 0..1 (any shape) as inferno colours: [..., 3] (outside 0..1 clamped, NaN as 0)."""
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    anchors = ANCHORS.to(device=values.device, dtype=dtype)
    steps = len(anchors) - 1
    place = torch.nan_to_num(values.to(dtype), nan=0.0).clamp(0, 1) * steps
    index = place.floor().long().clamp(max=steps - 1)
    frac = (place - index)[..., None]
    # Written as a*(1-f) + b*f so that 0 and 1 land exactly on the end anchors.
    return anchors[index] * (1 - frac) + anchors[index + 1] * frac


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """colormap(heat) laid over the image with opacity ``alpha``: [B, H, W, 3] in 0..1.

    ``image`` is [H, W, 3] or [B, H, W, 3], ``heat`` [H, W] or [B, H, W] in 0..1 at the image's size
    (``to_image_size``, ``normalise``); a batch of one on either side is shared by the other's batch.
    """
    alpha = check_number("alpha", alpha, 0.0, 1.0)
    image = _images(image)
    heat = _batch(heat, "heat")
    if heat.shape[1:] != image.shape[1:3]:
        raise FPEError(f"heat: the maps are {heat.shape[1]}x{heat.shape[2]} but the image is "
                       f"{image.shape[1]}x{image.shape[2]} (height x width): upsample them with to_image_size")
    if heat.shape[0] != image.shape[0] and 1 not in (heat.shape[0], image.shape[0]):
        raise FPEError(f"heat: {heat.shape[0]} maps do not pair with {image.shape[0]} images: give one image, one "
                       f"map, or as many of each")
    colours = colormap(heat.to(image.device)).to(image.dtype)
    return (image * (1 - alpha) + colours * alpha).clamp(0, 1)


def mark_point(image: torch.Tensor, x: float, y: float, radius_px: float = 6.0, *, region: float = 0.0,
               thickness_px: float = 2.0, colour: tuple[float, float, float] = MARK_COLOUR) -> torch.Tensor:
    """The image [H, W, 3] (or [B, H, W, 3]) with a ring at the query point (x, y), fractions of the width
    and height, and, when ``region`` > 0, the outline of the query disc (radius as a fraction of the
    shorter side, as ``structure.query_tokens`` reads it). A new tensor; the input is left as it is.

    Each ring is drawn in ``colour`` over a slightly wider black one, so it shows on dark and light
    pictures alike, with one pixel of anti-aliasing.
    """
    x = check_number("x", x, 0.0, 1.0)
    y = check_number("y", y, 0.0, 1.0)
    radius_px = check_number("radius_px", radius_px, 0.0)
    region = check_number("region", region, 0.0)
    thickness_px = check_number("thickness_px", thickness_px, 0.0)
    single = image.ndim == 3
    out = _images(image).clone()
    height, width = out.shape[1:3]
    rows = torch.arange(height, device=out.device, dtype=torch.float32)[:, None] + 0.5 - y * height
    cols = torch.arange(width, device=out.device, dtype=torch.float32)[None, :] + 0.5 - x * width
    distance = (rows.square() + cols.square()).sqrt()
    rings = [radius_px] + ([region * min(height, width)] if region > 0 else [])
    ink = torch.tensor(colour, device=out.device, dtype=out.dtype)
    for paint, width_px in ((torch.zeros_like(ink), thickness_px + 2.0), (ink, thickness_px)):
        for radius in rings:
            cover = (width_px / 2 + 0.5 - (distance - radius).abs()).clamp(0, 1).to(out.dtype)[..., None]
            out = out * (1 - cover) + paint * cover
    return out[0] if single else out


def _batch(maps, name: str) -> torch.Tensor:
    """[B, H, W] floating point, from [H, W] or [B, H, W]."""
    if not isinstance(maps, torch.Tensor) or maps.ndim not in (2, 3) or 0 in maps.shape:
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise FPEError(f"{name}: expected maps [B, H, W] or one map [H, W], got {shape}")
    maps = maps if maps.ndim == 3 else maps[None]
    return maps if maps.dtype in (torch.float32, torch.float64) else maps.float()


def _images(image) -> torch.Tensor:
    """[B, H, W, 3] float, from an IMAGE [B, H, W, 3] or one picture [H, W, 3]."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or image.shape[-1] != 3 or 0 in image.shape:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise FPEError(f"image: expected an RGB image [H, W, 3] or a batch [B, H, W, 3], got {shape}")
    image = image if image.ndim == 4 else image[None]
    return image if image.dtype in (torch.float32, torch.float64) else image.float()


def _size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FPEError(f"{name}: expected a positive whole number of pixels, got {value!r}")
    return value
