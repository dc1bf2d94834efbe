"""Edit metrics for batch edits (issue 15): CLIP scores, a weight-free structure figure, PIE-Bench's
background preservation. Plain torch/numpy (plus transformers for CLIP); nothing here imports ComfyUI.

Images are PIL images, uint8 arrays [H,W,3], or float arrays/tensors [H,W,3] in 0..1 (a ComfyUI IMAGE
item; a [1,H,W,3] batch of one is accepted too).

* ``ClipScorer``. The paper (§5.1) reports CLIP Score (CS) and CLIP Directional Similarity (CDS)
  without naming a backbone; the public replication uses OpenAI CLIP ViT-B/32, so the user points at a
  local transformers CLIP folder of their choice (never downloaded).
  With L2-normalised embeddings E_I, E_T:

  - CS = scale * max(cos(E_I(edit), E_T(target prompt)), 0): torchmetrics' ``CLIPScore`` definition
    (scale 100, clamp at 0). The paper's values (25-31) point to the x100 scale, so that is the default;
    ``scale=1, clamp=False`` gives the replication's plain cosine.
  - CDS = scale * <dI/(|dI|+1e-6), dT/(|dT|+1e-6)> with dI = E_I(edit) - E_I(src image) and
    dT = E_T(target prompt) - E_T(source prompt), as in StyleGAN-NADA and the replication's ``eval.py``
    (plain cosine, so the default scale is 1). Swapping only the images (or only the prompts) negates it;
    swapping both leaves it unchanged.

* ``edge_ssim`` (structure preservation). PIE-Bench's structure distance needs DINO ViT-B/8 weights, which
  no reachable package ships. The figure here is SSIM (the same Gaussian-window SSIM as below) between
  the Sobel gradient magnitudes of the two images' luma. Why this one: it needs no weights and is
  deterministic; flat regions have zero gradient whatever their colour, so recolouring a region (what a
  good colour or texture edit does) costs little, while moving, adding or removing edges (a lost layout)
  costs a lot; and it reads like SSIM: 1 for identical images, higher is better. It is a pixel-level
  proxy, not a replacement for the DINO distance: report it under its own name.

* ``background_metrics`` (PIE-Bench, as its evaluation code does it): the mask's outermost pixels are
  forced to "edited" (``border=True``), then BOTH images are
  multiplied by the inverted mask (edited pixels set to 0 in both) and the full-image metrics are taken
  on the products, with data range 1:
  - MSE = mean over all H*W*3 values (the zeroed edit region counts as matching, so MSE is diluted by the
    mask's area, exactly as PIE-Bench's numbers are); PIE-Bench reports it x10^4.
  - PSNR = 10*log10(1/MSE) in dB; +inf when the backgrounds are identical (torchmetrics' behaviour).
  - SSIM = Wang et al. 2004 with torchmetrics' defaults: 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, averaged over channels and over the windows lying wholly inside the image; PIE-Bench reports
    it x10^2.
  Raw values are returned; scaling is the report's job. An all-edited mask gives NaN (PIE-Bench: "nan").
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CDS_EPS = 1e-6  # the replication's guard on |dI| and |dT|
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, PIL's "L" conversion


class MetricsError(ValueError):
    """A metric's input or model folder is unusable; the message names what and where."""


# --- images --------------------------------------------------------------------------------------------

def to_array(image) -> np.ndarray:
    """An image as float64 [H,W,3] in 0..1 (PIL and uint8 are divided by 255, floats are taken as given)."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL, without importing it here
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise MetricsError(f"expected an RGB image [H,W,3], got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def _to_pil(image):
    """For the CLIP processor: floats are quantised as ComfyUI's SaveImage does, so a score on the
    in-memory IMAGE equals the score on the saved PNG."""
    from PIL import Image

    if hasattr(image, "convert") and hasattr(image, "size"):
        return image.convert("RGB")
    arr = np.asarray(image) if not isinstance(image, torch.Tensor) else None
    if arr is not None and arr.dtype == np.uint8 and arr.ndim == 3:
        return Image.fromarray(arr)
    arr = to_array(image)
    return Image.fromarray(np.clip(arr * 255.0, 0, 255).astype(np.uint8))


def _luma(arr: np.ndarray) -> np.ndarray:
    return arr @ np.asarray(LUMA)


# --- SSIM ----------------------------------------------------------------------------------------------

def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM of two [H,W] or [H,W,C] arrays: Gaussian window, only windows wholly inside the image."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise MetricsError(f"SSIM needs equal shapes, got {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise MetricsError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape[:2]}")
    # channels as a batch: each is filtered on its own, then all windows are averaged
    x = torch.from_numpy(a).permute(2, 0, 1)[:, None]
    y = torch.from_numpy(b).permute(2, 0, 1)[:, None]
    g = _gaussian_window()

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable, no padding: valid windows only
        return F.conv2d(F.conv2d(t, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


# --- structure ------------------------------------------------------------------------------------------

def sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    """Gradient magnitude in 0..1 of a [H,W] image in 0..1 ([H-2,W-2]: valid positions only). The kernels
    are divided by 4 so a unit step gives 1 along its axis, and the magnitude by sqrt(2) to stay in 0..1."""
    t = torch.from_numpy(np.asarray(gray, dtype=np.float64))[None, None]
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) / 4
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    gx = F.conv2d(t, (smooth[:, None] * diff[None, :])[None, None])
    gy = F.conv2d(t, (diff[:, None] * smooth[None, :])[None, None])
    return (torch.sqrt(gx ** 2 + gy ** 2) / math.sqrt(2))[0, 0].numpy()


def edge_ssim(source, edited) -> float:
    """Structure preservation: SSIM of the Sobel magnitudes of the two images' luma (1 = identical edges)."""
    a, b = to_array(source), to_array(edited)
    if a.shape != b.shape:
        raise MetricsError(f"edge_ssim needs equal image sizes, got {a.shape[:2]} and {b.shape[:2]}")
    return ssim(sobel_magnitude(_luma(a)), sobel_magnitude(_luma(b)), data_range=1.0)


# --- PIE-Bench background preservation -------------------------------------------------------------------

@dataclass(frozen=True)
class Background:
    """Raw background-preservation values (PIE-Bench reports mse x10^4 and ssim x10^2)."""

    psnr: float
    mse: float
    ssim: float


def background_metrics(source, edited, mask, border: bool = True) -> Background:
    """PSNR, MSE, SSIM outside ``mask`` (bool [H,W], True = edited) the PIE-Bench way (module docstring):
    both images times the inverted mask, then full-image metrics. ``border`` forces the outermost pixels
    to "edited" as PIE-Bench does (``datasets.decode_mask`` already has; doing it twice changes nothing)."""
    a, b = to_array(source), to_array(edited)
    m = np.array(mask, dtype=bool)
    if a.shape != b.shape or m.shape != a.shape[:2]:
        raise MetricsError(f"background metrics need equal sizes: source {a.shape[:2]}, edited {b.shape[:2]}, "
                           f"mask {m.shape}")
    if border:
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    keep = (~m)[..., None].astype(np.float64)
    if not keep.any():
        nan = float("nan")
        return Background(psnr=nan, mse=nan, ssim=nan)
    a, b = a * keep, b * keep
    mse = float(np.mean((a - b) ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
    return Background(psnr=psnr, mse=mse, ssim=ssim(a, b, data_range=1.0))


# --- CLIP ---------------------------------------------------------------------------------------------

def _pooled(out) -> torch.Tensor:
    # transformers 4 returns the projected features; 5 returns an output whose pooler_output holds them
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """CS and CDS with a transformers CLIP model read from ``folder`` (local files only, never a download).

    ``folder`` is what ``CLIPModel.save_pretrained`` + ``CLIPProcessor.save_pretrained`` write (the layout
    of a hub snapshot such as openai/clip-vit-base-patch32, the replication's backbone)."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 32):
        from transformers import CLIPModel, CLIPProcessor

        self.folder = Path(folder).expanduser()
        config = self.folder / "config.json"
        if not self.folder.is_dir():
            raise MetricsError(f"CLIP model folder not found: {self.folder}")
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as exc:
            raise MetricsError(f"{self.folder} is not a transformers CLIP folder: no readable config.json "
                               f"({exc.__class__.__name__})") from exc
        if model_type != "clip":
            raise MetricsError(f"{self.folder} is not a transformers CLIP folder: its config.json has "
                               f"model_type {model_type!r}, expected 'clip'")
        try:
            self.model = CLIPModel.from_pretrained(self.folder, local_files_only=True)
            self.processor = CLIPProcessor.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise MetricsError(f"could not load the CLIP model/processor from {self.folder}: {exc}") from exc
        self.device, self.dtype = torch.device(device), dtype
        self.model.to(self.device, dtype).eval()
        self.batch_size = max(1, int(batch_size))

    # embeddings, L2-normalised, float32 on the CPU
    @torch.no_grad()
    def image_embeddings(self, images: Sequence) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            pil = [_to_pil(im) for im in images[i:i + self.batch_size]]
            pixels = self.processor.image_processor(images=pil, return_tensors="pt")["pixel_values"]
            feats = _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.processor.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                           max_length=77, return_tensors="pt")
            feats = _pooled(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                         attention_mask=tok["attention_mask"].to(self.device)))
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def clip_score(self, images: Sequence, texts: Sequence[str], scale: float = 100.0,
                   clamp: bool = True) -> list[float]:
        """Per item: scale * max(cos(E_I(image), E_T(text)), 0) (torchmetrics; ``clamp=False`` drops the max)."""
        _same_length(images=images, texts=texts)
        if not len(images):
            return []
        cos = (self.image_embeddings(images) * self.text_embeddings(texts)).sum(-1)
        if clamp:
            cos = cos.clamp(min=0)
        return [float(v) * scale for v in cos]

    def directional_similarity(self, src_images: Sequence, tgt_images: Sequence, src_texts: Sequence[str],
                               tgt_texts: Sequence[str], scale: float = 1.0) -> list[float]:
        """Per item: scale * cos(E_I(tgt) - E_I(src), E_T(tgt) - E_T(src)), each difference divided by its
        norm + 1e-6 (so identical images give 0, not NaN)."""
        _same_length(src_images=src_images, tgt_images=tgt_images, src_texts=src_texts, tgt_texts=tgt_texts)
        if not len(src_images):
            return []
        d_img = self.image_embeddings(list(tgt_images) + list(src_images))
        d_img = d_img[:len(tgt_images)] - d_img[len(tgt_images):]
        d_txt = self.text_embeddings(list(tgt_texts) + list(src_texts))
        d_txt = d_txt[:len(tgt_texts)] - d_txt[len(tgt_texts):]
        d_img = d_img / (d_img.norm(dim=-1, keepdim=True) + CDS_EPS)
        d_txt = d_txt / (d_txt.norm(dim=-1, keepdim=True) + CDS_EPS)
        return [float(v) * scale for v in (d_img * d_txt).sum(-1)]


def _same_length(**lists) -> None:
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) > 1:
        raise MetricsError(f"inputs differ in length: {lengths}")
