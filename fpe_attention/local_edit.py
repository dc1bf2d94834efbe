"""Local edits: outside a mask the target follows the source branch, inside it is the FPE edit.

At every model evaluation of the target, on its rows (``inject`` calls in):

    model input   x   ← x_src + m·(x − x_src)      (FPE Self-Attn Inject's UNet wrapper, every UNet call)
    denoised      D   ← D_src + m·(D − D_src)      (its post-CFG hook, before the DDIM guard)

with the source's x and D at the same evaluation (``FPESource.blend_rows``: a generated source's own
run, a DDIM-inverted photo's trajectory, a null-text reconstruction). ComfyUI's inpainting does the
same with a re-noised image; with the source row it is Prompt-to-Prompt's LocalBlend, for any sampler:
where m = 0 the target's x and D are the source's at every step, so it stays the source bit for bit.

The mask m comes from the user (FPE Local Edit's MASK, grown / feathered in latent pixels, soft values
as a blend or as Differential-Diffusion thresholds), from the target latent's noise mask on a real
photo (Set Latent Noise Mask: the host's own inpainting is turned off for it, see ``NoiseMaskHook``), or
from words (LocalBlend: ``local_mask.local_blend_mask`` over the source's recorded word maps and the
target's, recorded as it samples by ``TargetWordMaps``). A user mask and words together: the word mask
inside the user mask. The blend starts at step int(steps·start).

FPE Local Edit only sets ``LocalEditSettings`` in the clone's transformer options (and the word
recorder); the Inject's hooks read them per run, so a setting change re-runs no source and a run never
sees another run's masks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from . import notify
from .capture import first_cond_chunk, word_maps
from .errors import FPEError
from .hooks import Shared
from .layers import layer_key
from .local_mask import (
    as_mask_batch,
    blend,
    feather_mask,
    grow_mask,
    latent_mask,
    local_blend_mask,
    threshold_fraction,
    thresholded,
)
from .prompt_words import encode_text, encodes_alike, plain_word, prompt_tokens
from .source import FPESource
from .validate import check_number

KEY = "fpe_local_edit"  # the transformer option holding a clone's LocalEditSettings
SOFT = ("blend", "thresholds")
RUNS_KEPT = 4  # runs whose final mask FPE Local Mask can still show
MAX_GROW = 64


@dataclass(frozen=True)
class WordSpec:
    """LocalBlend's words: their context columns in the source prompt and in the target prompt."""

    label: str
    source_columns: tuple[int, ...]
    target_columns: tuple[int, ...]
    threshold: float
    target_context: torch.Tensor  # the target prompt's encoding, to check target_text at the first evaluation
    target_text: str


class MaskHistory(Shared):
    """The last runs' final masks (latent size) with what each run made, for FPE Local Mask."""

    def __init__(self):
        self.runs: OrderedDict = OrderedDict()  # run token -> (made: LATENT samples, mask [B, 1, h, w])

    def update(self, token, made: torch.Tensor, mask: torch.Tensor) -> None:
        self.runs[token] = (made.detach().to("cpu", torch.float32, copy=True), mask.detach().cpu())
        self.runs.move_to_end(token)
        while len(self.runs) > RUNS_KEPT:
            self.runs.popitem(last=False)

    def mask_for(self, samples: torch.Tensor) -> torch.Tensor | None:
        """The mask of the newest run whose result is ``samples`` (within 1e-3 relative L2), else None."""
        want = samples.detach().to("cpu", torch.float32)
        for made, mask in reversed(list(self.runs.values())):
            if made.shape == want.shape:
                scale = float(made.norm()) + 1e-12
                if float((made - want).norm()) <= 1e-3 * scale:
                    return mask
        return None


@dataclass(frozen=True, eq=False)
class LocalEditSettings(Shared):
    """What FPE Local Edit set: the mask or words, where the blend starts, how soft masks act."""

    source: FPESource
    mask: torch.Tensor | None  # [B, H, W] float, CPU
    words: WordSpec | None
    start: float
    grow: int
    feather: int
    soft: str
    composite: bool
    model_sampling: object  # the model's, for Differential Diffusion's thresholds (timesteps)
    history: MaskHistory = field(default_factory=MaskHistory)

    @property
    def start_step(self) -> int:
        return int(self.source.steps * self.start)

    def describe(self) -> str:
        parts = []
        if self.mask is not None:
            parts.append("mask")
        if self.words is not None:
            parts.append(f"words {self.words.label}")
        return " + ".join(parts) or "noise mask"


class LocalRun:
    """One sampling run's local edit: its mask at each evaluation, the word maps summed so far."""

    def __init__(self, settings: LocalEditSettings | None, source: FPESource):
        self.settings = settings
        self.source = source
        self.start_step = settings.start_step if settings is not None else 0
        self._static: torch.Tensor | None = None  # the user's mask at latent size
        self._static_for: tuple | None = None
        self.mask: torch.Tensor | None = None  # the mask of the last evaluation (words: the next x blend uses it)
        self.source_sum: torch.Tensor | None = None
        self.target_sum: torch.Tensor | None = None
        self._evaluation_maps: torch.Tensor | None = None  # the target's word maps of the evaluation in progress
        self._checked_text = False
        self.blended_input = False  # the UNet wrapper blended this evaluation's input

    # --- masks ---------------------------------------------------------------------------------

    def _area_mask(self, latent_shape, host_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The user's (or the noise mask's) mask at latent size, grown and feathered; None: no such mask."""
        settings = self.settings
        grow, feather = (settings.grow, settings.feather) if settings is not None else (0, 0)
        if host_mask is not None:
            if settings is not None and settings.mask is not None:
                raise FPEError(
                    "mask: the target latent has a noise mask (Set Latent Noise Mask) and FPE Local Edit has a mask "
                    "too: keep one of them (remove the Set Latent Noise Mask, or FPE Local Edit's mask input)")
            m = host_mask[:, :1].detach().float().cpu()
            if tuple(m.shape[-2:]) != tuple(latent_shape[-2:]):
                m = torch.nn.functional.interpolate(m, size=tuple(latent_shape[-2:]), mode="area")
            return feather_mask(grow_mask(m, grow), feather).clamp(0.0, 1.0)
        if settings is None or settings.mask is None:
            return None
        key = tuple(latent_shape)
        if self._static is None or self._static_for != key:
            self._static = latent_mask(settings.mask, latent_shape, grow=grow, feather=feather)
            self._static_for = key
        return self._static

    def _soft(self, mask: torch.Tensor, sigma: float) -> torch.Tensor:
        settings = self.settings
        if settings is None or settings.soft != "thresholds":
            return mask
        sampling = settings.model_sampling
        schedule = self.source.schedule
        last = max(float(sampling.sigma_min), schedule[-1])
        fraction = threshold_fraction(float(sampling.timestep(torch.tensor(sigma))),
                                      float(sampling.timestep(torch.tensor(schedule[0]))),
                                      float(sampling.timestep(torch.tensor(last))))
        return thresholded(mask, fraction)

    def mask_at(self, sigma: float, latent_shape, host_mask, *, final: bool) -> torch.Tensor | None:
        """The mask [B, 1, h, w] of an evaluation at ``sigma``; ``final``: at its end (words include its maps)."""
        area = self._area_mask(latent_shape, host_mask)
        if area is not None:
            area = self._soft(area, sigma)
        words = self.settings.words if self.settings is not None else None
        if words is None:
            return area
        if final:
            self._fold_word_maps(latent_shape)
        if self.source_sum is None and self.target_sum is None:
            return None  # no map yet: nothing to blend with
        hw = tuple(latent_shape[-2:])
        grid = self.source.word_grid
        parts = [local_blend_mask(s, grid, list(cols), hw, words.threshold)
                 for s, cols in ((self.source_sum, words.source_columns), (self.target_sum, words.target_columns))
                 if s is not None]
        union = parts[0]
        for part in parts[1:]:
            union = union | part
        mask = union.float()
        return mask if area is None else mask * area

    def _fold_word_maps(self, latent_shape) -> None:
        if self._evaluation_maps is not None:
            maps = self._evaluation_maps.cpu()
            self.target_sum = maps if self.target_sum is None else self.target_sum + maps
            self._evaluation_maps = None

    def add_source_maps(self, key) -> None:
        maps = self.source.word_maps.get(key)
        if maps is not None:
            self.source_sum = maps.clone() if self.source_sum is None else self.source_sum + maps

    def add_target_maps(self, maps: torch.Tensor, text: torch.Tensor) -> None:
        words = self.settings.words
        if not self._checked_text:
            if not encodes_alike(words.target_context, text[None]):
                raise FPEError(
                    f"target_text: {words.target_text[:60]!r} does not encode to the prompt the target sampler uses "
                    f"(its text context differs), so the words' columns would be another prompt's: type the target "
                    f"prompt exactly as encoded, and connect the CLIP that encoded it")
            self._checked_text = True
        self._evaluation_maps = maps if self._evaluation_maps is None else self._evaluation_maps + maps

    # --- the blend ------------------------------------------------------------------------------

    def blend_input(self, args: dict, call, host_mask) -> dict:
        """The UNet call's args with each chunk's rows blended towards the source's x at this evaluation."""
        self.blended_input = True
        if call.step is None or call.step < self.start_step:
            return args
        x = args["input"]
        source = self.source
        key = (call.chunks[0].key.sigma, call.chunks[0].key.occurrence)
        x_src = source.blend_pair(key, call.sigma)[0]
        images = x.shape[0] // len(call.chunks)
        full = (images,) + tuple(x_src.shape[1:])
        mask = self.mask_at(call.sigma, full, host_mask, final=False) if self.settings is None or \
            self.settings.words is None else self.mask
        if mask is None:
            return args
        x_src = _rows(x_src, images, "source").to(device=x.device, dtype=x.dtype)
        mask = _rows(mask, images, "mask")
        out = x.clone()
        for chunk in call.chunks:
            rows = x[chunk.rows]
            if rows.shape[-2:] == x_src.shape[-2:]:
                out[chunk.rows] = blend(x_src, rows, mask)
            else:  # an area's crop (Conditioning (Set Area)): the same crop of the source and the mask
                y, x0 = self._area_offset(tuple(rows.shape[-2:]))
                h, w = rows.shape[-2:]
                out[chunk.rows] = blend(x_src[..., y:y + h, x0:x0 + w], rows, mask[..., y:y + h, x0:x0 + w])
        return dict(args, input=out)

    def _area_offset(self, size: tuple[int, int]) -> tuple[int, int]:
        structure = self.source.structure
        entries = list(structure.positive) + list(structure.negative or ()) if structure is not None else []
        offsets = {(a[2], a[3]) for a in (e.area for e in entries)
                   if isinstance(a, tuple) and (a[0], a[1]) == size}
        if len(offsets) != 1:
            raise FPEError(
                f"FPE Local Edit: a conditioning area of {size[1] * 8}x{size[0] * 8} px could not be placed in the "
                f"latent (areas from masks, or one size at several places): use Conditioning (Set Area) with "
                f"distinct sizes, or no areas, with a local edit")
        return next(iter(offsets))

    def blend_denoised(self, args: dict, call, host_mask) -> torch.Tensor:
        """Post-CFG: the target's denoised output blended towards the source's at this evaluation."""
        denoised = args["denoised"]
        source = self.source
        key = (call.chunks[0].key.sigma, call.chunks[0].key.occurrence)
        if self.settings is not None and self.settings.words is not None:
            self.add_source_maps(key)
        mask = self.mask_at(call.sigma, tuple(denoised.shape), host_mask, final=True)
        self.mask = mask
        if mask is None or call.step is None or call.step < self.start_step:
            self._remember(args, denoised, mask)
            return denoised
        images = denoised.shape[0]
        d_src = source.blend_pair(key, call.sigma)[1]
        if self.settings is not None and self.settings.composite and source.inverted and \
                call.step == source.steps - 1:
            d_src = source.trajectory[-1].float()  # the photo's own latent where the mask keeps the photo
        d_src = _rows(d_src, images, "source").to(device=denoised.device, dtype=denoised.dtype)
        out = blend(d_src, denoised, _rows(mask, images, "mask"))
        self._remember(args, out, mask)
        return out

    def _remember(self, args, denoised, mask) -> None:
        if self.settings is None or mask is None:
            return
        model = args.get("model")
        made = model.process_latent_out(denoised) if hasattr(model, "process_latent_out") else denoised
        self.settings.history.update(self, made, mask)


def _rows(t: torch.Tensor, images: int, what: str) -> torch.Tensor:
    if t.shape[0] == images:
        return t
    if t.shape[0] == 1:
        return t.expand(images, *t.shape[1:])
    raise FPEError(f"FPE Local Edit: the {what} has {t.shape[0]} images but the target batch {images}: give a "
                   f"batch of 1 or one per target image")


class NoiseMaskHook(Shared):
    """Real photos: ComfyUI's denoise-mask function, so the target latent's noise mask becomes the local edit's.

    The host's inpainting would blend outside the mask towards the *inverted noise* (the target's input
    latent); this returns a mask of ones, which makes the host's blend the identity (x·1 + y·0), and hands
    the mask (after a chained function, e.g. Differential Diffusion's thresholds) to the inject."""

    def __init__(self, patch, previous=None):
        self.patch = patch
        self.previous = previous

    def __call__(self, sigma, denoise_mask, extra_options=None, **kwargs):
        mask = denoise_mask
        if self.previous is not None:
            mask = self.previous(sigma, denoise_mask, extra_options=extra_options, **kwargs)
        self.patch.host_mask = (float(torch.as_tensor(sigma).reshape(-1)[0]), mask)
        return torch.ones_like(denoise_mask)


class TargetWordMaps(Shared):
    """attn2 patch of FPE Local Edit with words: the target's word maps at LocalBlend's layers, per evaluation."""

    def __init__(self, patch, settings: LocalEditSettings, modules: dict):
        self.patch = patch
        self.settings = settings
        self.modules = modules

    def __call__(self, n, context, value, extra_options):
        layer = layer_key(extra_options)
        if layer not in self.modules:
            return n, context, value
        try:
            return self._record(n, context, value, extra_options)
        except BaseException:
            self.patch.close_run()  # an error ends the run: the next one starts clean
            raise

    def _record(self, n, context, value, extra_options):
        local = self.patch.local_run
        if local is None or local.settings is not self.settings:
            return n, context, value
        replay = self.patch.replay_call
        offset = replay.source_rows if replay is not None else 0
        call = replay.call if replay is not None else self.patch.clock.locate(extra_options, n.shape[0])
        grid = self.settings.source.word_grid
        if n.shape[1] != grid[0] * grid[1]:
            return n, context, value
        chunk = first_cond_chunk(call)
        if chunk is None:
            return n, context, value
        rows = slice(offset + chunk.rows.start, offset + chunk.rows.stop)
        maps, text = word_maps(self.modules[layer_key(extra_options)], n[rows], context[rows])
        local.add_target_maps(maps, text)
        return n, context, value


def _word_spec(source: FPESource, clip, source_text: str, target_text: str, words: str,
               threshold: float) -> WordSpec:
    items = [w for w in words.replace(",", " ").split() if plain_word(w)]
    if not items:
        raise FPEError(f"words: {words.strip()[:40]!r} names no word: type words of the prompts (e.g. 'cat, dog'), "
                       "or clear words to use the mask alone")
    entries = len(source.structure.positive) if source.structure is not None else 1
    if entries > 1:  # the words' columns belong to one prompt; several entries hold several prompts
        raise FPEError(
            f"words: {source.maker}'s positive has {entries} entries (Conditioning (Combine), Set Area or Set Mask), "
            f"whose prompts source_text and target_text cannot all name: give each side one CLIP Text Encode for "
            f"word masks, or use a painted mask")
    if clip is None:
        raise FPEError("clip: words need the CLIP model that encoded the prompts (to find the words' tokens): connect "
                       "Load Checkpoint's CLIP")
    if not source.word_layers or source.word_context is None:
        raise FPEError(f"words: {source.maker} kept no word maps (a source made before local edits existed, or a model "
                       f"without cross-attention): queue the graph again so it records them")
    src, tgt = prompt_tokens(clip, source_text), prompt_tokens(clip, target_text)
    if not encodes_alike(encode_text(clip, source_text), source.word_context[None]):
        raise FPEError(
            f"source_text: {source_text[:60]!r} does not encode to the prompt {source.maker} sampled (its text context "
            f"differs), so the words' columns would be another prompt's: type the source prompt exactly as encoded "
            f"for the capture, and connect the CLIP that encoded it")
    source_columns, target_columns = [], []
    for word in items:
        in_s, in_t = src.find(word), tgt.find(word)
        if not in_s and not in_t:
            raise FPEError(f"words: {word!r} is in neither prompt. source_text's words: {src.describe()}; "
                           f"target_text's words: {tgt.describe()}")
        source_columns += [p for i in in_s for p in src.positions[i]]
        target_columns += [p for i in in_t for p in tgt.positions[i]]
    return WordSpec(", ".join(items), tuple(source_columns), tuple(target_columns), threshold,
                    encode_text(clip, target_text).detach().float().cpu(), target_text)


def find_inject(model):
    """The FPE Self-Attn Inject (or Attention Replace) patch a model carries, else an error naming the fix."""
    patches = getattr(model, "model_options", {}).get("transformer_options", {}).get("patches", {})
    for patch in patches.get("attn1_patch", []):
        if getattr(patch, "fpe_inject", False):
            return patch
    override = getattr(model, "model_options", {}).get("transformer_options", {}).get("optimized_attention_override")
    if getattr(override, "fpe_inject", False):  # FPE MMDiT Inject
        return override.patch
    raise FPEError("model: FPE Local Edit limits an FPE edit to a region: connect the model output of FPE Self-Attn "
                   "Inject, FPE MMDiT Inject or FPE Attention Replace")


def local_edit_model(model, *, mask=None, clip=None, source_text: str = "", target_text: str = "", words: str = "",
                     threshold: float = 0.3, start: float = 0.0, grow: int = 0, feather: int = 0,
                     soft: str = "blend", composite: bool = False):
    """A clone of an Inject's model whose edit acts inside ``mask`` and/or the words' mask only."""
    from .architecture import transformer_layers, unet_of
    from .host_versions import model_sampling_of

    patch = find_inject(model)
    source = patch.source
    options = model.model_options.get("transformer_options", {})
    if options.get(KEY) is not None:
        raise FPEError("model: this model already carries an FPE Local Edit: connect FPE Local Edit to the model output "
                       "of FPE Self-Attn Inject directly (one local edit per edit; combine masks before it)")
    start = check_number("start", start, 0.0, 1.0)
    threshold = check_number("threshold", threshold, 0.0, 1.0)
    for name, value in (("grow", grow), ("feather", feather)):
        if not isinstance(value, int) or isinstance(value, bool) or abs(value) > MAX_GROW or (name == "feather" and value < 0):
            low = 0 if name == "feather" else -MAX_GROW
            raise FPEError(f"{name}: {value!r} is outside {low}..{MAX_GROW} latent pixels")
    if soft not in SOFT:
        raise FPEError(f"soft: unknown value {soft!r}; choose one of {', '.join(SOFT)}")
    mask_batch = as_mask_batch(mask) if mask is not None else None
    if mask_batch is not None:  # the aspect and batch checks, before sampling
        shown = latent_mask(mask_batch, source.latent_shape if mask_batch.shape[0] in (1, source.batch) else
                            (mask_batch.shape[0],) + tuple(source.latent_shape[1:]), grow=grow, feather=feather)
        if float(shown.max()) == 0.0:
            notify.warn("the local edit's mask is empty",
                        "FPE Local Edit's mask is 0 everywhere (after grow), so the target will be the source: paint "
                        "the region to edit white (1), or invert the mask")
    spec = None
    if words.strip():
        if not source.word_layers:
            raise FPEError("words: word masks read a UNet's cross-attention maps, which an MMDiT does not have: "
                           "connect a MASK instead (paint it, or make one with a segmentation node)")
        spec = _word_spec(source, clip, source_text, target_text, words, threshold)
    if mask_batch is None and spec is None and not source.inverted:
        raise FPEError("mask: connect a MASK or name words (with clip, source_text and target_text): FPE Local Edit "
                       "needs a region (a real photo's target latent may carry it as a noise mask instead)")
    if composite and not source.inverted:
        raise FPEError("composite: it pastes a real photo's own latent outside the mask at the last step; this source "
                       "is a generated image, whose background already is the source's: turn composite off")
    settings = LocalEditSettings(source=source, mask=mask_batch, words=spec, start=start, grow=grow, feather=feather,
                                 soft=soft, composite=bool(composite), model_sampling=model_sampling_of(model))
    patched = model.clone()
    transformer_options = patched.model_options.setdefault("transformer_options", {})
    transformer_options[KEY] = settings
    if spec is not None:
        modules = {key: transformer.attn2 for key, transformer, _ in transformer_layers(unet_of(model))
                   if key in source.word_layers}
        patched.set_model_attn2_patch(TargetWordMaps(patch, settings, modules))
    return patched, settings


def settings_of(options: dict | None) -> LocalEditSettings | None:
    value = (options or {}).get(KEY)
    return value if isinstance(value, LocalEditSettings) else None


def output_mask(settings: LocalEditSettings, samples: torch.Tensor) -> torch.Tensor:
    """FPE Local Mask: the mask (image size, [B, H, W]) of the run that made ``samples``."""
    if not isinstance(settings, LocalEditSettings):
        raise FPEError("local_edit: connect the local_edit output of FPE Local Edit")
    mask = settings.history.mask_for(samples)
    if mask is None:
        if settings.words is not None or settings.soft == "thresholds" or settings.mask is None:
            raise FPEError(
                "samples: no run of this FPE Local Edit's model made this latent (connect the LATENT of the sampler "
                "that uses FPE Local Edit's model, run to its last step; the masks of the last "
                f"{RUNS_KEPT} runs are kept)")
        mask = latent_mask(settings.mask, tuple(samples.shape), grow=settings.grow, feather=settings.feather)
    size = (mask.shape[-2] * 8, mask.shape[-1] * 8)
    return torch.nn.functional.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False)[:, 0]
