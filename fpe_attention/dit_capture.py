"""The source of an MMDiT edit (issue 27): what FPE Source Capture and FPE Flow Invert keep on Flux or SD3.

* **stored** (where the memory plan says it fits): every block's image queries and keys of each stored
  evaluation, recorded through the attention override (``DiTRecorder``). Large: Flux at 1024 px holds 4096 image
  tokens × 3072 channels, two tensors per block, 57 blocks, 2.7 GiB per step in bf16 (53 GiB for 20 steps); at
  512 px and ``store_end`` 0.2 of 28 steps, 4 GiB.
* **replay** (``auto``'s fallback, or asked for): each stored evaluation's model input and conditioning (a few MB
  in all); the edit runs the source's rows beside the target's in the same model call, where the attention
  override hands the target the source's queries and keys on the spot (about 1.2–1.4× a plain generation).
"""

from __future__ import annotations

import math

import torch

from .dit_hooks import heads_of, install, next_block, to_heads
from .dit_model import require_dit
from .errors import FPEError
from .hooks import Shared
from .memory import choose_storage
from .source import FPESource, model_signature, weights_fingerprint
from .steps import step_window
from .validate import check_latent


def check_dit_inputs(model, samples, latent_name: str, prompts: dict, maker: str = "FPE Source Capture") -> None:
    """Before sampling: the latent's channels and the prompts' width are what this MMDiT takes, so a VAE or text
    encoder of another family is named instead of failing inside the model with a shape error."""
    layout = require_dit(model, maker)
    channels = getattr(getattr(model.model, "latent_format", None), "latent_channels", 16)
    if getattr(samples, "ndim", 0) == 4 and int(samples.shape[1]) != channels:
        fix = ("encode the photo with this model's VAE" if maker != "FPE Source Capture" else
               "use an empty latent node for SD3/Flux (EmptySD3LatentImage) or encode with this model's VAE")
        raise FPEError(f"{latent_name}: the latent has {int(samples.shape[1])} channels but {layout.family} takes "
                       f"{channels}: {fix}")
    width = layout.text_width(model)
    for name, conditioning in prompts.items():
        for entry in conditioning or []:
            options = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 else {}
            if isinstance(options, dict) and options.get("reference_latents") is not None:
                raise FPEError(f"{name}: the prompt carries reference images (ReferenceLatent, Flux Kontext), whose "
                               f"tokens FPE on MMDiT does not handle yet: remove the ReferenceLatent node from both "
                               f"sides")
            tensor = entry[0] if isinstance(entry, (list, tuple)) and entry else None
            if width and hasattr(tensor, "shape") and len(tensor.shape) == 3 and int(tensor.shape[-1]) != width:
                raise FPEError(
                    f"{name}: the prompt is encoded {int(tensor.shape[-1])} wide, but {layout.family} takes {width}: "
                    f"encode it with this model's text encoders (Flux: clip_l + t5xxl; SD3: clip_l, clip_g, t5xxl)")


def dit_source(model, *, samples: torch.Tensor, sigmas: torch.Tensor, schedule_origin: str, cfg: float, settings,
               evaluations: int, rows: int, maker: str, kinds: frozenset):
    """An empty ``FPESource`` for an MMDiT run over ``sigmas``, its storage plan and record dtype (None: the
    model's). The schedule is checked as ``capture.new_source`` checks it for UNets."""
    layout = require_dit(model, maker)
    if settings.cross != "off":
        raise FPEError("store_cross: cross-attention records are for UNet models; an MMDiT has no separate "
                       "cross-attention: set store_cross to 'off'")
    check_latent(samples, "latent_image" if maker == "FPE Source Capture" else "latent")
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise FPEError("sigmas: the schedule needs at least 2 values (1 step)")
    if not bool(torch.isfinite(sigmas).all()):
        raise FPEError("sigmas: the schedule holds NaN or infinite values")
    rises = [i for i in range(int(sigmas.shape[0]) - 1) if float(sigmas[i + 1]) > float(sigmas[i])]
    if rises:
        i = rises[0]
        raise FPEError(f"sigmas: the schedule rises at step {i} (sigma {float(sigmas[i]):.6g} -> "
                       f"{float(sigmas[i + 1]):.6g}), but {maker} samples from noise towards the image over falling "
                       f"sigmas: remove the node that reverses the schedule")
    steps = int(sigmas.shape[0]) - 1
    window = step_window(steps, 0.0, settings.store_end)
    batch = int(samples.shape[0])
    keys = layout.blocks.keys()
    # The plan: a record of every block's image queries and keys where it fits (auto), else replay.
    dtype = {"exact": None, "fp16": torch.float16, "bf16": torch.bfloat16}[settings.precision]
    item = torch.empty((), dtype=dtype or compute_dtype(model)).element_size()
    image = layout.image_tokens(int(samples.shape[-2]), int(samples.shape[-1]))
    estimate = len(keys) * 2 * image * layout.hidden * batch * rows * evaluations * item
    what = (f"{len(keys)} attention blocks' image queries and keys, {image} tokens, {evaluations} evaluations in "
            f"{window[1] - window[0]} steps, {rows} row{'s' if rows != 1 else ''} per image")
    plan = choose_storage(maker, estimate, settings.storage, getattr(model, "load_device", None), what)
    replay = plan.mode == "replay"
    if replay:
        estimate = evaluations * rows * batch * math.prod(samples.shape[1:]) * 4
    source = FPESource(
        signature=model_signature(model), layers=[], latent_shape=tuple(int(x) for x in samples.shape),
        schedule=[float(s) for s in sigmas], schedule_origin=schedule_origin,
        stored_layers=frozenset(keys), stored_window=window,
        stored_kinds=kinds, layer_setting="all (storage replay)" if replay else "all blocks",
        store_end=settings.store_end, cfg=cfg, storage_device=plan.mode, maker=maker,
        weights=weights_fingerprint(model), planned_bytes=estimate, replay={} if replay else None,
        auto_replay=settings.storage == "auto" and replay)
    return source, plan, dtype


class DiTRecorder(Shared):
    """The capture's attention override (stored sources): each stored evaluation's image queries and keys per block
    ([2, rows, heads, image tokens, head size]: Flux's after RoPE, as the edit uses them), keyed like a UNet record."""

    def __init__(self, recorder, layout, previous=None):
        self.recorder, self.layout, self.previous = recorder, layout, previous

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        key = next_block(options)
        if key is not None:
            self._record(key, args, kwargs, options)
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _record(self, key, args, kwargs, options) -> None:
        source = self.recorder.source
        q, k, v = to_heads(*args[:3], heads_of(args, kwargs), not kwargs.get("skip_reshape", False))
        call = self.recorder.clock.locate(options, q.shape[0])
        for chunk in call.chunks:
            source.evaluations.setdefault(chunk.key, call.step)
        first, stop = source.stored_window
        if call.step is None or not first <= call.step < stop:
            return
        height, width = source.latent_shape[-2:]
        image = q.shape[2] if key[0] == "self" else self.layout.image_tokens(height, width)
        img = slice(q.shape[2] - image, q.shape[2])  # Flux [text | image] (no references), SD3 [registers | text | image]
        for chunk in call.chunks:
            if chunk.kind in source.stored_kinds:
                pair = torch.stack([q[chunk.rows][:, :, img], k[chunk.rows][:, :, img]]).detach()
                source.entries.setdefault(chunk.key, {})[key] = self.recorder.keep(pair)


def attach_dit_recording(patched, recorder, layout) -> None:
    """A stored MMDiT capture: stamp every block and record through the attention override."""
    install(patched, layout.blocks.keys(), lambda previous: DiTRecorder(recorder, layout, previous))


def compute_dtype(model) -> torch.dtype:
    inner = model.model
    return getattr(inner, "manual_cast_dtype", None) or inner.get_dtype()
