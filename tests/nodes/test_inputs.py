"""Nothing silently ignored: chained FPE nodes, non-finite numbers, bad block lists, masks, odd images."""

from __future__ import annotations

import math

import pytest
import torch

from fpe_harness.execute import Executor, call_node
from fpe_harness.graphs import SRC, TGT, capture, encoded_photo, inject, invert, ksampler, latent
from fpe_harness.host import pack_submodule
from fpe_harness.prompts import fpe_prompt
from fpe_harness.reference import encode

W, H = 64, 48


CHAINED = r"model: this model already carries an FPE Self-Attn Inject edit.*Connect {node}'s model input to the model"


def test_a_second_inject_on_an_injected_model_is_an_error(tiny_sd15, small_source, fpe_error):
    model, clip, _ = tiny_sd15
    once = inject(model, small_source)
    with pytest.raises(fpe_error, match=CHAINED.format(node="FPE Self-Attn Inject")):
        inject(once, small_source)
    with pytest.raises(fpe_error, match=CHAINED.format(node="FPE Source Capture")):
        capture(once, clip, SRC, latent_image=latent(W, H), steps=3)
    with pytest.raises(fpe_error, match=CHAINED.format(node="FPE DDIM Invert")):
        invert(once, clip, encoded_photo(W, H), steps=3)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["cfg", "denoise", "store_end"])
def test_non_finite_capture_settings_are_named(tiny_sd15, fpe_error, name, value):
    model, clip, _ = tiny_sd15
    with pytest.raises(fpe_error, match=rf"^{name}: {value} is not a finite number"):
        capture(model, clip, SRC, latent_image=latent(W, H), steps=3, **{name: value})


@pytest.mark.parametrize("name", ["start", "end"])
def test_non_finite_inject_settings_are_named(tiny_sd15, small_source, fpe_error, name):
    with pytest.raises(fpe_error, match=rf"^{name}: nan is not a finite number"):
        inject(tiny_sd15[0], small_source, **{name: math.nan})


@pytest.mark.parametrize("name", ["cfg", "denoise", "store_end"])
def test_non_finite_invert_settings_are_named(tiny_sd15, fpe_error, name):
    model, clip, _ = tiny_sd15
    with pytest.raises(fpe_error, match=rf"^{name}: nan is not a finite number"):
        invert(model, clip, encoded_photo(W, H), steps=3, **{name: math.nan})


def test_nan_in_a_workflow_file_stops_before_sampling_naming_the_input(tiny_sd15_ckpt):
    prompt = fpe_prompt(tiny_sd15_ckpt, "euler")
    prompt["6"]["inputs"]["cfg"] = math.nan  # what json.loads makes of a NaN in a shared workflow
    result = Executor().run(prompt, expect_success=False)
    assert result.error["node_id"] == "6"
    assert result.error["exception_message"].startswith("cfg: nan is not a finite number")
    assert "8" not in result.executed  # nothing sampled after it


def test_a_target_whose_prediction_turns_non_finite_stops_naming_the_cause(tiny_sd15, small_source, fpe_error):
    model, clip, _ = tiny_sd15
    with pytest.raises(fpe_error, match=r"FPE Self-Attn Inject: the target sampler's model prediction is NaN or "
                                        r"infinite at step 0.*cfg or denoise is NaN"):
        ksampler(inject(model, small_source), clip, TGT, latent_image=latent(W, H), steps=3, cfg=math.nan)


def _broken(model):
    """A model whose self-attention input turns NaN (a stand-in for an fp16 overflow)."""
    def poison(n, context, value, extra_options):
        nan = torch.full_like(n, math.nan)
        return nan, nan, nan

    broken = model.clone()
    broken.set_model_attn1_patch(poison)
    return broken


def test_a_capture_or_inversion_that_comes_out_non_finite_is_an_error(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    with pytest.raises(fpe_error, match=r"FPE Source Capture: the source image came out as NaN"):
        capture(_broken(model), clip, SRC, latent_image=latent(W, H), steps=2)
    with pytest.raises(fpe_error, match=r"FPE DDIM Invert: the inverted latent came out as NaN"):
        invert(_broken(model), clip, encoded_photo(W, H), steps=2)


def test_a_non_finite_reconstruction_is_never_reported_as_100_db():
    reconstruction = pack_submodule("fpe_attention.reconstruction")
    photo = torch.rand(1, 8, 8, 3)
    assert reconstruction.psnr_db(photo, photo) == [100.0]
    assert math.isnan(reconstruction.psnr_db(torch.full_like(photo, math.nan), photo)[0])
    report = reconstruction.ReconstructionReport(photo, [math.nan], [math.nan])
    assert not report.finite


@pytest.mark.parametrize("text, message", [
    ("in-4", r"layer item 'in-4': a range needs both ends"),
    ("out-1", r"layer item 'out-1': a range needs both ends"),
    ("mid-9", r"layer item 'mid-9': a range needs both ends"),
    ("in4-99", r"layer item 'in4-99': in block numbers go up to 8 in this model"),
    ("out3-12", r"layer item 'out3-12': out block numbers go up to 11 in this model"),
    ("mid1", r"layer item 'mid1': mid block numbers go up to 0 in this model"),
    ("in7.0-4", r"layer item 'in7.0-4': transformer layer numbers go up to 0 in this model"),
    ("in7.", r"cannot read layer item 'in7.'"),
    ("#3-99999999", r"layer item '#3-99999999': this model has attn1 layers #1-#16 only"),
    ("in4," + "x" * 900, r"^store_custom_layers: cannot read layer item 'x{24}\.\.\.'"),
    ("in4," * 2500, r"the custom layer list is 10000 characters long \(at most 1000\)"),
])
def test_block_lists_that_say_something_else_are_refused(tiny_sd15, fpe_error, text, message):
    model, clip, _ = tiny_sd15
    with pytest.raises(fpe_error, match=message) as raised:
        capture(model, clip, SRC, latent_image=latent(W, H), steps=2, store_layers="custom", store_custom_layers=text)
    # Short whatever the input's length: the item is cut to 24 characters, and the model's block list that
    # ends every message is bounded by the model (SD1.5: 16 blocks, about 130 characters).
    assert len(str(raised.value)) < 450


def test_side_by_side_takes_rgba_grey_and_other_heights(tiny_sd15):
    rgb = torch.rand(1, 32, 40, 3)
    rgba = torch.cat([torch.rand(2, 16, 20, 3), torch.ones(2, 16, 20, 1)], dim=-1)
    grey = torch.rand(1, 32, 24, 1)
    (both,) = call_node("FPESideBySide", image_a=rgb, image_b=rgba)
    assert both.shape == (1, 32, 40 + 2 * 40, 3)
    assert torch.equal(both[0, :, :40], rgb[0])
    (with_grey,) = call_node("FPESideBySide", image_a=grey, image_b=rgb)
    assert with_grey.shape == (1, 32, 24 + 40, 3) and torch.equal(with_grey[0, :, :24, 1], grey[0, ..., 0])


def test_side_by_side_names_an_empty_or_odd_image(fpe_error):
    with pytest.raises(fpe_error, match=r"image_b: expected an IMAGE batch"):
        call_node("FPESideBySide", image_a=torch.rand(1, 8, 8, 3), image_b=torch.rand(0, 8, 8, 3))
    with pytest.raises(fpe_error, match=r"image_a: an image with 5 channels"):
        call_node("FPESideBySide", image_a=torch.rand(1, 8, 8, 5), image_b=torch.rand(1, 8, 8, 3))


def test_an_empty_latent_batch_is_named(tiny_sd15, small_source, fpe_error):
    model, clip, _ = tiny_sd15
    empty = {"samples": torch.zeros(0, 4, H // 8, W // 8)}
    with pytest.raises(fpe_error, match=r"latent_image: the latent batch is empty"):
        capture(model, clip, SRC, latent_image=empty, steps=2)
    with pytest.raises(fpe_error, match=r"latent: the latent batch is empty"):
        invert(model, clip, empty, steps=2)
    with pytest.raises(fpe_error, match=r"the target latent batch is empty \(0 images\)"):
        call_node("KSamplerAdvanced", model=inject(model, small_source), add_noise="enable", noise_seed=42, steps=3,
                  cfg=7.5, sampler_name="euler", scheduler="normal", positive=encode(clip, TGT),
                  negative=encode(clip, ""), latent_image=empty, start_at_step=0, end_at_step=10000,
                  return_with_leftover_noise="disable")
