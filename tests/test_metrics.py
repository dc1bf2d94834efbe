"""fpe_headless.metrics: CLIP scores on a tiny random CLIP saved in transformers format, PIE-Bench's
background metrics against a direct numpy computation, the edge-SSIM structure figure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fpe_harness.tiny_clip import write_tiny_clip
from fpe_headless import metrics
from fpe_headless.datasets import decode_mask, encode_mask

TEXTS_SRC = ["a photo of a red car", "a cat in the park", "a bright photo of a dog"]
TEXTS_TGT = ["a photo of a blue car", "a tiger in the park", "a bright photo of a lion"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def scorer(clip_folder):
    return metrics.ClipScorer(clip_folder, batch_size=2)


def _images(n, seed):
    rng = np.random.default_rng(seed)
    out = [torch.from_numpy(rng.random((40, 48, 3))).float() for _ in range(n)]
    out[-1] = Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8))  # PIL works too
    return out


def _direct_embeddings(folder, images, texts):
    """Straight through transformers, independent of ClipScorer's batching and helpers."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    pil = [im if isinstance(im, Image.Image)
           else Image.fromarray(np.clip(im.numpy() * 255, 0, 255).astype(np.uint8)) for im in images]
    inputs = processor(text=texts, images=pil, return_tensors="pt", padding=True, truncation=True, max_length=77)
    with torch.no_grad():
        ei = model.get_image_features(pixel_values=inputs["pixel_values"])
        et = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    ei = ei if isinstance(ei, torch.Tensor) else ei.pooler_output
    et = et if isinstance(et, torch.Tensor) else et.pooler_output
    return F.normalize(ei, dim=-1), F.normalize(et, dim=-1)


def test_clip_score_matches_direct_computation(scorer, clip_folder):
    images = _images(3, seed=1)
    ei, et = _direct_embeddings(clip_folder, images, TEXTS_TGT)
    cos = (ei * et).sum(-1)
    assert scorer.clip_score(images, TEXTS_TGT) == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-4)
    assert scorer.clip_score(images, TEXTS_TGT, scale=1.0, clamp=False) == pytest.approx(cos.tolist(), abs=1e-6)
    # batching does not change the numbers; long prompts are truncated at 77 tokens, not rejected
    wide = metrics.ClipScorer(clip_folder, batch_size=64)
    assert wide.clip_score(images, TEXTS_TGT) == pytest.approx(scorer.clip_score(images, TEXTS_TGT), abs=1e-4)
    assert len(scorer.clip_score(images[:1], ["word " * 200])) == 1


def test_directional_similarity_matches_direct_and_flips_sign(scorer, clip_folder):
    src, tgt = _images(3, seed=2), _images(3, seed=3)
    ei_s, et_s = _direct_embeddings(clip_folder, src, TEXTS_SRC)
    ei_t, et_t = _direct_embeddings(clip_folder, tgt, TEXTS_TGT)
    di, dt = ei_t - ei_s, et_t - et_s
    direct = ((di / (di.norm(dim=-1, keepdim=True) + 1e-6)) * (dt / (dt.norm(dim=-1, keepdim=True) + 1e-6))).sum(-1)

    cds = scorer.directional_similarity(src, tgt, TEXTS_SRC, TEXTS_TGT)
    assert cds == pytest.approx(direct.tolist(), abs=1e-5)
    assert scorer.directional_similarity(src, tgt, TEXTS_SRC, TEXTS_TGT, scale=100.0) == pytest.approx(
        [100 * v for v in cds], abs=1e-3)
    assert any(abs(v) > 1e-3 for v in cds)
    # source and target swapped: the image direction reverses, so CDS changes sign; swapping the prompts
    # as well reverses both directions and gives the same value back
    assert scorer.directional_similarity(tgt, src, TEXTS_SRC, TEXTS_TGT) == pytest.approx([-v for v in cds], abs=1e-5)
    assert scorer.directional_similarity(src, tgt, TEXTS_TGT, TEXTS_SRC) == pytest.approx([-v for v in cds], abs=1e-5)
    assert scorer.directional_similarity(tgt, src, TEXTS_TGT, TEXTS_SRC) == pytest.approx(cds, abs=1e-5)
    # an unchanged image has no direction: 0, not NaN
    assert scorer.directional_similarity(src[:1], src[:1], TEXTS_SRC[:1], TEXTS_TGT[:1]) == [0.0]
    with pytest.raises(metrics.MetricsError, match="differ in length"):
        scorer.directional_similarity(src, tgt[:2], TEXTS_SRC, TEXTS_TGT)


def test_not_a_clip_folder_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(metrics.MetricsError, match=f"{empty}.*not a transformers CLIP folder"):
        metrics.ClipScorer(empty)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(metrics.MetricsError, match=f"{bert}.*model_type 'bert'"):
        metrics.ClipScorer(bert)
    with pytest.raises(metrics.MetricsError, match=f"not found: {tmp_path / 'missing'}"):
        metrics.ClipScorer(tmp_path / "missing")
    broken = tmp_path / "broken"  # says CLIP but holds no weights: the loader's error, with the folder
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(metrics.MetricsError, match=f"{broken}"):
        metrics.ClipScorer(broken)


# --- PIE-Bench background metrics -------------------------------------------------------------------------

def _direct_ssim(a, b):
    """Wang et al. SSIM written out window by window: 11x11 Gaussian (sigma 1.5), C1=(.01)^2, C2=(.03)^2,
    every window wholly inside the image, mean over windows and channels."""
    x = np.arange(11) - 5.0
    g = np.exp(-0.5 * (x / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for c in range(a.shape[2]):
        pa = np.lib.stride_tricks.sliding_window_view(a[..., c], (11, 11))
        pb = np.lib.stride_tricks.sliding_window_view(b[..., c], (11, 11))
        mu_a, mu_b = (pa * w).sum((-1, -2)), (pb * w).sum((-1, -2))
        va = (pa ** 2 * w).sum((-1, -2)) - mu_a ** 2
        vb = (pb ** 2 * w).sum((-1, -2)) - mu_b ** 2
        cov = (pa * pb * w).sum((-1, -2)) - mu_a * mu_b
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        vals.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def _mask(shape=(48, 56)):
    m = np.zeros(shape, dtype=bool)
    m[10:30, 20:44] = True
    return m


def test_background_metrics_match_direct_computation():
    rng = np.random.default_rng(4)
    src = rng.random((48, 56, 3))
    edit = np.clip(src + rng.normal(0, 0.05, src.shape), 0, 1)
    mask = _mask()
    got = metrics.background_metrics(torch.from_numpy(src).float(), edit.astype(np.float32), mask)

    # PIE-Bench: border forced to edited, both images multiplied by the inverted mask, full-image metrics
    m = mask.copy()
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    keep = (~m)[..., None].astype(np.float64)
    a, b = src.astype(np.float32).astype(np.float64) * keep, edit.astype(np.float32).astype(np.float64) * keep
    mse = ((a - b) ** 2).mean()
    assert got.mse == pytest.approx(mse, rel=1e-9)
    assert got.psnr == pytest.approx(10 * np.log10(1 / mse), rel=1e-9)
    assert got.ssim == pytest.approx(_direct_ssim(a, b), abs=1e-9)
    # a PIE-Bench run-length mask decodes to the same mask (decode_mask already sets the border)
    runs = encode_mask(mask)
    assert metrics.background_metrics(torch.from_numpy(src).float(), edit.astype(np.float32),
                                      decode_mask(runs, shape=mask.shape)) == got
    # PIL / uint8 inputs are read as /255, as PIE-Bench reads its PNGs
    s8, e8 = (src * 255).astype(np.uint8), (edit * 255).astype(np.uint8)
    via_pil = metrics.background_metrics(Image.fromarray(s8), Image.fromarray(e8), mask)
    assert via_pil.mse == pytest.approx((((s8 / 255.0) - (e8 / 255.0)) ** 2 * keep ** 2).mean(), rel=1e-9)


def test_background_metrics_are_perfect_when_only_the_edit_region_changes():
    rng = np.random.default_rng(5)
    src = rng.random((48, 56, 3))
    mask = _mask()
    edit = src.copy()
    edit[mask] = rng.random((int(mask.sum()), 3))
    edit[0, :] = 0.0  # the border counts as edited too
    got = metrics.background_metrics(src, edit, mask)
    assert got.mse == 0.0 and got.psnr == math.inf and got.ssim == pytest.approx(1.0, abs=1e-12)
    # without the border rule the changed top row is background and counts
    assert metrics.background_metrics(src, edit, mask, border=False).mse > 0
    # nothing left outside the mask: NaN, as PIE-Bench's "nan"
    assert all(math.isnan(v) for v in vars(metrics.background_metrics(src, edit, np.ones((48, 56), bool))).values())
    with pytest.raises(metrics.MetricsError, match="equal sizes"):
        metrics.background_metrics(src, edit, np.zeros((10, 10), bool))


# --- structure ----------------------------------------------------------------------------------------------

def _scene(square=(0.9, 0.1, 0.1), dx=0):
    img = np.full((64, 64, 3), 0.5)
    img[16:40, 12 + dx:36 + dx] = square
    yy, xx = np.mgrid[:64, :64]
    img[(yy - 46) ** 2 + (xx - 46 - dx) ** 2 < 64] = (0.1, 0.6, 0.2)
    img[4:8, 50 + dx // 2:60] = 0.95
    return img


def test_edge_ssim_prefers_recoloured_over_moved():
    src = _scene()
    same = metrics.edge_ssim(src, src.copy())
    recoloured = metrics.edge_ssim(src, _scene(square=(0.1, 0.2, 0.9)))
    shifted = metrics.edge_ssim(src, _scene(dx=6))
    assert same == pytest.approx(1.0, abs=1e-12)
    assert shifted < recoloured < same
    # a uniform brightness change moves no edge: flat regions stay at zero gradient
    assert metrics.edge_ssim(src, src + 0.04) == pytest.approx(1.0, abs=1e-12)
    assert metrics.edge_ssim(Image.fromarray((src * 255).astype(np.uint8)), torch.from_numpy(src)[None]) > 0.99
