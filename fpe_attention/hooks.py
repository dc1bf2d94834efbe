"""The host hooks FPE attaches to its clones besides the attn1 patch (public, chainable APIs only).

* ``run_hook``: current ComfyUI's keyed OUTER_SAMPLE wrapper, called once per sampling run before
  any model evaluation with the run's sigmas, latent, noise, mask and the guider (whose conditioning
  lists carry per-entry ids). ComfyUI of early 2024 has no such hook: there the post-CFG hook and
  the schedule's first sigma mark runs (see ``evaluations``).
* ``evaluation_end``: a post-CFG function, called at the end of every model evaluation on both
  hosts with its input, result and the run's conditioning lists.

Hook objects are shared by the clones of a patched model (``model.clone()`` deep-copies options).
"""

from __future__ import annotations

import torch

from .host_versions import add_outer_sample_wrapper

KEY = "free-prompt-editing"


class Shared:
    """Base for hook objects: clones of a patched model keep the same instance."""

    def __deepcopy__(self, memo):
        return self


class RunStart(Shared):
    """OUTER_SAMPLE wrapper calling ``on_run(guider, noise, latent, sigmas, denoise_mask)`` first."""

    def __init__(self, on_run):
        self.on_run = on_run

    def __call__(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
        self.on_run(getattr(executor, "class_obj", None), noise, latent_image, sigmas, denoise_mask)
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)


def add_run_hook(patched, on_run) -> bool:
    """Attach ``on_run`` before every sampling run where the host allows it; False on ComfyUI of early 2024."""
    return add_outer_sample_wrapper(patched, KEY, RunStart(on_run))


def add_evaluation_end(patched, hook) -> None:
    patched.set_model_sampler_post_cfg_function(hook)


def latent_hw(shape) -> tuple[int, int]:
    return int(shape[-2]), int(shape[-1])


def all_finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())
