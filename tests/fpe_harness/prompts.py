"""API prompts the tests queue: a capture and an Inject with the target on KSamplerAdvanced."""

from __future__ import annotations

import copy

from fpe_harness.graphs import SRC, TGT

STEPS = 5


def fpe_prompt(ckpt, sampler, *, target=TGT, start_at_step=0, target_sampler=None, twice=False):
    """API prompt: a capture and an Inject, the target on KSamplerAdvanced, its latent saved exactly."""
    common = {"steps": STEPS, "cfg": 7.5, "scheduler": "normal"}
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": SRC}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": target}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "FPESourceCapture", "inputs": {
            "model": ["1", 0], "seed": 42, "sampler_name": sampler, "positive": ["2", 0], "negative": ["3", 0],
            "latent_image": ["5", 0], "denoise": 1.0, "store_layers": "official", "store_custom_layers": "in4",
            "store_end": 0.8, "store_rows": "cond", "storage": "auto", "precision": "exact", **common}},
        "7": {"class_type": "FPESelfAttnInject", "inputs": {
            "model": ["1", 0], "fpe_source": ["6", 1], "layers": "official", "custom_layers": "in4", "start": 0.0,
            "end": 0.8, "branches": "cond only"}},
        "8": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["7", 0], "add_noise": "enable", "noise_seed": 42, "sampler_name": target_sampler or sampler,
            "positive": ["4", 0], "negative": ["3", 0], "latent_image": ["5", 0], "start_at_step": start_at_step,
            "end_at_step": 10000, "return_with_leftover_noise": "disable", **common}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "fpe_runs/target"}},
    }
    if twice:  # a second target sampler on the same patched model, in the same prompt
        prompt["10"] = copy.deepcopy(prompt["8"])
        prompt["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "fpe_runs/b"}}
    return prompt
