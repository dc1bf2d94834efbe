"""storage = replay: no record, the source rows re-run beside the target's; exact against the stored mode."""

from __future__ import annotations

import pytest
import torch

from conftest import HOST, load_tiny
from fpe_harness.execute import call_node
from fpe_harness.graphs import (
    SRC,
    TGT,
    capture,
    capture_with,
    encoded_photo,
    inject,
    invert,
    ksampler,
    latent,
    max_abs,
    sample_back,
)
from fpe_harness.host import pack_submodule
from fpe_harness.reference import encode
from fpe_headless.comfy import tiny_models

STEPS = 5


def _rows_seen(model):
    """A clone of ``model`` whose last attn1 patch records the batch size of every UNet call."""
    seen = []

    def record(n, context, value, extra_options):
        if extra_options.get("transformer_index", 0) == 0 and extra_options["block"] == ("input", _first_block(model)):
            seen.append(n.shape[0])
        return n, context, value

    probe = model.clone()
    probe.set_model_attn1_patch(record)
    return probe, seen


def _first_block(model):
    layers = pack_submodule("fpe_attention.layers").model_attn1_layers(model)
    return layers[0].key[1]


@pytest.mark.parametrize("arch, sampler", [("tiny_sd15", "euler"), ("tiny_sd15", "heun"), ("tiny_sd2", "euler"),
                                           ("tiny_sd2_v", "dpmpp_2m"), ("tiny_sdxl", "euler")])
def test_replay_edits_equal_stored_edits_without_a_record(arch, sampler):
    model, clip, _ = load_tiny(arch)
    size = latent(128, 96)  # small and fast: the official rule edits every layer at this size
    src, stored = capture(model, clip, latent_image=size, steps=STEPS, sampler=sampler)
    src_replay, replayed = capture(model, clip, latent_image=size, steps=STEPS, sampler=sampler, storage="replay")
    assert torch.equal(src_replay["samples"], src["samples"])  # the capture itself is a plain KSampler run
    assert replayed.storage_device == "replay" and not replayed.entries
    print(f"{arch} {sampler}: record {stored.nbytes / 2**20:.2f} MiB stored, {replayed.nbytes / 2**10:.1f} KiB replay")
    assert 0 < replayed.nbytes < stored.nbytes / 10
    probe, rows = _rows_seen(inject(model, replayed))
    edit_replay = ksampler(probe, clip, latent_image=size, steps=STEPS, sampler=sampler)
    edit_stored = ksampler(inject(model, stored), clip, latent_image=size, steps=STEPS, sampler=sampler)
    plain = ksampler(model, clip, latent_image=size, steps=STEPS, sampler=sampler)
    # The stored steps ran [source cond, target cond, target uncond]; the others the target's two rows.
    assert set(rows) == {2, 3} and rows[0] == 3
    err, effect = max_abs(edit_replay, edit_stored), max_abs(edit_stored, plain)
    scale = float(edit_stored.abs().max())
    print(f"{arch} {sampler}: |replay - stored| {err:.3g}, edit effect {effect:.3g}, latent scale {scale:.3g}")
    # The source rows are the capture's own computation in another batch layout: equal up to rounding
    # (bit for bit on CPU here), far below what the edit changes.
    assert err <= 1e-5 * scale and effect > 1e-3 * scale
    same = ksampler(inject(model, replayed), clip, SRC, latent_image=size, steps=STEPS, sampler=sampler)
    assert torch.equal(same, src["samples"])  # the same prompt gives the source back bit for bit


def test_replay_serves_uncond_branches_batches_and_cfg_1(tiny_sd15):
    model, clip, _ = tiny_sd15
    size = latent(64, 48, batch=2)
    for cfg, branches, rows in ((7.5, "cond + uncond", "cond + uncond"), (1.0, "cond only", "cond")):
        _, stored = capture(model, clip, latent_image=size, steps=4, cfg=cfg, store_rows=rows)
        _, replayed = capture(model, clip, latent_image=size, steps=4, cfg=cfg, store_rows=rows, storage="replay")
        edits = [ksampler(inject(model, s, branches=branches), clip, latent_image=size, steps=4, cfg=cfg)
                 for s in (stored, replayed)]
        plain = ksampler(model, clip, latent_image=size, steps=4, cfg=cfg)
        # Replay runs the source rows in one UNet call with the target's (8 rows here, the record's run had 4):
        # a BLAS kernel may round other batch sizes differently, and 4 steps at cfg 7.5 of this peaky tiny model
        # amplify that to 6.4e-5 of the latent scale on some CPUs (1e-6 on others). In float64 the two edits are
        # equal to the last float32 bit (measured), so this is rounding, not another computation.
        assert max_abs(*edits) <= 2e-4 * float(edits[0].abs().max()), (cfg, branches)
        assert max_abs(edits[0], plain) > 1e-3 * float(plain.abs().max())


@pytest.mark.parametrize("arch", ["tiny_sd15", "tiny_sdxl"])
def test_replay_real_image_edit_equals_the_stored_one(arch):
    model, clip, _ = load_tiny(arch)
    photo = encoded_photo(128, 96)
    inverted, stored, _ = invert(model, clip, photo, steps=STEPS)
    inverted_replay, replayed, _ = invert(model, clip, photo, steps=STEPS, storage="replay")
    assert torch.equal(inverted["samples"], inverted_replay["samples"]) and not replayed.entries
    edits = [sample_back(inject(model, s), clip, inverted, steps=STEPS) for s in (stored, replayed)]
    plain = sample_back(model, clip, inverted, steps=STEPS)
    print(f"{arch} real: |replay - stored| {max_abs(*edits):.3g}, effect {max_abs(edits[0], plain):.3g}")
    assert max_abs(*edits) <= 1e-5 * float(edits[0].abs().max())
    assert max_abs(edits[0], plain) > 1e-3 * float(plain.abs().max())


def test_auto_storage_replays_when_the_record_cannot_fit_and_says_why(tiny_sd15, monkeypatch, caplog):
    model, clip, _ = tiny_sd15
    memory = pack_submodule("fpe_attention.memory")
    monkeypatch.setattr(memory, "free_ram", lambda: 10**4)  # 10 kB free: no record fits
    with caplog.at_level("INFO", logger="free-prompt-editing"):
        _, source = capture(model, clip, latent_image=latent(64, 48), steps=4)
    assert source.storage_device == "replay" and source.replay and not source.entries
    assert "auto storage: the record (about" in caplog.text and "replaying the source instead" in caplog.text
    edited = ksampler(inject(model, source), clip, latent_image=latent(64, 48), steps=4)
    monkeypatch.undo()
    _, stored = capture(model, clip, latent_image=latent(64, 48), steps=4)
    assert stored.storage_device != "replay"
    assert torch.equal(edited, ksampler(inject(model, stored), clip, latent_image=latent(64, 48), steps=4))


def _controlled(clip, text):
    """``text`` with the tiny SD1.5 ControlNet applied (a 64x48 random hint)."""
    path = HOST.workdir / "models" / "controlnet" / "tiny_cn.safetensors"
    if not path.exists():
        tiny_models.write_controlnet(tiny_models.SD15_TINY, path)
    control = call_node("ControlNetLoader", control_net_name="tiny_cn.safetensors")[0]
    hint = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    return call_node("ControlNetApply", conditioning=encode(clip, text), control_net=control, image=hint,
                     strength=1.0)[0]


def test_replay_refuses_a_controlnet_source_before_sampling(tiny_sd15, fpe_error, monkeypatch):
    model, clip, _ = tiny_sd15
    positive = _controlled(clip, SRC)
    calls = []
    counted = model.clone()
    counted.set_model_attn1_patch(lambda n, c, v, extra: (calls.append(1), (n, c, v))[1])
    with pytest.raises(fpe_error, match=r"storage 'replay' cannot re-run a source made with a ControlNet / "
                                        r"T2I-Adapter.*Set FPE Source Capture's storage to 'auto' or 'cpu'"):
        capture_with(counted, clip, positive, latent(64, 48), steps=3, storage="replay")
    memory = pack_submodule("fpe_attention.memory")
    monkeypatch.setattr(memory, "free_ram", lambda: 10**4)
    with pytest.raises(fpe_error, match=r"a ControlNet.*FPE Source Capture's record does not fit in memory \(auto "
                                        r"storage fell back to replay\): store less"):
        capture_with(counted, clip, positive, latent(64, 48), steps=3, storage="auto")
    assert calls == []  # refused before sampling


def test_replay_chains_with_another_packs_unet_wrapper(tiny_sd15):
    model, clip, _ = tiny_sd15
    calls = []

    def wrapper(apply_model, args):  # another pack's wrapper: sees every UNet call, batch included
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    wrapped = model.clone()
    wrapped.set_model_unet_function_wrapper(wrapper)
    _, replayed = capture(wrapped, clip, latent_image=latent(64, 48), steps=4, storage="replay")
    assert calls and set(calls) == {2}
    calls.clear()
    edit = ksampler(inject(wrapped, replayed), clip, TGT, latent_image=latent(64, 48), steps=4)
    assert set(calls) == {2, 3}  # it still runs, on the extended batch in the stored steps
    _, stored = capture(model, clip, latent_image=latent(64, 48), steps=4)
    assert torch.equal(edit, ksampler(inject(model, stored), clip, TGT, latent_image=latent(64, 48), steps=4))


def _stored_and_replayed(model, clip, positive, size, **kw):
    stored = capture_with(model, clip, positive, size, steps=4, **kw)[1]
    replayed = capture_with(model, clip, positive, size, steps=4, storage="replay", **kw)[1]
    return stored, replayed


def _plain(model, clip, positive, size):
    return call_node("KSampler", model=model, seed=42, steps=4, cfg=7.5, sampler_name="euler", scheduler="normal",
                     positive=positive, negative=encode(clip, ""), latent_image=size, denoise=1.0)[0]["samples"]


def _edits_agree(model, clip, sources, positive, size, floor=0.0):
    """The stored and the replayed source give the same edit, up to a few ``floor`` (the rounding a change of
    batch layout gives a plain run; the replayed calls change the layout more than the floor's run does)."""
    from fpe_harness.graphs import ksampler_with

    edits = [ksampler_with(model, s, clip, positive, size, steps=4) for s in sources]
    plain = _plain(model, clip, positive, size)
    scale = float(edits[0].abs().max())
    print(f"|replay - stored| {max_abs(*edits):.3g} (floor {floor:.3g}), edit effect {max_abs(edits[0], plain):.3g}")
    assert max_abs(*edits) <= 4 * floor + 1e-5 * scale
    assert max_abs(edits[0], plain) > 1e-3 * scale
    return edits[0]


def test_replay_pairs_combined_and_area_entries_batched_or_split(tiny_sd15, monkeypatch):
    model, clip, _ = tiny_sd15
    size = latent(128, 96)

    def regional(whole, part):
        part = call_node("ConditioningSetArea", conditioning=encode(clip, part), width=64, height=64, x=0, y=32,
                         strength=1.0)[0]
        return call_node("ConditioningCombine", conditioning_1=encode(clip, whole), conditioning_2=part)[0]

    sources = _stored_and_replayed(model, clip, regional(SRC, "a red wall"), size)
    batched = _edits_agree(model, clip, sources, regional(TGT, "a blue wall"), size)
    # One chunk per UNet call (low memory): uncond-only calls carry no edited rows and run as they are.
    monkeypatch.setattr(model.model, "memory_required", lambda *a, **k: 1e30)
    split = _edits_agree(model, clip, sources, regional(TGT, "a blue wall"), size)
    assert max_abs(split, batched) <= 1e-3 * float(batched.abs().max())  # batch-layout rounding only


def test_replay_with_a_guidance_node_that_reruns_the_model(tiny_sd15):
    model, clip, _ = tiny_sd15
    sag = call_node("SelfAttentionGuidance", model=model, scale=0.5, blur_sigma=2.0)[0]
    size = latent(128, 96)
    sources = _stored_and_replayed(sag, clip, encode(clip, SRC), size)
    _edits_agree(sag, clip, sources, encode(clip, TGT), size)


def test_replay_source_of_one_image_serves_a_target_batch(tiny_sd15):
    model, clip, _ = tiny_sd15
    sources = _stored_and_replayed(model, clip, encode(clip, SRC), latent(64, 48))
    # Replay runs the source row 3 times in a 9-row call, the capture once in a 2-row call: the floor is
    # what the batch size alone (6 rows vs 2) changes in a plain run (row 0 has the same noise in both).
    floor = max_abs(_plain(model, clip, encode(clip, SRC), latent(64, 48, batch=3))[0],
                    _plain(model, clip, encode(clip, SRC), latent(64, 48))[0])
    _edits_agree(model, clip, sources, encode(clip, TGT), latent(64, 48, batch=3), floor)


def test_replay_with_a_controlnet_on_the_target_only(tiny_sd15):
    model, clip, _ = tiny_sd15
    controlled = _controlled(clip, TGT)
    sources = _stored_and_replayed(model, clip, encode(clip, SRC), latent(64, 48))
    # The source rows get zero ControlNet residuals (their source had none): the same edit as stored.
    _edits_agree(model, clip, sources, controlled, latent(64, 48))


def test_a_wrapper_set_after_the_inject_that_drops_it_is_named(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    _, replayed = capture(model, clip, latent_image=latent(64, 48), steps=4, storage="replay")
    injected = inject(model, replayed).clone()
    injected.set_model_unet_function_wrapper(
        lambda apply_model, args: apply_model(args["input"], args["timestep"], **args["c"]))
    with pytest.raises(fpe_error, match=r"UNet wrapper did not run \(a node applied after the Inject replaced"):
        ksampler(injected, clip, latent_image=latent(64, 48), steps=4)
