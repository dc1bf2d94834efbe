"""Sampling runs that are not the picture: how a node asks attention observers to look away.

An observer (FPE Attention Record's record) rides on a model's attention patches: a patch that feeds
one names it in ``fpe_observer``. A node that samples for its own purposes (an inversion, a
reconstruction check) wraps those runs in ``paused``, or in ``tagged`` when they replay a source
whose maps should answer to another latent; what that means is the observer's business, so such
nodes never import the recording feature. An observer implements ``pause``, ``resume``,
``begin_tagged(latent)`` and ``end_tagged(completed)``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def observers_on(model) -> list:
    """The observers a model's attention patches feed, each once."""
    patches = getattr(model, "model_options", {}).get("transformer_options", {}).get("patches", {})
    found: list = []
    for name in ("attn1_patch", "attn2_patch"):
        for patch in patches.get(name, []):
            observer = getattr(patch, "fpe_observer", None)
            if observer is not None and all(observer is not seen for seen in found):
                found.append(observer)
    return found


@contextmanager
def paused(model):
    """Runs inside are not the picture an observer should show (an inversion, a reconstruction check)."""
    observers = observers_on(model)
    for observer in observers:
        observer.pause()
    try:
        yield
    finally:
        for observer in observers:
            observer.resume()


@contextmanager
def tagged(model, latent: torch.Tensor):
    """Runs inside are a run of their own that also answers to ``latent`` (e.g. the inverted latent of
    the source they replay)."""
    observers = observers_on(model)
    for observer in observers:
        observer.begin_tagged(latent)
    completed = False
    try:
        yield
        completed = True
    finally:
        for observer in observers:
            observer.end_tagged(completed)
