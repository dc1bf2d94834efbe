"""One batch item as a ready-to-run ComfyUI prompt, its result, and the in-process runner.

A :class:`Job` is an API-format prompt whose images of interest come from the output nodes named in
``outputs`` (node id -> role, e.g. ``"source"``, ``"edit"``), plus the photos it needs in ComfyUI's
input folder. A runner takes jobs and reports a :class:`JobResult` for each, whatever happened: the
in-process runner here (ComfyUI's real executor in this process, see ``executor``) and the remote one
in ``remote`` (running ComfyUI servers over their HTTP + websocket API) have the same shape, so the
batch does not care where its items run.

Jobs of one ``group`` (edits of one source) should run one after the other on one executor: ComfyUI
keeps the unchanged source branch's outputs in its cache between prompts, so the source is paid once.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .executor import Executor, PromptFailed, validation_message
from .host import host


@dataclass
class Job:
    key: str  # the item's id: unique in a batch
    group: str  # jobs sharing a source: best run in order, on one executor (its cache pays the source once)
    prompt: dict  # API format
    outputs: dict[str, str]  # output node id -> role ("source", "edit")
    uploads: dict[str, Path] = field(default_factory=dict)  # input-folder file name -> local file
    error: str | None = None  # the item could not be made into a prompt (e.g. an unreadable photo): not run


@dataclass
class JobResult:
    key: str
    images: dict[str, bytes] = field(default_factory=dict)  # role -> PNG bytes, as the Save node wrote it
    error: str | None = None  # one line; None when the prompt ran
    seconds: float = 0.0  # wall time of the run (queue wait excluded where it can be told apart)
    where: str = "in-process"  # "in-process" or the server's URL
    warnings: list[str] = field(default_factory=list)  # the pack's warnings that reached the page

    @property
    def ok(self) -> bool:
        return self.error is None


OnResult = Callable[[JobResult], None]
# Where an output node lists the files it wrote in its UI output: Save Image's "images", FPE Save Attention
# Maps' "fpe_maps" (a safetensors file in the temp folder, which the page does not try to show).
OUTPUT_FILE_KEYS = ("images", "fpe_maps")


def output_files(ui: dict) -> list[dict]:
    """The {filename, subfolder, type} entries an output node's UI output names."""
    for key in OUTPUT_FILE_KEYS:
        if (ui or {}).get(key):
            return list(ui[key])
    return []


class Runner(Protocol):
    def run(self, jobs: Iterable[Job], on_result: OnResult) -> None:
        """Run every job, calling ``on_result`` (in the caller's thread) once per job as it ends."""


class InProcessRunner:
    """Jobs on ComfyUI's real executor in this process (the host must be booted)."""

    def __init__(self, executor=None):
        self.executor = executor or Executor()

    def run(self, jobs: Iterable[Job], on_result: OnResult) -> None:
        for job in jobs:
            on_result(self.run_one(job))

    def _upload(self, job: Job) -> None:
        input_dir = host().workdir / "input"
        for name, local in job.uploads.items():
            if not (input_dir / name).is_file() or (input_dir / name).stat().st_size != local.stat().st_size:
                shutil.copy2(local, input_dir / name)

    def check(self, job: Job) -> str | None:
        """Why ComfyUI would refuse the job's outputs (one line), or None: checked on a batch's first job."""
        self._upload(job)
        valid = self.executor.validate(job.prompt)
        if not valid[0] or any(node_id not in valid[2] for node_id in job.outputs):
            return validation_message(job.prompt, valid[1] or {}, valid[3])
        return None

    def run_one(self, job: Job) -> JobResult:
        started = time.perf_counter()
        try:
            self._upload(job)
            result = self.executor.run(job.prompt)
        except PromptFailed as exc:
            return JobResult(job.key, error=str(exc), seconds=time.perf_counter() - started)
        except OSError as exc:
            return JobResult(job.key, error=f"cannot copy the photo into ComfyUI's input folder: {exc}",
                             seconds=time.perf_counter() - started)
        images = {}
        for node_id, role in job.outputs.items():
            found = output_files(result.outputs.get(node_id, {}))
            if not found:
                error = (validation_message(job.prompt, {}, result.node_errors) if result.node_errors
                         else f"output node {node_id} ({role}) wrote no file")
                return JobResult(job.key, error=error, seconds=time.perf_counter() - started)
            image = found[0]
            path = host().workdir / image["type"] / image["subfolder"] / image["filename"]
            images[role] = path.read_bytes()
            if image["type"] == "temp":  # scratch (a probe sample's maps): read once, gone, not piling up
                path.unlink(missing_ok=True)
        warnings = [f"{w.get('summary')}: {w.get('detail')}" for w in result.events("free-prompt-editing.warning")]
        return JobResult(job.key, images, None, time.perf_counter() - started, "in-process", warnings)
