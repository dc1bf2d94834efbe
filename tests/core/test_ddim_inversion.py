"""Groundwork for real-image editing: DDIM inversion in sigma space (fpe_attention.inversion)."""

from __future__ import annotations

import pytest
import torch

from fpe_harness.execute import call_node
from fpe_harness.graphs import toy_model
from fpe_harness.host import pack_submodule
from fpe_harness.reference import encode


@pytest.fixture(scope="module")
def inversion():
    return pack_submodule("fpe_attention.inversion")


def _latent(side=64, seed=3):
    return torch.randn(1, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(seed)) * 1.5


def _reconstruct(model, clip, top, sigmas, text=""):
    """Sample back from the inverted latent with stock nodes: ddim over the same sigmas, no noise."""
    return call_node("SamplerCustom", model=model, add_noise=False, noise_seed=0, cfg=1.0,
                     positive=encode(clip, text), negative=encode(clip, ""),
                     sampler=call_node("KSamplerSelect", sampler_name="ddim")[0], sigmas=sigmas,
                     latent_image={"samples": top})[0]["samples"]


def _forward_sigmas(model, steps, official):
    if official:
        return call_node("FPEOfficialDDIMSigmas", model=model, steps=steps)[0]
    return call_node("BasicScheduler", model=model, scheduler="ddim_uniform", steps=steps, denoise=1.0)[0]


def _round_trip(model, clip, inversion, latent, steps, official):
    sigmas = _forward_sigmas(model, steps, official)
    with torch.inference_mode():
        top, trajectory, inv_sigmas = inversion.invert(model, latent=latent, positive=encode(clip, ""),
                                                       negative=encode(clip, ""), cfg=1.0, forward_sigmas=sigmas)
    assert len(trajectory) == len(sigmas) == len(inv_sigmas)
    # A schedule ending at σ_end > 0 (the official σ(0)) returns the latent at that level:
    # x_VP · sqrt(1 + σ_end²) in ComfyUI's sampler space.
    back = _reconstruct(model, clip, top, sigmas) / torch.sqrt(1 + sigmas[-1] ** 2)
    return float((back - latent).pow(2).mean().sqrt() / latent.pow(2).mean().sqrt())


@pytest.mark.parametrize("official", [True, False], ids=["official", "ddim_uniform"])
def test_constant_noise_model_round_trip_is_exact(tiny_sd15, inversion, official):
    model, clip, _ = tiny_sd15
    eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    err = _round_trip(toy_model(model, lambda x: eps.to(x)), clip, inversion, _latent(), 10, official)
    print(f"constant-ε round trip: {err:.3g}")
    assert err < 1e-5  # DDIM with an x-independent ε is exactly invertible: float rounding only


def test_reconstruction_error_is_first_order_in_the_step_size(tiny_sd15, inversion):
    model, clip, _ = tiny_sd15
    # ε linear in x_VP: smooth, so the only error is the discretisation: explicit steps one way,
    # "ε at the destination" the other, first order in the step size.
    toy = toy_model(model, lambda x: 0.5 * x + 0.1)
    errors = [_round_trip(toy, clip, inversion, _latent(seed=5), steps, True) for steps in (10, 50, 100)]
    print("linear-ε relative RMSE at 10/50/100 steps:", [f"{e:.3%}" for e in errors])
    assert errors[0] > 3 * errors[1] > 1.5 * 3 * errors[2]  # 5x and 2x more steps: ~5x and ~2x less error
    assert errors[2] < 0.03  # measured 18.4 / 4.7 / 2.4 %: the 1/n law from 10 steps predicts ~1.8-2.4 %


def test_tiny_unet_inverts_and_reconstructs_better_with_more_steps(tiny_sd15, inversion):
    model, clip, _ = tiny_sd15
    errors = [_round_trip(model, clip, inversion, _latent(seed=5), steps, True) for steps in (10, 100)]
    print("tiny UNet relative RMSE at 10/100 steps:", [f"{e:.3%}" for e in errors])
    # A random, deliberately sharp UNet is a stiff ODE: the round trip is far from exact (~20 %), but
    # more steps must help. Real checkpoints are smooth; the DDIM Invert node will report the figure.
    assert errors[1] < errors[0]
