"""Memory is checked before it is spent: the capture's size is counted, and a record that cannot fit
stops the node before sampling with the size, what is free and the fixes."""

from __future__ import annotations

import pytest
import torch

from fpe_harness.execute import call_node
from fpe_harness.graphs import SRC, capture, capture_with, encoded_photo, invert, latent
from fpe_harness.host import pack_submodule
from fpe_harness.reference import encode

GB = 10**9


@pytest.fixture(scope="module")
def memory():
    return pack_submodule("fpe_attention.memory")


@pytest.fixture(scope="module")
def fpe_error():
    return pack_submodule("fpe_attention.errors").FPEError


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm_2", "dpmpp_2m", "uni_pc", "euler_ancestral"])
def test_the_planned_size_is_what_the_capture_stores(tiny_sd15, sampler):
    model, clip, _ = tiny_sd15
    _, source = capture(model, clip, SRC, latent_image=latent(64, 48), steps=5, sampler=sampler, store_end=0.6)
    assert source.nbytes > 0 and source.planned_bytes == source.nbytes, (source.planned_bytes, source.nbytes)


def test_the_planned_size_counts_entries_and_uncond_rows(tiny_sd15):
    model, clip, _ = tiny_sd15
    both = call_node("ConditioningCombine", conditioning_1=encode(clip, SRC), conditioning_2=encode(clip, "a wall"))[0]
    _, source = capture_with(model, clip, both, latent(64, 48, batch=2), steps=4, sampler="heun",
                             store_rows="cond + uncond", precision="fp16")
    assert source.planned_bytes == source.nbytes
    _, inverted, _ = invert(model, clip, encoded_photo(64, 48), steps=4, store_rows="cond + uncond", negative="",
                            cfg=2.0)
    assert inverted.planned_bytes == inverted.nbytes


def test_a_capture_that_cannot_fit_stops_before_sampling(tiny_sd15, memory, fpe_error, monkeypatch):
    model, clip, _ = tiny_sd15
    monkeypatch.setattr(memory, "free_ram", lambda: 4 * GB)
    calls = []
    counted = model.clone()
    counted.set_model_attn1_patch(lambda n, c, v, extra: (calls.append(1), (n, c, v))[1])
    with pytest.raises(fpe_error, match=r"FPE Source Capture would store about 16 GB \(11 layers, 8000 "
                                        r"evaluations in 8000 steps.*but the system RAM has 4 GB free\. Set storage "
                                        r"to 'replay' \(no record.*or store less: lower store_end.*precision fp16"):
        capture(counted, clip, SRC, latent_image=latent(512, 512), steps=10000, sampler="euler", storage="cpu")
    assert calls == []  # not one step ran
    with pytest.raises(fpe_error, match=r"FPE DDIM Invert would store about"):
        invert(counted, clip, encoded_photo(512, 512), steps=10000, storage="cpu")
    assert calls == []


def test_auto_storage_keeps_a_record_beside_the_model_only_when_it_fits(memory, fpe_error, monkeypatch):
    monkeypatch.setattr(memory, "free_vram", lambda device: 8 * GB)
    monkeypatch.setattr(memory, "free_ram", lambda: 20 * GB)
    cuda = torch.device("cuda", 0)

    def plan(size, storage, device=cuda):
        chosen = memory.choose_storage("FPE Source Capture", size, storage, device, "test")
        return chosen.mode, chosen.device

    assert plan(1 * GB, "auto") == ("model", None)  # beside the model: at most a quarter of the free VRAM
    assert plan(3 * GB, "auto") == ("cpu", torch.device("cpu"))
    assert plan(1 * GB, "cpu") == ("cpu", torch.device("cpu"))
    assert plan(17 * GB, "auto") == ("replay", None)  # past 80% of the free RAM: no record at all
    assert plan(17 * GB, "auto", "cpu") == ("replay", None)
    assert plan(17 * GB, "replay") == ("replay", None)
    assert plan(1 * GB, "replay") == ("replay", None)  # asked for: always
    with pytest.raises(fpe_error, match=r"would store about 17 GB \(test\), but the system RAM has 20 GB free\. "
                                        r"Set storage to 'replay'"):
        plan(17 * GB, "cpu")


def test_a_guidance_node_that_reruns_the_model_stays_within_the_plan(tiny_sd15):
    model, clip, _ = tiny_sd15
    sag = call_node("SelfAttentionGuidance", model=model, scale=0.5, blur_sigma=2.0)[0]
    _, source = capture(sag, clip, SRC, latent_image=latent(128, 128), steps=3, sampler="euler")
    assert source.nbytes > 0 and source.planned_bytes >= source.nbytes


def test_a_sampler_that_picks_its_own_steps_is_refused(tiny_sd15, fpe_error):
    model, clip, _ = tiny_sd15
    with pytest.raises(fpe_error, match=r"sampler_name: dpm_adaptive picks its own steps"):
        capture(model, clip, SRC, latent_image=latent(64, 48), steps=3, sampler="dpm_adaptive")
