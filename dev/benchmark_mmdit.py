"""Benchmark FPE on MMDiT models (issue 27): cost against a plain generation, on full-size Flux.1-dev, SD3.5-Large
and SD3.5-Medium layouts (random bf16 weights: the layout decides the cost, not what the weights learned), the
image-map kernel forms compared, and the memory table that decides replay against a stored record.

    python dev/benchmark_mmdit.py --comfyui PATH [--device cuda] [--models flux,sd35l,sd35m] [--size 1024]
    python dev/benchmark_mmdit.py --comfyui PATH --table-only        # the memory table, no model built
    python dev/benchmark_mmdit.py --comfyui PATH --device cpu --tiny  # a smoke run of the whole script on CPU
    python dev/benchmark_mmdit.py --comfyui PATH --models flux --real --skip-kernels   # + FPE Flow Invert

Prints one line per run (seconds, seconds per step, peak accelerator memory, ratio to the plain generation) and
the kernel comparison. Nothing is timed in the test suite; these numbers go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Full-size layouts as ComfyUI's model detection reads them from the released checkpoints.
FULL = {
    "flux": ("Flux", {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
                      "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0,
                      "num_heads": 24, "depth": 19, "depth_single_blocks": 38, "axes_dim": [16, 56, 56],
                      "theta": 10000, "patch_size": 2, "qkv_bias": True, "txt_ids_dims": []}),
    "sd35l": ("SD3", {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 38, "input_size": None,
                      "adm_in_channels": 2048, "context_embedder_config": {
                          "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 2432}},
                      "num_patches": 36864, "pos_embed_max_size": 192, "pos_embed_scaling_factor": None,
                      "qk_norm": "rms", "x_block_self_attn_layers": []}),
    "sd35m": ("SD3", {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 24, "input_size": None,
                      "adm_in_channels": 2048, "context_embedder_config": {
                          "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 1536}},
                      "num_patches": 147456, "pos_embed_max_size": 384, "pos_embed_scaling_factor": None,
                      "qk_norm": "rms", "x_block_self_attn_layers": list(range(13))}),
}
TINY = {
    "flux": dict(vec_in_dim=32, context_in_dim=32, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2,
                 axes_dim=[8, 12, 12]),
    "sd35l": dict(depth=2, adm_in_channels=32, context_embedder_config={
        "target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}}, num_patches=4096,
                  pos_embed_max_size=64),
    "sd35m": dict(depth=2, adm_in_channels=32, context_embedder_config={
        "target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}}, num_patches=4096,
                  pos_embed_max_size=64, x_block_self_attn_layers=[0]),
}
TEXT_TOKENS = {"flux": 256, "sd35l": 154, "sd35m": 154}  # ComfyUI's Flux T5 padding; SD3's CLIP 77 + T5 77
CFG = {"flux": 1.0, "sd35l": 4.5, "sd35m": 4.5}  # Flux dev: distilled guidance, one row; SD3.5: real CFG


def boot(comfyui: Path, device: str):
    sys.path[:0] = [str(comfyui), str(REPO)]
    from comfy.cli_args import args

    args.cpu = device == "cpu"


def hidden_of(name, config):
    return config["hidden_size"] if name == "flux" else config["context_embedder_config"]["params"]["out_features"]


def memory_table(size: int, steps: int):
    """What a stored record of the source's image queries and keys would take, against replay's model inputs."""
    print(f"\nmemory at {size}x{size} px, {steps} steps (bf16; cond rows of one image)")
    print("| model | attention blocks | image tokens | stored Q+K per step | stored Q+K per run | replay per run |")
    print("| --- | --- | --- | --- | --- | --- |")
    image = (size // 16) ** 2
    for name, (_, config) in FULL.items():
        hidden = hidden_of(name, config)
        blocks = config["depth"] + config.get("depth_single_blocks", 0) + len(config.get("x_block_self_attn_layers", ()))
        per_step = blocks * 2 * image * hidden * 2
        latent = 16 * (size // 8) ** 2 * 4
        replay = steps * latent + TEXT_TOKENS[name] * 4096 * 4
        print(f"| {name} | {blocks} | {image} | {per_step / 2**30:.2f} GiB | {per_step * steps / 2**30:.1f} GiB | "
              f"{replay / 2**20:.1f} MiB |")


def build(name: str, device, tiny: bool):
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    config_name, unet_config = FULL[name]
    unet_config = dict(unet_config, **(TINY[name] if tiny else {}))
    config = getattr(comfy.supported_models, config_name)(unet_config)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, "", device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for key, tensor in model.diffusion_model.named_parameters():
            if key.endswith(("scale", "ln_q.weight", "ln_k.weight")):
                tensor.fill_(1.0)  # norms at identity, as trained ones roughly are
            else:
                tensor.normal_(0.0, 0.02, generator=generator)
    model = model.to(device).eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def prompts(name, tiny: bool):
    import torch

    width = 32 if tiny else 4096
    pooled = 32 if tiny else (768 if name == "flux" else 2048)
    tokens = 8 if tiny else TEXT_TOKENS[name]
    generator = torch.Generator().manual_seed(1)

    def one():
        extra = {"pooled_output": torch.randn(1, pooled, generator=generator)}
        if name == "flux":
            extra["guidance"] = 3.5
        return [[torch.randn(1, tokens, width, generator=generator), extra]]

    return one(), one(), one()  # source, target, negative


def timed(fn, device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return out, time.perf_counter() - start, peak


def bench_real_photo(model, layout, device, size, steps, cfg, source_prompt, target_prompt, negative, base):
    """FPE Flow Invert (reverse Euler + the record pass, store_end 0.2) and the edit from its inverted noise through
    SamplerCustomAdvanced's path (the host's sample_custom with the noise, euler), against a plain generation."""
    import gc

    import comfy.sample
    import comfy.samplers
    import torch

    from fpe_attention.capture import CaptureSettings
    from fpe_attention.dit_inject import inject_dit_model
    from fpe_attention.flow_inversion import flow_invert_to_source

    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        print(f"(before the photo runs: {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated)")
    photo = torch.randn(1, 16, size // 8, size // 8, generator=torch.Generator().manual_seed(5)) * 0.5
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps).cpu()
    rows = []
    sampler = comfy.samplers.sampler_object("euler")
    for storage in ("auto", "replay"):
        settings = CaptureSettings(selection=None, store_end=0.2, rows="cond", storage=storage, precision="exact")
        (noise, source), seconds, peak = timed(lambda settings=settings: flow_invert_to_source(
            model, latent={"samples": photo}, positive=source_prompt, negative=negative, cfg=1.0, sigmas=sigmas,
            schedule_origin="benchmark", settings=settings), device)
        rows.append((f"FPE Flow Invert ({source.storage_device}, store_end 0.2)", seconds, peak))
        patched = inject_dit_model(model, source, blocks=layout.blocks.keys(("double", "single", "joint")), start=0.0,
                                   end=0.2)
        _, seconds, peak = timed(lambda patched=patched, noise=noise: comfy.sample.sample_custom(
            patched, noise.generate_noise({"samples": photo}), cfg, sampler, sigmas.to(model.load_device),
            target_prompt, negative, photo, disable_pbar=True, seed=0), device)
        rows.append((f"photo edit ({source.storage_device}): image map, end 0.2", seconds, peak))
        del noise, source, patched
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            print(f"(after the photo {storage} runs: {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated)")
    return rows


def bench_model(name, device, size, steps, tiny, real=False, real_only=False):
    import comfy.sample
    import comfy.samplers
    import torch

    from fpe_attention.capture import CaptureSettings, capture_source
    from fpe_attention.dit_inject import inject_dit_model
    from fpe_attention.dit_model import dit_layout

    model = build(name, device, tiny)
    layout = dit_layout(model)
    source_prompt, target_prompt, negative = prompts(name, tiny)
    latent = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
    cfg = CFG[name]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)

    def plain(m, positive, run_steps=steps):
        noise = comfy.sample.prepare_noise(latent["samples"], 7)
        return comfy.sample.sample(m, noise, run_steps, cfg, "euler", "simple", positive, negative, latent["samples"],
                                   denoise=1.0, seed=7, disable_pbar=True)

    plain(model, target_prompt, 2)  # warm-up: kernels, allocator
    results = []
    _, base, base_peak = timed(lambda: plain(model, target_prompt), device)
    results.append(("plain generation", base, base_peak))
    if real:  # first: the photo runs on a fresh memory
        results += bench_real_photo(model, layout, device, size, steps, cfg, source_prompt, target_prompt, negative,
                                    base)
    joint = layout.blocks.keys(("double", "single", "joint"))
    for storage, store_end in (() if real_only else (("replay", 1.0), ("auto", 0.2))):
        settings = CaptureSettings(selection=None, store_end=store_end, rows="cond", storage=storage,
                                   precision="exact")
        (_, source), seconds, peak = timed(lambda settings=settings: capture_source(
            model, seed=7, cfg=cfg, sampler_name="euler", scheduler="simple", positive=source_prompt,
            negative=negative, latent=latent, sigmas=sigmas, denoise=1.0, schedule_origin="benchmark",
            settings=settings), device)
        kept = f"{source.storage_device} {source.nbytes / 2**30:.2f} GiB, store_end {store_end}"
        results.append((f"FPE Source Capture ({kept})", seconds, peak))
        runs = [("image map", joint, 0.2), ("image Q,K", joint, 0.2)]
        if storage == "replay":
            runs.append(("image map", joint, 1.0))
            if layout.blocks.blocks.get("self"):
                runs.append(("image map", layout.blocks.keys(("self",)), 0.2))
        for mode, blocks, end in runs:
            patched = inject_dit_model(model, source, blocks=blocks, start=0.0, end=end, mode=mode)
            _, seconds, peak = timed(lambda patched=patched: plain(patched, target_prompt), device)
            what = "self-attention blocks" if blocks and next(iter(blocks))[0] == "self" else "all joint blocks"
            results.append((f"edit ({source.storage_device}): {mode}, {what}, end {end}", seconds, peak))
        del source, patched
        if device.type == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()
            print(f"(after the {storage} runs: {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated)")
    print(f"\n{name}: {layout.family} layout ({layout.blocks.describe()}), {size}x{size} px, {steps} euler steps, "
          f"cfg {cfg}, {device}")
    print("| run | seconds | s/step | peak GiB | x plain |")
    print("| --- | --- | --- | --- | --- |")
    for label, seconds, peak in results:
        print(f"| {label} | {seconds:.2f} | {seconds / steps:.3f} | {peak:.1f} | {seconds / base:.2f} |")
    comfy.model_management.unload_all_models()  # the next layout's memory is its own
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_kernels(device, tiny):
    """One Flux block's attention at 1024 px: the 2D-wide kernel call against the chunked explicit form."""
    import torch

    from fpe_attention.joint_attention import explicit_image_map, image_map_attention, image_map_chunked, sdpa

    heads, dim, text, image = (2, 16, 8, 64) if tiny else (24, 128, 256, 4096)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    generator = torch.Generator(device=device).manual_seed(3)
    q_t, k_t, v_t, q_s, k_s = (torch.randn(1, heads, text + image, dim, generator=generator, device=device)
                               .to(dtype) for _ in range(5))
    img = slice(text, text + image)
    reference = explicit_image_map(*(t.double() for t in (q_t, k_t, v_t, q_s, k_s)), img)
    print(f"\nimage-map attention, one Flux block at 1024 px ({heads} heads x {text + image} tokens x {dim}), {dtype}")
    print("| form | ms | peak MiB over inputs | max error vs float64 explicit |")
    print("| --- | --- | --- | --- |")
    forms = {"plain attention (no edit)": lambda: sdpa(q_t, k_t, v_t),
             "2D-wide kernel call (default)": lambda: image_map_attention(q_t, k_t, v_t, q_s, k_s, img),
             "chunked explicit, 1024 queries": lambda: image_map_chunked(q_t, k_t, v_t, q_s, k_s, img, 1024)}
    for label, fn in forms.items():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        repeats = 10
        for _ in range(repeats):
            out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / repeats * 1000
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else float("nan")
        error = float((out.double() - reference).abs().max()) if "no edit" not in label else float("nan")
        print(f"| {label} | {ms:.2f} | {peak:.0f} | {error:.2e} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"), help="a current ComfyUI")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="flux,sd35l,sd35m")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="tiny layouts (a CPU smoke run of the script)")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--real", action="store_true", help="also FPE Flow Invert and a photo edit")
    parser.add_argument("--skip-kernels", action="store_true", help="leave out the kernel comparison")
    parser.add_argument("--real-only", action="store_true", help="with --real: only the photo runs")
    options = parser.parse_args()
    if options.comfyui is None:
        parser.error("--comfyui (or COMFYUI_PATH): a current ComfyUI checkout")
    memory_table(options.size, options.steps)
    if options.table_only:
        return
    boot(options.comfyui, options.device)
    import torch

    device = torch.device(options.device)
    if device.type == "cuda":
        print(f"\ndevice: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if not options.skip_kernels:
        bench_kernels(device, options.tiny)
    for name in options.models.split(","):
        bench_model(name.strip(), device, options.size if not options.tiny else 64, options.steps, options.tiny,
                    options.real or options.real_only, options.real_only)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
