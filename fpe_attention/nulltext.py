"""Null-text inversion (Mokady et al.) for FPE's real-image edits, as the supplement's Algorithm 3 runs it.

Plain DDIM inversion retraces the photo only at the guidance it was made with; an edit at cfg 7.5
drifts away from it. Null-text inversion keeps the inverted noise and instead tunes the
unconditional ("null") text embedding once per step, so that guided sampling at cfg w lands on the
inverted trajectory again. The official notebook (``FPE/null_text_w_FPE.ipynb``, from Google's P2P
code) does, with T steps and the trajectory z*_0..z*_T of a DDIM inversion with the source prompt at
w = 1 (cond only):

    z = z*_T, null = E("")
    for i in 0..T-1 (sigma_i high to low):
        D_c = D(z, sigma_i, source prompt)                      (no gradient)
        Adam(null, lr = lr0 * (1 - i / 100)), up to K times:
            D = D_u(z, sigma_i, null) + w (D_c - D_u)
            loss = MSE(DDIM step(z, D), z*_{i+1})               (in the VP latent space)
            backward, Adam step; stop early once loss < eps + i * 2e-5
        null_i = null;  z = DDIM step(z, D with null_i)         (the latent moves on freely)

Here a step is ComfyUI's ``ddim``/``euler`` step in sampler space; the VP latent is z / sqrt(1 + sigma^2).

Gradients inside ComfyUI. The executor runs nodes under ``torch.inference_mode()`` and loads the
weights there: they are inference tensors, which autograd refuses to save for backward. The
optimisation leaves inference mode and, for its duration only, puts *aliases* of the weights in the
modules' parameter slots: tensors outside inference mode sharing the weights' storage (no copy,
``requires_grad`` off, the original parameters put back afterwards). Gradients then flow to the null
embedding alone. Weights are read as the host loaded and patched them (LoRA, lowvram casts).
The embedding and Adam's state are fp32 whatever the model computes in (an fp16 embedding loses
Adam's small updates: diffusers PR #6329); no graph outlives an inner iteration.

The result reaches the stock samplers as ComfyUI's own per-step conditioning: one negative entry per
step, each limited (start/end percent, as Conditioning Set Timestep Range sets) to a band of sigmas
that holds exactly its step's sigma. KSampler(Advanced) and SamplerCustom use it as any negative;
the FPE source and the edit both read it, so the structure check pairs them.
"""

from __future__ import annotations

import hashlib
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .architecture import check_inputs_fit
from .capture import ROWS, attach_recorder, conditioning_rows, context_shapes, new_source
from .conditioning import NULL_TEXT_KEY
from .errors import FPEError
from .hooks import all_finite
from .host_versions import model_sampling_of
from .inversion import invert
from .replay import ChainedWrapper, run_unet
from .run_observers import paused, tagged
from .source import reject_chained_inject
from .steps import step_window

log = logging.getLogger("free-prompt-editing")

OFFICIAL = {"cfg": 7.5, "inner_steps": 10, "early_stop": 1e-5, "learning_rate": 1e-2}


@dataclass
class NullTextResult:
    embeddings: list[torch.Tensor]  # per step, [1, tokens, channels], fp32
    first_loss: list[float] = field(default_factory=list)  # per step: the loss before any update
    last_loss: list[float] = field(default_factory=list)  # per step: the loss of the step taken (final embedding)
    iterations: list[int] = field(default_factory=list)  # per step: Adam steps taken
    history: list[list[float]] = field(default_factory=list)  # per step: each iteration's loss, before its update
    reconstruction: torch.Tensor | None = None  # z_0 of the guided run with the final embeddings

    def describe(self) -> str:
        if not self.first_loss:
            return "null-text: no step"
        first = sum(self.first_loss) / len(self.first_loss)
        last = sum(self.last_loss) / len(self.last_loss)
        return (f"null-text: {len(self.embeddings)} steps, {sum(self.iterations)} optimisation passes, mean loss "
                f"{first:.3g} -> {last:.3g}")


# --- weights usable in a backward pass, without a copy ---------------------------------------------

def _alias(t: torch.Tensor) -> torch.Tensor:
    """A tensor outside inference mode that shares ``t``'s storage (``t`` may be an inference tensor)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter):  # quantised / GGUF tensors carry more than storage
        raise FPEError(f"model: FPE Null-Text Invert needs gradients through the model, which its {type(t).__name__} "
                       "weights (a quantised or GGUF format) do not give here: load the checkpoint in fp16, bf16 "
                       "or fp32")
    if not t.is_inference():
        return t.detach()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.size(),
                                                              t.stride())


@contextmanager
def frozen_aliases(module: torch.nn.Module):
    """Within: every parameter/buffer of ``module`` is a frozen, storage-sharing alias; restored after."""
    swapped = []
    try:
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[name] = torch.nn.Parameter(_alias(p), requires_grad=False)
                    swapped.append((sub._parameters, name, p))
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    sub._buffers[name] = _alias(b)
                    swapped.append((sub._buffers, name, b))
        yield
    finally:
        for slots, name, original in reversed(swapped):
            slots[name] = original


def _pack(t: torch.Tensor):
    # ComfyUI's UNet adds residuals in place (x += n) after a norm has saved x for backward: keep
    # a copy of what the graph saves from the gradient's path (the weights and constants are kept as they are).
    return t.clone() if t.requires_grad else t


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


# --- the per-step conditioning --------------------------------------------------------------------

def _percent_for_sigma(model_sampling, sigma: float) -> float:
    """The start/end percent whose sigma (the host's ``percent_to_sigma``) is ``sigma``, by bisection."""
    lo, hi = 0.0, 1.0  # percent_to_sigma falls from +inf (0) to 0 (1)
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(model_sampling.percent_to_sigma(mid)) > sigma:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def step_bands(model_sampling, sigmas: torch.Tensor) -> list[tuple[float, float]]:
    """(start_percent, end_percent) per step: a band holding that step's sigma and no other's.

    Step i evaluates at sigmas[i]; its band ends halfway (in log sigma) to the neighbours' sigmas,
    so the bands tile the sigma axis and no schedule sigma sits on an edge. Checked with the host's
    own rule (an entry acts where end sigma <= sigma <= start sigma).
    """
    evaluated = [float(s) for s in sigmas[:-1]]
    if any(not math.isfinite(s) or s <= 0 for s in evaluated):
        raise FPEError("sigmas: null-text inversion needs positive, finite sigmas for every step")
    if any(b >= a for a, b in zip(evaluated, evaluated[1:], strict=False)):
        raise FPEError("sigmas: null-text inversion needs a strictly falling schedule (one embedding per sigma)")
    edges = [_percent_for_sigma(model_sampling, math.sqrt(a * b)) for a, b in zip(evaluated, evaluated[1:], strict=False)]
    bands = list(zip([0.0] + edges, edges + [1.0], strict=True))
    for i, sigma in enumerate(evaluated):
        hits = [j for j, (start, end) in enumerate(bands)
                if float(model_sampling.percent_to_sigma(end)) <= sigma <= float(model_sampling.percent_to_sigma(start))]
        if hits != [i]:
            raise FPEError(f"null-text inversion: step {i}'s sigma {sigma:.6g} is not separable from its neighbours "
                           f"on this model's timestep scale (too many steps?): use fewer steps")
    return bands


def null_text_fingerprint(embeddings: list[torch.Tensor], sigmas: torch.Tensor) -> str:
    """What the tuned embeddings are (their values and schedule): equal only for the same tuning result."""
    digest = hashlib.sha256()
    for t in [*embeddings, sigmas]:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def per_step_negative(negative, embeddings: list[torch.Tensor], bands: list[tuple[float, float]], tag: str):
    """A CONDITIONING with one entry per step: the step's embedding, acting in the step's band only,
    each tagged with ``tag`` (the run's fingerprint, checked against the source's by the Inject)."""
    _, options = negative[0]
    out = []
    for embedding, (start, end) in zip(embeddings, bands, strict=True):
        entry = dict(options)
        entry["start_percent"], entry["end_percent"] = start, end
        entry[NULL_TEXT_KEY] = tag
        out.append([embedding.detach().clone(), entry])
    return out


# --- the optimisation, as a ComfyUI sampler function ------------------------------------------------

class _CallRecorder(ChainedWrapper):
    """``model_function_wrapper`` keeping the UNet calls of one evaluation (inputs and outputs)."""

    def __init__(self, previous=None):
        super().__init__(previous)
        self.calls: list[tuple[object, dict, torch.Tensor]] = []

    def __call__(self, apply_model, args):
        out = run_unet(self.previous, apply_model, args)
        self.calls.append((apply_model, args, out))
        return out


def _chunks(calls, kind: int):
    """(apply_model, args of the chunk's rows, its output rows) for the chunk of ``kind`` in ``calls``."""
    for apply_model, args, out in calls:
        kinds = list(args.get("cond_or_uncond") or [0])
        if kind not in kinds:
            continue
        rows = args["input"].shape[0]
        per = rows // len(kinds)
        j = kinds.index(kind)
        part = slice(j * per, (j + 1) * per)
        c = {}
        for key, value in args["c"].items():
            if key == "transformer_options":
                value = dict(value)
                value["cond_or_uncond"] = [kind]
            elif torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == rows:
                value = value[part]
            elif value is not None:
                raise FPEError(f"FPE Null-Text Invert: the conditioning carries '{key}' ({type(value).__name__}), "
                               "which the optimisation cannot split by rows: remove ControlNets/GLIGEN from the "
                               "inversion's prompts")
            c[key] = value
        sub = {"input": args["input"][part], "timestep": args["timestep"][part], "c": c, "cond_or_uncond": [kind]}
        return apply_model, sub, out[part]
    raise FPEError("FPE Null-Text Invert: the sampler ran no "
                   f"{'unconditional' if kind else 'conditional'} rows; keep cfg above 1")


def _ddim(z, denoised, sigma, sigma_next):
    """ComfyUI's euler (= ddim) step, written as its sampler writes it."""
    d = (z - denoised) / sigma
    return z + d * (sigma_next - sigma)


class GuidedStep:
    """One step's guided prediction and loss as functions of the null embedding.

    Built from the step's ordinary evaluation, recorded by ``recorder``: the cond chunk's output is
    kept (it does not depend on the embedding), the uncond chunk's UNet inputs are re-run with the
    embedding as their text context.
    """

    def __init__(self, recorder: _CallRecorder, z, sigma, sigma_next, target, cfg: float):
        _, _, cond_out = _chunks(recorder.calls, 0)
        self.apply_model, self.uncond_args, _ = _chunks(recorder.calls, 1)
        recorder.calls = []
        self.previous = recorder.previous
        self.cond_out = cond_out.detach()
        self.z, self.sigma, self.sigma_next, self.target, self.cfg = z, sigma, sigma_next, target, cfg
        self.scale = 1.0 / (1.0 + float(sigma_next) ** 2)  # MSE in the VP latent space, as the notebook's

    def denoised(self, embedding: torch.Tensor) -> torch.Tensor:
        args = dict(self.uncond_args)
        args["c"] = dict(args["c"])
        context = args["c"]["c_crossattn"]
        args["c"]["c_crossattn"] = embedding.to(device=context.device, dtype=context.dtype).expand(
            context.shape[0], -1, -1)
        uncond_out = run_unet(self.previous, self.apply_model, args)
        return uncond_out + (self.cond_out - uncond_out) * self.cfg  # ComfyUI's cfg_function

    def loss_of_latent(self, stepped: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(stepped, self.target) * self.scale

    def loss(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.loss_of_latent(_ddim(self.z, self.denoised(embedding).float(), self.sigma, self.sigma_next))


class NullTextOptimiser:
    """Sampler function for ``comfy.samplers.KSAMPLER``: runs the optimisation and returns z_0.

    ``trajectory``: the cond-only DDIM inversion in sampler space, entry i at sigmas[i].
    """

    def __init__(self, recorder: _CallRecorder, trajectory: list[torch.Tensor], null: torch.Tensor, *, cfg: float,
                 inner_steps: int, early_stop: float, learning_rate: float, module: torch.nn.Module,
                 on_step=None):
        self.recorder = recorder
        self.trajectory = trajectory
        self.null = null
        self.cfg = cfg
        self.inner_steps = inner_steps
        self.early_stop = early_stop
        self.learning_rate = learning_rate
        self.module = module
        self.on_step = on_step  # (step, result so far) after each step: progress, interruption
        self.result = NullTextResult([])
        self.probe = None  # probe(step, loss_of, embedding): sees each step's differentiable loss

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        import comfy.model_management

        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        result = self.result
        z = x.detach().clone()
        null = self.null.detach().to(device=x.device, dtype=torch.float32).clone()  # fp32: Adam's updates are small
        with frozen_aliases(self.module), torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            for i in range(len(sigmas) - 1):
                sigma, sigma_next = sigmas[i].clone(), sigmas[i + 1].clone()
                target = self.trajectory[i + 1].to(device=z.device, dtype=torch.float32).clone()
                self.recorder.calls = []
                with torch.no_grad():
                    model(z, sigma * s_in, **extra_args)  # this step's conditioning, as the sampler builds it
                step = GuidedStep(self.recorder, z, sigma, sigma_next, target, self.cfg)
                loss_of = step.loss
                if self.probe is not None:  # analysis hook (the tests check the gradient with it)
                    self.probe(i, loss_of, null)
                null = null.detach().requires_grad_(True)
                # The notebook's decay reaches 0 at step 100: later steps keep the embedding they inherit.
                rate = self.learning_rate * max(0.0, 1.0 - i / 100.0)
                optimiser = torch.optim.Adam([null], lr=rate)
                first = math.nan
                taken = 0
                losses = []
                for _ in range(self.inner_steps if rate > 0 else 0):
                    comfy.model_management.throw_exception_if_processing_interrupted()
                    loss = loss_of(null)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    value = loss.item()
                    losses.append(value)
                    taken += 1
                    if taken == 1:
                        first = value
                    if value < self.early_stop + i * 2e-5:  # the notebook's test, after the update
                        break
                null = null.detach()
                with torch.no_grad():
                    denoised = step.denoised(null)
                    stepped = _ddim(z, denoised.float(), sigma, sigma_next)
                    last = float(step.loss_of_latent(stepped))  # the step taken
                    z = stepped.to(x.dtype)
                result.embeddings.append(null.clone().cpu())
                result.first_loss.append(last if taken == 0 else first)
                result.last_loss.append(last)
                result.iterations.append(taken)
                result.history.append(losses)
                if callback is not None:
                    callback({"x": z, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
                if self.on_step is not None:
                    self.on_step(i, result)
        result.reconstruction = z
        return z


class _LossBar:
    """The console's progress bar over the steps, with each step's final loss (the page shows the node's bar)."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def __enter__(self):
        import comfy.utils
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc="null-text", disable=not comfy.utils.PROGRESS_BAR_ENABLED)
        return self

    def update(self, i: int, result: NullTextResult) -> None:
        self.bar.set_postfix(loss=f"{result.last_loss[-1]:.3g}", passes=result.iterations[-1], refresh=False)
        self.bar.update(1)

    def __exit__(self, *exc):
        self.bar.close()
        return False


def optimise_null_text(model, *, top: torch.Tensor, trajectory: list[torch.Tensor], positive, negative,
                       sigmas: torch.Tensor, cfg: float, inner_steps: int, early_stop: float,
                       learning_rate: float, callback=None, on_step=None, probe=None) -> NullTextResult:
    """Run the null-text optimisation from the inverted ``top`` latent (a LATENT's samples)."""
    import comfy.sample
    import comfy.samplers

    patched = model.clone()
    recorder = _CallRecorder(patched.model_options.get("model_function_wrapper"))
    patched.set_model_unet_function_wrapper(recorder)
    null = negative[0][0]
    optimiser = NullTextOptimiser(recorder, trajectory, null, cfg=cfg, inner_steps=inner_steps, early_stop=early_stop,
                                  learning_rate=learning_rate, module=model.model, on_step=on_step)
    optimiser.probe = probe
    bar = _LossBar(len(sigmas) - 1)
    optimiser.on_step = bar.update if on_step is None else (lambda i, r: (bar.update(i, r), on_step(i, r)))
    with torch.inference_mode(False), torch.enable_grad(), bar:
        comfy.sample.sample_custom(patched, torch.zeros_like(top), cfg, comfy.samplers.KSAMPLER(optimiser),
                                   sigmas.to(model.load_device, copy=True), positive, negative, top.clone(),
                                   callback=callback, disable_pbar=True, seed=0)
    return optimiser.result


# --- the node's whole job -----------------------------------------------------------------------

MAKER = "FPE Null-Text Invert"


def _check_conditioning(name: str, conditioning) -> None:
    if not conditioning:
        raise FPEError(f"{name}: the conditioning is empty; connect a CLIP Text Encode")
    if len(conditioning) != 1:
        raise FPEError(f"{name}: null-text inversion takes a single prompt, this conditioning has {len(conditioning)} "
                       "entries (Conditioning (Combine)?): connect one CLIP Text Encode")
    options = conditioning[0][1]
    for key, what in (("area", "an area"), ("mask", "a mask"), ("start_percent", "a timestep range"),
                      ("control", "a ControlNet"), ("gligen", "GLIGEN")):
        if options.get(key) is not None and not (key == "start_percent" and options[key] == 0.0
                                                 and options.get("end_percent", 1.0) == 1.0):
            raise FPEError(f"{name}: the prompt carries {what}, which null-text inversion does not support: connect "
                           "the plain CLIP Text Encode output")


def null_text_invert_to_source(model, *, latent: dict, positive, negative, sigmas: torch.Tensor, schedule_origin: str,
                               cfg: float, inner_steps: int, early_stop: float, learning_rate: float, settings,
                               progress) -> tuple[dict, object, list, NullTextResult, torch.Tensor]:
    """Algorithm 3's first half: invert, optimise the null text, run the source branch from the noise.

    Returns (the inverted LATENT, the complete FPESource recorded on the source branch, the per-step
    negative CONDITIONING, the optimisation's figures, the source branch's output latent = the
    reconstruction). The source branch samples freely from the inverted noise with the per-step
    null embeddings at ``cfg`` (the notebook does not force it onto the trajectory).
    """
    check_inputs_fit(model, latent["samples"], "latent", {"positive": positive, "negative": negative})
    import comfy.sample
    import comfy.samplers

    samples = latent["samples"]
    if samples.shape[0] != 1:
        raise FPEError(f"latent: null-text inversion tunes one photo at a time; this latent holds {samples.shape[0]} "
                       "images (batch them through separate nodes, or Latent From Batch)")
    _check_conditioning("positive", positive)
    _check_conditioning("negative", negative)
    if cfg <= 1.0:
        raise FPEError(f"cfg: null-text inversion tunes the unconditional embedding for guidance above 1 (cfg {cfg} "
                       "never uses it); use the edit's cfg, officially 7.5. For cfg 1 use FPE DDIM Invert")
    reject_chained_inject(model, MAKER)  # before the CFG check: an Inject's own hooks are post-CFG functions
    options = getattr(model, "model_options", {}) or {}
    for key, what in (("sampler_cfg_function", "a custom CFG function (RescaleCFG, dynamic thresholding, ...)"),
                      ("sampler_pre_cfg_function", "a pre-CFG function"),
                      ("sampler_post_cfg_function", "a post-CFG function (SAG, PAG, ...)")):
        found = options.get(key)
        found = found if isinstance(found, (list, tuple)) else [found] if found else []  # the CFG function is one
        if [fn for fn in found if not getattr(fn, "fpe_record", False)]:  # an attention record only reads
            raise FPEError(f"model: it carries {what}, but null-text inversion tunes the embeddings for plain "
                           "guidance: connect the model before that node (apply guidance nodes to the target's "
                           "model only if you accept that the reconstruction drifts)")
    steps = int(sigmas.shape[0]) - 1
    bands = step_bands(model_sampling_of(model), sigmas)  # before any work: a schedule it cannot split fails now

    first, stop = step_window(steps, 0.0, settings.store_end)
    source, recorder = new_source(model, samples=samples, sigmas=sigmas, schedule_origin=schedule_origin, cfg=cfg,
                                  settings=settings, maker=MAKER, evaluations=stop - first,
                                  rows=conditioning_rows(model, positive, negative, cfg, ROWS[settings.rows]),
                                  # the null text's entries: one per step
                                  contexts=context_shapes(positive, negative * steps, cfg, ROWS[settings.rows], model))

    # 1. DDIM inversion with the source prompt, conditional only (w = 1), as the notebook does.
    with paused(model):  # an FPE Attention Record before this node shows the source branch only
        top, inverted, _ = invert(model, latent=samples, positive=positive, negative=positive, cfg=1.0,
                                  forward_sigmas=sigmas, callback=progress.phase(steps))
    if not all_finite(top):
        raise FPEError(f"{MAKER}: the inverted latent came out as NaN or infinite values. Likely causes: a latent that "
                       "is not an encoded photo, or a model running in fp16 that overflows (run it in fp32 or bf16)")
    trajectory = list(reversed(inverted))  # forward order: entry i sits at sigmas[i]

    # 2. The per-step null embeddings.
    with paused(model):
        result = optimise_null_text(model, top=top, trajectory=trajectory, positive=positive, negative=negative,
                                    sigmas=sigmas, cfg=cfg, inner_steps=inner_steps, early_stop=early_stop,
                                    learning_rate=learning_rate, callback=progress.phase(steps))
    if not all(math.isfinite(v) for v in result.last_loss) or not all(all_finite(e) for e in result.embeddings):
        raise FPEError(f"{MAKER}: the optimisation diverged (NaN or infinite loss). Lower learning_rate, or run the "
                       "model in fp32/bf16")
    null_negative = per_step_negative(negative, result.embeddings, bands,
                                      null_text_fingerprint(result.embeddings, sigmas))

    # 3. The source branch: sampled from the inverted noise with the source prompt and the null embeddings.
    patched = attach_recorder(model, recorder)
    with tagged(model, top):
        back = comfy.sample.sample_custom(patched, torch.zeros_like(top), cfg,
                                          comfy.samplers.sampler_object("ddim"), sigmas.to(model.load_device, copy=True),
                                          positive, null_negative, top, callback=progress.phase(steps),
                                          disable_pbar=True, seed=0)
    if not all_finite(back):
        raise FPEError(f"{MAKER}: the source branch came out as NaN or infinite values; run the model in fp32/bf16")
    # Like a DDIM-inverted photo, the edit must start from the inverted latent and take DDIM steps (the guard
    # checks both, and the cfg the embeddings were tuned for).
    source.finish(recorder.clock.order, trajectory=[t.detach().cpu() for t in trajectory],
                  tuned_cfg=cfg)  # reached only when every pass returned normally
    out = {key: value for key, value in latent.items() if key == "batch_index"}
    out["samples"] = top
    return out, source, null_negative, result, back
