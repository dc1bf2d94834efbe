"""What FPE is for, on a model that learned something: the demo model of the drawn world.

An FPE colour edit keeps the object's outline (mask IoU with the source) and changes its colour; the
same target prompt and seed without FPE (the control) moves the object. On this model the encoder's and
the decoder's self-attention layers each carry the layout (docs/BENCHMARKS.md, the demo sweep), so the
edits with only one of the two groups must keep the outline too. The thresholds sit between what the
edits and the control measured on both hosts; the tests fail when the injection is off, reaches the
wrong rows or only one group of layers (`bash dev/mutate_demo_tests.sh` runs them against those
mutations; docs/demo-model.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import HOST
from fpe_harness.execute import Executor
from fpe_headless.demo import lab, world
from fpe_headless.demo.checkpoint import DEMO_CHECKPOINT

pytestmark = pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not in this checkout")

SEEDS = 5  # one batch of five seeds per edit
EDITS = [("a red circle on grass", "a blue circle on grass", "blue"),
         ("a yellow square on sand", "a purple square on sand", "purple")]
# custom layer lists from the same capture: only the encoder and middle block, only the decoder
GROUPS = {"encoder": "in,mid", "decoder": "out"}
KEPT_IOU = 0.70  # the median IoU of every kind of FPE edit (measured 0.79-0.87 on both hosts)
GAP = 0.15  # ... and how far above the control's median (0.59) it must sit (measured 0.20-0.28)
COLOUR_RIGHT = 0.8  # the share of edits in the target colour (measured 10/10 here, 96 % over 600)


@pytest.fixture(scope="module")
def demo_name():
    link = HOST.workdir / "models" / "checkpoints" / DEMO_CHECKPOINT.name
    if not link.exists():
        link.symlink_to(DEMO_CHECKPOINT)
    return DEMO_CHECKPOINT.name


@pytest.fixture(scope="module")
def scores(demo_name):
    """IoU and colour of each kind of edit ("edit": the official layers; the groups; "control") vs its source,
    and what the reader saw in each source."""
    executor = Executor()
    out = {role: [] for role in ("edit", *(f"edit_{g}" for g in GROUPS), "control")}
    sources = []
    for k, (source, target, colour) in enumerate(EDITS):
        graph = lab.generated_edit_graph(demo_name, source, target, 11 + k, SEEDS, lab.EditSettings(steps=20),
                                         layer_lists=GROUPS)
        pictures = lab.run(graph, executor, HOST.workdir / "output")
        words = source.split()
        sources += [(words[1], world.read(picture, 1)) for picture in pictures["source"]]
        for role, row in out.items():
            row += [lab.score_edit(s, e, colour) for s, e in zip(pictures["source"], pictures[role], strict=True)]
    return sources, out


def _shown(scores):
    return [(round(s.iou, 2), s.colour_right) for s in scores]


def test_the_demo_model_draws_the_source_prompts_colour(scores):
    sources, _ = scores
    right = [len(seen) == 1 and seen[0].colour == colour for colour, seen in sources]
    assert sum(right) >= len(right) - 1, [(colour, seen) for colour, seen in sources]  # measured 98 %


@pytest.mark.parametrize("role", ["edit", *(f"edit_{g}" for g in GROUPS)])
def test_fpe_keeps_the_outline_and_changes_the_colour(scores, role):
    _, by_role = scores
    edits, control = by_role[role], by_role["control"]
    kept, plain = np.median([s.iou for s in edits]), np.median([s.iou for s in control])
    assert kept >= KEPT_IOU and kept - plain >= GAP, (role, _shown(edits), "control", _shown(control))
    assert np.mean([s.colour_right for s in edits]) >= COLOUR_RIGHT, (role, _shown(edits))
