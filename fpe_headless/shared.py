"""What the commands share (``fpe edit``, ``fpe batch``/``eval``/``datasets``, ``fpe probe``): the one-line
user error, the help layout, the checks made before ComfyUI starts (output folders and files, the
checkpoint, the numbers, which ComfyUI), strict JSON reading, the tiny demo's settings, booting ComfyUI
for a command, and the progress bar of a run of many items.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

from .comfy.host import boot, find_comfyui, is_comfyui
from .demo.checkpoint import DEMO_CHECKPOINT

TINY_STEPS, TINY_SIZE = 8, 256  # the tiny random SDXL demo (SDXL workflows without --checkpoint)
DEMO_STEPS, DEMO_SIZE = 20, 128  # the trained demo model of the drawn world (SD1.x workflows without --checkpoint)
DEMO_SOURCE, DEMO_TARGET = "a red circle on grass", "a blue circle on grass"  # its default edit
MAX_STEPS, MAX_SEED = 10000, 0xFFFFFFFFFFFFFFFF
CHECKPOINT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth")


class UserError(Exception):
    """A mistake in the command line or its files: one line, with the fix."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where there is one; an option whose default is 'not given' says so in its help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


# --- strict JSON (workflow files, dataset files, batch folders) ---------------------------------


class DuplicateKey(ValueError):
    """A JSON object that names one key twice (``json`` would keep the last value and drop the other)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    found: dict = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(key)
        found[key] = value
    return found


def loads_strict(text: str):
    """``json.loads`` that refuses a repeated key in an object (``DuplicateKey``): a PIE-Bench mapping
    with an id twice would otherwise lose an item without a word."""
    return json.loads(text, object_pairs_hook=_unique_keys)


# --- checks made before ComfyUI starts --------------------------------------------------------


def check_checkpoint(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"--checkpoint {path}: no such file")
    if path.is_dir():
        raise UserError(f"--checkpoint {path}: is a folder; give the checkpoint file in it")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(f"--checkpoint {path}: not a checkpoint file (expected {', '.join(CHECKPOINT_SUFFIXES)})")
    if suffix in (".safetensors", ".sft"):
        keys = safetensors_keys(path)
        if keys is None:
            raise UserError(f"--checkpoint {path}: not a safetensors file (renamed or damaged?); give the "
                            "checkpoint as downloaded")
        if not any(key.startswith("model.diffusion_model.input_blocks.") for key in keys):
            what = ("a UNet-only file (load those with Load Diffusion Model in ComfyUI)"
                    if any(key.startswith("input_blocks.") for key in keys) else
                    "no Stable Diffusion UNet (a LoRA, VAE, text encoder, or a DiT model such as Flux/SD3?)")
            raise UserError(f"--checkpoint {path}: holds {what}; FPE needs a full SD1.x/SD2.x/SDXL checkpoint "
                            "(UNet, text encoder and VAE in one file)")
    return path.resolve()


def safetensors_keys(path: Path) -> list[str] | None:
    """The tensor names in a safetensors file's header, or None if it is not one."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                return None
            (length,) = struct.unpack("<Q", raw)
            if not 2 <= length <= 100_000_000 or length > path.stat().st_size - 8:
                return None
            header = json.loads(fh.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return [key for key in header if key != "__metadata__"] if isinstance(header, dict) else None


def check_out(path: Path, option: str = "--out") -> Path:
    """A folder a command writes into: created if missing, and written to once (a test file) before any work."""
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".fpe-write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there ({exc.strerror or exc}); choose another "
                        "folder") from None
    return path.resolve()


def check_out_file(path: Path, option: str = "--out", example: str = "result.json") -> Path:
    """A file a command writes (replacing it if there): not a folder, in a folder that exists and takes a file
    (a test file is written there once), checked before any work."""
    if str(path).strip() in ("", "."):  # argparse's Path turns '' into '.'
        raise UserError(f"{option} '{path}': no file name; give one, e.g. {option} {example}")
    path = path.expanduser()
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name, e.g. {option} {path / example}")
    folder = path.parent
    if not folder.exists():
        raise UserError(f"{option} {path}: the folder {folder} does not exist; create it or choose another place")
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".fpe-write-test-", delete=True)
        probe.close()
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there ({exc.strerror or exc}); choose another "
                        "place") from None
    return path


def check_numbers(args: argparse.Namespace) -> None:
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise UserError(f"--steps {args.steps}: must be 1 to {MAX_STEPS} (the official setting is 50)")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise UserError(f"--seed {args.seed}: must be 0 to {MAX_SEED} (ComfyUI's seed range)")
    for flag, value in (("--cfg", args.cfg), ("--invert-cfg", args.invert_cfg)):
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 100.0):
            raise UserError(f"{flag} {value}: must be a number from 0 to 100")
    if args.size is not None:
        if args.size % 8:
            low = max(8, args.size - args.size % 8)
            raise UserError(f"--size {args.size}: must be a multiple of 8 (e.g. {low} or {low + 8})")
        if not 16 <= args.size <= 8192:
            raise UserError(f"--size {args.size}: must be 16 to 8192 pixels")


def comfyui_folder(args) -> Path:
    """The ComfyUI that ``--comfyui`` (or COMFYUI_PATH, or the install around this pack) names, checked."""
    comfyui = find_comfyui(str(args.comfyui) if args.comfyui else None)
    if comfyui is None:
        raise UserError("no ComfyUI to run: run this from a ComfyUI install, pass --comfyui, or set COMFYUI_PATH")
    if not is_comfyui(comfyui):
        raise UserError(f"--comfyui {comfyui}: not a ComfyUI folder (no nodes.py and comfy/ there)")
    return comfyui


# --- ComfyUI for a command -----------------------------------------------------------------------


def tiny_checkpoint_name(sdxl: bool = False) -> str:
    """The file name the demo model gets in ComfyUI's checkpoints folder: the trained demo model of the
    drawn world for SD1.x workflows (the tiny random SD1.5 model where the file is not there), the tiny
    random SDXL model for SDXL workflows."""
    from .comfy import tiny_models  # imports torch: not for --help or a mistake found before ComfyUI starts

    if not sdxl and demo_model_present():
        return DEMO_CHECKPOINT.name
    return f"{(tiny_models.SDXL_TINY if sdxl else tiny_models.SD15_TINY).name}.safetensors"


def demo_model_present() -> bool:
    return DEMO_CHECKPOINT.is_file()


def uses_demo_model(checkpoint: Path | None, sdxl: bool = False) -> bool:
    """Whether a command without ``--checkpoint`` runs the trained demo model (not a random tiny one)."""
    return checkpoint is None and not sdxl and demo_model_present()


TINY_MMDIT = "tiny MMDiT"  # the loader name of a Flux / SD3.5 workflow's tiny smoke-demo files (``mmdit_files``)
MMDIT_LOADERS = ("UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "VAELoader")


def mmdit_family(workflow_data: dict) -> str | None:
    """'flux' or 'sd35' for a workflow that loads an MMDiT's files (Load Diffusion Model and its text
    encoders), else None."""
    kinds = {node.get("type") for node in workflow_data.get("nodes", [])}
    if "UNETLoader" not in kinds:
        return None
    if "TripleCLIPLoader" in kinds:
        return "sd35"
    return "flux" if "DualCLIPLoader" in kinds else None


def mmdit_files(family: str) -> dict:
    """The tiny smoke-demo files' loader inputs for ``family`` (written by ``start_host``)."""
    from .comfy import tiny_mmdit

    names = {"unet_name": tiny_mmdit.FLUX_FILE if family == "flux" else tiny_mmdit.SD35_FILE,
             "clip_name1": tiny_mmdit.CLIP_L_FILE, "vae_name": tiny_mmdit.VAE_FILE}
    if family == "flux":
        names.update(clip_name2=tiny_mmdit.T5XXL_FILE, type="flux")
    else:
        names.update(clip_name2=tiny_mmdit.CLIP_G_FILE, clip_name3=tiny_mmdit.T5XXL_FILE)
    return names


def start_host(comfyui: Path, workdir: Path, checkpoint: Path | None, *, sdxl: bool = False, cpu: bool = False,
               say=print, command: str = "bash run.sh", demo: bool = True, mmdit: str | None = None):
    """Boot ComfyUI in ``workdir`` with the user's checkpoint linked in, or (``demo``) a demo model linked
    or written there (said loudly); (host, the checkpoint's name for the loader). ``demo=False`` without a
    checkpoint: ComfyUI only (e.g. to build prompts that run elsewhere)."""
    import torch  # here, not at the top: --help and the checks before ComfyUI starts need no torch

    from .comfy import tiny_models  # imports torch

    host = boot(comfyui, workdir, cpu=cpu or not torch.cuda.is_available(), quiet=True)
    if host.failed_extras:
        say(f"(ComfyUI could not import {len(host.failed_extras)} of its own extra node modules, e.g. audio "
            "nodes without torchaudio; this workflow does not use them)")
    if checkpoint is not None:
        link = workdir / "models" / "checkpoints" / checkpoint.name
        if not link.exists():
            link.symlink_to(checkpoint)
        return host, checkpoint.name
    if not demo:
        return host, None
    if mmdit is not None:  # Flux / SD3.5: tiny random files for the stock loaders (the user's run in ComfyUI)
        import comfy.supported_models  # ComfyUI's: importable once booted

        if not hasattr(comfy.supported_models, "Flux"):
            raise UserError(f"{host.label} has no Flux or SD3 models (ComfyUI of early 2024): run Flux/SD3.5 "
                            "workflows with a current ComfyUI (--comfyui DIR or COMFYUI_PATH)")
        from .comfy import tiny_mmdit  # imports torch

        models = workdir / "models"
        (tiny_mmdit.write_tiny_flux if mmdit == "flux" else tiny_mmdit.write_tiny_sd35)(models)
        tiny_mmdit.add_model_folders(models)
        tiny_mmdit.register_tiny_mmdit()
        say(f"This {'Flux' if mmdit == 'flux' else 'SD3.5'} workflow runs on tiny randomly initialised models here "
            "(a smoke demo: its pictures are MEANINGLESS; only the plumbing is real). With your files, open the "
            "workflow in ComfyUI.")
        return host, TINY_MMDIT
    family, example = ("SDXL", "sd_xl_base_1.0") if sdxl else ("SD1.5", "v1-5-pruned-emaonly")
    hint = (f"No --checkpoint given: put an {family} checkpoint anywhere and pass its path, e.g.\n"
            f"  {command} --checkpoint ~/ComfyUI/models/checkpoints/{example}.safetensors\n")
    tiny_models.register_tiny_model_configs(workdir / "tiny_configs")  # the demo model has the tiny SD1.5 layout
    name = tiny_checkpoint_name(sdxl)
    if uses_demo_model(None, sdxl):
        say(hint + "Running the demo model instead: a small model trained on drawn shapes "
            f"({DEMO_SIZE} px; it knows only scenes like '{DEMO_SOURCE}').")
        (workdir / "models" / "checkpoints" / name).symlink_to(DEMO_CHECKPOINT)
        return host, name
    say(hint + "Running a smoke demo on a tiny randomly initialised model instead: "
        "its pictures are MEANINGLESS noise-like images; only the plumbing is real.")
    spec = tiny_models.SDXL_TINY if sdxl else tiny_models.SD15_TINY
    tiny_models.write_checkpoint(spec, workdir / "models" / "checkpoints" / name)
    return host, name


# --- progress ---------------------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar with rate and ETA (a line per item when the stream is not a terminal)."""

    def __init__(self, total: int, done: int, stream=None):
        self.total, self.done, self.stream = total, done, stream or sys.stderr
        self.started, self.fresh, self.failed = time.monotonic(), 0, 0
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def step(self, ok: bool, label: str, ran: bool = True) -> None:
        """One item ended; ``ran=False``: it never reached ComfyUI (it does not count in the rate)."""
        self.done += 1
        self.fresh += ran
        self.failed += not ok
        elapsed = time.monotonic() - self.started
        rate = self.fresh / elapsed * 60 if elapsed > 0 else 0.0
        left = (self.total - self.done) / (rate / 60) if rate > 0 else float("inf")
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {rate:.1f} items/min "
                f"ETA {_duration(left)}{f' failed {self.failed}' if self.failed else ''} {label}")
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
