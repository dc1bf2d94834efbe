"""Models without UNet self-attention (DiT / MMDiT: SD3, Flux, AuraFlow, Stable Cascade...) are refused
by every UNet FPE node that takes a MODEL, by name and before any sampling (SD3 and Flux sources are captured for
FPE MMDiT Inject; an SD1.5 prompt given to them is refused by name).

The models are the host's own classes (tiny, random weights; ``fpe_harness.foreign_models``), so
the test follows whatever families the host ComfyUI has.
"""

from __future__ import annotations

import time

import pytest
import torch

from fpe_harness import foreign_models
from fpe_harness.graphs import SRC, capture, inject, invert

NODES = ("FPESourceCapture", "FPEDDIMInvert", "FPESelfAttnInject")
MMDIT = ("SD3", "SD35M", "Flux")  # edited by FPE MMDiT Inject (tests/core/test_mmdit_edit.py); the others refused
# At least one foreign family on every host: Stable Cascade on the 2024 one, SD3 (MMDiT) on current ones.
EXPECTED_SOMEWHERE = ("Stable_Cascade_C", "SD3")


def _families():
    import comfy.supported_models  # noqa: F401 - the host is booted by conftest before collection

    return foreign_models.available()


FAMILIES = _families()
_BUILT: dict[str, tuple] = {}


def _built(name):
    """(ModelPatcher, seconds to build), once per session."""
    if name not in _BUILT:
        start = time.perf_counter()
        patcher = foreign_models.build(name)
        _BUILT[name] = (patcher, time.perf_counter() - start)
    return _BUILT[name]


@pytest.fixture(scope="module", params=FAMILIES)
def foreign(request):
    """(family, MODEL) of every non-UNet family the host has, in turn."""
    return request.param, _built(request.param)[0]


def test_host_has_a_foreign_family():
    assert set(FAMILIES) & set(EXPECTED_SOMEWHERE), f"no DiT/MMDiT family found on this host (have {FAMILIES})"


def test_foreign_models_are_tiny_and_what_the_host_builds(foreign):
    name, model = foreign
    seconds = _built(name)[1]
    assert foreign_models.size_bytes(model) < 20 * 2**20, foreign_models.size_bytes(model)
    assert seconds < 10, f"building {name} took {seconds:.1f} s"
    assert all(p.device.type == "cpu" for p in model.model.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in model.model.parameters())
    backbone = model.model.diffusion_model
    assert not hasattr(backbone, "input_blocks")  # no UNet: what the pack must refuse
    import comfy.model_base

    assert isinstance(model.model, comfy.model_base.BaseModel)


def _run(node, name, model, tiny_sd15, small_source):
    _, clip, _ = tiny_sd15
    if node == "FPESourceCapture":
        return capture(model, clip, SRC, latent_image=foreign_models.empty_latent(name), steps=3)
    if node == "FPEDDIMInvert":
        return invert(model, clip, foreign_models.empty_latent(name, fill=1.0), steps=3)
    return inject(model, small_source)


@pytest.mark.parametrize("node", NODES)
def test_models_without_unet_attention_are_refused_by_name(foreign, node, tiny_sd15, small_source, fpe_error):
    name, model = foreign
    model_type = type(model.model).__name__
    backbone = type(model.model.diffusion_model).__name__
    with foreign_models.forbid_forward(model) as calls:
        with pytest.raises(fpe_error) as raised:
            _run(node, name, model, tiny_sd15, small_source)
    message = str(raised.value)
    assert calls == [], f"{node} ran the model before refusing it: {calls}"
    if name in MMDIT and node == "FPESourceCapture":  # served (FPE MMDiT Inject): this SD1.5 prompt is what is wrong
        assert message.startswith("positive: the prompt is encoded 64 wide"), message  # the tiny SD1.5 CLIP
        return
    assert message.startswith("model: "), message
    assert "UNet" in message, message
    assert f"this model is {model_type} with a {backbone} backbone" in message, message
    assert "load an SD1.x, SD2.x or SDXL checkpoint" in message, message
    assert calls == [], f"{node} ran the model before refusing it: {calls}"


def test_the_refusal_leaves_the_model_usable_by_other_nodes(foreign, tiny_sd15, small_source, fpe_error):
    """Refusing does not patch the input model (no hooks, no model options left behind)."""
    name, model = foreign
    before = (dict(model.model_options.get("transformer_options", {})), dict(model.object_patches),
              dict(model.patches))
    for node in NODES:
        with pytest.raises(fpe_error):
            _run(node, name, model, tiny_sd15, small_source)
    after = (dict(model.model_options.get("transformer_options", {})), dict(model.object_patches),
             dict(model.patches))
    assert after == before
