"""``python -m fpe_headless [edit|batch|eval|datasets|probe] ...``: the pack's command line (``cli``); without a
command, the main job (see ``edit.main_job``), as ``bash run.sh`` runs it."""

import sys

from .cli import main

sys.exit(main())
