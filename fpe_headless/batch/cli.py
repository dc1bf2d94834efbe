"""``fpe batch``, ``fpe eval`` and ``fpe datasets``: the command lines over ``batch`` (runs), ``report``
(results) and ``datasets`` (the paper's prompt-pair sets).

Every check that needs no ComfyUI (numbers, files, the dataset, the CLIP, DINO and LPIPS folders, the servers)
is made before ComfyUI starts or any item runs; a mistake is one line with the fix (exit status 2).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..comfy.host import make_workdir, remove_workdir
from ..comfy.jobs import InProcessRunner
from ..demo.checkpoint import DEMO_CHECKPOINT
from ..fingerprint import file_fingerprint
from ..shared import (
    DEMO_SIZE,
    DEMO_STEPS,
    TINY_MMDIT,
    TINY_SIZE,
    TINY_STEPS,
    HelpFormatter,
    UserError,
    check_checkpoint,
    check_numbers,
    check_out,
    check_out_file,
    comfyui_folder,
    mmdit_family,
    start_host,
    tiny_checkpoint_name,
    uses_demo_model,
)
from ..workflows import load_workflow_file, resolve_workflow
from . import batch, datasets, local, report
from .batch import BatchError, BatchSettings, Scoring

DEFAULT_TIMEOUT_S, DEFAULT_RETRIES = 1800.0, 2
DINO_HELP = ("a transformers ViT folder (facebook/dino-vitb8 saved locally with ViTModel.save_pretrained) for "
             "PIE-Bench's structure distance; default: none (the column is skipped)")
LPIPS_HELP = ("a folder with LPIPS' linear layers (squeeze.pth, alex.pth or vgg.pth from the lpips package or "
              "torchmetrics) and torchvision's checkpoint of that backbone (squeezenet1_1-*.pth, alexnet-*.pth, "
              "vgg16-*.pth) for PIE-Bench's background LPIPS (squeeze is PIE-Bench's); default: none (skipped)")


def batch_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description="Edit every item of a dataset with FPE through ComfyUI's real executor (in this process, or "
                    "on running ComfyUI servers with --server), then score the edits. A killed batch resumes "
                    "where it stopped when run again with the same --out.",
        epilog="Datasets: car-fake-edit, animals-park, demo-colours (the demo model's drawn world), a paper JSON file "
               "(`fpe datasets generate` writes the others, demo-real-edit with its drawn photos), PIE-Bench's "
               "mapping_file.json, or a CSV image,source_prompt,target_prompt. Without --checkpoint an SD1.x "
               "workflow runs the demo model (a small model trained on drawn shapes; try demo-colours), or a tiny "
               "random model with meaningless pictures where the demo model's file is not there. Exit status: 0 "
               "every item edited, 1 some items failed (see results.csv; a rerun retries them), 2 a mistake in the "
               "command or its files, 130 interrupted (a rerun goes on).")
    p.add_argument("dataset", help="a generated set's name or a dataset file")
    p.add_argument("--out", type=Path, metavar="DIR", help="the batch folder; default: fpe_batch_<dataset name>")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="the photos of a real-image dataset; default: the dataset file's folder (PIE-Bench: its "
                        "annotation_images/)")
    p.add_argument("--workflow", metavar="NAME_OR_FILE",
                   help="a UI-format FPE workflow; default: fpe_generated_edit, or fpe_real_image_edit for photos")
    p.add_argument("--checkpoint", type=Path, metavar="FILE",
                   help="your SD1.x/SD2.x/SDXL checkpoint; with --server the name of one those servers have; "
                        "default: the demo model (trained on drawn shapes; SDXL workflows, or where its file is not "
                        "there: a tiny random model, meaningless pictures)")
    p.add_argument("--steps", type=int, metavar="N",
                   help=f"default: the workflow's (50); without --checkpoint {DEMO_STEPS} for the demo model, "
                        f"{TINY_STEPS} for a tiny random one")
    p.add_argument("--cfg", type=float, metavar="X", help="guidance of the edit; default: the workflow's (7.5)")
    p.add_argument("--invert-cfg", type=float, metavar="X", help="guidance of DDIM Invert; default: the workflow's")
    p.add_argument("--size", type=int, metavar="PX",
                   help=f"generated: width and height; photos: the short side; default: the workflow's (512) or "
                        f"the photo's; without --checkpoint {DEMO_SIZE} for the demo model, {TINY_SIZE} for a tiny "
                        "random one")
    p.add_argument("--negative", metavar="TEXT", help="negative prompt; default: the workflow's (empty)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="base seed: each source gets a seed fixed by N and its prompt (or photo)")
    p.add_argument("--same-seed", action="store_true", help="give every item the --seed itself")
    p.add_argument("--invert-prompt", choices=("auto", "empty", "source"), default="auto",
                   help="photos: the inversion's prompt; auto = empty for FPE DDIM Invert (the official code), the "
                        "item's source prompt for FPE Null-Text Invert (the notebook)")
    p.add_argument("--reconstruction-check", action="store_true",
                   help="photos: keep DDIM Invert's reconstruction check (one more sampling pass per photo)")
    p.add_argument("--local", choices=local.MODES, default="off",
                   help="limit each edit to a region with FPE Local Edit: 'words' = LocalBlend's mask from the "
                        "cross-attention of the item's blend words (PIE-Bench's blended_word, else the words that "
                        "differ between its prompts); 'annotation' = the dataset's mask (PIE-Bench's); outside the "
                        "region the edit follows the source")
    p.add_argument("--local-start", type=float, metavar="X",
                   help="--local: the fraction of the steps after which the region limits the edit; default: 0.2 "
                        "for words (Prompt-to-Prompt's LocalBlend), 0 for annotation")
    p.add_argument("--local-threshold", type=float, metavar="X",
                   help="--local words: a pixel is in the region where the words' attention, over its peak, exceeds "
                        "X; default: 0.3 (LocalBlend's)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N items; default: all")
    p.add_argument("--clip", type=Path, metavar="DIR",
                   help="a transformers CLIP folder (e.g. openai/clip-vit-base-patch32 saved locally) for CS and "
                        "CDS; default: none (structure and background metrics only)")
    p.add_argument("--clip-scale", type=float, default=100.0, metavar="X", help="CS = X * max(cos, 0)")
    p.add_argument("--clip-device", default="cpu", metavar="DEV",
                   help="where CLIP, DINO and LPIPS run (cpu, cuda, cuda:1)")
    p.add_argument("--dino", type=Path, metavar="DIR", help=DINO_HELP)
    p.add_argument("--lpips", type=Path, metavar="DIR", help=LPIPS_HELP)
    p.add_argument("--server", action="append", default=[], metavar="URL",
                   help="a running ComfyUI (http://host:8188) with this pack; repeat for several; default: none "
                        "(run in this process)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="--server: seconds one item may run before its server counts as stuck")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                   help="--server: how often an item moves to another server after its server failed")
    p.add_argument("--restart", action="store_true", help="discard the results already in --out")
    p.add_argument("--name", metavar="NAME", help="the dataset's name in the report; default: the file's name")
    p.add_argument("--method", metavar="NAME",
                   help="the method's name in the report; default: FPE (with --local: FPE local words, FPE local "
                        "annotation)")
    p.add_argument("--comfyui", type=Path, metavar="DIR",
                   help="the ComfyUI to run; default: COMFYUI_PATH, or the ComfyUI this pack is installed in")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is there")
    return p


def check_local_options(args) -> None:
    """--local-start and --local-threshold: numbers from 0 to 1, and only where --local uses them."""
    for flag, value, modes in (("--local-start", args.local_start, ("words", "annotation")),
                               ("--local-threshold", args.local_threshold, ("words",))):
        if value is None:
            continue
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"{flag} {value}: must be a number from 0 to 1")
        if args.local not in modes:
            raise UserError(f"{flag}: only with --local {' or '.join(modes)} (it is {args.local})")


def _clip(args) -> object | None:
    if args.clip is None:
        return None
    from .metrics import ClipScorer  # imports torch: only with --clip

    folder = args.clip.expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"--clip {folder}: not a transformers CLIP folder (no config.json); save one with "
                        "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained")
    try:
        return ClipScorer(folder, device=args.clip_device)
    except Exception as exc:  # noqa: BLE001 - transformers' errors are many; the folder is what to fix
        raise UserError(f"--clip {folder}: cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _dino(args) -> object | None:
    if args.dino is None:
        return None
    from .metrics import MetricsError, StructureDistance  # imports torch: only with --dino

    folder = args.dino.expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"--dino {folder}: not a transformers ViT folder (no config.json); save facebook/dino-vitb8 "
                        "there with ViTModel.save_pretrained")
    try:
        return StructureDistance(folder, device=args.clip_device)
    except MetricsError as exc:
        raise UserError(f"--dino {folder}: {str(exc).splitlines()[0]}; give a folder ViTModel.save_pretrained "
                        "wrote (facebook/dino-vitb8)") from None
    except Exception as exc:  # noqa: BLE001 - transformers' errors are many; the folder is what to fix
        raise UserError(f"--dino {folder}: cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0]}); give "
                        "a folder ViTModel.save_pretrained wrote (facebook/dino-vitb8)") from None


def _lpips(args) -> object | None:
    if args.lpips is None:
        return None
    from .metrics import Lpips, MetricsError  # imports torch: only with --lpips

    folder = args.lpips.expanduser()
    try:
        return Lpips(folder, device=args.clip_device)
    except MetricsError as exc:
        raise UserError(f"--lpips {folder}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001 - torch's load errors are many; the folder is what to fix
        raise UserError(f"--lpips {folder}: cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def check_clip_scale(args) -> None:
    """argparse's float takes 'nan' and 'inf': a scale that makes every CS NaN or infinite is a mistake."""
    if not (math.isfinite(args.clip_scale) and args.clip_scale > 0):
        raise UserError(f"--clip-scale {args.clip_scale}: must be a number above 0 (the default, 100, is "
                        "PIE-Bench's)")


def _scoring(args) -> Scoring:
    """The metric models, each checked before anything runs (a bad folder: exit 2, before ComfyUI starts)."""
    return Scoring(_clip(args), args.clip_scale, dino=_dino(args), lpips=_lpips(args))


def _sdxl(workflow: str | None) -> bool:
    """The workflow encodes its prompts for SDXL (the tiny demo then runs the tiny SDXL model)."""
    if workflow is None:
        return False
    data = load_workflow_file(resolve_workflow(workflow))
    return any(node.get("type") == "CLIPTextEncodeSDXL" for node in data.get("nodes", []))


def _mmdit(workflow: str | None) -> str | None:
    """'flux' / 'sd35' for a Flux or SD3.5 workflow (tiny random files then stand in for the model's)."""
    return mmdit_family(load_workflow_file(resolve_workflow(workflow))) if workflow is not None else None


def demo_defaults(checkpoint: Path | None, remote: list, sdxl: bool) -> tuple[int | None, int | None]:
    """(steps, size) where the command line gives none: without --checkpoint (and --server) the demo model's
    (DEMO_STEPS, DEMO_SIZE), or the tiny random model's (TINY_STEPS, TINY_SIZE: SDXL workflows, or where the demo
    model's file is not there); with a checkpoint the workflow's (None)."""
    if checkpoint is not None or remote:
        return None, None
    return (DEMO_STEPS, DEMO_SIZE) if uses_demo_model(None, sdxl) else (TINY_STEPS, TINY_SIZE)


def run_batch_command(argv: list[str], prog: str) -> int:
    args = batch_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.simplefilter("ignore", FutureWarning)

    def say(line: str) -> None:  # notices beside the progress bar (stderr), not in the results (stdout)
        print(line, file=sys.stderr, flush=True)

    workdir = None
    outcome = None
    try:
        check_numbers(args)
        check_clip_scale(args)
        check_local_options(args)
        if args.limit is not None and args.limit < 1:
            raise UserError(f"--limit {args.limit}: must be 1 or more")
        if not (math.isfinite(args.timeout) and args.timeout > 0):
            raise UserError(f"--timeout {args.timeout}: must be a number of seconds above 0")
        if args.retries < 0:
            raise UserError(f"--retries {args.retries}: must be 0 or more")
        name, items, images = batch.load_items(args.dataset, args.images)
        items = items[:args.limit] if args.limit else items
        batch.check_items(items, images)
        try:  # a dataset without what --local needs: before the batch folder is made
            local.check_dataset(args.local, items, args.name or name)
        except local.LocalSetupError as exc:
            raise UserError(str(exc)) from None
        out = check_out(args.out or Path(f"fpe_batch_{batch.safe_name(args.name or name)}"))
        remote = []
        if args.server:
            from ..comfy.remote import RemoteError, server_url  # imports aiohttp: only with --server

            try:  # a malformed URL is named before anything connects
                remote = list(dict.fromkeys(server_url(url) for url in args.server))
            except RemoteError as exc:
                raise UserError(str(exc)) from None
        if remote and args.checkpoint is None:
            raise UserError("--server needs --checkpoint NAME: the checkpoint file those servers have in "
                            "models/checkpoints")
        mmdit = _mmdit(args.workflow)
        if mmdit and (args.checkpoint is not None or remote):
            raise UserError(f"--workflow {args.workflow}: it loads a Flux/SD3.5 diffusion model, its text encoders and "
                            "VAE by name, not a checkpoint: --checkpoint and --server are for SD1.x/SD2.x/SDXL "
                            "workflows; without them it runs on tiny random models here")
        checkpoint = None if remote or args.checkpoint is None else check_checkpoint(args.checkpoint)
        sdxl = _sdxl(args.workflow)
        steps, size = demo_defaults(checkpoint, remote, sdxl or bool(mmdit))
        # the weights by content (a resume with other weights of the same name is refused; the demo model's
        # file too, which a retraining replaces); with --server the checkpoint is a name on the servers,
        # checked by name only
        weights = checkpoint or (DEMO_CHECKPOINT if not remote and not mmdit and uses_demo_model(None, sdxl) else None)
        settings = BatchSettings(
            checkpoint=(args.checkpoint.as_posix() if remote else checkpoint.name if checkpoint
                        else TINY_MMDIT if mmdit else tiny_checkpoint_name(sdxl)),
            workflow=Path(args.workflow) if args.workflow else None,
            steps=args.steps or steps, cfg=args.cfg, invert_cfg=args.invert_cfg,
            size=args.size or size, seed=args.seed, same_seed=args.same_seed,
            negative=args.negative, invert_prompt=args.invert_prompt, reconstruction_check=args.reconstruction_check,
            images=images, dataset=args.name or name,
            method=args.method or ("FPE" if args.local == "off" else f"FPE local {args.local}"),
            checkpoint_file=str(weights) if weights else None,
            checkpoint_content=file_fingerprint(weights) if weights else None,
            local=args.local, local_start=args.local_start, local_threshold=args.local_threshold)
        batch.check_local(settings, items)
        batch.check_workflow_file(settings, items)
        batch.check_folder(out, batch.wanted_settings(settings, items), args.restart)
        workdir = make_workdir("batch", say)  # before CLIP: transformers imports torch's compiler (its cache)
        scoring = _scoring(args)
        pending = batch.pending_items(out, items, args.restart)
        runner = None
        if pending:  # nothing left to run: no ComfyUI to start (metrics and reports only)
            comfyui = comfyui_folder(args)
            if remote:
                from ..comfy.remote import RemoteError, check_servers  # imports aiohttp: only with --server

                try:
                    check_servers(remote, settings.checkpoint)
                except RemoteError as exc:
                    raise UserError(str(exc)) from None
            start_host(comfyui, workdir, checkpoint, sdxl=sdxl, cpu=args.cpu or bool(remote), say=say,
                       command=f"{prog} {args.dataset}", demo=not remote, mmdit=mmdit)
            import comfy.utils  # ComfyUI's: importable once start_host booted it

            comfy.utils.PROGRESS_BAR_ENABLED = False  # the batch's own bar, not one per sampling
            if remote:
                from ..comfy.remote import RemoteRunner  # imports aiohttp: only with --server

                runner = RemoteRunner(remote, timeout=args.timeout, retries=args.retries, say=say)
            else:
                runner = InProcessRunner()
        try:
            outcome = batch.run_batch(items, settings, out, runner, scoring=scoring, restart=args.restart, say=say)
        except OSError as exc:  # results.csv or summary.md cannot be written: the edits are kept, say which file
            file = Path(exc.filename2 or exc.filename or "")
            if exc.filename is None or file.resolve().parent != out.resolve():
                raise
            raise UserError(f"{file}: cannot write it ({exc.strerror or exc}); the edits are kept in {out} "
                            f"(images/, manifest.jsonl): remove {file.name} or make it writable, then `fpe eval {out}` writes "
                            "results.csv and summary.md") from None
    except (UserError, BatchError, datasets.DatasetError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        queued = " (items already queued on the servers still run there)" if args.server else ""
        print(f"\n{prog}: interrupted; the finished items are saved and reported in the batch folder: run the same "
              f"command to go on{queued}", file=sys.stderr)
        return 130
    finally:
        if workdir is not None:
            remove_workdir(workdir)
    done = sum(1 for row in outcome.rows if row.get("status") == "ok")
    print(f"{done} of {len(outcome.rows)} items edited ({len(outcome.ran)} now, {len(outcome.failed)} failed now); "
          f"results in {outcome.folder}: results.csv, summary.md, contact_sheet_*.png")
    print((outcome.folder / "summary.md").read_text(encoding="utf-8"))
    return 1 if outcome.failed else 0


# --- fpe eval -----------------------------------------------------------------------------------------

def eval_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description="Metrics for edits that exist: batch folders (`fpe batch --out`), or a CSV of pairs made by "
                    "anything (columns source_image, edit_image, source_prompt, target_prompt; optional id, "
                    "mask = a PNG, white where the edit may change the image). Several inputs: one table. Exit status: "
                    "0 all scored, 1 some items failed or could not be scored, 2 a mistake in the command or files.")
    p.add_argument("inputs", nargs="+", metavar="FOLDER_OR_CSV", help="batch folders and/or pair CSV files")
    p.add_argument("--clip", type=Path, metavar="DIR", help="a transformers CLIP folder for CS and CDS; default: none")
    p.add_argument("--clip-scale", type=float, default=100.0, metavar="X", help="CS = X * max(cos, 0)")
    p.add_argument("--clip-device", default="cpu", metavar="DEV", help="where CLIP, DINO and LPIPS run")
    p.add_argument("--dino", type=Path, metavar="DIR", help=DINO_HELP)
    p.add_argument("--lpips", type=Path, metavar="DIR", help=LPIPS_HELP)
    p.add_argument("--recompute", action="store_true", help="recompute every metric, not only the missing ones")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="where a pair CSV's results go; default: fpe_eval_<CSV name> beside where you stand")
    p.add_argument("--method", default=None, metavar="NAME", help="a pair CSV's method name; default: its file name")
    p.add_argument("--table", type=Path, metavar="FILE", help="also write the combined summary table here")
    return p


def read_pairs(path: Path) -> tuple[list[datasets.EditItem], dict[str, tuple[Path, Path, Path | None]]]:
    """A CSV of pairs -> items, and per item (source, edit, mask PNG or None), paths from the CSV's folder."""
    items, files = [], {}
    for n, (line, row) in enumerate(datasets.read_csv_rows(
            path, ("source_image", "edit_image", "source_prompt", "target_prompt"))):
        item_id = (row.get("id") or "").strip() or str(n)
        if item_id in files:
            raise UserError(f"{path}: line {line}: id {item_id!r} appears twice; ids must be unique")
        paths = [path.parent / row[k].strip() for k in ("source_image", "edit_image")]
        mask = path.parent / row["mask"].strip() if (row.get("mask") or "").strip() else None
        for p in [*paths, *([mask] if mask else [])]:
            if not p.is_file():
                raise UserError(f"{path}: line {line}: no file {p}")
        items.append(datasets.EditItem(item_id, row["source_prompt"].strip(), row["target_prompt"].strip()))
        files[item_id] = (paths[0], paths[1], mask)
    return items, files


class PairError(ValueError):
    """One pair that cannot be scored as given (its message names the files and the fix)."""


def check_pair_sizes(csv: Path, source: Path, edit: Path, mask: Path | None) -> None:
    """A pair's edit and mask must have the source's size: scaled to fit, the metrics would compare pixels that
    do not correspond (a PairError naming both files and their sizes). Files Pillow cannot read are left to
    the scoring, which records them."""

    def named(file: Path) -> str:  # as the CSV writes it
        try:
            return file.relative_to(csv.parent).as_posix()
        except ValueError:
            return str(file)

    try:
        with Image.open(source) as image:
            size = image.size
        for column, file in (("edit_image", edit), ("mask", mask)):
            if file is None:
                continue
            with Image.open(file) as image:
                if image.size != size:
                    raise PairError(f"{column} {named(file)} is {image.width}x{image.height} px but source_image "
                                    f"{named(source)} is {size[0]}x{size[1]}: give the {column.split('_')[0]} at "
                                    "the source's size")
    except (OSError, UnidentifiedImageError):
        return


def evaluate_pairs(path: Path, out: Path, scoring: Scoring, method: str) -> list[dict]:
    items, files = read_pairs(path)
    rows = []
    for item in items:
        source, edit, mask = files[item.id]
        row = {"id": item.id, "dataset": path.stem, "method": method, "status": "ok",
               "source_prompt": item.source_prompt, "target_prompt": item.target_prompt,
               "source_image": str(source), "edit_image": str(edit)}
        try:
            check_pair_sizes(path, source, edit, mask)
            row.update(scoring.score(item, source, edit, mask_png=mask))
        except PairError as exc:
            row.update(status="error", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one pair's broken file: recorded, the rest go on
            row.update(status="error", error=f"{type(exc).__name__}: {exc}")
        if row["status"] != "ok":
            print(f"{path}: item {item.id} not scored: {row['error']}", file=sys.stderr)
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    report.write_results_csv(rows, out / "results.csv")
    (out / "summary.md").write_text(report.summary_markdown(report.summarize(rows), title=f"{method} on {path.stem}"),
                                    encoding="utf-8")
    report.contact_sheets([report.SheetEntry(Path(r["source_image"]), Path(r["edit_image"]) if r["status"] == "ok"
                                             else None, f"{r['id']}: {r['source_prompt']} -> {r['target_prompt']}")
                           for r in rows], out)
    return rows


def run_eval_command(argv: list[str], prog: str) -> int:
    args = eval_parser(prog).parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)
    workdir = None
    try:
        check_clip_scale(args)
        folders, pair_files = [], []
        for given in args.inputs:
            path = Path(given).expanduser()
            if path.is_dir() and (path / batch.SETTINGS_FILE).is_file():
                folders.append(path)
            elif path.is_file() and path.suffix.lower() == ".csv":
                pair_files.append(path)
            else:
                raise UserError(f"{given}: neither a batch folder (with {batch.SETTINGS_FILE}) nor a .csv of pairs")
        if args.out is not None and len(pair_files) > 1:
            raise UserError("--out takes one pair CSV's results; give the CSV files one at a time")
        if args.table is not None:  # before the scoring: a folder or an unwritable place is told now
            check_out_file(args.table, "--table", "summary.md")
        for folder in folders:  # a broken batch folder is told before the scoring models load
            batch.check_eval_folder(folder)
        # transformers imports torch's compiler, whose cache would stay in TMPDIR: a work folder holds it
        workdir = make_workdir("eval") if any(getattr(args, k, None) for k in ("clip", "dino", "lpips")) else None
        scoring = _scoring(args)
        rows: list[dict] = []
        for folder in folders:
            folder_rows = batch.evaluate_folder(folder, scoring, recompute=args.recompute)
            rows += folder_rows
            print(f"{folder}: scored; results.csv and summary.md rewritten")
            not_run = [row for row in folder_rows if row.get("status") == report.STATUS_NOT_RUN]
            if not_run:
                stale = [row["id"] for row in not_run if row.get("error")]
                print(f"{folder}: {len(not_run)} of {len(folder_rows)} items not run" + (
                    f" ({', '.join(map(repr, stale[:3]))}{' ...' if len(stale) > 3 else ''}: results made for "
                    "another version of the item)" if stale else "") + "; run the batch again (the same "
                    "`fpe batch` command and --out) to run them", file=sys.stderr)
        for path in pair_files:
            out = check_out(args.out or Path(f"fpe_eval_{batch.safe_name(path.stem)}"))
            rows += evaluate_pairs(path, out, scoring, args.method or path.stem)
            print(f"{path}: scored; results in {out}")
    except (UserError, BatchError, datasets.DatasetError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if workdir is not None:
            remove_workdir(workdir)
    table = report.summary_markdown(report.summarize(rows))
    if args.table is not None:
        args.table.write_text(table, encoding="utf-8")
    print(table)
    return 1 if any(row.get("status") != "ok" for row in rows) else 0


# --- fpe datasets -------------------------------------------------------------------------------------

def _generated(name: str, args) -> list[datasets.EditItem]:
    def need(option: str, value, what: str):
        if value is None:
            raise datasets.DatasetError(f"{name} is built from {what}: give {option} FILE (your copy; the pack "
                                        f"ships none of the paper's data)")
        if Path(value).is_dir():
            raise datasets.DatasetError(f"{option} {value}: is a folder; give the file {what} itself")
        return value

    if name == "car-fake-edit":
        return datasets.car_fake_edit()
    if name == "animals-park":
        return datasets.animal_park_pairs()
    if name == "demo-colours":
        return datasets.demo_colours()
    if name == "demo-real-edit":
        return datasets.demo_real_edit()
    if name == "car-real-edit":
        return datasets.car_real_edit(datasets.read_official(need("--stanford-cars", args.stanford_cars,
                                                                  "StanfordCar.json")))
    queries = datasets.read_imagenet_queries(need("--queries", args.queries, "FlexIT's ImageNet.json"))
    if name == "imagenet-real-edit":
        return datasets.imagenet_real_edit(queries)
    return datasets.imagenet_fake_edit(queries, seed=args.seed)


GENERATED = {
    "car-fake-edit": "every ordered pair of the 28 colours, 'a <c1> car' -> 'a <c2> car' (756)",
    "car-real-edit": "each Stanford Cars photo to every other colour (4058 for the published 150 photos; "
                     "needs --stanford-cars)",
    "imagenet-fake-edit": "FlexIT's 1092 test queries in seeded templates + the 90 animal pairs (1182; needs "
                          "--queries)",
    "imagenet-real-edit": "'a photo of a <source>' -> 'a photo of a <target>' for the test queries' photos (1092; "
                          "needs --queries)",
    "animals-park": "'a <animal> standing in the park', every ordered pair of the 10 animals (90)",
    "demo-colours": "the demo model's world: 'a <c1> <shape> on <ground>' -> 'a <c2> <shape> on <ground>', every "
                    "ordered pair of its 6 colours (30)",
    "demo-real-edit": "the demo model's world: a drawn scene per demo-colours pair, edited to the other colour (30 "
                      f"photos, written to {datasets.DEMO_PHOTOS}/ beside --out)",
}


def datasets_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="The paper's prompt-pair datasets (supplement §7.2), and the demo "
                                            "model's over its drawn world.")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the sets this command can write, with their sizes")
    gen = sub.add_parser("generate", help="write a set as the paper's JSON layout (soure_prompt, edit_prompt, "
                                          "image_name)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("name", choices=sorted(GENERATED), help="which set")
    gen.add_argument("--out", type=Path, required=True, metavar="FILE", default=argparse.SUPPRESS,
                     help="the JSON file to write (required)")
    gen.add_argument("--queries", type=Path, metavar="FILE", default=None,
                     help="FlexIT's ImageNet.json (the ImageNet sets)")
    gen.add_argument("--stanford-cars", type=Path, metavar="FILE", default=None,
                     help="StanfordCar.json: the photos and their colour prompts (car-real-edit)")
    gen.add_argument("--seed", type=int, default=0, metavar="N",
                     help="the template draw of imagenet-fake-edit (the published draw is not recoverable)")
    return p


def run_datasets_command(argv: list[str], prog: str) -> int:
    args = datasets_parser(prog).parse_args(argv)
    if args.action == "list":
        for name, what in GENERATED.items():
            print(f"{name:20} {what}")
        return 0
    drawn = ""
    try:
        out = check_out_file(args.out, "--out", f"{args.name}.json")  # before the set is built
        items = _generated(args.name, args)
        if args.name == "demo-real-edit":  # its photos, drawn beside the file (where fpe batch looks for them)
            folder = out.parent / datasets.DEMO_PHOTOS
            try:
                drawn = f" and {len(datasets.write_demo_photos(out.parent))} photos to {folder}"
            except OSError as exc:
                raise UserError(f"{folder}: cannot write the photos there ({exc.strerror or exc}); choose another "
                                "--out folder") from None
        datasets.write_official(items, out)
    except (datasets.DatasetError, UserError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(items)} prompt pairs to {args.out}{drawn}")
    return 0
