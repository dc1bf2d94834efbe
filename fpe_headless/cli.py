"""``fpe``: the pack's command line (``python -m fpe_headless <command>``).

* ``fpe edit``: one FPE edit through ComfyUI's real executor, the README's main job (``main_job``; what
  ``bash run.sh`` runs, and what ``python -m fpe_headless`` without a command runs).
* ``fpe batch DATASET``: every item of a dataset edited and scored, resumable, in this process or on
  ComfyUI servers (``batch_cli``, ``batch``, ``remote``).
* ``fpe eval FOLDER_OR_CSV...``: metrics and the summary table for edits that exist (``batch_cli``, ``report``).
* ``fpe datasets list`` / ``fpe datasets generate NAME``: the paper's prompt-pair sets, written in the
  published files' layout (``datasets``).
* ``fpe probe list|build|train|report``: the paper's probing analysis on any checkpoint (``probe_cli``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import datasets

COMMANDS = ("edit", "batch", "eval", "datasets", "probe")


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
}


def datasets_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="The paper's prompt-pair datasets (supplement §7.2).")
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


def run_datasets(argv: list[str], prog: str) -> int:
    args = datasets_parser(prog).parse_args(argv)
    if args.action == "list":
        for name, what in GENERATED.items():
            print(f"{name:20} {what}")
        return 0
    from .main_job import UserError, check_out_file

    try:
        check_out_file(args.out, "--out", f"{args.name}.json")  # before the set is built
        items = _generated(args.name, args)
        datasets.write_official(items, args.out)
    except (datasets.DatasetError, UserError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(items)} prompt pairs to {args.out}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = os.environ.get("FPE_PROG", "fpe")
    if argv and argv[0] == "datasets":
        return run_datasets(argv[1:], f"{prog} datasets")
    if argv and argv[0] == "probe":
        from . import probe_cli

        return probe_cli.main(argv[1:], f"{prog} probe")
    if argv and argv[0] in ("batch", "eval"):
        from . import batch_cli

        run = batch_cli.run_batch_command if argv[0] == "batch" else batch_cli.run_eval_command
        return run(argv[1:], f"{prog} {argv[0]}")
    from .main_job import main as edit

    if argv and argv[0] == "edit":
        os.environ["FPE_PROG"] = f"{prog} edit"  # the main job's messages name the command as typed
        return edit(argv[1:])
    return edit(argv)  # no command: the main job, as `bash run.sh` has always run it
