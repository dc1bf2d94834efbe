"""fpe_headless.batch.metrics: CLIP scores on a tiny random CLIP saved in transformers format, PIE-Bench's
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
from fpe_headless import drawing
from fpe_headless.batch import metrics, report
from fpe_headless.batch.datasets import decode_mask, encode_mask

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


# --- PIE-Bench's model-based columns: structure distance (DINO ViT), background LPIPS, CLIP edited ----------

def _write_tiny_dino(folder):
    """A randomly initialised ViT-B/8-shaped (patch 8, 224 px) tiny ViT, as ViTModel.save_pretrained writes it."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       image_size=224, patch_size=8, qkv_bias=True)
    model = ViTModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():  # random biases too, so the key projection's bias counts
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(folder)
    return folder


SQUEEZE_TAPS = (1, 4, 7, 9, 10, 11, 12)  # the feature modules whose outputs LPIPS compares (SqueezeNet 1.1)
SQUEEZE_CHANNELS = (64, 128, 256, 384, 384, 512, 512)


def _write_tiny_lpips(folder):
    """Random SqueezeNet 1.1 weights under torchvision's checkpoint name, and random linear layers in the
    lpips package's squeeze.pth layout (``lin{k}.model.1.weight``: dropout is model.0)."""
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), folder / "squeezenet1_1-b8a52dc0.pth")
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(SQUEEZE_CHANNELS)},
               folder / "squeeze.pth")
    return folder


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    return _write_tiny_dino(tmp_path_factory.mktemp("models") / "tiny-dino-vitb8")


@pytest.fixture(scope="module")
def lpips_folder(tmp_path_factory):
    return _write_tiny_lpips(tmp_path_factory.mktemp("models") / "lpips-squeeze")


def _photo_pair(shape, seed):
    rng = np.random.default_rng(seed)
    src = (rng.random(shape) * 255).astype(np.uint8)
    edit = np.clip(src.astype(int) + rng.integers(-40, 40, shape), 0, 255).astype(np.uint8)
    return src, edit


def _direct_self_similarity(folder, image_u8):
    """PIE-Bench's recipe written out independently: torchvision's Resize(224, max_size=480) (bilinear, no
    antialias) on the 0..255 pixels, ImageNet normalisation, then the last layer's keys recomputed from its
    input hidden state and raw weights, cosine similarity of every token pair."""
    import re

    import torchvision.transforms as T
    from transformers import ViTModel

    model = ViTModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False).eval()
    x = torch.from_numpy(image_u8.astype(np.float32)).permute(2, 0, 1)
    x = T.Resize(224, max_size=480, antialias=False)(x)
    x = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x)[None]
    with torch.no_grad():
        hidden = model(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-2][0]
    state = model.state_dict()
    last = model.config.num_hidden_layers - 1

    def weight(pattern):
        found = [v for k, v in state.items() if re.fullmatch(rf".*\b{last}\.{pattern}", k)]
        assert len(found) == 1, pattern
        return found[0]

    normed = F.layer_norm(hidden, (hidden.shape[-1],), weight(r"layernorm_before\.weight"),
                          weight(r"layernorm_before\.bias"), eps=model.config.layer_norm_eps)
    keys = F.linear(normed, weight(r"attention\.(attention\.key|k_proj)\.weight"),
                    weight(r"attention\.(attention\.key|k_proj)\.bias"))
    return F.cosine_similarity(keys[:, None, :], keys[None, :, :], dim=-1), tuple(x.shape[-2:])


def test_structure_distance_matches_direct_computation(dino_folder):
    scorer = metrics.StructureDistance(dino_folder)
    for shape, size in (((96, 96, 3), (224, 224)), ((64, 300, 3), (102, 480))):  # 2nd: the 480 px cap
        src, edit = _photo_pair(shape, seed=shape[1])
        sim_src, got_size = _direct_self_similarity(dino_folder, src)
        sim_edit, _ = _direct_self_similarity(dino_folder, edit)
        assert got_size == size and sim_src.shape[0] == 1 + (size[0] // 8) * (size[1] // 8)  # CLS + patches
        direct = float(((sim_src - sim_edit) ** 2).mean())
        got = scorer.distance(Image.fromarray(src), Image.fromarray(edit))
        assert direct > 1e-6
        assert got == pytest.approx(direct, rel=1e-4)  # float32 on both sides, different op order
        assert scorer.distance(edit, src) == pytest.approx(got, rel=1e-6)  # symmetric
        assert scorer.distance(src, src.copy()) == 0.0
    # a float IMAGE is quantised as the saved PNG would be: the same number as the PNG's pixels
    src, edit = _photo_pair((96, 96, 3), seed=96)
    assert scorer.distance(torch.from_numpy(src / 255.0), edit) == pytest.approx(scorer.distance(src, edit), rel=1e-6)


def _direct_lpips(folder, a, b):
    """LPIPS v0.1 written out: scaling layer, SqueezeNet taps, unit-normalised channels, weighted squared
    difference, spatial mean, sum over taps."""
    import torchvision

    net = torchvision.models.squeezenet1_1(weights=None)
    net.load_state_dict(torch.load(folder / "squeezenet1_1-b8a52dc0.pth", weights_only=True))
    lins = torch.load(folder / "squeeze.pth", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    outs = []
    for img in (a, b):
        h = (torch.from_numpy(np.asarray(img, np.float32)).permute(2, 0, 1)[None] - shift) / scale
        taps = []
        with torch.no_grad():
            for i, module in enumerate(net.features.eval()):
                h = module(h)
                if i in SQUEEZE_TAPS:
                    taps.append(h.clone())
        outs.append(taps)
    total = 0.0
    for k, (fa, fb) in enumerate(zip(*outs, strict=True)):
        ua = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ub = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lins[f"lin{k}.model.1.weight"].view(-1)
        total += float(torch.einsum("c,nchw->nhw", w, (ua - ub) ** 2).mean())
    return total


def test_background_lpips_matches_direct_computation(lpips_folder):
    scorer = metrics.Lpips(lpips_folder)
    assert scorer.net == "squeeze"
    src, edit = _photo_pair((64, 72, 3), seed=7)
    mask = np.zeros((64, 72), bool)
    mask[20:40, 10:50] = True
    # PIE-Bench: the border counts as edited, both images times the inverted mask, then mapped to -1..1
    keep = ~mask
    keep[0, :] = keep[-1, :] = keep[:, 0] = keep[:, -1] = False
    a = (src / 255.0) * keep[..., None] * 2 - 1
    b = (edit / 255.0) * keep[..., None] * 2 - 1
    direct = _direct_lpips(lpips_folder, a, b)
    got = scorer.background(Image.fromarray(src), Image.fromarray(edit), mask)
    assert direct > 1e-4
    assert got == pytest.approx(direct, rel=1e-5)
    assert scorer.distance(a, b) == pytest.approx(direct, rel=1e-5)
    # only the edit region changed: the background is identical, LPIPS 0; all edited: NaN (PIE-Bench "nan")
    inside = src.copy()
    inside[mask] = edit[mask]
    assert scorer.background(src, inside, mask) == 0.0
    assert math.isnan(scorer.background(src, edit, np.ones((64, 72), bool)))


def test_clip_edited_scores_the_masked_edit_against_the_target(scorer, clip_folder):
    rng = np.random.default_rng(8)
    edit = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    mask = np.zeros((40, 48), bool)
    mask[5:25, 10:30] = True
    with_border = mask.copy()
    with_border[0, :] = with_border[-1, :] = with_border[:, 0] = with_border[:, -1] = True
    region = np.uint8(edit * with_border[..., None].astype(np.float32))  # PIE-Bench's np.uint8(img * mask)
    ei, et = _direct_embeddings(clip_folder, [Image.fromarray(region)], TEXTS_TGT[:1])
    cos = float((ei * et).sum(-1)[0])  # the random tiny CLIP may give a negative cosine: compare unclamped
    got = metrics.clip_edited(scorer, Image.fromarray(edit), mask, TEXTS_TGT[0], clamp=False)
    assert got == pytest.approx(100 * cos, abs=1e-4)
    assert metrics.clip_edited(scorer, edit, mask, TEXTS_TGT[0]) == pytest.approx(100 * max(cos, 0.0), abs=1e-4)
    whole = scorer.clip_score([edit], TEXTS_TGT[:1], clamp=False)[0]
    assert abs(got - whole) > 1e-2  # the masked edit, not the whole image
    assert math.isnan(metrics.clip_edited(scorer, edit, np.zeros((40, 48), bool), "x", border=False))


def _sha12(*files):
    """The label's digest written out: each file's name and short content fingerprint (size, header, sampled
    blocks; tested on its own in test_batch), in order."""
    import hashlib

    from fpe_headless.fingerprint import file_fingerprint

    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_fingerprint(f)}\0".encode())
    return h.hexdigest()[:12]


def test_model_labels_name_the_folder_and_its_content(dino_folder, lpips_folder, scorer, clip_folder):
    dino = metrics.StructureDistance(dino_folder)
    files = sorted(p for p in dino_folder.iterdir() if p.name == "config.json" or p.suffix == ".safetensors")
    assert dino.label == f"tiny-dino-vitb8 (sha256 {_sha12(*files)})"
    assert metrics.Lpips(lpips_folder).label == (
        f"lpips-squeeze, squeeze (sha256 {_sha12(lpips_folder / 'squeeze.pth', lpips_folder / 'squeezenet1_1-b8a52dc0.pth')})")
    assert scorer.label.startswith(f"{clip_folder.name} (sha256 ")


def test_bad_model_folders_are_clear_errors(tmp_path, lpips_folder):
    with pytest.raises(metrics.MetricsError, match="not found"):
        metrics.StructureDistance(tmp_path / "missing")
    clip_like = tmp_path / "clip"
    clip_like.mkdir()
    (clip_like / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(metrics.MetricsError, match="model_type 'clip', expected 'vit'"):
        metrics.StructureDistance(clip_like)
    half = tmp_path / "half"  # the linear layers without the backbone
    half.mkdir()
    (half / "squeeze.pth").write_bytes((lpips_folder / "squeeze.pth").read_bytes())
    with pytest.raises(metrics.MetricsError, match=r"no complete LPIPS model: expected .*squeezenet1_1-\*\.pth"):
        metrics.Lpips(half)
    (half / "squeezenet1_1-x.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(metrics.MetricsError, match="cannot read .*squeezenet1_1-x.pth"):
        metrics.Lpips(half)


# --- `fpe eval` / `fpe batch`: the options, the columns and their units in summary.md --------------------------

def _pairs_csv(tmp_path):
    rng = np.random.default_rng(9)
    a = rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)
    b = a.copy()
    b[10:30, 12:40] = 255 - b[10:30, 12:40]  # edited inside the box
    b[40:44, 2:6] = 0  # and a little outside it
    mask = np.zeros((48, 56), dtype=bool)
    mask[10:30, 12:40] = True
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    (tmp_path / "pairs.csv").write_text("id,source_image,edit_image,source_prompt,target_prompt,mask\n"
                                        "p1,a.png,b.png,a box,a bright box,m.png\n")
    return tmp_path / "pairs.csv", a, b, mask


def _cells(markdown):
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|")), strict=True))


def test_eval_fills_pie_bench_columns_in_its_units_and_names_the_models(tmp_path, clip_folder, dino_folder,
                                                                         lpips_folder, capsys):
    from fpe_headless.batch.cli import run_eval_command

    csv_path, a, b, mask = _pairs_csv(tmp_path)
    rc = run_eval_command([str(csv_path), "--out", str(tmp_path / "ev"), "--clip", str(clip_folder),
                           "--dino", str(dino_folder), "--lpips", str(lpips_folder)], "fpe eval")
    assert rc == 0, capsys.readouterr().err
    summary = (tmp_path / "ev" / "summary.md").read_text(encoding="utf-8")
    cells = _cells(summary)
    clip, dino, lp = (metrics.ClipScorer(clip_folder), metrics.StructureDistance(dino_folder),
                      metrics.Lpips(lpips_folder))
    bg = metrics.background_metrics(a, b, mask)
    # PIE-Bench's units: structure x10^3, LPIPS x10^3, MSE x10^4, SSIM x10^2; PSNR and CLIP as they are
    assert cells["Structure ×10³ ↓"] == f"{dino.distance(a, b) * 1e3:.2f}"
    assert cells["BG LPIPS ×10³ ↓"] == f"{lp.background(a, b, mask) * 1e3:.2f}"
    assert cells["BG MSE ×10⁴ ↓"] == f"{bg.mse * 1e4:.2f}"
    assert cells["BG SSIM ×10² ↑"] == f"{bg.ssim * 1e2:.2f}"
    assert cells["BG PSNR ↑"] == f"{bg.psnr:.2f}"
    assert cells["CS ↑"] == f"{clip.clip_score([b], ['a bright box'])[0]:.2f}"
    assert cells["CLIP edited ↑"] == f"{metrics.clip_edited(clip, b, mask, 'a bright box'):.2f}"
    assert list(cells)[2:] == ["CS ↑", "CLIP edited ↑", "CDS ↑", "Edge SSIM ↑", "Structure ×10³ ↓", "BG PSNR ↑",
                               "BG LPIPS ×10³ ↓", "BG MSE ×10⁴ ↓", "BG SSIM ×10² ↑"]
    scored = next(line for line in summary.splitlines() if line.startswith("Scored with: "))
    assert f"CLIP (CS, CLIP edited, CDS): {clip.label}" in scored
    assert f"Structure: {dino.label}" in scored and f"BG LPIPS: {lp.label}" in scored
    assert "tiny-dino-vitb8 (sha256 " in scored and "lpips-squeeze, squeeze (sha256 " in scored
    assert "torchmetrics ≤ 1.4.1" in summary  # the SSIM definition, beside the numbers
    assert report.DINO_HINT not in summary and report.LPIPS_HINT not in summary
    row = report.read_results_csv(tmp_path / "ev" / "results.csv")[0]
    assert row["structure_model"] == dino.label and row["lpips_model"] == lp.label and row["clip_model"] == clip.label

    # without the options the columns are skipped, each with a line saying which option fills it
    assert run_eval_command([str(csv_path), "--out", str(tmp_path / "plain")], "fpe eval") == 0
    plain = (tmp_path / "plain" / "summary.md").read_text(encoding="utf-8")
    assert "Structure" not in _cells(plain) and "BG LPIPS ×10³ ↓" not in _cells(plain)
    assert report.DINO_HINT in plain.splitlines() and report.LPIPS_HINT in plain.splitlines()
    assert "Scored with" not in plain


@pytest.mark.parametrize("option, make, expect", [
    ("--dino", lambda p: p, "--dino {p}: not a transformers ViT folder (no config.json); save facebook/dino-vitb8"),
    ("--dino", lambda p: (p / "config.json").write_text('{"model_type": "bert"}') and p,
     "--dino {p}: {p} is not a transformers ViT folder: its config.json has model_type 'bert'"),
    ("--lpips", lambda p: p, "--lpips {p}: {p} holds no complete LPIPS model: expected a folder with LPIPS' linear"),
])
@pytest.mark.parametrize("command", ["eval", "batch"])
def test_a_bad_model_folder_is_one_line_naming_the_option(tmp_path, capsys, monkeypatch, option, make, expect,
                                                          command):
    from fpe_headless.batch import cli as batch_cli

    folder = tmp_path / "models"
    folder.mkdir()
    make(folder)
    # ComfyUI must not start: the check comes first (a ComfyUI path that would fail differently if reached)
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "no-comfyui"))
    if command == "eval":
        csv_path, *_ = _pairs_csv(tmp_path)
        rc = batch_cli.run_eval_command([str(csv_path), "--out", str(tmp_path / "ev"), option, str(folder)], "fpe eval")
    else:
        rc = batch_cli.run_batch_command(["car-fake-edit", "--limit", "1", "--out", str(tmp_path / "b"), option,
                                          str(folder)], "fpe batch")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"fpe {command}: error: " + expect.format(p=folder)), err


def _grey_picture():
    """An 8-bit grey picture with edges, and the same picture as 16-bit values (v * 257)."""
    yy, xx = np.mgrid[:48, :48]
    grey = (20 + 2 * xx + 2 * yy).astype(np.uint8)
    grey[12:30, 10:26] = 230
    grey[(yy - 36) ** 2 + (xx - 36) ** 2 < 50] = 15
    return grey, grey.astype(np.uint16) * 257


def test_a_16_bit_png_scores_as_the_same_picture_as_its_8_bit_save(tmp_path):
    from fpe_headless.batch.batch import Scoring
    from fpe_headless.batch.datasets import EditItem

    grey, wide = _grey_picture()
    Image.fromarray(grey).save(tmp_path / "p8.png")
    Image.fromarray(wide).save(tmp_path / "p16.png")
    with Image.open(tmp_path / "p16.png") as opened:
        assert opened.mode.startswith("I")  # a 16-bit mode, which convert("RGB") clips to white
        assert np.array_equal(metrics.to_array(opened), metrics.to_array(Image.fromarray(grey)))
        assert np.array_equal(np.asarray(metrics._to_pil(opened)), np.asarray(Image.fromarray(grey).convert("RGB")))
    for other in (Image.fromarray(wide.astype(np.int32)), Image.fromarray(grey.astype(np.float32) / 255)):
        assert other.mode in ("I", "F")
        assert np.array_equal(metrics.to_array(other), metrics.to_array(Image.fromarray(grey)))
    item = EditItem(id="a", source_prompt="a photo", target_prompt="a photo")
    assert Scoring().score(item, tmp_path / "p8.png", tmp_path / "p16.png")["edge_ssim"] == pytest.approx(1.0)


def test_a_16_bit_mask_reads_as_the_same_mask(tmp_path):
    grey, wide = _grey_picture()
    Image.fromarray(grey).save(tmp_path / "m8.png")
    Image.fromarray(wide).save(tmp_path / "m16.png")
    with Image.open(tmp_path / "m8.png") as m8, Image.open(tmp_path / "m16.png") as m16:
        mask8, mask16 = metrics.mask_of(m8), metrics.mask_of(m16)
    assert mask8.any() and not mask8.all()
    assert np.array_equal(mask8, mask16)


def test_a_wide_image_out_of_range_is_refused_by_name():
    with pytest.raises(drawing.PictureError, match=r"a F image with values -1\.\.3: only 8-bit, 16-bit"):
        metrics.to_array(Image.fromarray(np.array([[-1.0, 3.0]], dtype=np.float32)))
