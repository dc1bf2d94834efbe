"""An independent reference for FPE on MMDiT models: the batched algorithm with the attention built whole.

The source and target run as rows 0 and 1 of one batch from the same noise (Shin et al.'s code, like the
official FPE code on UNets), sampled with its own Euler loop over the host's model functions. In the chosen
blocks and steps the attention of every row is computed explicitly in float64 from the full logits matrix;
row 1 (the target) takes row 0's image logits (``image map``), its image queries and keys (``image Q,K``), or
row 0's queries and keys (MMDiT-X image self-attention). Nothing of the pack's code runs here.
"""

from __future__ import annotations

import torch


def _explicit(q, k, v):
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(logits, dim=-1) @ v


def edited_attention(kind: str, mode: str, q, k, v, img: slice):
    """[2, H, L, D] float64 rows (source, target) -> the attention output of both rows."""
    q_s, k_s, v_s, q_t, k_t, v_t = q[:1], k[:1], v[:1], q[1:], k[1:], v[1:]
    source = _explicit(q_s, k_s, v_s)
    if kind == "self":
        target = _explicit(q_s, k_s, v_t)
    elif mode == "image map":
        scale = q.shape[-1] ** -0.5
        logits = (q_t @ k_t.transpose(-1, -2)) * scale
        logits[..., img, img] = (q_s[..., img, :] @ k_s[..., img, :].transpose(-1, -2)) * scale
        target = torch.softmax(logits, dim=-1) @ v_t
    else:  # image Q,K
        q2, k2 = q_t.clone(), k_t.clone()
        q2[..., img, :], k2[..., img, :] = q_s[..., img, :], k_s[..., img, :]
        target = _explicit(q2, k2, v_t)
    return torch.cat([source, target])


class _Stamp:
    def __init__(self, kinds, index):
        self.kinds, self.index = kinds, index

    def __call__(self, args, extra):
        options = dict(args["transformer_options"])
        options["reference_block"] = [list(self.kinds), self.index]
        return extra["original_block"](dict(args, transformer_options=options))


class _Override:
    def __init__(self, blocks, mode, layout):
        self.blocks, self.mode, self.layout = blocks, mode, layout  # layout: {"flux", "text", "image"}

    def __call__(self, func, *args, **kwargs):
        stamp = kwargs["transformer_options"].get("reference_block")
        if stamp is None or not stamp[0]:
            return func(*args, **kwargs)
        kind = stamp[0].pop(0)
        if (kind, stamp[1]) not in self.blocks:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        flat = not kwargs.get("skip_reshape", False)
        if flat:
            b, length, width = q.shape
            q, k, v = (t.reshape(b, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        length = q.shape[2]
        text, image = self.layout["text"], self.layout["image"]  # as the embedding layers emitted them this call
        img = slice(0, length) if kind == "self" else (slice(text, text + image) if self.layout["flux"] else
                                                       slice(length - image, length))
        out = edited_attention(kind, self.mode, q.double(), k.double(), v.double(), img).to(v.dtype)
        if kwargs.get("skip_output_reshape", False):
            return out
        return out.transpose(1, 2).reshape(out.shape[0], length, -1)


def reference_edit(model, source_cond, target_cond, *, latent, seed: int, steps: int, mode: str, blocks,
                   window: tuple[int, int], flux: bool, selfs=(), trajectory=None):
    """The target row of the batched edit, in the sampler's output space (as KSampler returns it).

    ``source_cond`` / ``target_cond``: CONDITIONING of one entry each; ``blocks``: (kind, index) keys; euler,
    scheduler 'simple', cfg 1 (one row per prompt: Flux dev's way). ``trajectory``: a real photo's inverted
    latents (sampler space, forward order): both rows start at its first, and the source row is set to entry i
    before every step, as the official real-image code does."""
    import comfy.sample
    import comfy.samplers

    inner = model.model
    sampling = inner.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
    if trajectory is not None:
        x = trajectory[0].repeat(2, 1, 1, 1)
    else:
        latent_in = inner.process_latent_in(latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        x = sampling.noise_scaling(sigmas[0], noise, latent_in).repeat(2, 1, 1, 1)
    context = torch.cat([source_cond[0][0], target_cond[0][0]])
    extra = {"y": torch.cat([source_cond[0][1]["pooled_output"], target_cond[0][1]["pooled_output"]])}
    if flux:
        extra["guidance"] = torch.tensor([source_cond[0][1].get("guidance", 3.5)] * 2)
    # The token counts as the model's own embedding layers emit them (Flux: txt_in, img_in; SD3: context_embedder,
    # x_embedder), so the image slice does not rest on the pack's patch arithmetic.
    backbone = inner.diffusion_model
    layout = {"flux": flux, "text": 0, "image": 0}

    def counter(name):
        def hook(module, args, out):
            layout[name] = int(out.shape[1])
        return hook

    text_layer, image_layer = (backbone.txt_in, backbone.img_in) if flux else (backbone.context_embedder,
                                                                               backbone.x_embedder)
    hooks = [text_layer.register_forward_hook(counter("text")), image_layer.register_forward_hook(counter("image"))]
    override = _Override(frozenset(blocks), mode, layout)
    replace = {}
    for kind, index in blocks:
        name = "single_block" if kind == "single" else "double_block"
        kinds = [kind] if kind in ("double", "single") else (["joint", "self"] if index in selfs else ["joint"])
        replace[(name, index)] = _Stamp(kinds, index)
    try:
        x = _sample(inner, x, sigmas, steps, window, replace, override, context, extra, trajectory)
    finally:
        for hook in hooks:
            hook.remove()
    x = sampling.inverse_noise_scaling(sigmas[-1], x)
    return inner.process_latent_out(x)[1:]


def _sample(inner, x, sigmas, steps, window, replace, override, context, extra, trajectory):
    with torch.no_grad():
        for i in range(steps):
            sigma = sigmas[i]
            options = {}
            if window[0] <= i < window[1]:
                options = {"patches_replace": {"dit": replace}, "optimized_attention_override": override}
            if trajectory is not None:
                x[0] = trajectory[i][0]
            denoised = inner.apply_model(x, sigma.expand(2), c_crossattn=context, transformer_options=options, **extra)
            x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
    return x


def reference_inversion(model, conditioning, *, latent, steps: int, flux: bool):
    """Reverse Euler with the model evaluated at the destination level, on the host's model functions:
    the inverted latents bottom to top (sampler space)."""
    import comfy.samplers

    inner = model.model
    sigmas = comfy.samplers.calculate_sigmas(inner.model_sampling, "simple", steps).flip(0)
    extra = {"y": conditioning[0][1]["pooled_output"]}
    if flux:
        extra["guidance"] = torch.tensor([conditioning[0][1].get("guidance", 3.5)])
    x = inner.process_latent_in(latent)
    out = [x]
    with torch.no_grad():
        for i in range(steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = inner.apply_model(x, sigma_next.reshape(1), c_crossattn=conditioning[0][0], **extra)
            x = x + (sigma_next - sigma) * (x - denoised) / sigma_next
            out.append(x)
    return out
