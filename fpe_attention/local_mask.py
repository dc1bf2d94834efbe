"""The masks of local edits, in plain torch: a user's MASK at latent size, and LocalBlend's word masks.

A local edit limits FPE to a region: outside the mask the target follows the source branch at the
same step, inside it is the FPE edit (``local_edit`` applies the blend). This module only makes the
masks, as float tensors [images, 1, H, W] at the latent's size:

* a user's MASK (any resolution, soft values allowed) is area-resampled to the latent, grown
  (max-pool; negative shrinks) and feathered (a Gaussian of ``feather`` latent pixels);
* Differential-Diffusion-style thresholds turn a soft mask into a growing binary one: at a step
  whose timestep is the fraction t of the way from the schedule's last to its first, the pixels with
  value >= t (and > 0) are edited (pixels of value 0.3 join the edit for the last 30 % of the denoising);
* LocalBlend (Prompt-to-Prompt): the words' cross-attention, summed over the steps so far at one
  attention level (``word_mask_layers``), summed over the words' tokens, 3x3 max-pooled, resized to
  the latent (nearest), divided by its maximum and thresholded; the source words' and the target
  words' masks are joined (union).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import FPEError

# LocalBlend's maps are 16x16 tokens (SD1.x at 512 px: in7, in8, out3-5): the level picked on every model
# is the one whose token grid is closest to that (SDXL at 1024 px: in7, in8, out0-2 at 32x32).
WORD_GRID = 16


def word_mask_layers(layers, latent_h: int, latent_w: int) -> frozenset:
    """The attention layers LocalBlend reads: outside the middle block, at the level whose token grid is
    nearest 16x16 tokens (log scale; a tie takes the coarser)."""
    candidates = [layer for layer in layers if layer.key[0] != "middle"] or list(layers)
    if not candidates:
        return frozenset()

    def distance(level: int) -> tuple[float, int]:
        h, w = latent_h, latent_w
        for _ in range(level):
            h, w = (h + 1) // 2, (w + 1) // 2
        return abs(math.log(math.sqrt(h * w) / WORD_GRID)), -level

    best = min({layer.level for layer in candidates}, key=distance)
    return frozenset(layer.key for layer in candidates if layer.level == best)


def as_mask_batch(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A ComfyUI MASK ([H, W] or [B, H, W], or [B, 1, H, W]) as float32 [B, H, W] on the CPU, checked."""
    if not torch.is_tensor(mask):
        raise FPEError(f"{name}: connect a MASK (e.g. Load Image's MASK, or a mask editor's output)")
    t = mask.detach().float().cpu()
    if t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] == 0 or t.shape[1] == 0 or t.shape[2] == 0:
        raise FPEError(f"{name}: expected a MASK of shape [batch, height, width], got {list(mask.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise FPEError(f"{name}: the mask holds NaN or infinite values: rebuild it (e.g. paint it again)")
    return t.clamp(0.0, 1.0)


def latent_mask(mask: torch.Tensor, latent_shape, *, grow: int = 0, feather: int = 0,
                name: str = "mask") -> torch.Tensor:
    """``mask`` ([B, H, W] float) at the latent's size [B', 1, h, w], grown and feathered in latent pixels.

    Its batch must be 1 (every image) or the latent's; its aspect the latent's within one latent pixel."""
    images, _, height, width = (int(v) for v in latent_shape[:4])
    batch, mh, mw = mask.shape
    if batch not in (1, images):
        raise FPEError(f"{name}: the mask has {batch} images but the target latent {images}: give one mask (for "
                       f"every image) or one per image")
    expected = mw * height / width
    if abs(mh - expected) > max(1.0, mh / height):
        raise FPEError(f"{name}: the mask is {mw}x{mh} px but the target latent is {width * 8}x{height * 8} px "
                       f"({width}x{height} latent): the aspects differ; give a mask of the image's shape (e.g. "
                       f"painted on the photo or made at the image's size)")
    out = F.interpolate(mask[:, None], size=(height, width), mode="area") if (mh, mw) != (height, width) \
        else mask[:, None].clone()
    out = grow_mask(out, grow)
    out = feather_mask(out, feather)
    return out.clamp(0.0, 1.0)


def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (pixels > 0) or erode (pixels < 0) a [B, 1, h, w] mask by ``pixels`` latent pixels."""
    if pixels == 0:
        return mask
    k = 2 * abs(pixels) + 1
    if pixels > 0:
        return F.max_pool2d(mask, k, stride=1, padding=abs(pixels))
    return -F.max_pool2d(-mask, k, stride=1, padding=abs(pixels))


def feather_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften a [B, 1, h, w] mask's edges with a Gaussian of ``pixels`` latent pixels (sigma pixels/2)."""
    if pixels <= 0:
        return mask
    sigma = pixels / 2.0
    offsets = torch.arange(-pixels, pixels + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    pad = (pixels, pixels, 0, 0)
    out = F.conv2d(F.pad(mask, pad, mode="replicate"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, pixels, pixels), mode="replicate"), kernel.view(1, 1, -1, 1))
    # the kernel's float32 sum is 1 only to ~1e-7: inside and far outside stay exactly 1 and 0
    return torch.where(out > 1 - 1e-6, torch.ones_like(out), torch.where(out < 1e-6, torch.zeros_like(out), out))


def threshold_fraction(timestep: float, first: float, last: float) -> float:
    """Differential Diffusion's threshold at ``timestep``: 1 at the schedule's first, 0 at its last."""
    if first == last:
        return 0.0
    return (timestep - last) / (first - last)


def thresholded(mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """The pixels edited at a step with threshold ``fraction`` (value >= fraction), as 0/1. Pixels of value 0
    never join (Differential Diffusion's threshold reaches 0 at the schedule's last timestep, where it lets
    every pixel change; a local edit keeps its background)."""
    return ((mask >= fraction) & (mask > 0)).to(mask.dtype)


def local_blend_mask(maps: torch.Tensor, grid: tuple[int, int], columns: list[int], latent_hw: tuple[int, int],
                     threshold: float) -> torch.Tensor:
    """LocalBlend's mask of one prompt's words: ``maps`` [B, tokens, context] (cross-attention summed over
    layers and steps), the words' context ``columns``; returns bool [B, 1, H, W] at the latent's size."""
    batch = maps.shape[0]
    if not columns:
        return torch.zeros((batch, 1) + tuple(latent_hw), dtype=torch.bool)
    word = maps[..., list(columns)].sum(-1).reshape(batch, 1, *grid).float()
    word = F.max_pool2d(word, 3, stride=1, padding=1)
    word = F.interpolate(word, size=tuple(latent_hw))  # nearest, as LocalBlend
    peak = word.amax(dim=(2, 3), keepdim=True)
    word = word / torch.where(peak > 0, peak, torch.ones_like(peak))
    return word > threshold


def blend(source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """source + mask * (target - source), exactly the source where the mask is 0 and exactly the target where
    it is 1 (torch.lerp computes target - (1 - mask) * (target - source) for mask >= 0.5)."""
    return torch.lerp(source, target, mask.to(device=target.device, dtype=target.dtype).expand_as(target))
