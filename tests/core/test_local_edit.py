"""Local edits (FPE Local Edit): the exactness contract against an independent reference.

Outside the mask the target must be the source branch, inside it the FPE edit:
mask 0 -> the source bit for bit, mask 1 -> the unmasked edit bit for bit, a half mask -> the kept
half is the source's; a soft mask equals an explicit Euler loop that blends the model's input and
denoised output towards an explicitly traced source run; a word mask equals Prompt-to-Prompt's
LocalBlend computed here from maps recorded by a test patch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import load_tiny
from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, TGT, capture, encoded_photo, inject, invert, ksampler, latent, max_abs, sample_back
from fpe_harness.reference import encode

STEPS = 4
SIZES = {"tiny_sd15": (128, 96), "tiny_sd2": (128, 96), "tiny_sd2_v": (128, 96), "tiny_sdxl": (256, 192)}


def local(model, mask=None, *, clip=None, words="", start=0.0, grow=0, feather=0, soft="blend", threshold=0.3,
          composite=False, source_text=SRC, target_text=TGT):
    extra = {} if mask is None else {"mask": mask}
    if clip is not None:
        extra["clip"] = clip
    return call_node("FPELocalEdit", model=model, start=start, grow=grow, feather=feather, soft=soft, words=words,
                     source_text=source_text, target_text=target_text, threshold=threshold, composite=composite,
                     **extra)


# --- an independent reference: explicit Euler loops -------------------------------------------------

class Trace:
    """A sampler function: plain Euler, keeping each step's model input and denoised output."""

    def __init__(self):
        self.x, self.denoised = [], []

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
            self.x.append(x.clone())
            self.denoised.append(denoised.clone())
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x


class BlendedEuler:
    """Euler whose every step blends the model input and the denoised output towards a traced source."""

    def __init__(self, trace: Trace, mask: torch.Tensor):
        self.trace, self.mask = trace, mask

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        m = self.mask
        for i in range(len(sigmas) - 1):
            xs, ds = self.trace.x[i], self.trace.denoised[i]
            denoised = model(xs + m * (x - xs), sigmas[i] * s_in, **(extra_args or {}))
            denoised = ds + m * (denoised - ds)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x


def run_sampler(model, clip, function, text, size, sigmas, seed=42, cfg=7.5):
    import comfy.sample
    import comfy.samplers

    noise = comfy.sample.prepare_noise(size["samples"], seed, None)
    with torch.inference_mode():  # as the executor runs nodes
        out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.KSAMPLER(function), sigmas, encode(clip, text),
                                         encode(clip, ""), size["samples"], seed=seed)
    return out


# --- the contract --------------------------------------------------------------------------------

_RUNS: dict = {}


def _setup(arch, storage):
    key = (arch, storage)
    if key not in _RUNS:
        model, clip, _ = load_tiny(arch)
        width, height = SIZES[arch]
        size = latent(width, height)
        src, source = capture(model, clip, steps=STEPS, latent_image=size, storage=storage, store_layers="all")
        edited = inject(model, source, layers="all")
        plain = ksampler(edited, clip, steps=STEPS, latent_image=size)
        _RUNS[key] = (model, clip, size, src["samples"], source, edited, plain)
    return _RUNS[key]


@pytest.mark.parametrize("arch, storage", [("tiny_sd15", "auto"), ("tiny_sd15", "replay"), ("tiny_sd2", "auto"),
                                           ("tiny_sd2", "replay"), ("tiny_sdxl", "auto"), ("tiny_sdxl", "replay")])
def test_zero_one_and_half_masks(arch, storage):
    model, clip, size, src, source, edited, plain = _setup(arch, storage)
    _, _, h, w = size["samples"].shape
    assert source.storage_device == ("replay" if storage == "replay" else source.storage_device)
    effect = max_abs(plain, src)
    assert effect > 1e-2, "the edit must change the picture for the contract to say anything"

    zeros = ksampler(local(edited, torch.zeros(1, h * 8, w * 8))[0], clip, steps=STEPS, latent_image=size)
    assert torch.equal(zeros, src), "mask 0 everywhere: the source, bit for bit"
    ones = ksampler(local(edited, torch.ones(1, h * 8, w * 8))[0], clip, steps=STEPS, latent_image=size)
    assert torch.equal(ones, plain), "mask 1 everywhere: the unmasked edit, bit for bit"

    half = torch.zeros(1, h * 8, w * 8)
    half[:, :, : w * 4] = 1.0  # the left half edited
    halves = ksampler(local(edited, half)[0], clip, steps=STEPS, latent_image=size)
    kept, changed = halves[..., w // 2:], halves[..., : w // 2]
    assert torch.equal(kept, src[..., w // 2:]), "the kept half is the source's"
    assert max_abs(changed, src[..., : w // 2]) > 0.1 * effect, "the edited half is edited"
    print(f"{arch} {storage}: edit effect {effect:.3g}, edited half vs source "
          f"{max_abs(changed, src[..., : w // 2]):.3g}")


@pytest.mark.parametrize("arch, storage", [("tiny_sd15", "auto"), ("tiny_sd15", "replay"), ("tiny_sd2", "auto"),
                                           ("tiny_sd2_v", "auto"), ("tiny_sdxl", "auto"), ("tiny_sdxl", "replay")])
def test_a_soft_mask_is_the_reference_blend(arch, storage):
    model, clip, size, src, source, edited, plain = _setup(arch, storage)
    _, _, h, w = size["samples"].shape
    sigmas = torch.tensor(source.schedule)
    g = torch.Generator().manual_seed(3)
    soft = F.interpolate(torch.rand(1, 1, 3, 4, generator=g), size=(h * 8, w * 8), mode="bilinear")[:, 0]
    trace = Trace()
    traced = run_sampler(model, clip, trace, SRC, size, sigmas)
    assert torch.equal(traced.cpu(), src), "the explicit Euler loop reproduces the capture's run"
    m = F.interpolate(soft[:, None], size=(h, w), mode="area")
    reference = run_sampler(edited, clip, BlendedEuler(trace, m), TGT, size, sigmas).cpu()
    ours = ksampler(local(edited, soft)[0], clip, steps=STEPS, latent_image=size)
    scale = float(reference.abs().max())
    err = max_abs(ours, reference)
    print(f"{arch} {storage}: soft mask |ours - reference| {err:.3g} (latent scale {scale:.3g}, edit effect "
          f"{max_abs(plain, src):.3g})")
    # torch.lerp rounds differently from s + m(t - s) where m >= 0.5; the UNet carries that rounding on.
    assert err <= 1e-5 * scale
    assert max_abs(ours, plain) > 0.05 * max_abs(plain, src) and max_abs(ours, src) > 0.05 * max_abs(plain, src)


class MapTrace:
    """A test attn2 patch: the first cond chunk's cross-attention maps at the given layers, per evaluation,
    computed explicitly (per head softmax, mean over heads, sum over layers)."""

    def __init__(self, modules):
        self.modules = modules
        self.by_sigma: dict[float, torch.Tensor] = {}

    def __call__(self, n, context, value, extra_options):
        layer = (extra_options["block"][0], extra_options["block"][1], extra_options["block_index"])
        kinds = list(extra_options["cond_or_uncond"])
        skip = extra_options.get("fpe_source_chunks", 0)  # storage replay: the source's chunks run in front
        if layer in self.modules and 0 in kinds[skip:]:
            per = n.shape[0] // len(kinds)
            row = (skip + kinds[skip:].index(0)) * per
            module = self.modules[layer]
            with torch.no_grad():
                q, k = module.to_q(n[row:row + 1]).float(), module.to_k(context[row:row + 1, :77]).float()
            heads = module.heads
            qh = q.reshape(1, q.shape[1], heads, -1).transpose(1, 2)
            kh = k.reshape(1, k.shape[1], heads, -1).transpose(1, 2)
            maps = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1).mean(1)
            sigma = float(extra_options["sigmas"][0])
            self.by_sigma[sigma] = self.by_sigma.get(sigma, 0) + maps.cpu()
        return n, context, value


def local_blend(maps_sum: torch.Tensor, grid, columns, hw, threshold):
    """Prompt-to-Prompt's LocalBlend mask for one prompt, written out."""
    word = maps_sum[..., columns].sum(-1).reshape(1, 1, *grid)
    word = F.max_pool2d(word, (3, 3), (1, 1), padding=(1, 1))
    word = F.interpolate(word, size=hw)
    word = word / word.max(2, keepdim=True)[0].max(3, keepdim=True)[0]
    return word.gt(threshold)


@pytest.mark.parametrize("arch, storage", [("tiny_sd15", "auto"), ("tiny_sd15", "replay"), ("tiny_sdxl", "auto")])
def test_the_word_mask_is_local_blend_of_the_recorded_maps(arch, storage):
    model, clip, _ = load_tiny(arch)
    size = latent(*SIZES[arch])
    from fpe_attention.architecture import transformer_layers, unet_of
    modules = {key: t.attn2 for key, t, _ in transformer_layers(unet_of(model))}
    traced_model = model.clone()
    source_maps = MapTrace({})
    traced_model.set_model_attn2_patch(source_maps)
    src, source = capture(traced_model, clip, steps=STEPS, latent_image=size, store_layers="all", storage=storage)
    # LocalBlend's level: one attention level outside the middle block
    levels = {layer.key: layer.level for layer in source.layers}
    assert source.word_layers and all(key[0] != "middle" for key in source.word_layers)
    assert len({levels[key] for key in source.word_layers}) == 1
    source_maps.modules = {key: modules[key] for key in source.word_layers}
    # the capture above ran before the trace knew its layers: run the source again with the trace alone
    source_maps.by_sigma.clear()
    ksampler(traced_model, clip, SRC, steps=STEPS, latent_image=size)
    edited = inject(model, source, layers="all")
    words, threshold = "green rubber", 0.6
    patched, settings = local(edited, clip=clip, words=words, threshold=threshold)
    target_maps = MapTrace({key: modules[key] for key in source.word_layers})
    patched = patched.clone()
    patched.set_model_attn2_patch(target_maps)
    out = ksampler(patched, clip, steps=STEPS, latent_image=size)
    got = settings.history.mask_for(out)
    assert got is not None
    from fpe_attention.prompt_words import prompt_tokens
    cols_s = [p for i in prompt_tokens(clip, SRC).find("green") for p in prompt_tokens(clip, SRC).positions[i]]
    cols_t = [p for i in prompt_tokens(clip, TGT).find("rubber") for p in prompt_tokens(clip, TGT).positions[i]]
    grid = source.word_grid
    hw = tuple(size["samples"].shape[-2:])
    s_sum = sum(source_maps.by_sigma.values())
    t_sum = sum(target_maps.by_sigma.values())
    expected = (local_blend(s_sum, grid, cols_s, hw, threshold) | local_blend(t_sum, grid, cols_t, hw, threshold))
    assert 0.0 < float(expected.float().mean()) < 1.0, "a threshold that makes a partial mask on this model"
    assert torch.equal(got.bool(), expected), (got.float().mean(), expected.float().mean())
    # the mask acted: outside it, the source
    outside = ~expected.expand_as(out)
    assert torch.equal(out[outside], src["samples"][outside]) or max_abs(out[outside], src["samples"][outside]) < 1e-6
    shown = call_node("FPELocalMask", local_edit=settings, samples={"samples": out})
    mask = shown[0] if isinstance(shown, tuple) else shown["result"][0]
    assert mask.shape == (1, hw[0] * 8, hw[1] * 8)


# --- real photos ---------------------------------------------------------------------------------

def test_real_photo_masks(tiny_sd15):
    model, clip, _ = tiny_sd15
    width, height = 128, 96
    photo = encoded_photo(width, height, seed=5)
    inverted, source, _ = invert(model, clip, photo, steps=STEPS, store_layers="all")
    edited = inject(model, source, layers="all")
    plain = sample_back(edited, clip, inverted, steps=STEPS)
    zeros = sample_back(local(edited, torch.zeros(1, height, width))[0], clip, inverted, steps=STEPS)
    bottom = source.trajectory[-1]  # the photo's latent in the sampler's space
    made = model.model.process_latent_in(zeros)
    err = max_abs(made, bottom)
    print(f"mask 0 on a DDIM-inverted photo: |result - photo latent| {err:.3g} (scale {float(bottom.abs().max()):.3g})")
    assert err <= 1e-5 * float(bottom.abs().max()), "the background walks the inverted trajectory to the photo"
    ones = sample_back(local(edited, torch.ones(1, height, width))[0], clip, inverted, steps=STEPS)
    assert torch.equal(ones, plain)
    half = torch.zeros(1, height, width)
    half[:, : height // 2] = 1.0
    by_node = sample_back(local(edited, half)[0], clip, inverted, steps=STEPS)
    masked = call_node("SetLatentNoiseMask", samples=inverted, mask=half)[0]
    by_noise_mask = sample_back(edited, clip, masked, steps=STEPS)
    assert torch.equal(by_node, by_noise_mask), "a noise mask on the target latent is the local edit's mask"
    lh = height // 16
    assert max_abs(model.model.process_latent_in(by_node)[..., lh:, :], bottom[..., lh:, :]) <= 1e-5 * float(
        bottom.abs().max())
    assert max_abs(by_node[..., :lh, :], plain[..., :lh, :]) < max_abs(zeros[..., :lh, :], plain[..., :lh, :])


def test_a_null_text_background_is_its_reconstruction(tiny_sd15):
    model, clip, _ = tiny_sd15
    width, height = 128, 96
    photo = encoded_photo(width, height, seed=6)
    out = call_node("FPENullTextInvert", model=model, positive=encode(clip, SRC), negative=encode(clip, ""),
                    latent=photo, steps=STEPS, scheduler="normal", cfg=7.5, inner_steps=2, early_stop=1e-5,
                    learning_rate=1e-2, store_layers="all", store_custom_layers="in4", store_end=0.8,
                    store_rows="cond", storage="auto", precision="exact")
    inverted, source, null_negative = out[0], out[1], out[2]
    edited = inject(model, source, layers="all")

    def back(m, text):
        return call_node("KSamplerAdvanced", model=m, add_noise="disable", noise_seed=0, steps=STEPS, cfg=7.5,
                         sampler_name="ddim", scheduler="normal", positive=encode(clip, text), negative=null_negative,
                         latent_image=inverted, start_at_step=0, end_at_step=10000,
                         return_with_leftover_noise="disable")[0]["samples"]

    reconstruction = back(model, SRC)
    zeros = back(local(edited, torch.zeros(1, height, width))[0], TGT)
    assert torch.equal(zeros, reconstruction)
    composite = back(local(edited, torch.zeros(1, height, width), composite=True)[0], TGT)
    photo_latent = source.trajectory[-1]
    assert max_abs(model.model.process_latent_in(composite), photo_latent) <= 1e-5 * float(photo_latent.abs().max())


# --- settings, checks, caching --------------------------------------------------------------------

def test_grow_feather_and_thresholds():
    from fpe_attention.local_mask import feather_mask, grow_mask, latent_mask, threshold_fraction, thresholded

    dot = torch.zeros(1, 1, 9, 9)
    dot[..., 4, 4] = 1.0
    assert int(grow_mask(dot, 2).sum()) == 25 and torch.equal(grow_mask(grow_mask(dot, 2), -2), dot)
    soft = feather_mask(grow_mask(dot, 2), 2)
    assert 0 < float(soft.min()) < 1e-2 and float(soft[..., 4, 4]) > 0.9 and abs(float(soft.sum()) - 25) < 1e-3
    assert threshold_fraction(999.0, 999.0, 0.0) == 1.0 and threshold_fraction(0.0, 999.0, 0.0) == 0.0
    ramp = torch.linspace(0, 1, 11).reshape(1, 1, 1, 11)
    assert int(thresholded(ramp, 0.3).sum()) == 8  # 0.3 .. 1.0
    assert int(thresholded(ramp, 0.0).sum()) == 10  # a pixel of 0 never joins
    big = torch.zeros(1, 96, 128)
    big[:, :48] = 1
    m = latent_mask(big, (1, 4, 12, 16))
    assert m.shape == (1, 1, 12, 16) and torch.equal(m[0, 0, :6], torch.ones(6, 16)) and float(m[0, 0, 6:].sum()) == 0


def test_thresholds_grow_the_edit_over_the_steps(tiny_sd15):
    model, clip, size, src, source, edited, plain = _setup("tiny_sd15", "auto")
    _, _, h, w = size["samples"].shape
    ramp = torch.linspace(0, 1, w * 8).expand(1, h * 8, w * 8).clone()
    blended = ksampler(local(edited, ramp)[0], clip, steps=STEPS, latent_image=size)
    stepped = ksampler(local(edited, ramp, soft="thresholds")[0], clip, steps=STEPS, latent_image=size)
    assert not torch.equal(blended, stepped)
    # a pixel of 0 never joins the edit: it stays the source's
    ramp[..., : 8 * 2] = 0.0
    stepped = ksampler(local(edited, ramp, soft="thresholds")[0], clip, steps=STEPS, latent_image=size)
    assert torch.equal(stepped[..., :1], src[..., :1])


@pytest.mark.parametrize("kind, message", [
    ("batch", r"mask: the mask has 2 images but the target latent 1"),
    ("aspect", r"mask: the mask is 50x96 px but the target latent is 128x96 px"),
    ("nan", r"mask: the mask holds NaN"),
    ("no inject", r"connect the model output of FPE Self-Attn Inject"),
    ("chained", r"already carries an FPE Local Edit"),
    ("nothing", r"connect a MASK or name words"),
    ("composite", r"composite: .* generated image"),
    ("no clip", r"clip: words need the CLIP"),
    ("word", r"words: 'zebra' is in neither prompt"),
    ("stale source", r"source_text: .* does not encode to the prompt"),
    ("grow", r"grow: 99 is outside"),
    ("punctuation", r"words: ', ;' names no word"),
])
def test_bad_settings_are_named_before_sampling(tiny_sd15, fpe_error, kind, message):
    model, clip, size, src, source, edited, plain = _setup("tiny_sd15", "auto")
    full = torch.ones(1, 96, 128)
    cases = {
        "batch": lambda: ksampler(local(edited, torch.ones(2, 96, 128))[0], clip, steps=STEPS, latent_image=size),
        "aspect": lambda: local(edited, torch.ones(1, 96, 50)),
        "nan": lambda: local(edited, torch.full((1, 96, 128), float("nan"))),
        "no inject": lambda: local(model, full),
        "chained": lambda: local(local(edited, full)[0], full),
        "nothing": lambda: local(edited),
        "composite": lambda: local(edited, full, composite=True),
        "no clip": lambda: local(edited, words="green"),
        "word": lambda: local(edited, clip=clip, words="zebra"),
        "stale source": lambda: local(edited, clip=clip, words="green", source_text="a photo of a cat"),
        "grow": lambda: local(edited, full, grow=99),
        "punctuation": lambda: local(edited, clip=clip, words=", ;"),
    }
    with pytest.raises(fpe_error, match=message):
        cases[kind]()


def test_a_stale_target_text_is_named_when_sampling_starts(tiny_sd15, fpe_error):
    model, clip, size, src, source, edited, plain = _setup("tiny_sd15", "auto")
    patched, _ = local(edited, clip=clip, words="green", target_text="a photo of green ducks walking on grass")
    with pytest.raises(fpe_error, match=r"target_text: .* does not encode to the prompt the target sampler uses"):
        ksampler(patched, clip, steps=STEPS, latent_image=size)
    # the failed run leaves nothing behind: the next run is a fresh one
    again, _ = local(edited, torch.ones(1, 96, 128))
    assert torch.equal(ksampler(again, clip, steps=STEPS, latent_image=size), plain)


# --- conditioning, sweeps, the executor ------------------------------------------------------------

@pytest.mark.parametrize("storage", ["auto", "replay"])
def test_areas_combined_prompts_and_sweeps_keep_the_background(tiny_sd15, storage):
    from fpe_harness.graphs import capture_with

    model, clip, _ = tiny_sd15
    size = latent(128, 96)

    def regional(whole, part):  # the area (64x64 px at y 32) lies in the edited left half
        part = call_node("ConditioningSetArea", conditioning=encode(clip, part), width=64, height=64, x=0, y=32,
                         strength=1.0)[0]
        return call_node("ConditioningCombine", conditioning_1=encode(clip, whole), conditioning_2=part)[0]

    src, source = capture_with(model, clip, regional(SRC, "a red wall"), size, steps=STEPS, storage=storage,
                               store_layers="all")
    half = torch.zeros(1, 96, 128)
    half[:, :, :64] = 1.0

    def target(model_in, latent_in):
        return call_node("KSampler", model=model_in, seed=42, steps=STEPS, cfg=7.5, sampler_name="euler",
                         scheduler="normal", positive=regional(TGT, "a blue wall"), negative=encode(clip, ""),
                         latent_image=latent_in, denoise=1.0)[0]["samples"]

    soft = half.clone()
    soft[:, :, 32:64] = 0.5  # the x blend acts on the area's crop too
    edited = call_node("FPESelfAttnInject", model=model, fpe_source=source, layers="all", custom_layers="in4",
                       start=0.0, end=0.8, branches="cond only")[0]
    out = target(local(edited, soft)[0], size)
    assert torch.equal(out[..., 8:], src["samples"][..., 8:])
    assert max_abs(out[..., :8], src["samples"][..., :8]) > 1e-2

    swept, labels = call_node("FPESelfAttnInject", model=model, fpe_source=source, layers="all", custom_layers="in4",
                              start=0.0, end=0.8, branches="cond only", sweep="end=0.4,0.8")
    batch = call_node("FPESweepLatent", latent=size, sweep_labels=labels)[0]
    rows = target(local(swept, half)[0], batch)
    assert rows.shape[0] == 2
    for k in range(2):
        assert torch.equal(rows[k:k + 1, ..., 8:], src["samples"][..., 8:]), f"sweep image {k} keeps the background"
    assert max_abs(rows[0], rows[1]) > 1e-3  # each image has its own setting


def _local_prompt(ckpt, *, value=1.0, words="", target_text=TGT):
    from fpe_harness.prompts import fpe_prompt

    prompt = fpe_prompt(ckpt, "euler")
    prompt["6"]["inputs"]["store_layers"] = "all"
    prompt["7"]["inputs"]["layers"] = "all"
    prompt["12"] = {"class_type": "SolidMask", "inputs": {"value": value, "width": 64, "height": 48}}
    prompt["13"] = {"class_type": "FPELocalEdit", "inputs": {
        "model": ["7", 0], "mask": ["12", 0], "clip": ["1", 1], "start": 0.0, "grow": 0, "feather": 0,
        "soft": "blend", "words": words, "source_text": SRC, "target_text": target_text, "threshold": 0.3,
        "composite": False}}
    prompt["8"]["inputs"]["model"] = ["13", 0]
    return prompt


def test_changing_the_mask_reruns_no_source_and_a_failed_run_leaves_nothing(tiny_sd15_ckpt):
    import safetensors.torch

    from conftest import HOST
    from fpe_harness.execute import Executor

    def saved_latent(result):
        saved = result.outputs["9"]["latents"][0]
        return safetensors.torch.load_file(str(HOST.workdir / saved["type"] / saved["subfolder"] /
                                               saved["filename"]))["latent_tensor"]

    server = Executor()
    a = _local_prompt(tiny_sd15_ckpt, value=1.0)
    first = server.run(a)
    other_mask = server.run(_local_prompt(tiny_sd15_ckpt, value=0.0))
    assert "6" not in other_mask.executed and {"12", "13", "8"} <= set(other_mask.executed)
    stale = server.run(_local_prompt(tiny_sd15_ckpt, words="green", target_text="a photo of a cat"),
                       expect_success=False)
    assert not stale.success and "target_text" in stale.error["exception_message"]
    again = server.run(a)
    assert "8" in again.executed and "6" not in again.executed
    fresh = Executor().run(a)
    assert torch.equal(saved_latent(again), saved_latent(fresh)) and torch.equal(saved_latent(first),
                                                                                  saved_latent(fresh))


def test_an_empty_mask_is_warned(tiny_sd15, caplog):
    model, clip, size, src, source, edited, plain = _setup("tiny_sd15", "auto")
    with caplog.at_level("WARNING"):
        local(edited, torch.zeros(1, 96, 128))
    assert "the local edit's mask is empty" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        local(edited, torch.ones(1, 96, 128))
    assert "mask is empty" not in caplog.text


def test_a_feathered_mask_of_ones_is_still_the_unmasked_edit(tiny_sd15):
    model, clip, size, src, source, edited, plain = _setup("tiny_sd15", "auto")
    out = ksampler(local(edited, torch.ones(1, 96, 128), feather=3)[0], clip, steps=STEPS, latent_image=size)
    assert torch.equal(out, plain)


def test_words_need_one_prompt_and_a_photo_edit_needs_a_region(tiny_sd15, fpe_error):
    from fpe_harness.graphs import capture_with

    model, clip, _ = tiny_sd15
    size = latent(128, 96)
    both = call_node("ConditioningCombine", conditioning_1=encode(clip, SRC), conditioning_2=encode(clip, "a wall"))[0]
    _, combined = capture_with(model, clip, both, size, steps=2)
    with pytest.raises(fpe_error, match=r"words: FPE Source Capture's positive has 2 entries"):
        local(inject(model, combined), clip=clip, words="green")
    photo = encoded_photo(128, 96, seed=5)
    inverted, source, _ = invert(model, clip, photo, steps=2)
    patched, _ = local(inject(model, source))  # a photo's region may come from a noise mask: known at sampling
    with pytest.raises(fpe_error, match=r"FPE Local Edit has no region: connect a MASK"):
        sample_back(patched, clip, inverted, steps=2)


def test_one_mask_per_image_of_a_batch(tiny_sd15):
    model, clip, _ = tiny_sd15
    size = latent(128, 96, batch=2)
    src, source = capture(model, clip, steps=STEPS, latent_image=size, store_layers="all")
    edited = inject(model, source, layers="all")
    plain = ksampler(edited, clip, steps=STEPS, latent_image=size)
    masks = torch.stack([torch.zeros(96, 128), torch.ones(96, 128)])
    out = ksampler(local(edited, masks)[0], clip, steps=STEPS, latent_image=size)
    assert torch.equal(out[0], src["samples"][0]), "image 0, mask 0: its source"
    assert torch.equal(out[1], plain[1]), "image 1, mask 1: its edit"
