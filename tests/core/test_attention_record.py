"""FPE Attention Record: maps equal explicit softmax(QKᵀ/√d), the output is untouched, runs are told apart.

The reference here is independent of the pack: ComfyUI's attn1/attn2 *replace* hooks receive the projected
q and k of every layer, and the test builds the head-averaged maps from them explicitly.
"""

from __future__ import annotations

import pytest
import torch

from fpe_harness.attention import explicit_maps
from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, TGT, capture, encoded_photo, inject, invert, ksampler, latent
from fpe_harness.host import pack_submodule
from fpe_harness.records import H, W, record
from fpe_harness.records import record_keys as _keys

STEPS = 4


def test_recorded_maps_equal_explicit_maps_and_the_output_is_untouched(tiny_sd15):
    model, clip, _ = tiny_sd15
    plain = ksampler(model, clip, TGT, latent_image=latent(W, H, batch=2), steps=STEPS)
    recording, rec = record(model, image=1)
    out = ksampler(recording, clip, TGT, latent_image=latent(W, H, batch=2), steps=STEPS)
    assert torch.equal(out, plain)  # recording never changes the picture
    run = rec.run_for(out)
    assert run.evaluations == STEPS and run.settings.image == 1

    # The reference sees the same inputs: the record placed before the replaces returns them untouched.
    reference, sums, counts, sigmas = explicit_maps(recording, _keys(model), image=1)
    again = ksampler(reference, clip, TGT, latent_image=latent(W, H, batch=2), steps=STEPS)
    run = rec.run_for(again)
    assert run.sigmas == sigmas
    worst = 0.0
    for key in _keys(model):
        for attention in ("self", "cross"):
            expected = sums[(attention, *key)] / counts[(attention, *key)]
            got = run.mean(attention, key)
            assert got.shape == expected.shape and run.counts[(attention, key)] == STEPS
            worst = max(worst, float((got - expected).abs().max()))
    print(f"recorded vs explicit maps: max abs error {worst:.2e}")
    assert worst < 1e-5
    assert run.context_length == 77
    assert torch.allclose(run.mean("cross", key).sum(-1), torch.ones(()), atol=1e-5)  # rows are distributions


def test_band_rows_and_split_calls(tiny_sd15, monkeypatch):
    model, clip, _ = tiny_sd15
    steps = 6
    recording, rec = record(model, start=0.3, end=0.7, rows="uncond", self_layers="none")
    out = ksampler(recording, clip, TGT, latent_image=latent(W, H), steps=steps)
    run = rec.run_for(out)
    sampling = pack_submodule("fpe_attention.host_versions").model_sampling_of(model)
    high, low = float(sampling.percent_to_sigma(0.3)), float(sampling.percent_to_sigma(0.7))
    schedule = [float(s) for s in call_node("BasicScheduler", model=model, scheduler="normal", steps=steps,
                                            denoise=1.0)[0]]
    inside = [s for s in schedule if low <= s <= high]
    assert 0 < len(inside) < steps and run.sigmas == pytest.approx(inside, rel=1e-6)
    assert not run.self_maps
    # ComfyUI batches cond and uncond only if its memory estimate fits: force separate calls.
    batched = run.mean("cross", ("input", 1, 0))
    monkeypatch.setattr(model.model, "memory_required", lambda *a, **k: 1e30)
    out_split = ksampler(recording, clip, TGT, latent_image=latent(W, H), steps=steps)
    split = rec.run_for(out_split)
    assert split is not run and split.sigmas == run.sigmas
    # Split and batched calls round differently, and the runs drift apart a little over the steps.
    floor = float((out_split - out).abs().max())
    err = float((split.mean("cross", ("input", 1, 0)) - batched).abs().max())
    print(f"split vs batched: maps {err:.2e}, latents {floor:.2e}")
    assert err < 1e-3


def test_runs_are_told_apart_and_stale_ones_refused(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    recording, rec = record(model, self_layers="none")
    one = ksampler(recording, clip, TGT, latent_image=latent(W, H), steps=3, seed=1)
    two = ksampler(recording, clip, SRC, latent_image=latent(W, H), steps=3, seed=2)
    first, second = rec.run_for(one), rec.run_for(two)
    assert first is not second and first.number < second.number
    key = ("output", 3, 0)
    assert not torch.equal(first.mean("cross", key), second.mean("cross", key))
    stranger = ksampler(model, clip, TGT, latent_image=latent(W, H), steps=3, seed=3)
    with pytest.raises(fpe_error, match="none of the 2 run"):
        rec.run_for(stranger)
    empty_model, empty = record(model, self_layers="none")
    with pytest.raises(fpe_error, match="holds no run"):
        empty.run_for(one)


def test_an_inject_target_records_the_source_map(tiny_sd15):
    """Placed after FPE Self-Attn Inject, the record shows the maps the target used: in the injected layers
    and steps the source's own self-attention map. With storage replay the source rows that join the target's
    UNet calls are not mistaken for the target's (its cross-attention maps, on the target prompt, show it)."""
    model, clip, _ = tiny_sd15
    src_recording, src_rec = record(model, cross="none", end=0.49)  # the first 2 of 4 steps: injected ones
    src_latent, source = capture(src_recording, clip, SRC, latent_image=latent(W, H), steps=STEPS)
    src_run = src_rec.run_for(src_latent["samples"])
    targets = {}
    for storage in ("auto", "replay"):
        _, stored = capture(model, clip, SRC, latent_image=latent(W, H), steps=STEPS, storage=storage)
        tgt_recording, tgt_rec = record(inject(model, stored, layers="all", end=0.5), end=0.49)
        target = ksampler(tgt_recording, clip, TGT, latent_image=latent(W, H), steps=STEPS)
        targets[storage] = tgt_rec.run_for(target)
    plain_recording, plain_rec = record(model, cross="none", end=0.49)
    own = plain_rec.run_for(ksampler(plain_recording, clip, TGT, latent_image=latent(W, H), steps=STEPS))
    assert src_run.evaluations == targets["auto"].evaluations == targets["replay"].evaluations == 2
    for key in _keys(model):
        for run in targets.values():
            assert float((run.mean("self", key) - src_run.mean("self", key)).abs().max()) < 1e-5
        assert float((targets["replay"].mean("cross", key) - targets["auto"].mean("cross", key)).abs().max()) < 1e-5
    assert max(float((own.mean("self", k) - src_run.mean("self", k)).abs().max()) for k in _keys(model)) > 1e-3


def test_real_photo_records_the_source_on_the_inverted_trajectory(tiny_sd15):
    """Before FPE DDIM Invert the record holds the source branch only (not the inversion or the check),
    found by the inverted latent, with the maps of the source prompt on the trajectory latents."""
    model, clip, vae = tiny_sd15
    recording, rec = record(model, cross="all", self_layers="official")
    photo = encoded_photo(W, H)
    inverted, source, _ = invert(recording, clip, photo, steps=STEPS, store_end=1.0, check=True)
    assert len(rec.runs) + (rec.current is not None) == 1  # the inversion and the check were not recorded
    run = rec.run_for(inverted["samples"])
    assert run.evaluations == STEPS
    assert run.sigmas == pytest.approx(source.schedule[:STEPS], rel=1e-6)


def test_memory_is_fixed_by_layers_and_size_not_steps(tiny_sd15):
    """The record's bytes are exactly Σ N·77·4 (cross, every layer) + Σ N²·4 (self, official layers): the
    same for 1 and 3 steps; at 512 px (the tiny model has SD1.5's token counts) that is 29.2 MiB, under the
    32 MiB docs/attention-maps.md states for SD1.5 at 512 px."""
    model, clip, _ = tiny_sd15
    layers = pack_submodule("fpe_attention.layers").model_attn1_layers(model)

    def expected(h, w):
        tokens = [layer.tokens(h, w) for layer in layers]
        return sum(n * 77 * 4 for n in tokens) + sum(n * n * 4 for n in tokens if n <= 32 * 32)

    sizes = []
    for steps in (1, 3):
        recording, rec = record(model, cross="all", self_layers="official")
        out = ksampler(recording, clip, TGT, latent_image=latent(W, H), steps=steps)
        assert rec.run_for(out).evaluations == steps
        sizes.append(rec.nbytes())
    assert sizes[0] == sizes[1] == expected(H // 8, W // 8)
    recording, rec = record(model, cross="all", self_layers="official")
    out = ksampler(recording, clip, TGT, latent_image=latent(512, 512), steps=1, cfg=1.0)  # the host's attention
    # at 4096 tokens is the slow part here: one step, cond only
    rec.run_for(out)
    print(f"512 px record: {rec.nbytes() / 2**20:.1f} MiB")
    assert rec.nbytes() == expected(64, 64) < 32 * 2**20


def test_settings_errors_name_the_input(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    with pytest.raises(fpe_error, match="start_percent"):
        record(model, start=0.8, end=0.2)
    with pytest.raises(fpe_error, match="end_percent"):
        record(model, end=float("nan"))
    with pytest.raises(fpe_error, match="both 'none'"):
        record(model, cross="none", self_layers="none")
    with pytest.raises(fpe_error, match="cross_custom_layers"):
        record(model, cross="custom", cross_custom="in99")
    recording, _ = record(model, image=3)
    with pytest.raises(fpe_error, match="image is 3"):
        ksampler(recording, clip, TGT, latent_image=latent(W, H, batch=2), steps=1)
    huge, _ = record(model, cross="none", self_layers="all")
    with pytest.raises(fpe_error, match="self_layers 'all'"):
        ksampler(huge, clip, TGT, latent_image=latent(2048, 2048), steps=1)


def test_null_text_with_a_record_and_a_cfg_function_refused(tiny_sd15, fpe_error):
    """A record before FPE Null-Text Invert holds its source branch only (found by the inverted latent); a
    model with a real CFG function is still refused by name."""
    from test_null_text import null_text

    model, clip, _ = tiny_sd15
    recording, rec = record(model, cross="all", self_layers="none")
    inverted, *_ = null_text(recording, clip, steps=2, inner_steps=1, latent=encoded_photo(W, H))
    assert len(rec.runs) + (rec.current is not None) == 1  # not the inversion nor the optimisation
    assert rec.run_for(inverted["samples"]).evaluations == 2
    rescaled = call_node("RescaleCFG", model=model, multiplier=0.7)[0]
    with pytest.raises(fpe_error, match="custom CFG function"):
        null_text(rescaled, clip, steps=2, inner_steps=1, latent=encoded_photo(W, H))


def test_a_failed_run_leaves_nothing_and_token_changing_patches_are_skipped(tiny_sd15):
    """A run that fails inside its first evaluation shows nothing and the next run is a fresh one (on both
    hosts); a patch before the record that changes the tokens (ToMe) is skipped and reported, never fatal."""
    model, clip, _ = tiny_sd15
    recording, rec = record(model, cross="all", self_layers="all")
    calls = {"n": 0, "fail": True}

    def failing(n, context, value, extra_options):
        calls["n"] += 1
        if calls["fail"] and calls["n"] == 5:
            raise RuntimeError("a patch after the record failed")
        return n, context, value

    broken = recording.clone()
    broken.set_model_attn1_patch(failing)
    with pytest.raises(RuntimeError, match="failed"):
        ksampler(broken, clip, TGT, latent_image=latent(W, H), steps=STEPS)
    calls["fail"] = False
    again = rec.run_for(ksampler(broken, clip, TGT, latent_image=latent(W, H), steps=STEPS))
    fresh_model, fresh = record(model, cross="all", self_layers="all")
    alone = fresh.run_for(ksampler(fresh_model, clip, TGT, latent_image=latent(W, H), steps=STEPS))
    assert again.sigmas == alone.sigmas and len(again.sigmas) == STEPS
    for key in _keys(model):
        assert torch.equal(again.mean("cross", key), alone.mean("cross", key))

    tome = call_node("TomePatchModel", model=model, ratio=0.5)[0]
    plain = ksampler(tome, clip, TGT, latent_image=latent(W, H), steps=2)
    recording, rec = record(tome, cross="all", self_layers="all")
    out = ksampler(recording, clip, TGT, latent_image=latent(W, H), steps=2)
    assert torch.equal(out, plain)
    run = rec.run_for(out)
    assert any("HyperTile, ToMe" in reason for reason in run.skipped)
    assert run.cross  # layers whose tokens ToMe left alone are still recorded
