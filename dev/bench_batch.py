"""Benchmark of ``fpe batch``: items per minute in this process vs one and two local ComfyUI servers, and
what a shared source saves (27 targets of one source vs 27 edits of 27 sources).

    bash dev/bench.sh --batch                       # tiny SD1.5 model, 128 px, 8 steps, 0/1/2 servers
    bash dev/bench.sh --batch --servers 0 --side 256

Each server is a fresh copy of the host with the pack installed as ComfyUI-Manager does (the browser
test's ``ComfyServer``), on loopback, with the tiny checkpoint. Server start-up is not timed; each
batch is timed from its first job to its last result, in a fresh batch folder, and the source's cost is
in it (the servers' caches are warmed with another prompt first so model loading is not). Prints one
table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]


def one_source(n: int):
    from fpe_headless.batch.datasets import car_fake_edit

    return car_fake_edit()[:n]  # 'a red car' -> 27 other colours


def many_sources(n: int):
    from fpe_headless.batch.datasets import car_fake_edit

    items, seen = [], set()
    for item in car_fake_edit():  # the first edit of each source colour
        if item.source_prompt not in seen:
            seen.add(item.source_prompt)
            items.append(item)
    return items[:n]


def timed_batch(items, settings, runner, folder: Path) -> float:
    from fpe_headless.batch import batch

    started = time.perf_counter()
    outcome = batch.run_batch(items, settings, folder, runner, say=lambda s: None,
                              progress_stream=open(os.devnull, "w"))
    elapsed = time.perf_counter() - started
    if outcome.failed:
        raise SystemExit(f"benchmark batch failed: {outcome.failed[:3]}")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=128, help="image size (px)")
    parser.add_argument("--steps", type=int, default=8, help="steps per item")
    parser.add_argument("--items", type=int, default=27, help="items per batch (the paper's 27 targets per colour)")
    parser.add_argument("--servers", default="0,1,2", help="which runs: 0 = in-process, N = N local servers")
    args = parser.parse_args(argv)
    host_path = os.environ.get("FPE_COMFYUI_HOST") or os.environ.get("COMFYUI_PATH")
    if not host_path:
        parser.error("no ComfyUI: run through `bash dev/bench.sh --batch`, or set COMFYUI_PATH")

    from fpe_harness import host as host_mod
    from fpe_headless.batch.batch import BatchSettings
    from fpe_headless.batch.datasets import EditItem
    from fpe_headless.comfy import tiny_models
    from fpe_headless.comfy.jobs import InProcessRunner

    work = Path(tempfile.mkdtemp(prefix="fpe-bench-batch-"))
    host = host_mod.boot(Path(host_path), work / "host", cpu=True)
    tiny_models.register_tiny_model_configs(work / "tiny_configs")
    ckpt = work / "host" / "models" / "checkpoints" / "tiny_sd15.safetensors"
    tiny_models.write_checkpoint(tiny_models.SD15_TINY, ckpt)
    import comfy.utils
    import torch

    comfy.utils.PROGRESS_BAR_ENABLED = False
    settings = BatchSettings(checkpoint=ckpt.name, steps=args.steps, size=args.side, dataset="bench")
    runs = [int(v) for v in args.servers.split(",") if v.strip()]
    rows = []
    for count in runs:
        with ExitStack() as stack:
            if count == 0:
                runner, label = InProcessRunner(), "in-process"
            else:
                from fpe_harness.comfy_server import ComfyServer
                from fpe_headless.comfy.remote import RemoteRunner

                servers = [ComfyServer(host.path, work / f"server{count}-{i}", [ckpt]) for i in range(count)]
                for server in servers:
                    stack.enter_context(server)
                runner = RemoteRunner([s.url for s in servers], say=None)
                label = f"{count} server{'s' if count > 1 else ''}"
            # the model loaded everywhere first, with sources the timed batches do not have
            warm = [EditItem(f"warm{i}", f"a photo of warm thing {i}", "a car") for i in range(2 * max(count, 1))]
            timed_batch(warm, settings, runner, work / f"warm-{count}")
            many = many_sources(args.items)
            t_one = timed_batch(one_source(args.items), settings, runner, work / f"one-{count}")
            t_many = timed_batch(many, settings, runner, work / f"many-{count}")
            rows.append((label, args.items / t_one * 60, args.items / t_many * 60, t_one / args.items,
                         t_many / args.items))
    print(f"\n{host.label}, torch {torch.__version__}, CPU, threads={torch.get_num_threads()} per process, "
          f"{os.cpu_count()} cores; tiny SD1.5 model, {args.side} px, {args.steps} steps, {args.items} items")
    header = ["runner", "items/min (1 source x 27)", "items/min (27 sources)", "s/item shared source",
              "s/item own source", "shared / own"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, one, many, s_one, s_many in rows:
        print(f"| {label} | {one:.1f} | {many:.1f} | {s_one:.2f} | {s_many:.2f} | {s_one / s_many:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
