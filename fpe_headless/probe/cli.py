"""``fpe probe list|build|train|report``: the paper's probing analysis (§3.3–3.6) on the user's checkpoint.

build (``build``, ``store``) runs the prompts through ComfyUI and stores the maps; train (``train``) fits a
two-layer MLP per layer; report (``report``) lays the results out like the paper's tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from pathlib import Path

from ..comfy.host import make_workdir, remove_workdir
from ..comfy.jobs import InProcessRunner
from ..demo.checkpoint import DEMO_CHECKPOINT
from ..fingerprint import file_fingerprint
from ..shared import (
    DEMO_SIZE,
    DEMO_STEPS,
    TINY_STEPS,
    HelpFormatter,
    UserError,
    check_checkpoint,
    check_numbers,
    check_out,
    check_out_file,
    comfyui_folder,
    start_host,
    tiny_checkpoint_name,
    uses_demo_model,
)
from . import build as probing

TINY_PROBE_SIZE = 128  # the tiny random model: small maps, quick


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter,
                                description="Probing analysis (paper §3.3-3.6, supplement §7.1, §8): build the "
                                            "attention-map datasets through ComfyUI, train a probe per layer, report "
                                            "tables like the paper's.")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the probing sets with their sizes")

    b = sub.add_parser("build", help="generate a set's prompts and store the attention maps",
                       formatter_class=HelpFormatter)
    b.add_argument("set", choices=sorted(probing.SETS), help="which set (see `list`)")
    b.add_argument("--out", type=Path, metavar="DIR", help="the dataset folder; default: fpe_probe_<set>")
    b.add_argument("--checkpoint", type=Path, metavar="FILE",
                   help="your SD1.x/SD2.x/SDXL checkpoint; with --server its name on those servers; default: the "
                        "demo model (trained on drawn shapes: the demo-colour sets), or where its file is not there a "
                        "tiny random model (meaningless maps)")
    b.add_argument("--small", action="store_true", help="a tenth of the seeds (about 200 samples): a quick look")
    b.add_argument("--seeds", type=int, metavar="N", help="seeds per prompt; default: the paper's (200 per class)")
    b.add_argument("--limit", type=int, metavar="N", help="only the first N samples (classes interleaved)")
    b.add_argument("--seed", type=int, default=0, metavar="N", help="base of the per-sample seeds")
    b.add_argument("--steps", type=int, metavar="N",
                   help=f"default 50 (DDIM, as the official code); without --checkpoint {DEMO_STEPS} for the demo "
                        f"model, {TINY_STEPS} for the tiny random one")
    b.add_argument("--cfg", type=float, default=7.5, metavar="X", help="guidance")
    b.add_argument("--sampler", default="ddim", metavar="NAME", help="ComfyUI sampler name")
    b.add_argument("--scheduler", default="ddim_uniform", metavar="NAME", help="ComfyUI scheduler name")
    b.add_argument("--size", type=int, metavar="PX",
                   help=f"image side; default 512 (give 1024 for SDXL, 768 for SD2.x 768-v); without --checkpoint "
                        f"{DEMO_SIZE} for the demo model, {TINY_PROBE_SIZE} for the tiny random one")
    b.add_argument("--self-side", type=int, default=256, metavar="N",
                   help="self-attention maps larger than N x N are area-averaged to N x N (the supplement's 256)")
    b.add_argument("--words", type=Path, metavar="FILE",
                   help="color-object: your object list, one per line (the supplement prints 35 of its 100)")
    b.add_argument("--templates", type=Path, metavar="FILE",
                   help="complex: your templates, one per line with {} for the colour (the supplement prints 6 of 12)")
    b.add_argument("--server", action="append", default=[], metavar="URL",
                   help="run on ComfyUI servers (repeat), as fpe batch does; default: in this process")
    b.add_argument("--timeout", type=float, default=1800.0, metavar="S", help="--server: one sample's time limit")
    b.add_argument("--retries", type=int, default=2, metavar="N", help="--server: moves after a server failed")
    b.add_argument("--comfyui", type=Path, metavar="DIR",
                   help="the ComfyUI to run; default: COMFYUI_PATH, or the ComfyUI this pack is installed in")
    b.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is there")

    t = sub.add_parser("train", help="train and test a probe per layer", formatter_class=HelpFormatter)
    t.add_argument("data", type=Path, help="a dataset folder from `build`")
    t.add_argument("--test", type=Path, metavar="DIR",
                   help="out of distribution: train on all of DATA, test on this set (same classes and layers), "
                        "e.g. color-car -> color-object; default: a held-out split of DATA")
    t.add_argument("--hidden", type=int, default=128, metavar="N", help="hidden units of the two-layer MLP")
    t.add_argument("--epochs", type=int, default=30, metavar="N", help="training epochs per layer")
    t.add_argument("--lr", type=float, default=1e-3, metavar="X", help="Adam learning rate")
    t.add_argument("--batch-size", type=int, default=64, metavar="N", help="minibatch size")
    t.add_argument("--test-fraction", type=float, default=0.2, metavar="X",
                   help="stratified test split (the paper's tables imply 20 %%: 40 of 200 per class)")
    t.add_argument("--seed", type=int, default=0, metavar="N", help="split, initialisation and batch order")
    t.add_argument("--device", default="cpu", metavar="DEV", help="cpu, cuda, cuda:1")
    t.add_argument("--shuffled-labels", action="store_true", help="the control: labels permuted (chance expected)")
    t.add_argument("--out", type=Path, metavar="FILE", help="the result JSON; default: DATA/probe_result.json "
                                                            "(DATA/probe_result_ood_<TEST>.json with --test)")

    r = sub.add_parser("report", help="tables like the paper's, a heatmap, cross vs self",
                       formatter_class=HelpFormatter)
    r.add_argument("results", nargs="+", type=Path, metavar="RESULT", help="result JSON files from `train`")
    r.add_argument("--out", type=Path, default=Path("fpe_probe_report"), metavar="DIR", help="where the report goes")
    r.add_argument("--layers", metavar="LIST", help="only these layer numbers in the tables, e.g. 3,6,9,10,12,14,16 "
                                                    "(Tables 1-3); default: every layer")
    r.add_argument("--classes", metavar="LIST", help="only these classes in the tables, e.g. dog,horse,sheep; "
                                                     "default: every class")
    return p


def _lines(path: Path | None, what: str) -> tuple[str, ...] | None:
    if path is None:
        return None
    try:
        lines = tuple(s for line in path.read_text(encoding="utf-8").splitlines() if (s := line.strip()))
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:  # a Latin-1 list, or not text at all (a PNG)
        raise UserError(f"{what} {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        "give a UTF-8 text file, one entry a line") from None
    if not lines:
        raise UserError(f"{what} {path}: no lines in it")
    return lines


def run_list() -> int:
    try:
        for name, s in probing.SETS.items():
            paper = len(probing.plan(s))
            small = len(probing.plan(s, small=True))
            print(f"{name:17} {s.kind:5} {paper:5} samples ({small} with --small)  {s.about}", flush=True)
    except BrokenPipeError:  # `fpe probe list | head`
        sys.stderr.close()
    return 0


def _check_weights(out: Path, extra: dict) -> None:
    """A resume with other weights under the checkpoint's name is refused (probe.json's fingerprint)."""
    path = out / "probe.json"
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: empty or cut ({type(exc).__name__}); the samples in {out} cannot be checked "
                        f"against these settings: use another --out, or delete {out} to build it again") from None
    then, now = (stored.get("_checkpoint_content") if isinstance(stored, dict) else None), extra["_checkpoint_content"]
    if then and now and then != now:
        raise UserError(f"--out {out} was built with other weights of the same name: {stored.get('_checkpoint_file')} "
                        f"({then}) then, {extra['_checkpoint_file']} ({now}) now; use another --out, or delete {out} "
                        "to build it again")


def build_defaults(checkpoint: Path | None, remote: list) -> tuple[int, int]:
    """(steps, size) where the command line gives none: the official 50 steps at 512 px for a checkpoint;
    without one the demo model's (DEMO_STEPS, DEMO_SIZE), or the tiny random model's (TINY_STEPS,
    TINY_PROBE_SIZE) where the demo model's file is not there."""
    if checkpoint is not None or remote:
        return 50, 512
    return (DEMO_STEPS, DEMO_SIZE) if uses_demo_model(None) else (TINY_STEPS, TINY_PROBE_SIZE)


def run_build(args, prog: str) -> int:
    check_numbers(argparse.Namespace(steps=args.steps, seed=args.seed, cfg=args.cfg, invert_cfg=None,
                                     size=args.size))
    for flag, value in (("--seeds", args.seeds), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be 1 or more")
    if not (math.isfinite(args.timeout) and args.timeout > 0):  # argparse's float takes nan and inf
        raise UserError(f"--timeout {args.timeout}: must be a number of seconds above 0")
    if not 8 <= args.self_side <= 4096:
        raise UserError(f"--self-side {args.self_side}: must be 8 to 4096")
    probe_set = probing.SETS[args.set]
    if args.templates is not None and args.set not in ("complex", "self-complex"):
        raise UserError(f"--templates: only the complex and self-complex sets take templates, not {args.set}")
    if args.words is not None and args.set != "color-object":
        raise UserError(f"--words: only the color-object set takes an object list, not {args.set}")
    templates = _lines(args.templates, "--templates")
    for line in templates or ():
        if line.count("{}") != 1 or line.replace("{}", "").count("{") or line.replace("{}", "").count("}"):
            raise UserError(f"--templates: {line!r}: each line needs exactly one {{}} (where the colour goes) and "
                            "no other braces")
    templates = tuple(t.replace("{}", "{c}") for t in templates) if templates else None
    objects = _lines(args.words, "--words")
    clash = [o for o in objects or () if set(o.lower().split()) & set(probe_set.classes)]
    if clash:
        raise UserError(f"--words: {clash[0]!r} holds a colour word; its tokens would mix with the colour's")
    samples = probing.plan(probe_set, small=args.small, seeds=args.seeds, base_seed=args.seed, objects=objects,
                           templates=templates)[:args.limit]
    out = args.out or Path(f"fpe_probe_{args.set}")
    remote = []
    if args.server:
        from ..comfy.remote import RemoteError, check_servers, server_url  # imports aiohttp: only with --server

        if args.checkpoint is None:
            raise UserError("--server needs --checkpoint NAME: the checkpoint file those servers have")
        try:  # a malformed URL is named before anything connects
            remote = list(dict.fromkeys(server_url(u) for u in args.server))
            check_servers(remote, args.checkpoint.as_posix(), node="FPESaveAttentionMaps")
        except RemoteError as exc:
            raise UserError(str(exc)) from None
    checkpoint = None if remote or args.checkpoint is None else check_checkpoint(args.checkpoint)
    steps, size = build_defaults(checkpoint, remote)
    settings = probing.BuildSettings(
        checkpoint=args.checkpoint.as_posix() if remote else checkpoint.name if checkpoint else tiny_checkpoint_name(False),
        steps=args.steps or steps, cfg=args.cfg, sampler=args.sampler,
        scheduler=args.scheduler, size=args.size or size, self_side=args.self_side)
    # the demo model's file is fingerprinted too: a retraining replaces it under the same name
    weights = checkpoint or (DEMO_CHECKPOINT if not remote and uses_demo_model(None) else None)
    extra = {"base_seed": args.seed, "objects": list(objects or probe_set.objects),
             "templates": list(templates or probe_set.templates),
             # the weights by content ("_": bookkeeping a folder made before lacks); --server: the name only
             "_checkpoint_file": str(weights) if weights else None,
             "_checkpoint_content": file_fingerprint(weights) if weights else None}
    _check_weights(out, extra)
    try:  # a folder built with other settings is refused before ComfyUI starts
        probing.check_resume(out, probing.build_meta(probe_set, samples, settings, extra))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    comfyui = comfyui_folder(args)
    workdir = make_workdir("probe", print)  # and the work folders killed runs left go
    try:
        start_host(comfyui, workdir, checkpoint, cpu=args.cpu or bool(remote), command=f"{prog} {args.set}",
                   demo=not remote)
        import comfy.utils  # ComfyUI's: importable once start_host booted it

        comfy.utils.PROGRESS_BAR_ENABLED = False
        if remote:
            from ..comfy.remote import RemoteRunner  # imports aiohttp: only with --server

            runner = RemoteRunner(remote, timeout=args.timeout, retries=args.retries, say=print)
        else:
            runner = InProcessRunner()
        try:
            outcome = probing.build(probe_set, samples, settings, out, runner, extra_meta=extra,
                                    say=lambda line: print(line, file=sys.stderr, flush=True))
        except ValueError as exc:
            raise UserError(str(exc)) from None
    finally:
        remove_workdir(workdir)
    size = sum(f.stat().st_size for f in (out / "shards").glob("*.safetensors")) if (out / "shards").is_dir() else 0
    print(f"{len(samples) - len(outcome.failed)} of {len(samples)} samples stored ({len(outcome.ran)} now, "
          f"{len(outcome.failed)} failed now) in {out}: {size / 2**20:.1f} MiB")
    return 1 if outcome.failed else 0


def run_train(args) -> int:
    # store and train import torch: not for --help, `list` or a mistake in `build`'s options
    from .store import ProbeData
    from .train import ProbeSettings, probe

    # numbers first: no folder is read for a mistyped option
    if not 0 < args.test_fraction < 1:
        raise UserError(f"--test-fraction {args.test_fraction}: must be between 0 and 1")
    if not (math.isfinite(args.lr) and args.lr > 0):  # argparse's float takes nan and inf
        raise UserError(f"--lr {args.lr}: must be a number above 0 (default 0.001)")
    for flag, value in (("--hidden", args.hidden), ("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be 1 or more")

    def open_data(path: Path, flag: str) -> ProbeData:
        if not (path / "probe.json").is_file():
            raise UserError(f"{flag} {path}: not a probe dataset folder (no probe.json); build one with "
                            "`fpe probe build`")
        data = ProbeData(path)
        if len(data) == 0:
            raise UserError(f"{flag} {path}: holds no finished samples yet")
        return data

    data = open_data(args.data, "DATA")
    if args.test is not None and args.test.resolve() == args.data.resolve():
        raise UserError("--test: the same folder as DATA; give another set (e.g. color-object for color-car), or "
                        "leave --test out for a held-out split")
    test = open_data(args.test, "--test") if args.test else None
    name = "probe_result" + (f"_ood_{args.test.name}" if args.test else "") + (
        "_shuffled" if args.shuffled_labels else "")
    out = check_out_file(args.out, "--out", f"{name}.json") if args.out else args.data / f"{name}.json"  # before training
    try:
        import torch  # here with store and train, not for --help

        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {args.device}: no CUDA GPU here; use --device cpu")
    except (RuntimeError, ValueError):
        raise UserError(f"--device {args.device}: not a torch device (cpu, cuda, cuda:1)") from None
    settings = ProbeSettings(hidden=args.hidden, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                             test_fraction=args.test_fraction, seed=args.seed, device=args.device,
                             shuffled_labels=args.shuffled_labels)

    def progress(done, total, layer):
        print(f"layer {done}/{total} ({layer}) done", file=sys.stderr, flush=True)

    try:
        result = probe(data, settings, test=test, progress=progress)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    result.save(out)
    from .report import default_title, result_markdown  # imports train (torch), as above

    print(result_markdown(default_title(result), result))
    print(f"result: {out}")
    return 0


def comparable(cross, self_) -> bool:
    """A cross and a self result the verdict may compare: the same prompt family (color-car and
    self-color-car), classes and generation settings; neither a control nor out of distribution."""
    a, b = cross.dataset or {}, self_.dataset or {}
    return (a.get("kind") == "cross" and b.get("kind") == "self" and not cross.ood and not self_.ood
            and not cross.settings.shuffled_labels and not self_.settings.shuffled_labels
            and str(b.get("set", "")).removeprefix("self-") == a.get("set") and cross.classes == self_.classes
            and all(a.get(k) == b.get(k) for k in ("checkpoint", "size", "steps", "sampler", "scheduler", "cfg")))


def _selection(text: str | None, flag: str, parse):
    if text is None:
        return None
    try:
        return [parse(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text}: a comma separated list") from None


def run_report(args) -> int:
    # report and train import torch: not for --help, `list` or the other actions
    from .report import accuracy_heatmap, default_title, summary_markdown, tables_markdown, write_csv
    from .train import ProbeResult

    results = []
    for path in args.results:
        try:
            results.append((default_title(r := ProbeResult.load(path)), r))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a JSON list: TypeError
            raise UserError(f"{path}: not a result of `fpe probe train` ({type(exc).__name__}); give the JSON file "
                            "`fpe probe train` wrote (DATA/probe_result*.json)") from None
    layers = _selection(args.layers, "--layers", int)
    classes = _selection(args.classes, "--classes", str)
    for _, result in results:
        if layers and not all(1 <= k <= len(result.layers) for k in layers):
            raise UserError(f"--layers {args.layers}: the results have layers 1 to {len(result.layers)}")
    if classes and not any(c in r.classes for _, r in results for c in classes):
        raise UserError(f"--classes {args.classes}: none is a class of these results")
    check_out(args.out, "--out")  # a file or an unwritable place: told before anything is written
    text = tables_markdown(results, [k - 1 for k in layers] if layers else None, classes)
    for i, (_, result) in enumerate(results, start=1):
        write_csv(result, args.out / f"table_{i}.csv")
    accuracy_heatmap(results, args.out / "accuracy_heatmap.png")
    pairs = [(c, s) for _, c in results for _, s in results if comparable(c, s)]
    for c, s in pairs:
        text += "\n\n" + summary_markdown(c, s)
    if not pairs:
        text += ("\n\nNo cross-vs-self comparison: give a cross and a self result of one prompt family (e.g. "
                 "color-car and self-color-car) built with the same checkpoint and settings.\n")
    (args.out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"\nreport: {args.out / 'report.md'}, table_*.csv (in the order given), accuracy_heatmap.png")
    return 0


def main(argv: list[str], prog: str) -> int:
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.simplefilter("ignore", FutureWarning)
    try:
        if args.action == "list":
            return run_list()
        if args.action == "build":
            return run_build(args, f"{prog} build")
        if args.action == "train":
            return run_train(args)
        return run_report(args)
    except UserError as exc:
        print(f"{prog} {args.action}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog} {args.action}: interrupted; what finished is stored: run the same command to go on",
              file=sys.stderr)
        return 130
