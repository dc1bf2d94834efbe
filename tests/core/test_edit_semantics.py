"""FPE edit semantics on small latents: identities, rows, batching, samplers, composition."""

from __future__ import annotations

import copy

import pytest
import torch

from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, TGT, capture, inject, ksampler, latent, max_abs, stored_at
from fpe_harness.host import pack_submodule
from fpe_harness.reference import encode

W, H = 64, 48  # an 8x6 latent: every layer is at most 32x32 tokens, runs are fast


def small(batch=1):
    return latent(W, H, batch)


def test_same_prompt_reproduces_the_source_and_empty_window_is_plain(tiny_arch):
    _, (model, clip, _) = tiny_arch
    src_latent, source = capture(model, clip, SRC, latent_image=small())
    same = ksampler(inject(model, source), clip, SRC, latent_image=small())
    assert torch.equal(same, src_latent["samples"])
    plain = ksampler(model, clip, TGT, latent_image=small())
    off = ksampler(inject(model, source, start=0.5, end=0.5), clip, TGT, latent_image=small())
    assert torch.equal(off, plain)
    edited = ksampler(inject(model, source), clip, TGT, latent_image=small())
    assert max_abs(edited, plain) > 3e-3 * float(plain.abs().max())


def _record_attn1_inputs(model):
    """A clone of ``model`` with an attn1 patch (applied after any other) that records n per call."""
    calls = []

    def record(n, context, value, extra_options):
        calls.append({"sigma": float(extra_options["sigmas"][0]), "chunks": list(extra_options["cond_or_uncond"]),
                      "layer": (extra_options["block"][0], extra_options["block"][1], extra_options["block_index"]),
                      "q": n.clone(), "k": context.clone(), "v": value.clone()})
        return n, context, value

    patched = model.clone()
    patched.set_model_attn1_patch(record)
    return patched, calls


def _rows(call, kind):
    b = call["q"].shape[0] // len(call["chunks"])
    j = call["chunks"].index(kind)
    return slice(j * b, (j + 1) * b)


@pytest.mark.parametrize("branches", ["cond only", "cond + uncond"])
def test_which_rows_take_the_source_attention(tiny_sd15, branches):
    model, clip, _ = tiny_sd15
    _, source = capture(model, clip, SRC, latent_image=small(), store_rows="cond + uncond")
    # One recorder before the inject (the target's own layer inputs), one after (what attention gets).
    before_model, before = _record_attn1_inputs(model)
    after_model, after = _record_attn1_inputs(inject(before_model, source, branches=branches))
    ksampler(after_model, clip, TGT, latent_image=small(), steps=6)
    assert len(after) == len(before) == 16 * 6
    edited_steps = {source.schedule.index(c["sigma"]) for c in after if c["sigma"] in source.schedule}
    assert edited_steps == set(range(6))
    for own, seen in zip(before, after, strict=True):
        cond, uncond = _rows(seen, 0), _rows(seen, 1)
        step = source.schedule.index(seen["sigma"])
        stored = (stored_at(source, 0, step) or {}).get(seen["layer"])
        if step >= 4:  # int(6 * 0.8) = 4: steps 4 and 5 are not edited
            assert stored is None and torch.equal(seen["q"], own["q"])
            continue
        stored_uncond = stored_at(source, 1, step)[seen["layer"]]
        # Queries and keys of the conditional rows are the source's; values stay the target's own.
        assert torch.equal(seen["q"][cond], stored) and torch.equal(seen["k"][cond], stored)
        assert torch.equal(seen["v"], own["q"])
        if branches == "cond only":  # the unconditional rows run their own attention
            assert torch.equal(seen["q"][uncond], own["q"][uncond])
            assert torch.equal(seen["k"][uncond], own["q"][uncond])
        else:
            assert torch.equal(seen["q"][uncond], stored_uncond)
            assert torch.equal(seen["k"][uncond], stored_uncond)
            if step > 0:  # at step 0 both uncond rows see the same noise and negative prompt
                assert not torch.equal(stored_uncond, own["q"][uncond])


def test_split_cond_uncond_calls_equal_batched(tiny_sd15, monkeypatch):
    model, clip, _ = tiny_sd15
    src_batched, source = capture(model, clip, SRC, latent_image=small())
    edit_batched = ksampler(inject(model, source), clip, TGT, latent_image=small())
    # ComfyUI batches cond and uncond only if its memory estimate fits: make every estimate too big.
    monkeypatch.setattr(model.model, "memory_required", lambda *a, **k: 1e30)
    traced, calls = _record_attn1_inputs(model)
    ksampler(traced, clip, TGT, latent_image=small(), steps=1)
    assert {tuple(c["chunks"]) for c in calls} == {(0,), (1,)}  # the split is really forced
    src_split, source_split = capture(model, clip, SRC, latent_image=small())
    for src in (source, source_split):  # batched and split captures serve split and batched targets
        edit_split = ksampler(inject(model, src), clip, TGT, latent_image=small())
        err = max_abs(edit_split, edit_batched)
        floor = max_abs(src_split["samples"], src_batched["samples"])
        print(f"split vs batched: edit {err:.3g}, source {floor:.3g}")
        assert err <= 2 * floor + 1e-5 * float(edit_batched.abs().max())


def test_heun_edits_by_schedule_position_and_pairs_every_evaluation(tiny_sd15):
    model, clip, _ = tiny_sd15
    steps = 4
    src_latent, source = capture(model, clip, SRC, latent_image=small(), steps=steps, sampler="heun", store_end=1.0)
    # Pairing: heun evaluates sigma[1..3] twice (the previous step's correction, then its own step);
    # with the source prompt each target evaluation must meet its exact twin, or the result drifts.
    same = ksampler(inject(model, source, end=1.0), clip, SRC, latent_image=small(), steps=steps, sampler="heun")
    assert torch.equal(same, src_latent["samples"])
    schedule = source.schedule
    traced, calls = _record_attn1_inputs(inject(model, source, start=0.0, end=0.5))
    ksampler(traced, clip, TGT, latent_image=small(), steps=steps, sampler="heun")
    evaluations = []
    for call in calls:
        if call["layer"] == ("input", 1, 0):
            cond = _rows(call, 0)
            stored = [entry.get(("input", 1, 0)) for key, entry in source.entries.items() if key.kind == 0]
            evaluations.append((call["sigma"], any(torch.equal(call["q"][cond], s) for s in stored)))
    sigmas = [sigma for sigma, _ in evaluations]
    assert len(sigmas) == 2 * steps - 1  # heun: 2 evaluations per step, 1 on the last (to sigma 0)
    # Steps 0 and 1 (int(4*0) <= i < int(4*0.5)) are edited, i.e. every evaluation at schedule
    # sigma[0] or sigma[1]; a call counter would have stopped after the second evaluation.
    edited = [sigma for sigma, hit in evaluations if hit]
    assert sorted(edited, reverse=True) == [schedule[0], schedule[1], schedule[1]]


def test_one_source_shared_by_a_target_batch_equals_single_edits(tiny_sd15):
    model, clip, _ = tiny_sd15
    _, source = capture(model, clip, SRC, latent_image=small())
    patched = inject(model, source)
    batch = ksampler(patched, clip, TGT, latent_image=small(3))
    for i in range(3):  # batch_index i gives row i's noise to a single image
        one = {"samples": torch.zeros(1, 4, H // 8, W // 8), "batch_index": [i]}
        single = ksampler(patched, clip, TGT, latent_image=one)
        assert max_abs(batch[i:i + 1], single) <= 1e-4 * float(single.abs().max())
    assert max_abs(batch[0], batch[1]) > 1.0  # different noise, different images


def test_equal_batches_pair_image_by_image(tiny_sd15):
    model, clip, _ = tiny_sd15
    src2, source2 = capture(model, clip, SRC, latent_image=small(2))
    same = ksampler(inject(model, source2), clip, SRC, latent_image=small(2))
    assert torch.equal(same, src2["samples"])  # row i met source row i, not row 0
    FPEError = pack_submodule("fpe_attention.errors").FPEError
    with pytest.raises(FPEError, match="batch sizes do not pair: the target latent has 3 images, the source 2"):
        ksampler(inject(model, source2), clip, TGT, latent_image=small(3))


def test_original_model_is_untouched_and_other_attn1_patches_still_act(tiny_sd15):
    model, clip, _ = tiny_sd15
    before_options = copy.copy(model.model_options)
    before_patches = copy.deepcopy(model.model_options.get("transformer_options", {}))
    plain = ksampler(model, clip, TGT, latent_image=small())
    _, source = capture(model, clip, SRC, latent_image=small())
    ksampler(inject(model, source), clip, TGT, latent_image=small())
    assert model.model_options.keys() == before_options.keys()
    assert model.model_options.get("transformer_options", {}) == before_patches
    assert torch.equal(ksampler(model, clip, TGT, latent_image=small()), plain)

    seen = []

    def halve_values(n, context, value, extra_options):  # another pack's patch, set before Inject
        seen.append(extra_options["block"])
        return n, context, value * 0.5

    other = model.clone()
    other.set_model_attn1_patch(halve_values)
    src_other, source_other = capture(other, clip, SRC, latent_image=small())
    seen.clear()
    same = ksampler(inject(other, source_other), clip, SRC, latent_image=small())
    assert len(seen) == 16 * 6  # every layer of every call
    assert torch.equal(same, src_other["samples"])
    edited_other = ksampler(inject(other, source_other), clip, TGT, latent_image=small())
    edited = ksampler(inject(model, source), clip, TGT, latent_image=small())
    assert max_abs(edited_other, edited) > 1.0  # the other patch still shapes the result


def test_weight_patches_like_lora_act_on_both_sides(tiny_sd15):
    model, clip, _ = tiny_sd15
    lora = model.clone()
    key = "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"
    weight = lora.model.state_dict()["diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"]
    lora.add_patches({key: (torch.ones_like(weight) * 0.05,)}, 1.0)  # a "diff" weight patch, as LoRA loaders add
    src_lora, source = capture(lora, clip, SRC, latent_image=small())
    src_plain, _ = capture(model, clip, SRC, latent_image=small())
    assert max_abs(src_lora["samples"], src_plain["samples"]) > 1.0
    same = ksampler(inject(lora, source), clip, SRC, latent_image=small())
    assert torch.equal(same, src_lora["samples"])


def test_official_schedule_through_sampler_custom(tiny_sd15):
    model, clip, _ = tiny_sd15
    steps = 5
    sigmas = call_node("FPEOfficialDDIMSigmas", model=model, steps=steps)[0]
    ms = pack_submodule("fpe_attention.host_versions").model_sampling_of(model)
    assert [round(float(ms.timestep(s))) for s in sigmas[:-1]] == [800, 600, 400, 200, 0]
    src_latent, source = capture(model, clip, SRC, latent_image=small(), sampler="ddim", sigmas=sigmas)
    sampler = call_node("KSamplerSelect", sampler_name="ddim")[0]

    def custom(m, text):
        return call_node("SamplerCustom", model=m, add_noise=True, noise_seed=42, cfg=7.5,
                         positive=encode(clip, text), negative=encode(clip, ""), sampler=sampler, sigmas=sigmas,
                         latent_image=small())[0]["samples"]

    assert torch.equal(custom(model, SRC), src_latent["samples"])
    assert torch.equal(custom(inject(model, source), SRC), src_latent["samples"])
    assert max_abs(custom(inject(model, source), TGT), custom(model, TGT)) > 1.0
