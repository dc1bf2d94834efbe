"""FPE Attention Record as the tests call it, on a latent whose layers hold few tokens."""

from __future__ import annotations

from fpe_harness.attention import explicit_maps
from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, ksampler, latent
from fpe_harness.host import pack_submodule

W, H = 128, 96  # a 16x12 latent: levels of 192 / 48 / 12 / 3 tokens on the tiny SD1.5
STEPS = 3  # of a recorded run (``recorded``)
_RUNS: dict = {}


def record(model, *, cross="all", self_layers="all", start=0.0, end=1.0, rows="cond", image=0, cross_custom="",
           self_custom=""):
    return call_node("FPEAttentionRecord", model=model, cross_layers=cross, cross_custom_layers=cross_custom,
                     self_layers=self_layers, self_custom_layers=self_custom, start_percent=start, end_percent=end,
                     rows=rows, image=image)


def record_keys(model):
    """The model's attn1 layer keys, in forward order."""
    return [layer.key for layer in pack_submodule("fpe_attention.layers").model_attn1_layers(model)]


def recorded(model, clip, text=SRC, key="sd15"):
    """(record, samples, reference sums, counts) for one recorded run at W x H, cached per model and prompt:
    the record of every cross-attention and the official self-attention layers, and the explicit-softmax
    reference's map sums of the same run."""
    if (key, text) not in _RUNS:
        recording, rec = record(model, cross="all", self_layers="official")
        reference, sums, counts, _ = explicit_maps(recording, record_keys(model))
        out = ksampler(reference, clip, text, latent_image=latent(W, H), steps=STEPS)
        _RUNS[(key, text)] = (rec, {"samples": out}, sums, counts)
    return _RUNS[(key, text)]
