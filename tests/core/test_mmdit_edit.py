"""FPE on MMDiT models (Flux.1, SD3, SD3.5-Medium) through FPE Source Capture and FPE MMDiT Inject, on tiny models
of the host's own classes (``fpe_harness.foreign_models``), against the independent batched reference
(``fpe_harness.mmdit_reference``). ComfyUI of early 2024 has neither Flux nor SD3: these tests skip there; the
edit's arithmetic is tested host-free in ``test_joint_attention.py``.
"""

from __future__ import annotations

import pytest
import torch

from fpe_harness import foreign_models
from fpe_harness.execute import call_node
from fpe_harness.mmdit_reference import reference_edit

FAMILIES = [name for name in ("Flux", "SD3", "SD35M") if name in foreign_models.available()]
pytestmark = pytest.mark.skipif(not FAMILIES, reason="this ComfyUI (early 2024) has no Flux or SD3 model classes; "
                                                     "the MMDiT edit is tested on current ComfyUI")
STEPS = 6
_MODELS: dict = {}


# Weight scales that make attention clearly non-uniform (foreign_models.ATTENTION_WEIGHTS): the edit moves the
# result ~1e5 times the rounding floor. Larger SD3 weights make its trajectories chaotic (rounding of 1e-7 grows
# to 1e-4), which would blur the exactness test.
SCALES = {"Flux": 0.1, "SD3": 0.05, "SD35M": 0.1}


def tiny(name):
    if name not in _MODELS:
        _MODELS[name] = foreign_models.build(name, attention_scale=6.0, scale=SCALES[name])
    return _MODELS[name]


def prompt(seed, tokens=8):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 32, generator=generator),
             {"pooled_output": torch.randn(1, 32, generator=generator), "guidance": 3.5}]]


SRC, TGT, NEG = prompt(1), prompt(2), prompt(3)


def settings(name, **over):
    out = dict(seed=7, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", negative=NEG,
               latent_image=foreign_models.empty_latent(name, height=8, width=8), denoise=1.0)
    out.update(over)
    return out


def capture(name, positive=SRC, storage="auto", **over):
    return call_node("FPESourceCapture", model=tiny(name), positive=positive, store_layers="all",
                     store_custom_layers="", store_end=1.0, store_rows="cond", storage=storage, precision="exact",
                     **settings(name, **over))


def inject(name, source, *, mode="image map", blocks="all", custom_blocks="", start=0.0, end=0.5, model=None):
    return call_node("FPEMMDiTInject", model=model or tiny(name), fpe_source=source, mode=mode, blocks=blocks,
                     custom_blocks=custom_blocks, start=start, end=end, branches="cond only")[0]


def sample(name, model, positive=TGT, **over):
    return call_node("KSampler", model=model, positive=positive, **settings(name, **over))[0]["samples"]


_SOURCES: dict = {}


def source_of(name, storage="auto"):
    """auto: a record of the image queries and keys (it fits: tiny models); replay: the model inputs only."""
    if (name, storage) not in _SOURCES:
        _SOURCES[(name, storage)] = capture(name, storage=storage)
    return _SOURCES[(name, storage)]


CASES = [(name, mode, blocks) for name in FAMILIES for mode, blocks in (
    ("image map", "all"), ("image Q,K", "all"))] + (
    [("SD35M", "image map", "image self-attention"), ("SD35M", "image map", "custom")] if "SD35M" in FAMILIES else [])


@pytest.mark.parametrize("storage", ["auto", "replay"], ids=["stored", "replay"])
@pytest.mark.parametrize("name,mode,blocks", CASES)
def test_edit_matches_the_batched_reference(name, mode, blocks, storage):
    """The edit through the host's sampler, from a stored record or a replayed source, equals the batched
    algorithm with explicit float64 attention; the edit moves the target far above that difference."""
    model = tiny(name)
    layout = foreign_models_layout(model)
    latent, source = source_of(name, storage)
    assert source.storage_device == ("replay" if storage == "replay" else "model")
    custom = "joint0-1, self0"  # SD3.5-M: joint attention and MMDiT-X self-attention together
    edited = sample(name, inject(name, source, mode=mode, blocks=blocks, custom_blocks=custom, end=0.5))
    plain = sample(name, model)
    keys = {"all": layout.blocks.keys(("double", "single", "joint")), "image self-attention": layout.blocks.keys(
        ("self",)), "custom": layout.blocks.keys(("joint", "self"))}[blocks]
    expected = reference_edit(model, SRC, TGT, latent=settings(name)["latent_image"]["samples"], seed=7, steps=STEPS,
                              mode=mode, blocks=keys, window=(0, 3), flux=layout.flux,
                              selfs=layout.blocks.blocks.get("self", ()))
    # The floor: the reference with the edit off against the plain sampler differs by batch-layout rounding
    # alone (a 2-row batch against 1 row), ~1e-7 of the output.
    unedited = reference_edit(model, SRC, TGT, latent=settings(name)["latent_image"]["samples"], seed=7, steps=STEPS,
                              mode=mode, blocks=keys, window=(0, 0), flux=layout.flux)
    floor = (unedited - plain).abs().max().item()
    gap = (edited - expected).abs().max().item()
    effect = (edited - plain).abs().max().item()
    scale = plain.abs().max().item()
    assert gap <= 3 * floor + 1e-6 * scale, (gap, floor, scale)
    assert effect >= 100 * max(gap, 1e-6 * scale), (effect, gap)


def foreign_models_layout(model):
    from fpe_harness.host import pack_submodule

    return pack_submodule("fpe_attention.dit_model").dit_layout(model)


@pytest.mark.parametrize("storage", ["auto", "replay"], ids=["stored", "replay"])
@pytest.mark.parametrize("name", FAMILIES)
def test_same_prompt_reproduces_the_source(name, storage):
    """With the source's own prompt the target's queries and keys are the source's: the result is the source image
    up to the rounding of the 2D-wide kernel call and (replay) of running the source rows in a batch with the
    target's (bound: 1e-6 of the output)."""
    latent, source = source_of(name, storage)
    for mode in ("image map", "image Q,K"):
        same = sample(name, inject(name, source, mode=mode, end=1.0), positive=SRC)
        assert (same - latent["samples"]).abs().max().item() <= 1e-6 * latent["samples"].abs().max().item()


@pytest.mark.parametrize("name", FAMILIES)
def test_an_empty_window_samples_the_plain_model_bit_for_bit(name):
    _, source = source_of(name)
    assert torch.equal(sample(name, inject(name, source, start=0.5, end=0.5)), sample(name, tiny(name)))


def test_cfg_runs_edit_the_cond_rows_only_unless_asked():
    """SD3 at cfg 4: the uncond rows run unedited ('cond only'); 'cond + uncond' needs them stored and edits them."""
    name = "SD3" if "SD3" in FAMILIES else FAMILIES[0]
    latent, source = capture(name, cfg=4.0)
    cond_only = sample(name, inject(name, source), cfg=4.0)
    same = sample(name, inject(name, source, end=1.0), positive=SRC, cfg=4.0)
    # cfg 4 multiplies the cond rows' rounding by ~4 (the bound above, times cfg)
    assert (same - latent["samples"]).abs().max().item() <= 4.0 * 1e-6 * latent["samples"].abs().max().item()
    with pytest.raises(Exception, match="store_rows to 'cond \\+ uncond'"):
        call_node("FPEMMDiTInject", model=tiny(name), fpe_source=source, mode="image map", blocks="all",
                  custom_blocks="", start=0.0, end=0.5, branches="cond + uncond")
    _, both = call_node("FPESourceCapture", model=tiny(name), positive=SRC, store_layers="all", store_custom_layers="",
                        store_end=1.0, store_rows="cond + uncond", storage="auto", precision="exact",
                        **settings(name, cfg=4.0))
    patched = call_node("FPEMMDiTInject", model=tiny(name), fpe_source=both, mode="image map", blocks="all",
                        custom_blocks="", start=0.0, end=0.5, branches="cond + uncond")[0]
    assert (sample(name, patched, cfg=4.0) - cond_only).abs().max().item() > 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_blocks_choose_where_the_edit_acts(name):
    _, source = source_of(name)
    first, second = {"Flux": ("double0", "single0"), "SD3": ("joint0", "joint1"), "SD35M": ("joint0", "self0")}[name]
    results = {blocks: sample(name, inject(name, source, blocks="custom", custom_blocks=blocks))
               for blocks in (first, second, f"{first}, {second}")}
    assert not torch.equal(results[first], results[second])
    assert not torch.equal(results[first], results[f"{first}, {second}"])


@pytest.mark.parametrize("name", FAMILIES)
def test_stored_and_replayed_sources_give_the_same_edit(name):
    """A record of every block's image queries and keys, or the model inputs only: the same edit (up to the
    rounding of the replayed source rows' batch); the record's size is what the plan said."""
    _, stored = source_of(name, "auto")
    _, replayed = source_of(name, "replay")
    layout = foreign_models_layout(tiny(name))
    assert replayed.storage_device == "replay" and not replayed.entries
    assert replayed.nbytes < 64 * 1024, replayed.nbytes  # 6 steps of a 16x8x8 latent and an 8-token prompt
    blocks = len(layout.blocks.keys())
    assert stored.nbytes == stored.planned_bytes == blocks * 2 * 16 * layout.hidden * 6 * 4  # 16 image tokens, fp32
    assert stored.replay is None and stored.storage_device == "model"
    for mode in ("image map", "image Q,K"):
        a = sample(name, inject(name, stored, mode=mode))
        b = sample(name, inject(name, replayed, mode=mode))
        assert (a - b).abs().max().item() <= 2e-6 * a.abs().max().item(), mode
    _, cpu = call_node("FPESourceCapture", model=tiny(name), positive=SRC, store_layers="all", store_custom_layers="",
                       store_end=0.5, store_rows="cond", storage="cpu", precision="bf16", **settings(name))
    assert cpu.storage_device == "cpu" and cpu.nbytes == blocks * 2 * 16 * layout.hidden * 3 * 2
    assert next(iter(next(iter(cpu.entries.values())).values())).dtype == torch.bfloat16
    with pytest.raises(Exception, match="end 0.8 edits steps 0..3 of 6, but FPE Source Capture kept steps 0..2"):
        inject(name, cpu, end=0.8)


def test_an_override_set_before_runs_everything_fpe_does_not_edit_and_one_set_after_is_named():
    name = FAMILIES[0]
    _, source = source_of(name)
    calls = []

    def counting(func, *args, **kwargs):
        calls.append(args[0].shape)
        return func(*args, **kwargs)

    before = tiny(name).clone()
    before.model_options["transformer_options"] = dict(before.model_options["transformer_options"],
                                                       optimized_attention_override=counting)
    edited = sample(name, inject(name, source, model=before))
    assert calls and torch.equal(edited, sample(name, inject(name, source)))
    after = inject(name, source).clone()
    after.model_options["transformer_options"] = dict(after.model_options["transformer_options"],
                                                      optimized_attention_override=counting)
    with pytest.raises(Exception, match="replaced it \\(e.g. a Sage / flash attention patch\\)"):
        sample(name, after)


def test_prompts_of_other_token_counts():
    """Replay runs both prompts in one model call: other token counts are refused by name. A stored record holds
    image tokens only: the target's own text tokens are used, whatever their count."""
    name = FAMILIES[0]
    _, source = source_of(name, "replay")
    with pytest.raises(Exception, match="the source prompt encodes to 8 text tokens, the target's model call holds 12"):
        sample(name, inject(name, source), positive=prompt(2, tokens=12))
    _, stored = source_of(name)
    assert sample(name, inject(name, stored), positive=prompt(2, tokens=12)).isfinite().all()


def test_a_run_after_a_failed_one_is_fresh():
    """A, failing B, A: the second A equals the first bit for bit (nothing of B's run is kept)."""
    name = FAMILIES[0]
    _, source = source_of(name, "replay")
    patched = inject(name, source)
    first = sample(name, patched)
    with pytest.raises(Exception, match="text tokens"):
        sample(name, patched, positive=prompt(2, tokens=12))
    with pytest.raises(Exception, match="latent"):
        sample(name, patched, latent_image=foreign_models.empty_latent(name, height=12, width=12))
    assert torch.equal(sample(name, patched), first)


def test_wrong_models_sources_and_block_lists_are_named(tiny_sd15, small_source, fpe_error):
    name = FAMILIES[0]
    _, source = source_of(name)
    model = tiny(name)
    with pytest.raises(fpe_error, match="edited by FPE MMDiT Inject"):
        call_node("FPESelfAttnInject", model=model, fpe_source=source, layers="all", custom_layers="", start=0.0,
                  end=0.5, branches="cond only")
    with pytest.raises(fpe_error, match="model: FPE MMDiT Inject edits MMDiT models"):
        call_node("FPEMMDiTInject", model=tiny_sd15[0], fpe_source=source, mode="image map", blocks="all",
                  custom_blocks="", start=0.0, end=0.5, branches="cond only")
    with pytest.raises(fpe_error, match="fpe_source was captured with"):
        inject(name, small_source)
    with pytest.raises(fpe_error, match="custom_blocks: block item 'double7'"):
        inject(name, source, blocks="custom", custom_blocks="double7" if name == "Flux" else "joint7")
    with pytest.raises(fpe_error, match="edited by FPE MMDiT Inject"):
        call_node("FPEDDIMInvert", model=model, **invert_inputs(name))
    with pytest.raises(fpe_error, match="positive: the prompt is encoded 768 wide, but"):
        capture(name, positive=[[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 32)}]])


def invert_inputs(name):
    from fpe_harness.execute import input_types

    inputs = {"latent": foreign_models.empty_latent(name, fill=1.0), "positive": SRC}
    for key, spec in {**input_types("FPEDDIMInvert")["required"]}.items():
        if key not in inputs and key != "model":
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            inputs[key] = options.get("default", kind[0] if isinstance(kind, list) else None)
    return inputs


def test_a_sweep_gives_each_image_its_setting():
    """One batched run over end=0.17,0.5 x two block lists: image k equals the plain edit with setting k (up to the
    rounding of a batch of 4 against 1)."""
    name = FAMILIES[0]
    latent, source = source_of(name)
    table = foreign_models_layout(tiny(name)).blocks
    lists = {"Flux": ("double0", "single0"), "SD3": ("joint0", "joint1"), "SD35M": ("joint0", "self0")}[name]
    sweep = f'end=0.17,0.5; layers="{lists[0]}","{lists[1]}"'
    patched, labels = call_node("FPEMMDiTInject", model=tiny(name), fpe_source=source, mode="image map", blocks="all",
                                custom_blocks="", start=0.0, end=0.5, branches="cond only", sweep=sweep)
    assert "end=0.17" in labels and lists[1] in labels and table.describe()
    batch = call_node("FPESweepLatent", latent=settings(name)["latent_image"], sweep_labels=labels)[0]
    swept = sample(name, patched, latent_image=batch)
    assert swept.shape[0] == 4
    for k, (end, blocks) in enumerate((e, b) for e in (0.17, 0.5) for b in lists):
        single = sample(name, inject(name, source, blocks="custom", custom_blocks=blocks, end=end))
        assert (swept[k:k + 1] - single).abs().max().item() <= 1e-5 * single.abs().max().item(), (k, end, blocks)
    with pytest.raises(Exception, match="sweep: layers value 'double9'"):
        call_node("FPEMMDiTInject", model=tiny(name), fpe_source=source, mode="image map", blocks="all",
                  custom_blocks="", start=0.0, end=0.5, branches="cond only", sweep='layers="double9"')


def test_a_local_edit_keeps_the_source_outside_its_mask(fpe_error):
    """FPE Local Edit on FPE MMDiT Inject's model: where the mask is 0 the target is the source bit for bit (its
    model input and denoised output are the source's at every step); inside, the edit."""
    name = FAMILIES[0]
    latent, source = source_of(name)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0  # the right half of the image (latent columns 4..7)
    patched = inject(name, source)
    local = call_node("FPELocalEdit", model=patched, start=0.0, grow=0, feather=0, soft="blend", words="",
                      source_text="", target_text="", threshold=0.3, composite=False, mask=mask)[0]
    result = sample(name, local)
    assert torch.equal(result[..., :4], latent["samples"][..., :4])
    assert (result[..., 4:] - latent["samples"][..., 4:]).abs().max().item() > 1e-3
    with pytest.raises(fpe_error, match="words: word masks read a UNet's cross-attention"):
        call_node("FPELocalEdit", model=patched, start=0.0, grow=0, feather=0, soft="blend", words="cat",
                  source_text="a cat", target_text="a dog", threshold=0.3, composite=False)


def test_reference_images_are_refused_by_name(fpe_error):
    name = FAMILIES[0]
    kontext = [[SRC[0][0], dict(SRC[0][1], reference_latents=[torch.zeros(1, 16, 8, 8)])]]
    with pytest.raises(fpe_error, match="positive: the prompt carries reference images \\(ReferenceLatent"):
        capture(name, positive=kontext)


def test_a_second_fpe_node_on_an_edited_model_is_refused(fpe_error):
    name = FAMILIES[0]
    _, source = source_of(name)
    patched = inject(name, source)
    with pytest.raises(fpe_error, match="already carries an FPE MMDiT Inject edit, so FPE MMDiT Inject"):
        inject(name, source, model=patched)
    with pytest.raises(fpe_error, match="already carries an FPE MMDiT Inject edit, so FPE Source Capture"):
        call_node("FPESourceCapture", model=patched, positive=SRC, store_layers="all", store_custom_layers="",
                  store_end=1.0, store_rows="cond", storage="auto", precision="exact", **settings(name))



def test_a_batch_of_two_pairs_image_by_image_from_a_record_or_a_replay():
    """Source and target batches of 2 (each image its own noise): the record and the replay give the same edits,
    and each image's edit is its own (not image 0's)."""
    name = FAMILIES[0]
    two = foreign_models.empty_latent(name, batch=2, height=8, width=8)
    edits = {}
    for storage in ("auto", "replay"):
        _, source = capture(name, storage=storage, latent_image=two)
        edits[storage] = sample(name, inject(name, source), latent_image=two)
    assert edits["auto"].shape[0] == 2
    assert (edits["auto"] - edits["replay"]).abs().max().item() <= 2e-6 * edits["auto"].abs().max().item()
    assert (edits["auto"][0] - edits["auto"][1]).abs().max().item() > 1e-3


def test_a_model_wrapper_set_after_the_inject_is_named(fpe_error):
    """A node after the Inject that replaces the model's function wrapper (tiled diffusion and the like) leaves
    the edit blind to its steps: an error, not a silent plain image."""
    name = FAMILIES[0]
    _, source = source_of(name)
    patched = inject(name, source).clone()
    patched.set_model_unet_function_wrapper(lambda apply_model, args: apply_model(args["input"], args["timestep"],
                                                                                   **args["c"]))
    with pytest.raises(fpe_error, match="FPE MMDiT Inject's model wrapper did not run"):
        sample(name, patched)


@pytest.mark.parametrize("storage", ["auto", "replay"])
def test_combined_conditioning_pairs_entry_by_entry_and_a_mismatch_or_nan_is_named(storage, fpe_error):
    """Two prompts combined on each side (Conditioning (Combine)): each entry pairs with its twin (same prompts:
    the source within 1e-6); one side combined and the other not, or end NaN, is an error naming the fix."""
    import math

    name = FAMILIES[0]

    def combine(a, b):
        return call_node("ConditioningCombine", conditioning_1=a, conditioning_2=b)[0]

    both_src, both_tgt = combine(SRC, prompt(5)), combine(TGT, prompt(5))
    latent, source = capture(name, positive=both_src, storage=storage)
    same = sample(name, inject(name, source, end=1.0), positive=both_src)
    assert (same - latent["samples"]).abs().max().item() <= 1e-6 * latent["samples"].abs().max().item()
    assert (sample(name, inject(name, source), positive=both_tgt) - latent["samples"]).abs().max().item() > 1e-3
    with pytest.raises(fpe_error, match="does not pair with the source's entry by entry"):
        sample(name, inject(name, source), positive=TGT)
    with pytest.raises(fpe_error, match="end: nan is not a finite number"):
        inject(name, source, end=math.nan)
