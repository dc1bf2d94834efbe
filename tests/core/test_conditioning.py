"""Conditioning with several entries (Combine, Set Area) pairs entry by entry with the source's."""

from __future__ import annotations

import pytest
import torch

from fpe_harness.execute import call_node
from fpe_harness.graphs import capture_with, inject, ksampler_with, latent, max_abs
from fpe_harness.host import pack_submodule
from fpe_harness.reference import encode, official_batch_edit

STEPS = 4
A, B = "a photo of green ducks walking on street", "a red brick wall in the sun"
A2, B2 = "a photo of rubber ducks walking on street", "a blue wooden wall in the rain"


@pytest.fixture(scope="module")
def fpe_error():
    return pack_submodule("fpe_attention.errors").FPEError


def combined(clip, *texts):
    out = encode(clip, texts[0])
    for text in texts[1:]:
        out = call_node("ConditioningCombine", conditioning_1=out, conditioning_2=encode(clip, text))[0]
    return out


def area(clip, text, x=0, y=0, size=64):
    return call_node("ConditioningSetArea", conditioning=encode(clip, text), width=size, height=size, x=x, y=y,
                     strength=1.0)[0]


def test_combined_prompts_pair_entry_by_entry(tiny_sd15):
    model, clip, _ = tiny_sd15
    src, source = capture_with(model, clip, combined(clip, A, B), latent(64, 48), steps=STEPS)
    kinds = {(key.kind, key.entry[1]) for key in source.entries}
    assert kinds == {(0, 0), (0, 1)}  # both entries stored, not the last one twice
    same = ksampler_with(model, source, clip, combined(clip, A, B), latent(64, 48), steps=STEPS)
    assert torch.equal(same, src["samples"])
    swapped = ksampler_with(model, source, clip, combined(clip, B, A), latent(64, 48), steps=STEPS)
    assert max_abs(swapped, src["samples"]) > 1.0  # each target entry meets its own source entry


@pytest.mark.parametrize("cfg", [7.5, 1.0])
def test_combined_edit_matches_the_official_algorithm_entry_by_entry(tiny_sd15, cfg):
    model, clip, _ = tiny_sd15
    width, height = 240, 288  # the 1080-token level stays unedited by the official rule
    src, source = capture_with(model, clip, combined(clip, A, B), latent(width, height), steps=STEPS, cfg=cfg)
    edited = ksampler_with(model, source, clip, combined(clip, A2, B2), latent(width, height), steps=STEPS, cfg=cfg)
    reference = official_batch_edit(model, clip, source=[A, B], target=[A2, B2], width=width, height=height, seed=42,
                                     steps=STEPS, cfg=cfg)
    floor = max_abs(src["samples"][0], reference[0])
    err = max_abs(edited[0], reference[1])
    plain = call_node("KSampler", model=model, seed=42, steps=STEPS, cfg=cfg, sampler_name="euler",
                      scheduler="normal", positive=combined(clip, A2, B2), negative=encode(clip, ""),
                      latent_image=latent(width, height), denoise=1.0)[0]["samples"]
    effect = max_abs(plain[0], reference[1])
    print(f"combined cfg {cfg}: |edit - reference| {err:.3g}, floor {floor:.3g}, effect {effect:.3g}, "
          f"scale {float(reference.abs().max()):.3g}")
    assert err <= 2 * floor + 1e-5 * float(reference.abs().max())
    assert effect > 100 * err


def test_split_calls_pair_the_same_entries(tiny_sd15, monkeypatch):
    model, clip, _ = tiny_sd15
    src_batched, source = capture_with(model, clip, combined(clip, A, B), latent(64, 48), steps=STEPS)
    batched = ksampler_with(model, source, clip, combined(clip, A2, B2), latent(64, 48), steps=STEPS)
    monkeypatch.setattr(model.model, "memory_required", lambda *a, **k: 1e30)  # one chunk per UNet call
    src_split, split_source = capture_with(model, clip, combined(clip, A, B), latent(64, 48), steps=STEPS)
    floor = max_abs(src_split["samples"], src_batched["samples"])  # the same run, batched vs one chunk per call
    for src in (source, split_source):
        split = ksampler_with(model, src, clip, combined(clip, A2, B2), latent(64, 48), steps=STEPS)
        # A mis-paired entry moves the edit by orders more (the swapped-entries case above: > 1).
        assert max_abs(split, batched) <= 2 * floor + 1e-5 * float(batched.abs().max())


@pytest.mark.parametrize("target", [[A2], [A2, B2, "a third prompt"]], ids=["fewer", "more"])
def test_entries_that_do_not_pair_are_an_error_naming_both(tiny_sd15, fpe_error, target):
    model, clip, _ = tiny_sd15
    _, source = capture_with(model, clip, combined(clip, A, B), latent(64, 48), steps=STEPS)
    with pytest.raises(fpe_error, match=rf"does not pair with the source's entry by entry: the target sampler has "
                                        rf"{len(target)} positive entr.*FPE Source Capture had 2 positive entries"):
        ksampler_with(model, source, clip, combined(clip, *target), latent(64, 48), steps=STEPS)


def test_area_conditioning_pairs_when_both_sides_have_the_same_areas(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    size = latent(128, 96)

    def regional(whole, part, x=0):
        return call_node("ConditioningCombine", conditioning_1=encode(clip, whole),
                         conditioning_2=area(clip, part, x=x))[0]

    src, source = capture_with(model, clip, regional(A, B), size, steps=STEPS)
    same = ksampler_with(model, source, clip, regional(A, B), size, steps=STEPS)
    assert torch.equal(same, src["samples"])
    edited = ksampler_with(model, source, clip, regional(A2, B2), size, steps=STEPS)
    assert max_abs(edited, same) > 1.0
    with pytest.raises(fpe_error, match=r"area 64x64 px at \(64, 0\).*area 64x64 px at \(0, 0\)"):
        ksampler_with(model, source, clip, regional(A2, B2, x=64), size, steps=STEPS)


def test_a_controlnet_on_one_entry_only(tiny_sd15, fpe_error, comfy_host):
    """Current ComfyUI pairs entries by id, so a ControlNet on one target entry changes nothing in the
    pairing. ComfyUI of early 2024 gives no ids and runs such an entry in a batch of its own, before the
    others: the order no longer pairs, which must be an error there, not a silent swap."""
    from fpe_headless.comfy import tiny_models

    model, clip, _ = tiny_sd15
    path = comfy_host.workdir / "models" / "controlnet" / "tiny_cn.safetensors"
    if not path.exists():
        tiny_models.write_controlnet(tiny_models.SD15_TINY, path)
    control = call_node("ControlNetLoader", control_net_name="tiny_cn.safetensors")[0]
    hint = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    src, source = capture_with(model, clip, combined(clip, A, B), latent(64, 48), steps=STEPS)
    faint = call_node("ControlNetApply", conditioning=encode(clip, A), control_net=control, image=hint,
                      strength=1e-6)[0]  # present, but moves nothing
    target = call_node("ConditioningCombine", conditioning_1=faint, conditioning_2=encode(clip, B))[0]
    if comfy_host.is_current:
        same = ksampler_with(model, source, clip, target, latent(64, 48), steps=STEPS)
        assert max_abs(same, src["samples"]) <= 1e-3 * float(src["samples"].abs().max())
    else:
        with pytest.raises(fpe_error, match=r"entries would run in another order than the source's"):
            ksampler_with(model, source, clip, target, latent(64, 48), steps=STEPS)


def test_a_guider_with_its_own_order_pairs_by_role(tiny_sd15, comfy_host):
    """DualCFGGuider (current ComfyUI) runs [negative, middle, positive]: only the positive entry's rows
    may take the source's, whatever place it has in the call."""
    if not comfy_host.is_current:
        pytest.skip("DualCFGGuider is not in ComfyUI of early 2024")
    model, clip, _ = tiny_sd15
    _, source = capture_with(model, clip, encode(clip, A), latent(64, 48), steps=STEPS)
    before, after = [], []

    def recorder(calls):
        def record(n, context, value, extra_options):
            calls.append((list(extra_options["cond_or_uncond"]), n.clone()))
            return n, context, value
        return record

    own = model.clone()
    own.set_model_attn1_patch(recorder(before))  # before the Inject: each chunk's own layer input
    patched = inject(own, source)
    patched.set_model_attn1_patch(recorder(after))  # after it: what attention gets
    guider = call_node("DualCFGGuider", model=patched, cond1=encode(clip, A2), cond2=encode(clip, B2),
                       negative=encode(clip, ""), cfg_conds=5.0, cfg_cond2_negative=3.0, style="regular")[0]
    sigmas = call_node("BasicScheduler", model=model, scheduler="normal", steps=STEPS, denoise=1.0)[0]
    call_node("SamplerCustomAdvanced", noise=call_node("RandomNoise", noise_seed=42)[0], guider=guider,
              sampler=call_node("KSamplerSelect", sampler_name="euler")[0], sigmas=sigmas,
              latent_image=latent(64, 48))
    replaced = set()
    for (kinds, mine), (_, seen) in zip(before, after, strict=True):
        rows = mine.shape[0] // len(kinds)
        for j, kind in enumerate(kinds):
            if not torch.equal(mine[j * rows:(j + 1) * rows], seen[j * rows:(j + 1) * rows]):
                replaced.add(kind)
    assert replaced == {2}  # the positive list is the third of DualCFG's
