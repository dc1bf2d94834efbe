"""A probing dataset on disk (paper §3.3, supplement §7.1): attention maps per sample and layer, written in
shards as they are produced and read back one layer at a time. Plain torch + safetensors; no ComfyUI.

A dataset folder holds

* ``probe.json``: what the maps are and how they were made: ``kind`` ("cross" | "self"), ``set``, ``word``,
  ``classes`` (names, label = position), ``layers`` ([{"name", "shape"}] in forward order) and the builder's
  settings (checkpoint, sampler, steps, seeds, ...). Keys this module does not know are kept as they are.
  Every key is a *settings key* (it must match when a build is resumed) except those starting with ``_``,
  which are the builder's bookkeeping (timings, servers) and may change from run to run.
* ``shards/NNNNN.safetensors``: up to ``shard_size`` samples each: "index", "label", "seed" (int64 [K]) and
  ``layer.{j}`` (float16 [K, *shape of layer j]). float16 halves the size of the 256x256 self-attention
  maps (a paper-size self set is ~4 GB in float16) and keeps ~3 significant digits, far finer than
  anything a probe resolves.
* ``manifest.jsonl``: one line per finished shard, ``{"shard": "shards/00003.safetensors", "indexes": [...]}``.
  A shard counts only once its line is there: the shard is written to a temp file and renamed first, the
  line appended and fsynced after, so a kill leaves at worst a shard without a line (an orphan, ignored and
  overwritten by the next shard of that number) or a truncated last line (ignored, cut off on reopen).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

META_FILE = "probe.json"
MANIFEST_FILE = "manifest.jsonl"
SHARDS_DIR = "shards"
KINDS = ("cross", "self")
STORE_DTYPE = torch.float16


def shard_name(number: int) -> str:
    return f"{SHARDS_DIR}/{number:05d}.safetensors"


def layer_tensor_name(j: int) -> str:
    return f"layer.{j}"


def settings_keys(meta: dict) -> set[str]:
    """The keys that define a dataset (all but the ``_`` bookkeeping ones)."""
    return {key for key in meta if not key.startswith("_")}


def _canonical(meta: dict) -> dict:
    # Through JSON and back, so tuples compare equal to the lists probe.json gives back.
    return json.loads(json.dumps(meta))


def _check_meta(meta: dict) -> None:
    for key in ("kind", "set", "word", "classes", "layers"):
        if key not in meta:
            raise ValueError(f"probe meta lacks {key!r}")
    if meta["kind"] not in KINDS:
        raise ValueError(f"probe meta 'kind' is {meta['kind']!r}; expected one of {KINDS}")
    classes = meta["classes"]
    if not classes or not all(isinstance(name, str) for name in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"probe meta 'classes' must be distinct names, got {classes!r}")
    if not meta["layers"]:
        raise ValueError("probe meta 'layers' is empty")
    for layer in meta["layers"]:
        shape = layer.get("shape") if isinstance(layer, dict) else None
        if not shape or "name" not in layer or not all(isinstance(n, int) and n > 0 for n in shape):
            raise ValueError(f"probe meta layer {layer!r} needs a 'name' and a 'shape' of positive ints")


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def read_meta(folder: str | os.PathLike) -> dict:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is no probing dataset: {META_FILE} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def read_manifest(folder: str | os.PathLike) -> tuple[list[dict], int]:
    """The finished shards' entries and the byte length of the manifest's valid part.

    An unreadable *last* line is the trace of a kill during the append and is skipped; an unreadable line
    before the end is damage nobody here made, so it is an error rather than silently lost samples.
    """
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return [], 0
    raw = path.read_bytes()
    entries, valid = [], 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines):
        last = number == len(lines) - 1
        if not line.strip():
            if not last:
                valid += len(line) + 1
            continue
        try:
            entry = json.loads(line)
            complete = not last  # a line without its newline was cut short, even if it parses
        except json.JSONDecodeError:
            complete = False
        if not complete:
            if last:
                break
            raise ValueError(f"{path}: line {number + 1} is unreadable (the manifest is damaged)")
        entries.append(entry)
        valid += len(line) + 1
    return entries, valid


def _shard_number(entry: dict) -> int:
    return int(Path(entry["shard"]).stem)


class ProbeWriter:
    """Appends samples to a probing dataset, a shard at a time; reopening resumes where a kill left off.

    ``add`` ignores an index that is already stored or waiting in the buffer, so a resumed build can simply
    replay its whole sample list. At most one shard's samples are held in memory.
    """

    def __init__(self, folder: str | os.PathLike, meta: dict, shard_size: int = 64):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        meta = _canonical(meta)
        _check_meta(meta)
        self.folder = Path(folder)
        self.shard_size = shard_size
        self.shapes = [tuple(layer["shape"]) for layer in meta["layers"]]
        self.n_classes = len(meta["classes"])
        (self.folder / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        self._open_meta(meta)
        entries, valid = read_manifest(self.folder)
        manifest = self.folder / MANIFEST_FILE
        if manifest.is_file() and manifest.stat().st_size != valid:
            # Cut the truncated tail, or the next appended line would be glued onto it.
            with open(manifest, "r+b") as handle:
                handle.truncate(valid)
                os.fsync(handle.fileno())
        for stale in (self.folder / SHARDS_DIR).glob(".*.tmp"):
            stale.unlink()  # a shard whose rename a kill prevented
        self._done = {int(i) for entry in entries for i in entry["indexes"]}
        self._next_shard = max((_shard_number(e) for e in entries), default=-1) + 1
        self._buffer: list[tuple[int, int, int, list[torch.Tensor]]] = []
        self._buffered: set[int] = set()

    def _open_meta(self, meta: dict) -> None:
        path = self.folder / META_FILE
        if path.is_file():
            stored = read_meta(self.folder)
            keys = settings_keys(stored) | settings_keys(meta)
            differing = sorted(key for key in keys if stored.get(key) != meta.get(key))
            if differing:
                raise ValueError(f"{self.folder} holds a dataset made with other settings; differing keys: "
                                 f"{', '.join(differing)} (use another folder or the same settings)")
            if stored == meta:
                return
        _write_atomic(path, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))

    def done(self) -> set[int]:
        """Sample indexes already stored in finished shards."""
        return set(self._done)

    def add(self, index: int, label: int, seed: int, maps: Sequence[torch.Tensor]) -> None:
        """One sample: ``maps`` holds one tensor per layer, in probe.json's order and shapes."""
        index = int(index)
        if index in self._done or index in self._buffered:
            return
        if not 0 <= int(label) < self.n_classes:
            raise ValueError(f"label {label} is outside 0..{self.n_classes - 1}")
        if len(maps) != len(self.shapes):
            raise ValueError(f"sample {index}: {len(maps)} maps for {len(self.shapes)} layers")
        for j, (tensor, shape) in enumerate(zip(maps, self.shapes, strict=True)):
            if tuple(tensor.shape) != shape:
                raise ValueError(f"sample {index}: layer {j} map has shape {tuple(tensor.shape)}, expected {shape}")
        stored = [tensor.detach().to("cpu", STORE_DTYPE).contiguous() for tensor in maps]
        self._buffer.append((index, int(label), int(seed), stored))
        self._buffered.add(index)
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered samples as one shard (nothing if the buffer is empty)."""
        if not self._buffer:
            return
        name = shard_name(self._next_shard)
        tensors = {
            "index": torch.tensor([s[0] for s in self._buffer], dtype=torch.int64),
            "label": torch.tensor([s[1] for s in self._buffer], dtype=torch.int64),
            "seed": torch.tensor([s[2] for s in self._buffer], dtype=torch.int64),
        }
        for j in range(len(self.shapes)):
            tensors[layer_tensor_name(j)] = torch.stack([s[3][j] for s in self._buffer])
        path = self.folder / name
        temp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(temp))
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
        indexes = [s[0] for s in self._buffer]
        line = json.dumps({"shard": name, "indexes": indexes}) + "\n"
        with open(self.folder / MANIFEST_FILE, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._done.update(indexes)
        self._next_shard += 1
        self._buffer, self._buffered = [], set()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ProbeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProbeData:
    """A probing dataset for reading: labels and indexes at once, maps one layer at a time.

    Samples are ordered by their index. Only the manifest's shards count, so a build that is still running
    (or was killed) reads as the samples it has finished.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        _check_meta(self.meta)
        self.classes: list[str] = list(self.meta["classes"])
        self.layers: list[str] = [layer["name"] for layer in self.meta["layers"]]
        self.shapes: list[tuple[int, ...]] = [tuple(layer["shape"]) for layer in self.meta["layers"]]
        entries, _ = read_manifest(self.folder)
        self._shards = [self.folder / entry["shard"] for entry in entries]
        indexes, labels, seeds = [], [], []
        for path in self._shards:
            with safe_open(str(path), framework="pt") as shard:
                indexes.append(shard.get_tensor("index"))
                labels.append(shard.get_tensor("label"))
                seeds.append(shard.get_tensor("seed"))
        index = torch.cat(indexes) if indexes else torch.zeros(0, dtype=torch.int64)
        self._order = torch.argsort(index)  # stored position -> sorted position, via _rows
        self._rows = torch.empty_like(self._order)
        self._rows[self._order] = torch.arange(len(index))
        self.indexes = index[self._order]
        if len(self.indexes) > 1 and bool((self.indexes[1:] == self.indexes[:-1]).any()):
            repeated = self.indexes[1:][self.indexes[1:] == self.indexes[:-1]][:5].tolist()
            raise ValueError(f"{self.folder}: sample indexes stored twice, e.g. {repeated} "
                             "(were two builds writing into one folder?)")
        self.labels = (torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64))[self._order]
        self.seeds = (torch.cat(seeds) if seeds else torch.zeros(0, dtype=torch.int64))[self._order]

    def __len__(self) -> int:
        return len(self.indexes)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def layer(self, j: int) -> torch.Tensor:
        """Layer ``j``'s maps of every sample, flattened: float32 [N, D_j], rows in index order."""
        width = 1
        for n in self.shapes[j]:
            width *= n
        out = torch.empty(len(self), width, dtype=torch.float32)
        start = 0
        for path in self._shards:
            with safe_open(str(path), framework="pt") as shard:
                maps = shard.get_tensor(layer_tensor_name(j))
            if tuple(maps.shape[1:]) != self.shapes[j]:
                raise ValueError(f"{path}: layer {j} has shape {tuple(maps.shape[1:])}, probe.json says "
                                 f"{self.shapes[j]}")
            rows = self._rows[start:start + len(maps)]
            out[rows] = maps.reshape(len(maps), width).float()
            start += len(maps)
        return out
