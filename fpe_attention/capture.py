"""Source capture: sample the source image and record what the edits will need.

An attn1 patch on a clone of the model records, for the selected layers and steps, the layer
input ``n`` of the source's cond rows (and uncond rows if asked), keyed by model evaluation
(see ``evaluations``). Nothing else about sampling changes: the source LATENT is the stock
KSampler's result, bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .errors import FPEError
from .evaluations import COND, UNCOND, EvaluationClock
from .layers import LayerSelection, layer_key, unet_attn1_layers
from .sampling import sample_over_sigmas
from .source import FPESource, model_signature, weights_fingerprint
from .steps import step_window

log = logging.getLogger("free-prompt-editing")
# With storage "auto", a capture larger than this share of the free VRAM goes to system RAM instead.
AUTO_VRAM_SHARE = 0.25

ROWS = {"cond": frozenset({COND}), "cond + uncond": frozenset({COND, UNCOND})}
STORAGE = ("auto", "cpu")
PRECISION = ("exact", "fp16", "bf16")


@dataclass(frozen=True)
class CaptureSettings:
    selection: LayerSelection
    layer_setting: str  # as the user wrote it, for messages
    store_end: float = 0.8
    rows: str = "cond"
    storage: str = "auto"  # auto: where the model runs; cpu: keep the capture in system RAM
    precision: str = "exact"  # exact: the dtype the model computes in; fp16/bf16: half the bytes of fp32


class CaptureRecorder:
    """attn1 patch that stores the source's layer inputs into an ``FPESource``."""

    def __init__(self, source: FPESource, device: torch.device | None, dtype: torch.dtype | None):
        self.source = source
        self.device = device
        self.dtype = dtype
        self.clock = EvaluationClock(source.schedule, top_evaluations=None)
        self._logged = None

    def __deepcopy__(self, memo):  # model.clone() deep-copies options: share, never copy the store
        return self

    def __call__(self, n, context, value, extra_options):
        call = self.clock.locate(extra_options, n.shape[0])
        source = self.source
        if call is not self._logged:
            for chunk in call.chunks:
                source.evaluations.setdefault(chunk.key, call.step)
            self._logged = call
        first, stop = source.stored_window
        if call.step is None or not first <= call.step < stop:
            return n, context, value
        layer = layer_key(extra_options)
        if layer not in source.stored_layers:
            return n, context, value
        for chunk in call.chunks:
            if chunk.kind in source.stored_kinds:
                rows = n[chunk.rows].detach()
                stored = rows.to(device=self.device or rows.device, dtype=self.dtype or rows.dtype, copy=True)
                source.entries.setdefault(chunk.key, {})[layer] = stored
        return n, context, value


def new_source(model, *, samples: torch.Tensor, sigmas: torch.Tensor, schedule_origin: str, cfg: float,
               settings: CaptureSettings, maker: str = "FPE Source Capture") -> tuple[FPESource, CaptureRecorder]:
    """An empty ``FPESource`` for a run over ``sigmas`` and the attn1 recorder that fills it."""
    signature = model_signature(model)
    layers = unet_attn1_layers(model.model.diffusion_model)
    if samples.ndim != 4:
        raise FPEError(f"latent_image: FPE edits image latents [batch, channels, height, width]; got shape "
                       f"{list(samples.shape)}")
    height, width = samples.shape[-2:]
    stored = settings.selection.resolve(layers, height, width)
    if not stored:
        raise FPEError(
            f"store layers '{settings.layer_setting}' select no self-attention layer at {width * 8}x{height * 8} px: "
            f"choose 'all' or a custom list")
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise FPEError("sigmas: the schedule needs at least 2 values (1 step)")
    if settings.rows not in ROWS:
        raise FPEError(f"store_rows: unknown value {settings.rows!r}; choose one of {', '.join(ROWS)}")
    steps = int(sigmas.shape[0]) - 1
    source = FPESource(
        signature=signature, layers=layers, latent_shape=tuple(int(x) for x in samples.shape),
        schedule=[float(s) for s in sigmas], schedule_origin=schedule_origin,
        stored_layers=frozenset(layer.key for layer in stored), stored_window=step_window(steps, 0.0, settings.store_end),
        stored_kinds=ROWS[settings.rows], layer_setting=settings.layer_setting, store_end=settings.store_end, cfg=cfg,
        storage_device="cpu" if settings.storage == "cpu" else "auto", maker=maker)
    dtype = {"exact": None, "fp16": torch.float16, "bf16": torch.bfloat16}[settings.precision]
    device = _storage_device(model, settings, source, stored, dtype)
    source.storage_device = "cpu" if device is not None else "auto"
    source.weights = weights_fingerprint(model)
    return source, CaptureRecorder(source, device, dtype)


def capture_source(model, *, seed: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
                   latent: dict, sigmas: torch.Tensor, denoise: float, schedule_origin: str,
                   settings: CaptureSettings) -> tuple[dict, FPESource]:
    """Sample the source over ``sigmas`` and return (source LATENT, complete FPESource)."""
    source, recorder = new_source(model, samples=latent["samples"], sigmas=sigmas, schedule_origin=schedule_origin,
                                  cfg=cfg, settings=settings)
    patched = model.clone()
    patched.set_model_attn1_patch(recorder)
    out, noise = sample_over_sigmas(patched, seed=seed, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                                    positive=positive, negative=negative, latent=latent, sigmas=sigmas,
                                    denoise=denoise)
    source.noise = noise.cpu()
    source.complete = True  # reached only when sampling returned normally
    return out, source


def _storage_device(model, settings: CaptureSettings, source: FPESource, stored, dtype) -> torch.device | None:
    """Where the capture lives; ``None``: beside the model. Logs the expected size."""
    _, _, height, width = source.latent_shape
    if dtype is None:
        inner = model.model
        dtype = getattr(inner, "manual_cast_dtype", None) or inner.get_dtype()
    per_step = sum(layer.tokens(height, width) * layer.channels for layer in stored) * source.batch
    first, stop = source.stored_window
    estimate = per_step * len(source.stored_kinds) * max(0, stop - first) * torch.empty((), dtype=dtype).element_size()
    device = getattr(model, "load_device", torch.device("cpu"))
    where = "system RAM" if settings.storage == "cpu" else str(device)
    if settings.storage == "auto" and torch.device(device).type != "cpu":
        import comfy.model_management

        free = comfy.model_management.get_free_memory(device)
        if estimate > AUTO_VRAM_SHARE * free:
            where = f"system RAM (it exceeds {AUTO_VRAM_SHARE:.0%} of the free VRAM)"
            settings = CaptureSettings(**{**settings.__dict__, "storage": "cpu"})
    log.info("%s: storing about %.1f MiB (%d layers, %d steps, %s) on %s", source.maker, estimate / 2**20,
             len(stored), max(0, stop - first), str(dtype).replace("torch.", ""), where)
    return torch.device("cpu") if settings.storage == "cpu" else None
