"""FPE Attention Replace: cross-attention map replacement (Prompt-to-Prompt style), the paper's comparison.

The pack is checked against an independent reference written here: the batch [source, target] sampled
from one noise with every attention map built explicitly (explicit softmax), the target's cond
cross-attention map (all columns, or the named words' columns) overwritten by the source's in every
layer for steps int(n*start) <= i < int(n*end), and for 'self + cross' the self-attention maps too on the
official layers (<= 32x32 tokens). Nothing in the reference imports the pack.
"""

from __future__ import annotations

import pytest
import torch

from fpe_harness.attention import explicit_attention, layer_keys, trace_attn1
from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, H, W, ksampler, latent, max_abs
from fpe_harness.host import pack_submodule
from fpe_harness.reference import encode, sdpa, stack_conditioning

STEPS = 5
# Word swap with equal token counts ("green" -> "rubber": one token each), and a pair of unequal counts.
SWAP = "a photo of rubber ducks walking on street"
LONGER = "a photo of yellow rubber ducks walking on street"

_RUNS: dict = {}


def _once(key, make):
    if key not in _RUNS:
        _RUNS[key] = make()
    return _RUNS[key]


def capture(model, clip, text, *, steps=STEPS, latent_image=None, storage="auto", store_cross="off",
            store_layers="official", store_end=0.8):
    """FPE Source Capture (euler, cfg 7.5, seed 42) with the optional store_cross widget."""
    return call_node(
        "FPESourceCapture", model=model, seed=42, steps=steps, cfg=7.5, sampler_name="euler", scheduler="normal",
        positive=encode(clip, text), negative=encode(clip, ""),
        latent_image=latent_image if latent_image is not None else latent(), denoise=1.0,
        store_layers=store_layers, store_custom_layers="in4", store_end=store_end, store_rows="cond",
        storage=storage, precision="exact", store_cross=store_cross)


def _source(model, clip, *, store_cross="all layers", size=(W, H), **kw):
    def make():
        return capture(model, clip, SRC, latent_image=latent(*size), store_cross=store_cross, **kw)
    return _once(("capture", store_cross, size, tuple(sorted(kw.items()))), make)


def replace(model, source, clip, *, mode="cross", target=SWAP, tokens="all tokens", words="", cross_layers="all",
            cross_custom_layers="in4", cross_start=0.0, cross_end=0.8, layers="official", start=0.0, end=0.8,
            source_text=SRC):
    return call_node("FPEAttentionReplace", model=model, fpe_source=source, mode=mode, layers=layers,
                     custom_layers="in4", start=start, end=end, cross_layers=cross_layers,
                     cross_custom_layers=cross_custom_layers, cross_start=cross_start, cross_end=cross_end,
                     tokens=tokens, words=words, source_text=source_text, target_text=target, clip=clip)[0]


# --- the independent reference -------------------------------------------------------------------

def reference_edit(model, clip, *, source, target, width, height, seed=42, steps=STEPS, cfg=7.5,
                   cross=(0.0, 0.8), columns=None, self_window=None, max_tokens=32 * 32):
    """[source, target] from one noise, explicit maps; the target's cond cross map takes the source's
    (``columns``: None for all, else (target columns, source columns)); ``self_window``: also the
    self-attention maps on layers with <= ``max_tokens`` tokens. Returns the [2, C, H, W] latent."""
    state = {"calls": 0}
    keys = layer_keys(trace_attn1(model, lambda m: call_node(
        "KSampler", model=m, seed=0, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
        positive=encode(clip, "x"), negative=encode(clip, ""),
        latent_image={"samples": torch.zeros(1, 4, height // 8, width // 8)}, denoise=1.0)))

    def counting_wrapper(apply_model, args):
        state["calls"] += 1  # one UNet call per euler step
        return apply_model(args["input"], args["timestep"], **args["c"])

    def copier(chunks, per_chunk, cols):
        def copy(weights):
            weights = weights.clone()
            for j, kind in enumerate(chunks):
                if kind == 0:
                    src, tgt = j * per_chunk, j * per_chunk + 1
                    if cols is None:
                        weights[tgt] = weights[src]
                    else:
                        weights[tgt][..., cols[0]] = weights[src][..., cols[1]]
            return weights
        return copy

    def in_window(window):
        step = state["calls"] - 1
        return window is not None and int(steps * window[0]) <= step < int(steps * window[1])

    def attn1(q, k, v, extra_options):
        chunks = extra_options["cond_or_uncond"]
        if not (in_window(self_window) and q.shape[1] <= max_tokens):
            return sdpa(q, k, v, extra_options["n_heads"])
        return explicit_attention(q, k, v, extra_options["n_heads"], copier(chunks, q.shape[0] // len(chunks), None))

    def attn2(q, k, v, extra_options):
        chunks = extra_options["cond_or_uncond"]
        if not in_window(cross):
            return sdpa(q, k, v, extra_options["n_heads"])
        return explicit_attention(q, k, v, extra_options["n_heads"],
                                  copier(chunks, q.shape[0] // len(chunks), columns))

    patched = model.clone()
    for block_name, number, block_index in keys:
        patched.set_model_attn1_replace(attn1, block_name, number, block_index)
        patched.set_model_attn2_replace(attn2, block_name, number, block_index)
    patched.set_model_unet_function_wrapper(counting_wrapper)
    lat = {"samples": torch.zeros(2, 4, height // 8, width // 8), "batch_index": [0, 0]}
    out = call_node("KSampler", model=patched, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                    scheduler="normal", positive=stack_conditioning(encode(clip, source), encode(clip, target)),
                    negative=encode(clip, ""), latent_image=lat, denoise=1.0)[0]["samples"]
    assert state["calls"] == steps
    return out


def _positions(clip, text, word):
    """Context positions of ``word`` in ``text``, found independently: the tokenizer's ids of the text."""
    tokens = clip.tokenize(text)
    ids = [t for t, _ in tokens["l"][0]]
    piece = clip.tokenize(word)["l"][0]
    word_ids = [t for t, _ in piece[1:] if t != ids[-1]]  # between start and end/padding
    for i in range(len(ids) - len(word_ids) + 1):
        if ids[i:i + len(word_ids)] == word_ids:
            return list(range(i, i + len(word_ids)))
    raise AssertionError(f"{word!r} not in {text!r}")


# --- tests ---------------------------------------------------------------------------------------

def test_store_cross_record_is_planned_and_keyed(tiny_sd15):
    model, clip, _ = tiny_sd15
    _, plain = _source(model, clip, store_cross="off")
    _, source = _source(model, clip)
    assert not plain.cross_layers and plain.cross_nbytes == 0
    assert source.cross_layers == frozenset(layer.key for layer in source.layers)  # 'all layers'
    assert set(source.cross_entries) == set(source.entries)  # keyed like the attn1 record
    assert all(set(m) == source.cross_layers for m in source.cross_entries.values())
    contexts = {id(t) for t in source.cross_context.values()}
    assert len(contexts) == 1  # one prompt: its context is kept once for all stored steps
    context = next(iter(source.cross_context.values()))
    assert torch.equal(context.float(), encode(clip, SRC)[0][0].float())
    assert source.planned_bytes == source.nbytes, (source.planned_bytes, source.nbytes)
    assert source.nbytes == plain.nbytes + source.cross_nbytes


def test_cross_with_the_source_prompt_gives_the_source_back(tiny_sd15):
    model, clip, _ = tiny_sd15
    src_latent, source = _source(model, clip)
    for mode in ("cross", "self + cross"):
        out = ksampler(replace(model, source, clip, mode=mode, target=SRC), clip, text=SRC, steps=STEPS,
                       latent_image=latent())
        assert torch.equal(out, src_latent["samples"]), (mode, max_abs(out, src_latent["samples"]))
    # named words: the explicit map instead of the host's kernel, so within that kernel's rounding
    out = ksampler(replace(model, source, clip, target=SRC, tokens="named words", words="green, ducks"), clip,
                   text=SRC, steps=STEPS, latent_image=latent())
    err, scale = max_abs(out, src_latent["samples"]), float(src_latent["samples"].abs().max())
    print(f"named words, same prompt: |out - source| {err:.3g} (latent scale {scale:.3g})")
    assert err <= 1e-5 * scale


@pytest.mark.parametrize("mode, tokens, target, words", [
    ("cross", "all tokens", SWAP, ""),
    ("self + cross", "all tokens", SWAP, ""),
    ("cross", "named words", SWAP, "rubber"),  # the edited word (in the target only): the source's column there
    ("cross", "named words", LONGER, "ducks street"),  # non-edited words at other positions in each prompt
])
def test_matches_explicit_map_reference(tiny_sd15, mode, tokens, target, words):
    model, clip, _ = tiny_sd15
    src_latent, source = _source(model, clip)
    edited = ksampler(replace(model, source, clip, mode=mode, target=target, tokens=tokens, words=words), clip,
                      text=target, steps=STEPS, latent_image=latent())
    columns = None
    if tokens == "named words":
        cols_t, cols_s = [], []
        for word in words.split():
            pos_t = _positions(clip, target, word)
            cols_t += pos_t
            cols_s += _positions(clip, SRC, word) if word in SRC.split() else pos_t
        columns = (cols_t, cols_s)
    reference = reference_edit(model, clip, source=SRC, target=target, width=W, height=H, columns=columns,
                               self_window=(0.0, 0.8) if mode == "self + cross" else None)
    plain = _once(("plain", target), lambda: ksampler(model, clip, text=target, steps=STEPS, latent_image=latent()))
    floor = max_abs(src_latent["samples"][0], reference[0])
    err = max_abs(edited[0], reference[1])
    effect = max_abs(plain[0], reference[1])
    print(f"{mode} {tokens} {words!r}: |edit - reference| {err:.3g}, source floor {floor:.3g}, effect {effect:.3g}, "
          f"scale {float(reference.abs().max()):.3g}")
    assert err <= 2 * floor + 1e-5 * float(reference.abs().max())
    assert effect > 100 * err
    if columns is not None:  # replacing other columns gives another image: the named ones are the ones replaced
        shifted = reference_edit(model, clip, source=SRC, target=target, width=W, height=H,
                                 columns=([c + 1 for c in columns[0]], [c + 1 for c in columns[1]]))
        assert max_abs(edited[0], shifted[1]) > 100 * err


def test_replaced_map_takes_exactly_the_named_columns():
    cross = pack_submodule("fpe_attention.cross")
    g = torch.Generator().manual_seed(0)
    heads, tokens, length, channels = 4, 12, 77, 32
    q_t, q_s = (torch.randn(1, tokens, channels, generator=g) for _ in range(2))
    k_t, k_s = (torch.randn(1, length, channels, generator=g) * 3 for _ in range(2))
    cols_t, cols_s = [3, 4, 9], [5, 6, 9]
    got = cross.replaced_map(q_t, k_t, q_s, k_s, heads, cols_t, cols_s)

    def maps(q, k):  # written out: per head, softmax over the context of q·k/√d
        d = channels // heads
        qh, kh = q[0].reshape(tokens, heads, d), k[0].reshape(length, heads, d)
        return torch.stack([torch.softmax(qh[:, h] @ kh[:, h].T / d**0.5, dim=-1) for h in range(heads)])[None]

    target, source = maps(q_t, k_t), maps(q_s, k_s)
    others = [c for c in range(length) if c not in cols_t]
    torch.testing.assert_close(got[..., others], target[..., others])
    torch.testing.assert_close(got[..., cols_t], source[..., cols_s])


def test_words_are_found_with_the_clip_tokenizer(tiny_sd15, tiny_sdxl):
    words = pack_submodule("fpe_attention.prompt_words")
    for _, clip, _ in (tiny_sd15, tiny_sdxl):
        found = words.prompt_tokens(clip, "a photo of (yellow:1.2) rubber ducks, walking")
        assert found.words == ("a", "photo", "of", "yellow", "rubber", "ducks", ",", "walking")
        assert found.positions[5] == tuple(_positions(clip, found.text, "ducks")) == (6,)
        assert found.count == 8 and found.length == 77
        assert found.find("Ducks,") == [5]


def test_errors_name_the_setting(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    _, plain = _source(model, clip, store_cross="off")
    with pytest.raises(fpe_error, match="store_cross"):
        replace(model, plain, clip)
    replace(model, plain, clip, mode="self")  # self needs nothing more
    _, source = _source(model, clip)
    with pytest.raises(fpe_error, match="source_text has 8 tokens, target_text 9"):
        replace(model, source, clip, target=LONGER)
    with pytest.raises(fpe_error, match=r"'duck' is in neither prompt.*'rubber'"):
        replace(model, source, clip, tokens="named words", words="duck")
    with pytest.raises(fpe_error, match="only in target_text.*8 tokens, target_text 9"):
        replace(model, source, clip, target=LONGER, tokens="named words", words="yellow")
    with pytest.raises(fpe_error, match="source_text: it encodes to 154 context tokens.*had 77"):
        replace(model, source, clip, source_text=" ".join([SRC] * 12), target=SRC)
    with pytest.raises(fpe_error, match="clip"):
        replace(model, source, None)
    with pytest.raises(fpe_error, match="store_cross needs a record.*storage"):
        capture(model, clip, SRC, steps=2, latent_image=latent(64, 48), storage="replay", store_cross="on")
    _, official = _source(model, clip, store_cross="on")  # the store layers only
    with pytest.raises(fpe_error, match="store_cross 'on'.*'all layers'"):
        replace(model, official, clip, cross_layers="all")
    with pytest.raises(fpe_error, match="cross_end 1.0.*store_end"):
        replace(model, source, clip, cross_end=1.0)
    other = model.clone()
    other.set_model_attn2_replace(lambda q, k, v, extra: q, "input", 4, 0)
    with pytest.raises(fpe_error, match="another node already replaces cross-attention at block input.4.0"):
        replace(other, source, clip)


def test_saved_workflows_without_store_cross_still_convert(tiny_sd15):
    from pathlib import Path

    from fpe_headless.comfy.workflow import WorkflowError, load_workflow, to_api

    wf = load_workflow(Path(__file__).resolve().parents[2] / "workflows" / "fpe_generated_edit.json")
    node = next(n for n in wf["nodes"] if n["type"] == "FPESourceCapture")

    def capture_inputs():
        return next(n for n in to_api(wf).values() if n["class_type"] == "FPESourceCapture")["inputs"]

    assert node["widgets_values"][-1] == "off" and capture_inputs()["store_cross"] == "off"
    node["widgets_values"].pop()  # as saved before the widget existed: the node's default applies
    assert "store_cross" not in capture_inputs()
    node["widgets_values"].append("all layers")
    assert capture_inputs()["store_cross"] == "all layers"
    node["widgets_values"] = node["widgets_values"][:-3]  # required values missing: still an error
    with pytest.raises(WorkflowError, match="FPESourceCapture"):
        to_api(wf)


def test_sdxl_two_encoders_and_two_layer_blocks(tiny_sdxl):
    """SDXL: the context holds both encoders' features; blocks have two transformer layers each."""
    model, clip, _ = tiny_sdxl
    size = (128, 128)
    src_latent, source = _source(model, clip, size=size)
    assert any(key[2] == 1 for key in source.cross_layers)
    same = ksampler(replace(model, source, clip, target=SRC), clip, text=SRC, steps=STEPS, latent_image=latent(*size))
    assert torch.equal(same, src_latent["samples"]), max_abs(same, src_latent["samples"])
    words = "ducks street"
    edited = ksampler(replace(model, source, clip, target=LONGER, tokens="named words", words=words), clip,
                      text=LONGER, steps=STEPS, latent_image=latent(*size))
    cols = [p for w in words.split() for p in _positions(clip, LONGER, w)]
    cols_s = [p for w in words.split() for p in _positions(clip, SRC, w)]
    reference = reference_edit(model, clip, source=SRC, target=LONGER, width=size[0], height=size[1],
                               columns=(cols, cols_s))
    plain = ksampler(model, clip, text=LONGER, steps=STEPS, latent_image=latent(*size))
    floor = max_abs(src_latent["samples"][0], reference[0])
    err, effect = max_abs(edited[0], reference[1]), max_abs(plain[0], reference[1])
    print(f"SDXL named words: |edit - reference| {err:.3g}, floor {floor:.3g}, effect {effect:.3g}")
    assert err <= 2 * floor + 1e-5 * float(reference.abs().max())
    assert effect > 100 * err


def test_real_photo_source_records_cross_attention(tiny_sd15):
    """FPE DDIM Invert's record pass keeps the cross-attention inputs too, planned to the byte."""
    from fpe_harness.graphs import encoded_photo, sample_back

    model, clip, _ = tiny_sd15
    photo = encoded_photo(64, 48)
    inverted, source, _ = call_node(
        "FPEDDIMInvert", model=model, positive=encode(clip, SRC), latent=photo, steps=4, scheduler="normal",
        cfg=1.0, denoise=1.0, store_layers="official", store_custom_layers="in4", store_end=0.8, store_rows="cond",
        storage="auto", precision="exact", reconstruction_check=False, store_cross="on")
    assert source.cross_layers == source.stored_layers and source.cross_entries
    assert source.planned_bytes == source.nbytes
    plain = sample_back(model, clip, inverted, text=SWAP, steps=4)
    edited = sample_back(replace(model, source, clip, cross_layers="official"), clip, inverted, text=SWAP,
                         steps=4)
    assert torch.isfinite(edited).all() and max_abs(edited, plain) > 0


def test_a_model_already_injected_is_refused_naming_this_node(tiny_sd15):
    model, clip, _ = tiny_sd15
    _, source = _source(model, clip)
    injected = call_node("FPESelfAttnInject", model=model, fpe_source=source, layers="official", custom_layers="in4",
                         start=0.0, end=0.8, branches="cond only")[0]
    with pytest.raises(Exception, match="model: this model already carries an FPE Self-Attn Inject edit, so FPE "
                                        "Attention Replace would not run as asked"):
        replace(injected, source, clip, mode="self")


def test_a_stale_prompt_text_is_an_error_not_another_prompt_s_columns(tiny_sd15, fpe_error):
    """The prompt edited, its text widget not: same token count, other tokens, so the named word's columns
    would silently be another prompt's. Both texts are checked against what was encoded."""
    model, clip, _ = tiny_sd15
    words = pack_submodule("fpe_attention.prompt_words")
    _, source = _source(model, clip)
    stale = "a photo of green cats running on road"
    assert words.prompt_tokens(clip, stale).count == words.prompt_tokens(clip, SRC).count
    with pytest.raises(fpe_error, match="source_text: 'a photo of green cats running on road' does not encode to "
                                        "the prompt FPE Source Capture sampled"):
        replace(model, source, clip, tokens="named words", words="green", source_text=stale, target=SWAP)
    # target_text stale: the sampler's prompt was edited to another of the same length.
    sampled = "a photo of rubber cats running on road"
    assert words.prompt_tokens(clip, sampled).count == words.prompt_tokens(clip, SWAP).count
    for tokens, words in (("named words", "rubber"), ("all tokens", "")):
        with pytest.raises(Exception, match="target_text: 'a photo of rubber ducks walking on street' does not "
                                            "encode to the target sampler's prompt"):
            ksampler(replace(model, source, clip, tokens=tokens, words=words, target=SWAP), clip, text=sampled,
                     steps=STEPS, latent_image=latent())
    # The right texts still run (typed with other spacing/case the encoding is the same prompt's).
    ksampler(replace(model, source, clip, tokens="named words", words="rubber", target=SWAP), clip, text=SWAP,
             steps=STEPS, latent_image=latent())


def test_combined_prompts_are_refused_for_cross_modes_by_what_they_are(tiny_sd15, fpe_error):
    """Conditioning (Combine) on both sides: the text widgets can name one prompt only, so the cross modes say so
    at the node (not a 'target_text does not encode' error that blames a text typed exactly)."""
    model, clip, _ = tiny_sd15
    combined = call_node("ConditioningCombine", conditioning_1=encode(clip, SRC),
                         conditioning_2=encode(clip, "a red house"))[0]
    source = call_node(
        "FPESourceCapture", model=model, seed=42, steps=2, cfg=7.5, sampler_name="euler", scheduler="normal",
        positive=combined, negative=encode(clip, ""), latent_image=latent(64, 48), denoise=1.0, store_layers="all",
        store_custom_layers="in4", store_end=1.0, store_rows="cond", storage="auto", precision="exact",
        store_cross="all layers")[1]
    for mode in ("cross", "self + cross"):
        with pytest.raises(fpe_error, match=r"^cross-attention modes replace one prompt's maps, but FPE Source "
                                            r"Capture's positive has 2 entries"):
            replace(model, source, clip, mode=mode)
    replace(model, source, clip, mode="self")  # self pairs the entries one by one
