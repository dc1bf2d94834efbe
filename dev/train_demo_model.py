"""Train the demo model: an SD1.x-layout text-to-image model of the drawn world, on CPU, deterministically.

    source dev/env.sh && python dev/train_demo_model.py            # ~45 min on 2 cores, writes the checkpoint
    source dev/env.sh && python dev/train_demo_model.py --probe    # speeds only, a minute

What it trains and why (docs/demo-model.md has the measurements):
- the UNet: the tiny SD1.5 layout the tests use (4 levels, 16 self-attention layers with SD1.5's keys),
  from its seeded initialisation, ε-prediction on SD1.x's 1000-step schedule, 10 % empty captions so
  classifier-free guidance works;
- the text encoder: not trained. It is the tiny seeded CLIP of the test models (SD1 tokenizer, full
  vocabulary); every caption of the grammar is encoded once through ComfyUI's own CLIPTextEncode, so
  training sees exactly the conditioning a workflow gives the model;
- the VAE: TAESD layout, hand-set (fpe_headless/demo/vae.py), then its decoder is fine-tuned to draw
  sharp edges from the 16 x 16 latent grid.
Everything is seeded and runs on one thread order (torch deterministic algorithms), so a rerun on the
same torch gives the same file.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402

from fpe_headless.comfy import host as host_mod  # noqa: E402
from fpe_headless.comfy import tiny_models  # noqa: E402
from fpe_headless.demo import vae, world  # noqa: E402
from fpe_headless.demo.checkpoint import DEMO_CHECKPOINT, DEMO_METADATA  # noqa: E402

# The tiny SD1.5 layout of the tests (same keys, detected as it) with the two deepest levels 96 wide
# instead of 128, so the fp16 file stays under 25 MB: 5.5 M UNet parameters.
DEMO_SPEC = tiny_models.TinySpec(name="demo_world", unet_config=dict(tiny_models.SD15_TINY.unet_config, channel_mult=[1, 2, 3, 3]),
                                 match_config=tiny_models.SD15_TINY.match_config, clip="sd1")

SEED = 20260604


def all_captions() -> list[str]:
    single = [world.caption([world.Thing(c, s, (0, 0, 1, 1))], g)
              for c in world.COLOURS for s in world.SHAPES for g in world.GROUNDS]
    pairs = [world.caption([world.Thing(c1, s1, (0, 0, 1, 1)), world.Thing(c2, s2, (0, 0, 1, 1))], g)
             for c1 in world.COLOURS for s1 in world.SHAPES for c2 in world.COLOURS for s2 in world.SHAPES
             for g in world.GROUNDS]
    return [""] + single + pairs


def sd1_schedule() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def load(workdir: Path, sd: dict[str, torch.Tensor]):
    """Write ``sd`` as a checkpoint and load it through ComfyUI's CheckpointLoaderSimple."""
    import nodes  # ComfyUI's: importable once host.boot put it on sys.path

    name = "demo_training.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(workdir / "models" / "checkpoints" / name))
    with torch.no_grad():  # as the executor loads it
        return nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]


def initial_state_dict() -> dict[str, torch.Tensor]:
    sd = tiny_models._fill(tiny_models._unet_shapes(DEMO_SPEC), "model.diffusion_model.", scales={"none": 1.0})
    # diffusion practice: the UNet's last convolution starts at zero, so the first predictions are 0
    for key in ("model.diffusion_model.out.2.weight", "model.diffusion_model.out.2.bias"):
        sd[key] = torch.zeros_like(sd[key])
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict(tiny_models._taesd_shapes()).items()})
    sd.update(tiny_models._fill(tiny_models._clip_shapes(tiny_models.CLIP_L_TINY), "cond_stage_model.transformer."))
    return {k: v for k, v in sd.items() if not k.endswith("position_ids")}


def render_pool(count: int, seed0: int, say) -> tuple[list[world.Scene], torch.Tensor]:
    started = time.monotonic()
    scenes, pictures = [], []
    for i in range(count):
        scene = world.random_scene(seed0 + i)
        scenes.append(scene)
        pictures.append(world.render(scene)[0])
        if (i + 1) % 5000 == 0:
            say(f"  drawn {i + 1}/{count} scenes ({time.monotonic() - started:.0f} s)")
    return scenes, torch.from_numpy(np.stack(pictures))  # uint8 N H W 3


def to_unit(pictures_uint8: torch.Tensor) -> torch.Tensor:
    return pictures_uint8.permute(0, 3, 1, 2).float() / 255.0


def encode_captions(clip, captions: list[str]) -> torch.Tensor:
    import nodes  # ComfyUI's

    encoder = nodes.CLIPTextEncode()
    out = []
    for text in captions:
        (conditioning,) = encoder.encode(clip, text)[:1]
        out.append(conditioning[0][0][0])
    return torch.stack(out)  # C 77 64


def train_unet(unet, latents, caption_ids, conds, steps: int, batch: int, say, log_every: int = 250, bf16: bool = False,
               snapshot=None, snapshot_every: int = 1000, min_snr: float = 5.0):
    alphas = sd1_schedule()
    gen = torch.Generator().manual_seed(SEED)
    params = [p for p in unet.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    warmup = 200
    curve, running, started = [], [], time.monotonic()
    unet.train()
    for step in range(1, steps + 1):
        lr = 1e-3 * min(1.0, step / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, latents.shape[0], (batch,), generator=gen)
        x0 = latents[idx]
        cond = conds[caption_ids[idx]]
        drop = torch.rand(batch, generator=gen) < 0.1
        cond = torch.where(drop.view(-1, 1, 1), conds[0].expand_as(cond), cond)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = unet(xt, timesteps=t.float(), context=cond, transformer_options={})
        loss_map = (pred.float() - noise) ** 2
        if min_snr > 0:
            # min-SNR-γ weighting (Hang et al. 2023): weight min(SNR, γ)/SNR, so the high-noise steps that
            # decide the colours and the layout get the effort. Plain ε MSE (--min-snr 0) was tried and drew
            # wrong colours and grounds far more often (docs/demo-model.md)
            snr = a / (1 - a)
            loss_map = torch.clamp(snr, max=min_snr) / snr * loss_map
        loss = loss_map.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params, strict=True):
                e.lerp_(p.detach(), 1 - decay)
        running.append(loss.item())
        if step % log_every == 0 or step == steps:
            mean = sum(running) / len(running)
            curve.append((step, mean))
            running = []
            elapsed = time.monotonic() - started
            say(f"  unet step {step}/{steps}: loss {mean:.4f}, lr {lr:.2e}, {elapsed / step:.2f} s/step, "
                f"{elapsed / 60:.1f} min")
        if snapshot is not None and step % snapshot_every == 0 and step < steps:
            snapshot({name: e for (name, _), e in zip(unet.named_parameters(), ema, strict=True)}, step)
    with torch.no_grad():
        for e, p in zip(ema, params, strict=True):
            p.copy_(e)
            p.requires_grad_(False)
    unet.eval()
    return curve


def train_decoder(decoder, pictures, steps: int, batch: int, say, crop: int = 64, log_every: int = 100):
    """Fine-tune the decoder on crops: latent from the closed-form encoder, target the drawn pixels."""
    gen = torch.Generator().manual_seed(SEED + 1)
    params = [p for p in decoder.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=3e-4)
    curve, running, started = [], [], time.monotonic()
    latent_crop = crop // 8
    for step in range(1, steps + 1):
        idx = torch.randint(0, pictures.shape[0], (batch,), generator=gen)
        ox, oy = (int(v) * 8 for v in torch.randint(0, (world.SIZE - crop) // 8 + 1, (2,), generator=gen))
        rgb = to_unit(pictures[idx])
        target = rgb[:, :, oy:oy + crop, ox:ox + crop]
        latent = vae.encode(rgb)[:, :, oy // 8:oy // 8 + latent_crop, ox // 8:ox // 8 + latent_crop]
        out = decoder(latent * vae.VAE_SCALE / vae.VAE_SCALE)  # ComfyUI passes latent / vae_scale * vae_scale
        loss = torch.nn.functional.l1_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if step % log_every == 0 or step == steps:
            mean = sum(running) / len(running)
            curve.append((step, mean))
            running = []
            say(f"  decoder step {step}/{steps}: L1 {mean:.4f}, {(time.monotonic() - started) / step:.2f} s/step")
    for p in params:
        p.requires_grad_(False)
    return curve


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--probe", action="store_true", help="time a few steps of each phase and stop")
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--decoder-steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--scenes", type=int, default=16000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--snapshot-every", type=int, default=1000, help="write the EMA so far beside --out every N steps")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the UNet (fast on CPUs with AMX)")
    p.add_argument("--min-snr", type=float, default=5.0, help="min-SNR-γ loss weighting (0: plain ε MSE)")
    p.add_argument("--out", type=Path, default=DEMO_CHECKPOINT)
    args = p.parse_args(argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    if args.probe:
        args.unet_steps, args.decoder_steps, args.scenes = 20, 10, 500

    host_path = os.environ.get("FPE_COMFYUI_HOST") or os.environ.get("COMFYUI_PATH")
    if not host_path:
        sys.exit("no ComfyUI host: `source dev/env.sh` first")
    workdir = Path(tempfile.mkdtemp(prefix="fpe-train-"))
    t0 = time.monotonic()
    try:
        host = host_mod.boot(Path(host_path).resolve(), workdir, quiet=True)
        torch.set_num_threads(args.threads)
        say(f"host: {host.label}; torch {torch.__version__}, {torch.get_num_threads()} threads")
        tiny_models.register_tiny_model_configs(workdir / "tiny_configs")
        sd = initial_state_dict()
        model, clip, first_vae = load(workdir, sd)

        say(f"drawing {args.scenes} scenes")
        scenes, pictures = render_pool(args.scenes, SEED, say)
        captions = all_captions()
        index = {c: i for i, c in enumerate(captions)}
        caption_ids = torch.tensor([index[s.caption] for s in scenes])
        with torch.no_grad():
            latents = torch.cat([vae.encode(to_unit(chunk)) for chunk in pictures.split(512)])
            # the hand-set TAESD must be the closed form: check through ComfyUI's own VAE.encode
            via_host = first_vae.encode(pictures[:8].float() / 255.0) * 0.18215
            gap = (via_host - latents[:8]).abs().max().item()
        say(f"latents: mean {latents.mean((0, 2, 3)).tolist()}, std {latents.std((0, 2, 3)).tolist()}; "
            f"host VAE vs closed form max |diff| {gap:.2e}")
        if gap > 1e-4:
            raise SystemExit("the hand-set TAESD encoder does not match its closed form")
        say(f"encoding {len(captions)} captions through CLIPTextEncode")
        with torch.no_grad():
            conds = encode_captions(clip, captions)

        unet = model.model.diffusion_model
        say(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters; training {args.unet_steps} steps")
        def snapshot(ema_weights, step):  # the EMA so far with the hand-set decoder, to look at while it trains
            path = args.out.with_name(args.out.stem + f"_step{step}.safetensors")
            part = dict(sd)
            part.update({"model.diffusion_model." + k: v for k, v in unet.state_dict().items()})
            part.update({"model.diffusion_model." + k: v for k, v in ema_weights.items()})
            safetensors.torch.save_file({k: v.detach().to(torch.float16).contiguous() for k, v in part.items()}, str(path))
            say(f"  snapshot {path.name}")

        unet_curve = train_unet(unet, latents, caption_ids, conds, args.unet_steps, args.batch, say,
                                log_every=5 if args.probe else 250, bf16=args.bf16,
                                snapshot=None if args.probe else snapshot, snapshot_every=args.snapshot_every,
                                min_snr=args.min_snr)
        decoder = first_vae.first_stage_model.taesd_decoder
        say(f"decoder fine-tune: {args.decoder_steps} steps")
        decoder_curve = train_decoder(decoder, pictures, args.decoder_steps, 8, say, log_every=5 if args.probe else 100)

        final = dict(sd)
        final.update({"model.diffusion_model." + k: v for k, v in unet.state_dict().items()})
        final.update({"first_stage_model.taesd_decoder." + k: v for k, v in decoder.state_dict().items()})
        final = {k: v.detach().to(torch.float16).contiguous() for k, v in final.items()}
        meta = dict(DEMO_METADATA, unet_steps=str(args.unet_steps), decoder_steps=str(args.decoder_steps),
                    unet_curve=" ".join(f"{s}:{v:.4f}" for s, v in unet_curve),
                    decoder_curve=" ".join(f"{s}:{v:.4f}" for s, v in decoder_curve),
                    minutes=f"{(time.monotonic() - t0) / 60:.1f}")
        if args.probe:
            say(f"probe done in {(time.monotonic() - t0):.0f} s (nothing written)")
            return 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(final, str(args.out), metadata=meta)
        say(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB) in {(time.monotonic() - t0) / 60:.1f} min")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
