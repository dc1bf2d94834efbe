"""``python -m fpe_headless``: the main job (see ``main_job``)."""

import sys

from .main_job import main

sys.exit(main())
