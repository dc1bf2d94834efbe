"""What a weights file holds, in short: tells two files apart without reading gigabytes.

Used where a run must know it has the same weights as before (a resumed batch or probe build, the
checkpoint) and where a report names the model that scored a column (CLIP, DINO, LPIPS).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK = 8, 64 * 1024


def file_fingerprint(path: Path) -> str:
    """A weights file's content in short, "<size>:<sha256>": sha256 over the size, a safetensors file's header
    (every tensor's name, dtype, shape and offsets) and 8 blocks of 64 KiB at 0, 1/7, ..., 7/7 of the tensor
    data (a .ckpt: of the whole file). About half a MiB read for any size; a fine-tune of the same model has
    the same header but other blocks, a copy of the file elsewhere gives the same fingerprint."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        start = 0
        head = handle.read(8)
        if path.suffix.lower() in (".safetensors", ".sft") and len(head) == 8:
            (length,) = struct.unpack("<Q", head)
            if length <= size - 8:
                digest.update(head + handle.read(length))
                start = 8 + length
        span = max(size - start - FINGERPRINT_BLOCK, 0)
        for k in range(FINGERPRINT_BLOCKS):
            handle.seek(start + span * k // (FINGERPRINT_BLOCKS - 1))
            digest.update(handle.read(FINGERPRINT_BLOCK))
    return f"{size}:{digest.hexdigest()[:32]}"
