"""``fpe``: the pack's command line (``python -m fpe_headless <command>``), dispatching to each command's package.

* ``fpe edit``: one FPE edit through ComfyUI's real executor, the README's main job (``edit.main_job``; what
  ``bash run.sh`` runs, and what ``python -m fpe_headless`` without a command runs).
* ``fpe batch DATASET``: every item of a dataset edited and scored, resumable, in this process or on
  ComfyUI servers (``batch.cli``, ``batch.batch``, ``comfy.remote``).
* ``fpe eval FOLDER_OR_CSV...``: metrics and the summary table for edits that exist (``batch.cli``, ``batch.report``).
* ``fpe datasets list`` / ``fpe datasets generate NAME``: the paper's prompt-pair sets, written in the
  published files' layout (``batch.cli``, ``batch.datasets``).
* ``fpe probe list|build|train|report``: the paper's probing analysis on any checkpoint (``probe.cli``).
"""

from __future__ import annotations

import os
import sys

from .batch import cli as batch_cli
from .edit import main_job
from .probe import cli as probe_cli

COMMANDS = ("edit", "batch", "eval", "datasets", "probe")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = os.environ.get("FPE_PROG", "fpe")
    if argv and argv[0] == "datasets":
        return batch_cli.run_datasets_command(argv[1:], f"{prog} datasets")
    if argv and argv[0] == "probe":
        return probe_cli.main(argv[1:], f"{prog} probe")
    if argv and argv[0] in ("batch", "eval"):
        run = batch_cli.run_batch_command if argv[0] == "batch" else batch_cli.run_eval_command
        return run(argv[1:], f"{prog} {argv[0]}")
    if argv and argv[0] == "edit":
        os.environ["FPE_PROG"] = f"{prog} edit"  # the main job's messages name the command as typed
        return main_job.main(argv[1:])
    return main_job.main(argv)  # no command: the main job, as `bash run.sh` has always run it
