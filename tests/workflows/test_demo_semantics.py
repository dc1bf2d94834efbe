"""What FPE is for, on a model that learned something: the demo model of the drawn world.

An FPE colour edit keeps the object's outline (mask IoU with the source) and changes its colour; the
same target prompt and seed without FPE (the control) puts the object elsewhere. The thresholds sit
between what the edit and the control measure (docs/demo-model.md): each test fails when the
injection is off, reaches the wrong rows or only part of the official layers (checked by running it
against those mutations, see docs/DEVELOPMENT.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import HOST
from fpe_harness.execute import Executor
from fpe_headless.demo import lab, world
from fpe_headless.demo.checkpoint import DEMO_CHECKPOINT

pytestmark = pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not in this checkout")

SEEDS = 4  # one batch of four seeds per edit
EDITS = [("a red circle on grass", "a blue circle on grass", "blue"),
         ("a yellow square on sand", "a purple square on sand", "purple")]
KEPT_IOU = 0.80  # every FPE edit keeps its outline at least this well
CONTROL_IOU = 0.60  # the control's median stays below this: the outline is FPE's doing


@pytest.fixture(scope="module")
def demo_name():
    link = HOST.workdir / "models" / "checkpoints" / DEMO_CHECKPOINT.name
    if not link.exists():
        link.symlink_to(DEMO_CHECKPOINT)
    return DEMO_CHECKPOINT.name


@pytest.fixture(scope="module")
def edits(demo_name):
    executor = Executor()
    out = []
    for k, (source, target, colour) in enumerate(EDITS):
        graph = lab.generated_edit_graph(demo_name, source, target, 11 + k, SEEDS, lab.EditSettings(steps=20))
        out.append((colour, lab.run(graph, executor, HOST.workdir / "output")))
    return out


def test_the_demo_model_draws_what_the_source_prompt_says(edits):
    for (source, _, _), (_, pictures) in zip(EDITS, edits):
        words = source.split()
        for picture in pictures["source"]:
            seen = world.read(picture, 1)
            assert [(s.colour, s.shape) for s in seen] == [(words[1], words[2])]


def test_fpe_keeps_the_outline_and_changes_the_colour(edits):
    for colour, pictures in edits:
        scores = [lab.score_edit(s, e, colour) for s, e in zip(pictures["source"], pictures["edit"])]
        assert all(s.colour_right for s in scores), [s.colour_right for s in scores]
        assert min(s.iou for s in scores) >= KEPT_IOU, [round(s.iou, 3) for s in scores]


def test_without_fpe_the_same_prompt_and_seed_lose_the_outline(edits):
    for colour, pictures in edits:
        control = [lab.score_edit(s, c, colour) for s, c in zip(pictures["source"], pictures["control"])]
        fpe = [lab.score_edit(s, e, colour) for s, e in zip(pictures["source"], pictures["edit"])]
        assert np.median([s.iou for s in control]) < CONTROL_IOU, [round(s.iou, 3) for s in control]
        assert np.median([s.iou for s in fpe]) - np.median([s.iou for s in control]) > 0.25
