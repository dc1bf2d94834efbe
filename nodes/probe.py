"""FPE Save Attention Maps: a recorded run's per-layer maps of one word, as a safetensors file (probing data)."""

from __future__ import annotations

import json
import os
import re
from pathlib import PureWindowsPath

from safetensors.torch import save_file

from ..fpe_attention import notify
from ..fpe_attention.attention_maps import check_text, text_differs, word_items
from ..fpe_attention.errors import FPEError
from ..fpe_attention.layers import key_name
from ..fpe_attention.probe_maps import SELF_SIDE, cross_word_maps, self_maps
from ..fpe_attention.prompt_words import prompt_tokens
from ..fpe_attention.validate import check_number
from .attention_maps import CLIP, RECORD, SAMPLES, TEXT
from .common import PROBING

MAX_PREFIX_BYTES = 200  # + '_00001_.safetensors' stays within the 255-byte file names of common file systems
_PREFIX_FIX = "give a short name such as fpe_maps, or subfolder/name inside ComfyUI's temp folder"


def check_prefix(prefix) -> str:
    """``filename_prefix`` as ComfyUI will use it, or an FPEError naming the input and the fix: checked before
    anything is computed or written (too long, control characters, absolute or leading out of the temp folder)."""
    if not isinstance(prefix, str):
        raise FPEError(f"filename_prefix: expected text, got {type(prefix).__name__}: {_PREFIX_FIX}")
    size = len(prefix.encode("utf-8", "surrogatepass"))
    if size > MAX_PREFIX_BYTES:
        raise FPEError(f"filename_prefix: too long ({len(prefix)} characters; at most {MAX_PREFIX_BYTES} bytes as "
                       f"UTF-8): {_PREFIX_FIX}")
    bad = next((c for c in prefix if ord(c) < 32 or 127 <= ord(c) < 160 or 0xD800 <= ord(c) < 0xE000), None)
    if bad is not None:
        kind = "half of a UTF-16 pair" if ord(bad) >= 0xD800 else "a control character"
        raise FPEError(f"filename_prefix: holds {bad!r} ({kind}), which a file name cannot hold: {_PREFIX_FIX}")
    if not prefix.strip():
        raise FPEError(f"filename_prefix: empty: {_PREFIX_FIX}")
    if prefix[0] in "/\\" or os.path.isabs(prefix) or (os.name == "nt" and PureWindowsPath(prefix).drive):
        raise FPEError(f"filename_prefix: {prefix!r} is an absolute path, but the file goes inside ComfyUI's "
                       f"temp folder: {_PREFIX_FIX}")
    depth = 0
    for part in re.split(r"[\\/]", prefix):
        depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        if depth < 0:
            raise FPEError(f"filename_prefix: {prefix!r} leads out of ComfyUI's temp folder ('..'): {_PREFIX_FIX}")
    if depth == 0:
        raise FPEError(f"filename_prefix: {prefix!r} names no file: {_PREFIX_FIX}")
    return prefix


class FPESaveAttentionMaps:
    DISPLAY_NAME = "FPE Save Attention Maps"
    CATEGORY = PROBING
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    DESCRIPTION = (
        "Saves what a probe learns from (paper §3.3, supplement §7.1): for each recorded cross-attention layer the "
        "word's map (its tokens' attention, averaged over heads and the recorded steps), and each recorded "
        "self-attention layer's map (maps of 256x256 and more area-averaged to 256x256), as one safetensors file in "
        "ComfyUI's temp folder (which ComfyUI empties when it starts). `fpe probe build` collects these files "
        "from many prompts and seeds.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "fpe_record": RECORD,
                "samples": SAMPLES,
                "clip": CLIP,
                "text": TEXT,
                "word": ("STRING", {"default": "", "multiline": False,
                                    "tooltip": "The word whose cross-attention maps are saved (several words: their "
                                               "tokens summed). Empty: self-attention maps only."}),
                "self_side": ("INT", {"default": SELF_SIDE, "min": 8, "max": 4096, "step": 8,
                                      "tooltip": "Self-attention maps larger than side x side are area-averaged to "
                                                 "it (the supplement's 256)."}),
                "filename_prefix": ("STRING", {"default": "fpe_maps",
                                               "tooltip": "Name of the file in the temp folder (a counter is added)."}),
            },
            "optional": {
                "release_run": ("BOOLEAN", {"default": False,
                                            "tooltip": "Free the run's maps from the record once saved (for many "
                                                       "samples in a row). Nodes that read the same run later (a "
                                                       "Word Heatmap, another save) then stop with an error naming "
                                                       "this node: keep it off when they share the run."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def save(self, fpe_record, samples, clip, text, word, self_side, filename_prefix, release_run=False,
             unique_id=None):
        import folder_paths  # ComfyUI's own module: only importable once the host runs

        side = int(check_number("self_side", self_side, 8, 4096))
        check_prefix(filename_prefix)  # before the maps are computed: a bad name costs nothing
        run = fpe_record.run_for(samples["samples"])
        tensors, meta = {}, {"run": run.describe(), "evaluations": str(run.evaluations)}
        cross_keys, self_keys = run.layers("cross"), run.layers("self")
        if word.strip():
            if not cross_keys:
                raise FPEError("word: the record holds no cross-attention map; set FPE Attention Record's "
                               "cross_layers (e.g. 'all'), or leave word empty for self-attention maps only")
            tokens = prompt_tokens(clip, text)
            check_text(run, tokens)
            if text_differs(run, clip.encode_from_tokens(clip.tokenize(text))):
                notify.warn("save attention maps", "the text does not encode to the recorded prompt: the word's "
                                                   "tokens may be another prompt's; give the prompt exactly as encoded")
                meta["text_differs"] = "1"
            (_, positions), = word_items(tokens, word.replace(",", " "), "word")  # one item: every word's tokens
            meta.update(word=word.strip(), positions=json.dumps(positions))
            tensors.update({f"cross.{name}": m for name, m in cross_word_maps(run, cross_keys, positions).items()})
        if self_keys:
            tensors.update({f"self.{name}": m for name, m in self_maps(run, self_keys, side).items()})
        if not tensors:
            raise FPEError("fpe_record holds nothing to save: record self-attention layers, or name a word")
        meta.update(cross_layers=json.dumps([key_name(k) for k in cross_keys] if word.strip() else []),
                    self_layers=json.dumps([key_name(k) for k in self_keys]),
                    grids=json.dumps({key_name(k): list(run.grids[k]) for k in {*cross_keys, *self_keys}}))
        try:
            from safetensors import SafetensorError
        except ImportError:  # an older safetensors: its errors are OSErrors
            SafetensorError = OSError  # noqa: N806
        filename = None
        try:
            folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
                filename_prefix, folder_paths.get_temp_directory())
            filename = f"{name}_{counter:05}_.safetensors"
            save_file({k: v.float().contiguous() for k, v in tensors.items()}, f"{folder}/{filename}", metadata=meta)
        except (OSError, ValueError, SafetensorError) as exc:  # what the checks above cannot see (the file system)
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            where = f"{filename!r} " if filename else ""
            if filename:  # a file cut short (a full disk) is not left for `fpe probe build` to read
                try:
                    os.remove(os.path.join(folder, filename))
                except OSError:
                    pass
            raise FPEError(f"filename_prefix: cannot write {where}in ComfyUI's temp folder ({reason[:200]}): "
                           f"{_PREFIX_FIX}") from None
        if release_run:
            # a self-attention run at 512 px is ~340 MB the record would keep for 4 runs
            run.release(f"FPE Save Attention Maps{f' (node {unique_id})' if unique_id is not None else ''}")
        return {"ui": {"fpe_maps": [{"filename": filename, "subfolder": subfolder, "type": "temp"}]}}
