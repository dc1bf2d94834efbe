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

  SSIM definition: the mean is over the windows lying wholly inside the image (torchmetrics reflect-pads
  by 5 px and then crops those 5 px off the SSIM map before averaging). torchmetrics 0.2.0 to 1.4.1 define
  it so, and PIE-Bench (Oct 2023) ran one of those. torchmetrics 1.4.2 (PR #2721, issue #2718, Sep 2024)
  stopped cropping: from 1.4.2 on the mean includes the 5-px border, whose windows reach into the
  reflected padding, so its values differ from PIE-Bench's published ones. Variances are clamped at 0
  as torchmetrics does (float rounding).

* ``StructureDistance`` (PIE-Bench's "Structure Distance", Tumanyan et al.'s splicing-ViT self-similarity
  loss as PIE-Bench's ``matrics_calculator.py`` computes it): each image as float pixels 0..255 - PIE-Bench
  does not divide by 255 before ImageNet normalisation, and its published numbers come from that, so
  neither do we -, resized (bilinear, no antialias: torchvision's tensor ``Resize`` before 0.17) so the
  short side is 224 (the long side at most 480), ImageNet mean/std, through DINO ViT; the keys of the last
  layer's self-attention (all heads concatenated per token, CLS token included) give a token x token
  cosine self-similarity matrix (norm product clamped at 1e-8); the distance is the mean squared
  difference of the source's and the edit's matrices. PIE-Bench reports it x10^3. The model is a
  transformers ``ViTModel`` folder (facebook/dino-vitb8 as PIE-Bench uses, saved locally).

* ``Lpips`` (PIE-Bench's background LPIPS: torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` with the
  SqueezeNet backbone, on both images times the inverted mask, mapped to -1..1): Zhang et al.'s LPIPS
  v0.1 in plain torch + torchvision. The input is shifted/scaled per channel (shift -.030 -.088 -.188,
  scale .458 .448 .450), run through the backbone's feature layers (SqueezeNet 1.1: 7 taps, AlexNet: 5,
  VGG16: 5), each tap's channel vector divided by (its L2 norm + 1e-10) (the ``lpips`` package and
  torchmetrics up to 1.2.0; torchmetrics 1.2.1+ divides by sqrt(norm^2 + 1e-8), which differs only where
  a feature vector is near zero), the squared difference weighted per channel by the learned linear
  layer, averaged over space, summed over taps. PIE-Bench reports it x10^3.

* ``clip_edited`` (PIE-Bench's "CLIP Edited"): the edit image times the edit mask (border included, as
  PIE-Bench's mask decoder sets it; products rounded down to uint8 as PIE-Bench's ``np.uint8(img * mask)``)
  scored against the target prompt with ``ClipScorer.clip_score``.

Every model scorer has a ``label``: the folder's name and a short fingerprint (the first 12 hex digits
of a SHA-256 over the names and bytes of the files it reads), recorded next to each score so a summary
can say which model scored a column.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..drawing import eight_bit, rgb
from ..fingerprint import file_fingerprint

CDS_EPS = 1e-6  # the replication's guard on |dI| and |dT|
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, PIL's "L" conversion


class MetricsError(ValueError):
    """A metric's input or model folder is unusable; the message names what and where."""


# --- images --------------------------------------------------------------------------------------------

def mask_of(image) -> np.ndarray:
    """A mask picture as bool [H,W] (True = edited: grey level >= 128 of 255, or of 65535 for a 16-bit mask)."""
    return np.asarray(eight_bit(image).convert("L")) >= 128


def to_array(image) -> np.ndarray:
    """An image as float64 [H,W,3] in 0..1 (PIL and uint8 are divided by 255, floats are taken as given)."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL, without importing it here
        image = np.asarray(rgb(image))
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
    if hasattr(image, "convert") and hasattr(image, "size"):
        return rgb(image)
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
    var_x = (blur(x * x) - mu_x ** 2).clamp(min=0)
    var_y = (blur(y * y) - mu_y ** 2).clamp(min=0)
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


def _edit_mask(mask, shape: tuple[int, int], border: bool) -> np.ndarray:
    m = np.array(mask, dtype=bool)
    if m.shape != shape:
        raise MetricsError(f"the mask is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]} px, the images "
                           f"{shape[1]}x{shape[0]}")
    if border:
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m


def edited_region(image, mask, border: bool = True) -> np.ndarray | None:
    """The image times the edit mask as uint8 [H,W,3] (PIE-Bench's ``np.uint8(img * mask)`` on the PNG's
    pixels: float images are quantised as SaveImage does first); None when the mask is empty."""
    arr = np.asarray(_to_pil(image))
    m = _edit_mask(mask, arr.shape[:2], border)
    if not m.any():
        return None
    return arr * m[..., None].astype(np.uint8)


# --- fingerprints -----------------------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def _folder_files(folder: Path) -> list[Path]:
    """What identifies a transformers folder: its config and its weight files."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and (p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES))


def fingerprint(files: Sequence[Path], digits: int = 12) -> str:
    """The first ``digits`` hex digits of SHA-256 over each file's name and ``file_fingerprint`` (size, header,
    sampled blocks: a CLIP-L folder costs half a MiB read per file, not 1.7 GB), in the given order."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{Path(path).name}\0{file_fingerprint(path)}\0".encode())
    return h.hexdigest()[:digits]


def model_label(folder: Path, files: Sequence[Path], kind: str | None = None) -> str:
    """"name (sha256 0123456789ab)", or "name, kind (sha256 ...)": what the summary prints per column."""
    name = Path(folder).name or str(folder)
    return f"{name}{', ' + kind if kind else ''} (sha256 {fingerprint(files)})"


# --- PIE-Bench structure distance (DINO ViT self-similarity) --------------------------------------------

DINO_SHORT_SIDE, DINO_MAX_SIDE = 224, 480  # PIE-Bench: Resize(224, max_size=480)
DINO_PIXEL_RANGE = 255.0  # PIE-Bench feeds pixels 0..255 to the ImageNet normalisation (not 0..1)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SELF_SIM_EPS = 1e-8


def resized_size(height: int, width: int, short: int = DINO_SHORT_SIDE, max_size: int = DINO_MAX_SIDE) -> tuple[int, int]:
    """torchvision's Resize(short, max_size) output size: the short side to ``short``, the long side scaled
    and truncated; if that exceeds ``max_size`` the long side is ``max_size`` and the short one scaled."""
    if height <= width:
        new_short, new_long = short, int(short * width / height)
    else:
        new_short, new_long = short, int(short * height / width)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if height <= width else (new_long, new_short)


def _key_projection(layer) -> torch.nn.Module:
    """The key projection of one ViT layer (transformers 5: ``attention.k_proj``; 4: ``attention.attention.key``)."""
    attention = layer.attention
    for path in ("k_proj", "attention.key", "key"):
        module = attention
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, torch.nn.Linear):
            return module
    raise MetricsError("this ViT has no key projection where transformers puts it; a transformers ViTModel "
                       "folder is expected")


def _vit_layers(model) -> Sequence:
    layers = getattr(model, "layers", None)
    if layers is None:
        layers = model.encoder.layer
    return layers


def self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """[T,D] keys -> [T,T] cosine similarities (the norm product clamped at 1e-8)."""
    norms = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.T) / (norms @ norms.T).clamp(min=SELF_SIM_EPS)


class StructureDistance:
    """PIE-Bench's structure distance with a transformers ViTModel folder (facebook/dino-vitb8 saved with
    ``ViTModel.save_pretrained``); local files only."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        from transformers import ViTModel  # optional and heavy: only when a DINO folder is given

        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise MetricsError(f"DINO model folder not found: {self.folder}")
        try:
            model_type = json.loads((self.folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as exc:
            raise MetricsError(f"{self.folder} is not a transformers ViT folder: no readable config.json "
                               f"({exc.__class__.__name__})") from exc
        if model_type not in ("vit", "dino"):
            raise MetricsError(f"{self.folder} is not a transformers ViT folder: its config.json has model_type "
                               f"{model_type!r}, expected 'vit' (facebook/dino-vitb8)")
        try:
            self.model = ViTModel.from_pretrained(self.folder, local_files_only=True, add_pooling_layer=False)
        except (OSError, ValueError) as exc:
            raise MetricsError(f"could not load the ViT model from {self.folder}: {exc}") from exc
        self.device = torch.device(device)
        self.model.to(self.device, torch.float32).eval()
        self.key = _key_projection(_vit_layers(self.model)[-1])
        self.label = model_label(self.folder, _folder_files(self.folder))

    def pixels(self, image) -> torch.Tensor:
        """The model's input for one image: [1,3,h,w], PIE-Bench's preprocessing (module docstring)."""
        arr = np.asarray(_to_pil(image)).astype(np.float32)  # the PNG's pixels, 0..255
        x = torch.from_numpy(arr).permute(2, 0, 1)[None] * (DINO_PIXEL_RANGE / 255.0)
        size = resized_size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def keys(self, image) -> torch.Tensor:
        """The last layer's keys [T, hidden] (CLS first; heads side by side as the projection writes them)."""
        x = self.pixels(image).to(self.device)
        captured = []
        handle = self.key.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            size = getattr(self.model.config, "image_size", None)
            self.model(pixel_values=x, interpolate_pos_encoding=tuple(x.shape[-2:]) != (size, size))
        finally:
            handle.remove()
        return captured[-1][0].float().cpu()

    def self_similarity(self, image) -> torch.Tensor:
        return self_similarity(self.keys(image))

    def distance(self, source, edited) -> float:
        """MSE between the two images' key self-similarity matrices (PIE-Bench reports it x10^3)."""
        a, b = self.self_similarity(source), self.self_similarity(edited)
        if a.shape != b.shape:
            raise MetricsError(f"structure distance needs equal image sizes, got {to_array(source).shape[:2]} "
                               f"and {to_array(edited).shape[:2]}")
        return float(F.mse_loss(b, a))


# --- LPIPS ----------------------------------------------------------------------------------------------------

LPIPS_SHIFT, LPIPS_SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10
# per backbone: torchvision constructor, checkpoint file prefix, the feature indices that end each tap
LPIPS_NETS = {
    "squeeze": ("squeezenet1_1", "squeezenet1_1", (2, 5, 8, 10, 11, 12, 13)),
    "alex": ("alexnet", "alexnet", (2, 5, 8, 10, 12)),
    "vgg": ("vgg16", "vgg16", (4, 9, 16, 23, 30)),
}
LPIPS_LAYOUT = ("a folder with LPIPS' linear layers (squeeze.pth, alex.pth or vgg.pth, as the lpips package "
                "ships them in lpips/weights/v0.1/ and torchmetrics in functional/image/lpips_models/) and "
                "torchvision's ImageNet checkpoint of the same backbone (squeezenet1_1-*.pth, alexnet-*.pth or "
                "vgg16-*.pth, as torchvision saves them in ~/.cache/torch/hub/checkpoints/)")


def lpips_files(folder: Path) -> tuple[str, Path, Path]:
    """(net, linear layers file, backbone file) found in ``folder``: SqueezeNet (PIE-Bench's) first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MetricsError(f"LPIPS folder not found: {folder}")
    for net, (_, prefix, _) in LPIPS_NETS.items():
        linear = folder / f"{net}.pth"
        backbones = sorted(p for p in folder.glob(f"{prefix}*.pth") if p.name != linear.name)
        if linear.is_file() and backbones:
            return net, linear, backbones[0]
    raise MetricsError(f"{folder} holds no complete LPIPS model: expected {LPIPS_LAYOUT}")


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors are many; the file is what to fix
        raise MetricsError(f"cannot read {path} as a torch state dict ({type(exc).__name__})") from exc
    if not isinstance(state, dict):
        raise MetricsError(f"{path} is not a torch state dict")
    return state


class Lpips:
    """LPIPS v0.1 from local files (``lpips_files``); plain torch + torchvision."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        import torchvision  # optional: only when an LPIPS folder is given

        self.folder = Path(folder).expanduser()
        self.net, linear_path, backbone_path = lpips_files(self.folder)
        constructor, _, ends = LPIPS_NETS[self.net]
        features = getattr(torchvision.models, constructor)(weights=None).features
        state = _load_state(backbone_path)
        wanted = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            features.load_state_dict(wanted)
        except RuntimeError as exc:
            raise MetricsError(f"{backbone_path} is not torchvision's {constructor} checkpoint: "
                               f"{str(exc).splitlines()[0]}") from exc
        self.taps = torch.nn.ModuleList(features[start:end] for start, end in zip((0, *ends[:-1]), ends, strict=True))
        linear = _load_state(linear_path)
        self.weights = []
        for k, tap in enumerate(self.taps):
            channels = [m.out_channels for m in tap.modules() if isinstance(m, torch.nn.Conv2d)]
            channels = sum(channels[-2:]) if self.net == "squeeze" and k else channels[-1]  # Fire: expand1x1 + 3x3
            found = [v for name, v in linear.items() if re.fullmatch(rf"lin{k}\.model\.\d+\.weight", name)]
            if len(found) != 1 or tuple(found[0].shape) != (1, channels, 1, 1):
                raise MetricsError(f"{linear_path} does not hold LPIPS' {self.net} linear layer lin{k} "
                                   f"(1x{channels}x1x1): not the {self.net}.pth of lpips/torchmetrics")
            self.weights.append(found[0].float())
        self.device = torch.device(device)
        self.taps.to(self.device, torch.float32).eval()
        self.weights = [w.to(self.device) for w in self.weights]
        self.label = model_label(self.folder, [linear_path, backbone_path], kind=self.net)

    @torch.no_grad()
    def distance(self, a, b) -> float:
        """LPIPS of two images given in -1..1 ([H,W,3] arrays or tensors)."""
        x = torch.stack([torch.as_tensor(np.asarray(a, dtype=np.float32)),
                         torch.as_tensor(np.asarray(b, dtype=np.float32))]).permute(0, 3, 1, 2).to(self.device)
        shift = torch.tensor(LPIPS_SHIFT, device=self.device).view(1, 3, 1, 1)
        scale = torch.tensor(LPIPS_SCALE, device=self.device).view(1, 3, 1, 1)
        h = (x - shift) / scale
        total = torch.zeros((), dtype=torch.float64)
        for tap, weight in zip(self.taps, self.weights, strict=True):
            h = tap(h)
            unit = h / (h.norm(dim=1, keepdim=True) + LPIPS_EPS)
            diff = (unit[0:1] - unit[1:2]) ** 2
            total += F.conv2d(diff, weight).mean().double().cpu()
        return float(total)

    def background(self, source, edited, mask, border: bool = True) -> float:
        """PIE-Bench's background LPIPS: both images times the inverted mask (border forced to edited),
        mapped to -1..1. NaN when nothing is left outside the mask."""
        a, b = to_array(source), to_array(edited)
        if a.shape != b.shape:
            raise MetricsError(f"LPIPS needs equal image sizes, got {a.shape[:2]} and {b.shape[:2]}")
        keep = ~_edit_mask(mask, a.shape[:2], border)
        if not keep.any():
            return math.nan
        keep = keep[..., None].astype(np.float64)
        return self.distance(a * keep * 2 - 1, b * keep * 2 - 1)


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
        from transformers import CLIPModel, CLIPProcessor  # optional and heavy: only when a CLIP folder is given

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
        self.label = model_label(self.folder, _folder_files(self.folder))

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


def clip_edited(scorer: ClipScorer, edited, mask, text: str, scale: float = 100.0, border: bool = True,
                clamp: bool = True) -> float:
    """PIE-Bench's "CLIP Edited": the edit times the edit mask (``border``: its outermost pixels count as
    edited, as PIE-Bench's decoder sets them), scored against ``text``. NaN when nothing is edited."""
    region = edited_region(edited, mask, border=border)
    return math.nan if region is None else scorer.clip_score([region], [text], scale=scale, clamp=clamp)[0]


def _same_length(**lists) -> None:
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) > 1:
        raise MetricsError(f"inputs differ in length: {lengths}")
