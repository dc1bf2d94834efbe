"""Benchmark: plain generation vs FPE capture, inject and re-edit; capture bytes per step.

    bash dev/bench.sh                 # CPU: tiny model 256 px, full-size SD1.5 UNet 256 px, few steps
    bash dev/bench.sh --gpu           # GPU: full-size SD1.5 UNet (random weights), 512 px, 50 steps
    bash dev/bench.sh --gpu --archs SD1.5,SDXL   # ... and SDXL at 1024 px, 30 steps

Prints one table; every ratio is taken within one run against that run's plain generation, from
the fastest of --repeats interleaved rounds ("plain spread": slowest / fastest plain round - 1).
Weights are random (no download); the cost of attention patches does not depend on them.
Goals (issue 3): capture + target <= 2.05x plain; re-edit <= 1.05x plain; capture <= 12 MiB per
step at 512 px with the official layers. Issue 12: re-edit <= 1.05x in every stored mode (auto, cpu);
storage replay <= 1.45x per edit with no record. ``--archs SD1.5,SD2.x,SDXL`` times each
full-size UNet (SDXL in bf16 on CPU); ``--layers`` prints the layer/bytes table per architecture. Goals (issue 4, real images): DDIM Invert + edit <= 2.0x
plain; re-edit of the same image with a new target prompt <= 1.05x plain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


PEAK_VRAM: dict[str, float] = {}  # GPU runs: the highest allocation seen per kind of run, GiB


def _timed(fn, repeats, kind=None):
    import torch

    times = []
    out = None
    for _ in range(repeats):
        _sync()
        if kind and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - t0)
        if kind and torch.cuda.is_available():
            PEAK_VRAM[kind] = max(PEAK_VRAM.get(kind, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    return statistics.median(times), out


def full_unet(architecture="SD1.5", dtype=None):
    """A real architecture's UNet with seeded random weights, through ComfyUI's UNet loader."""
    import comfy.sd

    from fpe_headless.comfy import tiny_models

    state = tiny_models.full_unet_state_dict(architecture, dtype)
    load = getattr(comfy.sd, "load_diffusion_model_state_dict", None) or comfy.sd.load_unet_state_dict
    if dtype is None:
        return load(state)
    try:
        return load(state, dtype=dtype)
    except TypeError:  # ComfyUI of early 2024 picks the dtype itself (fp32 on CPU)
        return load(state)


def random_conds(architecture, generator):
    """Source, target, second target and negative conditioning with the architecture's widths."""
    import torch

    width = {"SD1.5": 768, "SD2.x": 1024, "SDXL": 2048}[architecture]

    def extra():
        return {"pooled_output": torch.randn(1, 1280, generator=generator)} if architecture == "SDXL" else {}

    return [[[torch.randn(1, 77, width, generator=generator), extra()]] for _ in range(4)]


def full_sd15_unet(dtype=None):
    return full_unet("SD1.5", dtype)


LAYER_TABLE_SIZES = {"SD1.5": [(512, 512), (768, 768)], "SD2.x": [(512, 512), (768, 768)],
                     "SDXL": [(1024, 1024), (1536, 1536), (832, 1216)]}


def layer_table(layers_mod):
    """Per real architecture and size: layers each preset selects, and the capture's fp16 bytes per
    stored step (one image, cond rows, one evaluation per step) for the two official presets."""
    from fpe_headless.comfy import tiny_models

    rows = []
    for arch, sizes in LAYER_TABLE_SIZES.items():
        layers = layers_mod.unet_attn1_layers(tiny_models.meta_unet(arch))
        family = {"SD1.5": "SD1.x"}.get(arch, arch)
        presets = {}
        for name in ("official", "official relative", "all", "paper 4-14"):
            try:
                presets[name] = layers_mod.select_layers(name, "", layers, family)
            except layers_mod.LayerSelectionError:
                presets[name] = None
        for width, height in sizes:
            lh, lw = height // 8, width // 8
            cells = [arch, f"{width}x{height}"]
            for name in ("official", "official relative", "all", "paper 4-14"):
                chosen = presets[name].resolve(layers, lh, lw) if presets[name] is not None else None
                cells.append("-" if chosen is None else str(len(chosen)))
            for name in ("official", "official relative", "all"):
                chosen = presets[name].resolve(layers, lh, lw)
                mib = sum(layer.tokens(lh, lw) * layer.channels for layer in chosen) * 2 / 2**20
                cells.append(f"{mib:.1f}")
            rows.append(cells)
    _table(rows, ["model", "size", "official", "official relative", "all", "paper 4-14",
                  "MiB/step official", "MiB/step relative", "MiB/step all"])


def print_peak_vram() -> None:
    """The peak VRAM per timed kind (GPU runs only)."""
    if PEAK_VRAM:
        print("\nPeak VRAM (GiB, torch allocations; the model's weights included):")
        for kind, gib in PEAK_VRAM.items():
            print(f"  {kind}: {gib:.2f}")


def bench_model(label, model, conds, *, side, steps, repeats, call_node):
    import torch

    src, tgt, tgt2, neg = conds
    latent = {"samples": torch.zeros(1, 4, side // 8, side // 8)}
    common = dict(seed=42, steps=steps, cfg=7.5, sampler_name="ddim", scheduler="ddim_uniform", negative=neg,
                  latent_image=latent, denoise=1.0)

    def plain():
        return call_node("KSampler", model=model, positive=tgt, **common)

    def capture(storage="auto"):
        return call_node("FPESourceCapture", model=model, positive=src, store_layers="official",
                         store_custom_layers="", store_end=0.8, store_rows="cond", storage=storage,
                         precision="exact", **common)

    def edit(source, prompt):
        patched = call_node("FPESelfAttnInject", model=model, fpe_source=source, layers="official",
                            custom_layers="", start=0.0, end=0.8, branches="cond only")[0]
        return call_node("KSampler", model=patched, positive=prompt, **common)

    plain()  # warm-up: model load, kernels
    # Interleaved rounds, median per kind: slow drifts of a shared machine hit every kind alike.
    times: dict[str, list[float]] = {"plain": [], "capture": [], "target": [], "reedit": [], "reedit cpu": [],
                                     "replay capture": [], "replay edit": []}
    source = replayed = None
    for _ in range(repeats):
        times["plain"].append(_timed(plain, 1, f"{label}: plain")[0])
        t, (_, source) = _timed(capture, 1, f"{label}: capture (auto)")
        times["capture"].append(t)
        times["target"].append(_timed(lambda s=source: edit(s, tgt), 1)[0])
        times["reedit"].append(_timed(lambda s=source: edit(s, tgt2), 1, f"{label}: re-edit (auto)")[0])
        _, in_ram = capture("cpu")
        times["reedit cpu"].append(_timed(lambda s=in_ram: edit(s, tgt2), 1, f"{label}: re-edit (cpu)")[0])
        del in_ram
        t, (_, replayed) = _timed(lambda: capture("replay"), 1, f"{label}: capture (replay)")
        times["replay capture"].append(t)
        times["replay edit"].append(_timed(lambda s=replayed: edit(s, tgt2), 1, f"{label}: edit (replay)")[0])
    # The fastest round of each kind: on a shared CPU, interference only ever adds time.
    t_plain, t_capture, t_target, t_reedit, t_cpu, t_replay_capture, t_replay = (min(times[k]) for k in times)
    spread = max(times["plain"]) / min(times["plain"]) - 1
    mib = source.bytes_per_step() / 2**20
    dtype = next(iter(next(iter(source.entries.values())).values())).dtype
    return [label, f"{side}px/{steps}", f"{t_plain:.2f}", f"{t_capture:.2f} ({t_capture / t_plain:.2f}x)",
            f"{t_target:.2f} ({t_target / t_plain:.2f}x)", f"{(t_capture + t_target) / t_plain:.2f}x",
            f"{t_reedit / t_plain:.2f}x", f"{t_cpu / t_plain:.2f}x", f"{mib:.2f} ({str(dtype).replace('torch.', '')})",
            f"{t_replay / t_plain:.2f}x", f"{(t_replay_capture + t_replay) / t_plain:.2f}x",
            f"{replayed.nbytes / 2**10:.0f}", f"{spread:.0%}"]


def bench_real(label, model, conds, *, side, steps, repeats, call_node):
    """Real-image edit: DDIM Invert (+ its reconstruction check) and the edit vs one plain generation."""
    import torch

    src, tgt, tgt2, neg = conds
    gen = torch.Generator().manual_seed(3)
    photo = {"samples": torch.randn(1, 4, side // 8, side // 8, generator=gen) * 5}
    empty = {"samples": torch.zeros(1, 4, side // 8, side // 8)}

    def plain():
        return call_node("KSampler", model=model, seed=42, steps=steps, cfg=7.5, sampler_name="ddim",
                         scheduler="ddim_uniform", positive=tgt, negative=neg, latent_image=empty, denoise=1.0)

    def invert(check):
        return call_node("FPEDDIMInvert", model=model, positive=neg, latent=photo, steps=steps,
                         scheduler="ddim_uniform", cfg=1.0, denoise=1.0, store_layers="official",
                         store_custom_layers="", store_end=0.8, store_rows="cond", storage="auto", precision="exact",
                         reconstruction_check=check)

    def edit(inverted, source, prompt):
        patched = call_node("FPESelfAttnInject", model=model, fpe_source=source, layers="official",
                            custom_layers="", start=0.0, end=0.8, branches="cond only")[0]
        return call_node("KSamplerAdvanced", model=patched, add_noise="disable", noise_seed=0, steps=steps, cfg=7.5,
                         sampler_name="ddim", scheduler="ddim_uniform", positive=prompt, negative=neg,
                         latent_image=inverted, start_at_step=0, end_at_step=10000,
                         return_with_leftover_noise="disable")

    plain()
    times: dict[str, list[float]] = {"plain": [], "invert": [], "invert+check": [], "edit": [], "reedit": []}
    for _ in range(repeats):
        times["plain"].append(_timed(plain, 1)[0])
        t, (inverted, source, _) = _timed(lambda: invert(False), 1)
        times["invert"].append(t)
        times["invert+check"].append(_timed(lambda: invert(True), 1)[0])
        times["edit"].append(_timed(lambda i=inverted, s=source: edit(i, s, tgt), 1)[0])
        times["reedit"].append(_timed(lambda i=inverted, s=source: edit(i, s, tgt2), 1)[0])
    t_plain, t_invert, t_check, t_edit, t_reedit = (min(times[k]) for k in times)
    spread = max(times["plain"]) / min(times["plain"]) - 1
    return [label, f"{side}px/{steps}", f"{t_plain:.2f}", f"{t_invert:.2f} ({t_invert / t_plain:.2f}x)",
            f"{t_edit:.2f} ({t_edit / t_plain:.2f}x)", f"{(t_invert + t_edit) / t_plain:.2f}x",
            f"{(t_check + t_edit) / t_plain:.2f}x", f"{t_reedit / t_plain:.2f}x", f"{spread:.0%}"]


def bench_nulltext(label, model, conds, *, side, steps, repeats, call_node, inner_steps=10):
    """FPE Null-Text Invert (official settings) vs FPE DDIM Invert and one plain generation; the edit after it."""
    import torch

    src, tgt, _, neg = conds
    gen = torch.Generator().manual_seed(3)
    photo = {"samples": torch.randn(1, 4, side // 8, side // 8, generator=gen) * 5}
    empty = {"samples": torch.zeros(1, 4, side // 8, side // 8)}
    store = {"store_layers": "official", "store_custom_layers": "", "store_end": 0.8, "store_rows": "cond",
             "storage": "auto", "precision": "exact"}

    def plain():
        return call_node("KSampler", model=model, seed=42, steps=steps, cfg=7.5, sampler_name="ddim",
                         scheduler="ddim_uniform", positive=tgt, negative=neg, latent_image=empty, denoise=1.0)

    def ddim():
        return call_node("FPEDDIMInvert", model=model, positive=neg, latent=photo, steps=steps,
                         scheduler="ddim_uniform", cfg=1.0, denoise=1.0, reconstruction_check=False, **store)

    def nulltext():
        return call_node("FPENullTextInvert", model=model, positive=src, negative=neg, latent=photo, steps=steps,
                         scheduler="ddim_uniform", cfg=7.5, inner_steps=inner_steps, early_stop=1e-5,
                         learning_rate=0.01, **store)

    def edit(inverted, source, null_negative):
        patched = call_node("FPESelfAttnInject", model=model, fpe_source=source, layers="official",
                            custom_layers="", start=0.0, end=0.8, branches="cond only")[0]
        return call_node("KSamplerAdvanced", model=patched, add_noise="disable", noise_seed=0, steps=steps, cfg=7.5,
                         sampler_name="ddim", scheduler="ddim_uniform", positive=tgt, negative=null_negative,
                         latent_image=inverted, start_at_step=0, end_at_step=10000,
                         return_with_leftover_noise="disable")

    plain()
    times: dict[str, list[float]] = {"plain": [], "ddim": [], "nulltext": [], "edit": []}
    passes = 0
    for _ in range(repeats):
        times["plain"].append(_timed(plain, 1, "plain generation")[0])
        times["ddim"].append(_timed(ddim, 1, "DDIM Invert")[0])
        t, (inverted, source, null_negative, report) = _timed(nulltext, 1, "Null-Text Invert")
        times["nulltext"].append(t)
        passes = int(report.split(" optimisation passes")[0].rsplit(" ", 1)[1])
        times["edit"].append(_timed(lambda i=inverted, s=source, n=null_negative: edit(i, s, n), 1,
                                    "null-text edit")[0])
    t_plain, t_ddim, t_null, t_edit = (min(times[k]) for k in times)
    return [label, f"{side}px/{steps}", f"{t_plain:.2f}", f"{t_ddim:.2f} ({t_ddim / t_plain:.2f}x)",
            f"{t_null:.2f} ({t_null / t_plain:.1f}x)", f"{t_null / t_ddim:.1f}x", str(passes),
            f"{t_edit / t_plain:.2f}x"]


def _table(rows, headers):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    for r in [headers, ["-" * w for w in widths]] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def capture_bytes_512(model, conds, call_node, dtype_label):
    """Capture bytes per step at 512 px with the official layers (2 steps, both stored)."""
    import torch

    src, _, _, neg = conds
    _, source = call_node("FPESourceCapture", model=model, seed=1, steps=2, cfg=7.5, sampler_name="ddim",
                          scheduler="ddim_uniform", positive=src, negative=neg,
                          latent_image={"samples": torch.zeros(1, 4, 64, 64)}, denoise=1.0, store_layers="official",
                          store_custom_layers="", store_end=1.0, store_rows="cond", storage="auto",
                          precision=dtype_label)
    return source.bytes_per_step() / 2**20, len(source.stored_layers)


def refusal(model, conds, call_node, free_ram=16 * 10**9):
    """An absurd capture (10000 euler steps at 512 px, fp16) against a machine with ``free_ram`` bytes free:
    the planned size, the message, and how long the node takes to refuse (no step may run)."""
    import time

    import torch

    from fpe_harness.host import pack_submodule

    memory = pack_submodule("fpe_attention.memory")
    errors = pack_submodule("fpe_attention.errors")
    real_free_ram = memory.free_ram
    memory.free_ram = lambda: free_ram
    src, _, _, neg = conds
    t0 = time.perf_counter()
    try:
        call_node("FPESourceCapture", model=model, seed=1, steps=10000, cfg=7.5, sampler_name="euler",
                  scheduler="normal", positive=src, negative=neg,
                  latent_image={"samples": torch.zeros(1, 4, 64, 64)}, denoise=1.0, store_layers="official",
                  store_custom_layers="", store_end=0.8, store_rows="cond", storage="cpu", precision="fp16")
        message = "not refused"
    except errors.FPEError as exc:
        message = str(exc)
    finally:
        memory.free_ram = real_free_ram
    return time.perf_counter() - t0, message


def schedule_closeness(model, conds, call_node, steps=50, side=128):
    """How far ComfyUI's ddim_uniform lands from the official DDIM timesteps: source and edit latents."""
    import torch

    src, tgt, _, neg = conds
    sigmas = call_node("FPEOfficialDDIMSigmas", model=model, steps=steps)[0]
    sampler = call_node("KSamplerSelect", sampler_name="ddim")[0]
    latent = {"samples": torch.zeros(1, 4, side // 8, side // 8)}
    common = dict(seed=42, cfg=7.5, sampler_name="ddim", negative=neg, latent_image=latent, denoise=1.0,
                  store_layers="official", store_custom_layers="", store_end=0.8, store_rows="cond", storage="auto",
                  precision="exact")
    results = {}
    for name, extra in (("official", {"steps": steps, "scheduler": "normal", "sigmas": sigmas}),
                        ("ddim_uniform", {"steps": steps, "scheduler": "ddim_uniform"})):
        out, source = call_node("FPESourceCapture", model=model, positive=src, **common, **extra)
        patched = call_node("FPESelfAttnInject", model=model, fpe_source=source, layers="official",
                            custom_layers="", start=0.0, end=0.8, branches="cond only")[0]
        if name == "official":
            edit = call_node("SamplerCustom", model=patched, add_noise=True, noise_seed=42, cfg=7.5, positive=tgt,
                             negative=neg, sampler=sampler, sigmas=sigmas, latent_image=latent)[0]
        else:
            edit = call_node("KSampler", model=patched, seed=42, steps=steps, cfg=7.5, sampler_name="ddim",
                             scheduler="ddim_uniform", positive=tgt, negative=neg, latent_image=latent, denoise=1.0)[0]
        results[name] = (out["samples"], edit["samples"])
    lines = []
    for i, label in enumerate(("source", "edit")):
        a, b = results["official"][i], results["ddim_uniform"][i]
        diff = float((a - b).abs().max())
        lines.append(f"{label}: max |official - ddim_uniform| {diff:.3g} "
                     f"({diff / float(a.abs().max()):.2%} of the latent's max)")
    return f"{steps} steps, {side} px, tiny model: " + "; ".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="GPU run: full SD1.5 UNet, 512 px, 50 steps")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (fastest per kind)")
    parser.add_argument("--memory-only", action="store_true", help="only the capture sizes and the refusal")
    parser.add_argument("--layers", action="store_true", help="only the table of layers and bytes per architecture")
    parser.add_argument("--side", type=int, help="override the image size of the full-size UNets (px)")
    parser.add_argument("--archs-only", action="store_true",
                        help="only the full-size UNets' rows (no tiny model, schedule or memory report)")
    parser.add_argument("--nulltext", action="store_true",
                        help="only FPE Null-Text Invert vs DDIM Invert vs a plain generation (tiny model and the "
                             "--archs UNets)")
    parser.add_argument("--sweep", action="store_true",
                        help="only a settings sweep of 8 (layers x end) vs 8 single edits, tiny model, stored and replay")
    parser.add_argument("--record", action="store_true",
                        help="only FPE Attention Record's cost: plain vs recording sampling, record size, picture times")
    parser.add_argument("--archs", default="SD1.5",
                        help="comma-separated full-size UNets to time: SD1.5, SD2.x, SDXL (SDXL needs ~12 GB RAM; "
                             "it runs in bf16 on CPU)")
    args = parser.parse_args(argv)
    host_path = os.environ.get("FPE_COMFYUI_HOST") or os.environ.get("COMFYUI_PATH")
    if not host_path:
        parser.error("no ComfyUI: run through `bash dev/bench.sh`, or set COMFYUI_PATH")

    from fpe_harness import host as host_mod
    from fpe_headless.comfy import tiny_models

    workdir = Path(tempfile.mkdtemp(prefix="fpe-bench-"))
    host = host_mod.boot(Path(host_path), workdir, cpu=not args.gpu)
    tiny_models.register_tiny_model_configs(workdir / "tiny_configs")

    import torch

    from fpe_harness.execute import call_node

    rows, real_rows = [], []
    if args.layers:
        return layer_table(host_mod.pack_submodule("fpe_attention.layers")) or 0
    if args.memory_only:
        return memory_report(host, call_node)
    if args.nulltext:
        return nulltext_report(args, host, call_node)
    if args.sweep:
        return sweep_report(args, host, call_node)
    if args.record:
        return record_report(args, host, call_node)
    if not args.gpu and not args.archs_only:
        tiny_models.write_checkpoint(tiny_models.SD15_TINY, workdir / "models" / "checkpoints" / "tiny.safetensors")
        model, clip, _ = call_node("CheckpointLoaderSimple", ckpt_name="tiny.safetensors")[:3]
        conds = [call_node("CLIPTextEncode", clip=clip, text=t)[0] for t in
                 ("a photo of green ducks walking on street", "a photo of rubber ducks walking on street",
                  "a photo of wooden ducks walking on street", "")]
        rows.append(bench_model("tiny SD1.5 layout", model, conds, side=256, steps=args.steps or 10,
                                repeats=args.repeats, call_node=call_node))
        real_rows.append(bench_real("tiny SD1.5 layout", model, conds, side=256, steps=args.steps or 10,
                                    repeats=args.repeats, call_node=call_node))
        closeness = schedule_closeness(model, conds, call_node)
    gen = torch.Generator().manual_seed(0)
    side, steps = (512, 50) if args.gpu else (256, 4)
    side = args.side or side
    unet = big_conds = None
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        dtype = torch.bfloat16 if arch == "SDXL" and not args.gpu else None  # fits a 24 GB machine
        model = full_unet(arch, dtype)
        conds = random_conds(arch, gen)
        label = f"{arch} UNet (random, {str(model.model.get_dtype()).replace('torch.', '')})"
        arch_side = 1024 if arch == "SDXL" and args.gpu and not args.side else side
        arch_steps = args.steps or (30 if arch == "SDXL" and args.gpu else steps)
        rows.append(bench_model(label, model, conds, side=arch_side, steps=arch_steps, repeats=args.repeats,
                                call_node=call_node))
        real_rows.append(bench_real(label, model, conds, side=arch_side, steps=arch_steps, repeats=args.repeats,
                                    call_node=call_node))
        if arch == "SD1.5":
            unet, big_conds = model, conds
        del model
    print(f"\n{host.label}, torch {torch.__version__}, "
          f"{'GPU ' + torch.cuda.get_device_name() if args.gpu else 'CPU, threads=' + str(torch.get_num_threads())}")
    _table(rows, ["model", "size/steps", "plain s", "capture s", "inject+target s", "capture+target", "re-edit",
                  "re-edit (cpu)", "record MiB/step", "replay edit", "replay capture+edit", "replay KiB",
                  "plain spread"])
    print("\nReal images (DDIM Invert at cfg 1, record to 0.8, edit at cfg 7.5; check = reconstruction check "
          "without VAE decode):")
    _table(real_rows, ["model", "size/steps", "plain s", "invert s", "inject+target s", "invert+edit",
                       "invert+check+edit", "re-edit", "plain spread"])
    if not args.gpu and not args.archs_only:
        print(f"official DDIM schedule vs ddim_uniform: {closeness}")
    print_peak_vram()
    if not args.archs_only:
        memory_report(host, call_node, unet, big_conds)
    return 0


def sweep_report(args, host, call_node) -> int:
    """One batched run with 8 settings against 8 single edits and plain batches (tiny SD1.5, 10 steps)."""
    import torch

    from fpe_headless.comfy import tiny_models

    tiny_models.write_checkpoint(tiny_models.SD15_TINY, host.workdir / "models" / "checkpoints" / "tiny.safetensors")
    model, clip, _ = call_node("CheckpointLoaderSimple", ckpt_name="tiny.safetensors")[:3]
    src, tgt, neg = (call_node("CLIPTextEncode", clip=clip, text=t)[0] for t in
                     ("a photo of green ducks walking on street", "a photo of rubber ducks walking on street", ""))
    steps = args.steps or 10
    sweep = "layers=official,all; end=0.2,0.4,0.6,0.8"
    singles = [{"layers": layers, "end": end} for layers in ("official", "all") for end in (0.2, 0.4, 0.6, 0.8)]

    def sampler(patched, latent):
        return call_node("KSampler", model=patched, seed=42, steps=steps, cfg=7.5, sampler_name="ddim",
                         scheduler="ddim_uniform", positive=tgt, negative=neg, latent_image=latent, denoise=1.0)

    def inject(source, sweep_text="", **settings):
        values = {"layers": "official", "custom_layers": "", "start": 0.0, "end": 0.8, "branches": "cond only",
                  **settings}
        return call_node("FPESelfAttnInject", model=model, fpe_source=source, sweep=sweep_text, **values)

    rows = []
    for side in (args.side or 64, 2 * (args.side or 64)):
        empty = {"samples": torch.zeros(1, 4, side // 8, side // 8)}
        for storage in ("auto", "replay"):
            source = call_node("FPESourceCapture", model=model, seed=42, steps=steps, cfg=7.5, sampler_name="ddim",
                               scheduler="ddim_uniform", positive=src, negative=neg, latent_image=empty, denoise=1.0,
                               store_layers="all", store_custom_layers="", store_end=0.8, store_rows="cond",
                               storage=storage, precision="exact")[1]
            patched, labels = inject(source, sweep)
            batch = call_node("FPESweepLatent", latent=empty, sweep_labels=labels)[0]
            models = [inject(source, **setting)[0] for setting in singles]
            sampler(model, empty)  # warm-up
            t_sweep = _timed(lambda p=patched, b=batch: sampler(p, b), args.repeats)[0]
            t_batch = _timed(lambda b=batch: sampler(model, b), args.repeats)[0]
            t_singles = _timed(lambda ms=models, e=empty: [sampler(m, e) for m in ms], 1)[0]
            rows.append([f"tiny SD1.5, {storage}", f"{side}px/{steps}", f"{t_sweep:.2f}", f"{t_batch:.2f}",
                         f"{t_singles:.2f}", f"{t_singles / t_sweep:.2f}x"])
    print(f"\n{host.label}, torch {torch.__version__}, CPU, threads={torch.get_num_threads()}")
    print(f"Settings sweep '{sweep}' (8 images, one batched run) vs a plain batch of 8 and 8 single edits:")
    _table(rows, ["source", "size/steps", "sweep of 8 s", "plain batch of 8 s", "8 single edits s",
                  "singles / sweep"])
    return 0


def bench_record(label, model, conds, *, side, steps, repeats, call_node):
    """Plain sampling vs sampling through FPE Attention Record (cross all + self official, and cross only),
    the record's bytes, and the picture nodes' times on that record."""
    import torch

    src, tgt, _, neg = conds
    latent = {"samples": torch.zeros(1, 4, side // 8, side // 8)}
    common = dict(seed=42, steps=steps, cfg=7.5, sampler_name="euler", scheduler="normal", positive=tgt,
                  negative=neg, latent_image=latent, denoise=1.0)

    def recording(self_layers):
        return call_node("FPEAttentionRecord", model=model, cross_layers="all", cross_custom_layers="",
                         self_layers=self_layers, self_custom_layers="", start_percent=0.0, end_percent=1.0,
                         rows="cond", image=0)

    call_node("KSampler", model=model, **common)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "both": [], "cross": []}
    record = samples = None
    for _ in range(repeats):
        times["plain"].append(_timed(lambda: call_node("KSampler", model=model, **common), 1, f"{label}: plain")[0])
        patched, record = recording("official")
        t, (samples,) = _timed(lambda p=patched: call_node("KSampler", model=p, **common), 1, f"{label}: record")
        times["both"].append(t)
        patched, _ = recording("none")
        times["cross"].append(_timed(lambda p=patched: call_node("KSampler", model=p, **common), 1)[0])
    t_plain, t_both, t_cross = (min(times[k]) for k in times)
    components = {}
    for method in ("randomized", "full"):
        components[method] = _timed(lambda m=method: call_node(
            "FPESelfAttnComponents", fpe_record=record, samples=samples, layers="", components=6, method=m), 1)[0]
    return [label, f"{side}px/{steps}", f"{t_plain:.2f}", f"{t_both:.2f} ({t_both / t_plain:.2f}x)",
            f"{t_cross:.2f} ({t_cross / t_plain:.2f}x)", f"{record.nbytes() / 2**20:.1f}",
            f"{components['randomized']:.2f}", f"{components['full']:.2f}"]


def bench_rows(args, host, call_node, bench, cpu_steps: int) -> list:
    """``bench``'s row for the tiny model (CPU only, 256 px, 10 steps) and each ``--archs`` UNet (random
    weights: 256 px and ``cpu_steps`` on a CPU, 512 px / 50 steps on a GPU, SDXL 1024 px there)."""
    import torch

    from fpe_headless.comfy import tiny_models

    rows = []
    if not args.gpu:
        tiny_models.write_checkpoint(tiny_models.SD15_TINY, host.workdir / "models" / "checkpoints" / "tiny.safetensors")
        model, clip, _ = call_node("CheckpointLoaderSimple", ckpt_name="tiny.safetensors")[:3]
        conds = [call_node("CLIPTextEncode", clip=clip, text=t)[0] for t in
                 ("a photo of green ducks walking on street", "a photo of rubber ducks walking on street",
                  "a photo of wooden ducks walking on street", "")]
        rows.append(bench("tiny SD1.5 layout", model, conds, side=256, steps=args.steps or 10,
                          repeats=args.repeats, call_node=call_node))
    gen = torch.Generator().manual_seed(0)
    side, steps = (512, 50) if args.gpu else (256, cpu_steps)
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        dtype = torch.bfloat16 if arch == "SDXL" and not args.gpu else None
        model = full_unet(arch, dtype)
        label = f"{arch} UNet (random, {str(model.model.get_dtype()).replace('torch.', '')})"
        arch_side = args.side or (1024 if arch == "SDXL" and args.gpu else side)
        rows.append(bench(label, model, random_conds(arch, gen), side=arch_side, steps=args.steps or steps,
                          repeats=args.repeats, call_node=call_node))
        del model
    print(f"\n{host.label}, torch {torch.__version__}, "
          f"{'GPU ' + torch.cuda.get_device_name() if args.gpu else 'CPU, threads=' + str(torch.get_num_threads())}")
    return rows


def record_report(args, host, call_node) -> int:
    rows = bench_rows(args, host, call_node, bench_record, cpu_steps=4)
    print("FPE Attention Record (cross 'all', self 'official', cond row, every step) vs plain sampling (euler, cfg 7.5); "
          "FPE Self-Attn Components (6 per token grid) on that record:")
    _table(rows, ["model", "size/steps", "plain s", "record cross+self s", "record cross s", "record MiB",
                  "components randomized s", "components full s"])
    print_peak_vram()
    return 0


def nulltext_report(args, host, call_node) -> int:
    rows = bench_rows(args, host, call_node, bench_nulltext, cpu_steps=3)
    print("Null-text inversion (official: cfg 7.5, up to 10 Adam iterations per step, early stop 1e-5 + i*2e-5) "
          "vs FPE DDIM Invert (cfg 1, recording to 0.8) and a plain generation (cfg 7.5):")
    _table(rows, ["model", "size/steps", "plain s", "DDIM Invert s", "Null-Text Invert s", "vs DDIM Invert",
                  "optimisation passes", "edit after it"])
    print_peak_vram()
    return 0


def memory_report(host, call_node, unet=None, conds=None) -> int:
    """Capture sizes at 512 px, and how fast an absurd capture is refused."""
    import torch

    if unet is None:
        gen = torch.Generator().manual_seed(0)
        conds = [[[torch.randn(1, 77, 768, generator=gen), {}]] for _ in range(4)]
        unet = full_sd15_unet()
    seconds, message = refusal(unet, conds, call_node)
    print(f"absurd capture (SD1.5 UNet, 512 px, 10000 euler steps, fp16, 16 GB RAM free): refused in "
          f"{seconds:.2f} s: {message[:170]}")
    for precision in ("exact", "fp16"):
        mib, n_layers = capture_bytes_512(unet, conds, call_node, precision)
        print(f"capture at 512 px, official layers ({n_layers}), precision {precision}: {mib:.2f} MiB per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
