"""Prompt-pair datasets for batch edits (issue 15): the paper's files, their generators, PIE-Bench, a folder.

* The FPE paper's files (as published with the official code, EasyNLP's FreePromptEditing/datasets): JSON
  lists with the keys as the originals spell them, the source prompt under ``soure_prompt``.
  ``read_official`` reads them (and ``StanfordCar.json``'s ``image``/``prompt`` rows), ``write_official``
  writes the same layout. The pack ships none of them: the generators below rebuild the paper's sets from
  their word lists (paper supplement §7) and, for the real-image sets, from the user's copy of the query
  files (``StanfordCar.json``, FlexIT's ``ImageNet.json``), so no third-party data is redistributed.
* PIE-Bench's ``mapping_file.json`` (Ju et al., ICLR 2024): prompts with the edited words in ``[ ]``,
  stripped as its evaluation strips them; the edit region as a run-length mask over 512x512.
* A folder of the user's photos with a CSV of ``image,source_prompt,target_prompt``.
* The demo model's sets over its drawn world (``demo.world``): ``demo-colours``, every ordered pair of the
  world's colours on one-object scenes, and ``demo-real-edit``, the same pairs with drawn scenes as the
  photos (written as PNG files beside the dataset file, from seeds the model was never trained on).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..demo import world
from ..shared import DuplicateKey, loads_strict

# The 28 colour words of Car-fake-edit / Car-real-edit (supplement §7.2), in the published files' order.
COLOURS_28 = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "black", "white", "gray", "brown",
              "beige", "cyan", "magenta", "teal", "lime", "olive", "navy", "maroon", "silver", "gold", "bronze",
              "peach", "coral", "indigo", "violet", "turquoise", "chocolate")
ANIMALS_10 = ("dog", "giraffe", "horse", "lion", "rabbit", "sheep", "cat", "monkey", "leopard", "tiger")
# ImageNet-fake-edit's prompt templates (supplement §7.2).
IMAGENET_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}", "a {} in the park")
PIE_SIZE = (512, 512)


class DatasetError(ValueError):
    """A dataset file the batch cannot use: one line naming the file, the place and the fix."""


@dataclass(frozen=True)
class EditItem:
    id: str
    source_prompt: str
    target_prompt: str
    image: str | None = None  # the photo, relative to the dataset's image folder (real-image sets)
    blended_words: tuple[str, ...] = ()  # PIE-Bench: the words its local blending uses
    mask: tuple[int, ...] = ()  # PIE-Bench: run-length (start, length, ...) over the 512x512 image
    edit_type: str | None = None  # PIE-Bench: editing_type_id


@dataclass(frozen=True)
class Query:
    """A row of FlexIT's ImageNet.json: a validation image, its class and the class to edit it into."""

    path: str
    source: str
    target: str
    is_test: bool


def duplicate_message(path: Path, key: str) -> str:
    return (f"{path}: the key {key!r} appears twice in one JSON object (a reader keeps only the last); "
            "rename or remove one of them")


def _load(path: Path):
    try:
        return loads_strict(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except DuplicateKey as exc:
        raise DatasetError(duplicate_message(path, exc.key)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a JSON file ({exc})") from None


def _text(row: dict, keys: tuple[str, ...], path: Path, index: int) -> str:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str):
            return value
    raise DatasetError(f"{path}: row {index} has no {' or '.join(repr(k) for k in keys)} text")


def read_official(path: Path) -> list[EditItem]:
    """A paper dataset file: ``soure_prompt`` (or ``source_prompt``, or StanfordCar's ``prompt``),
    ``edit_prompt``, and for real-image sets ``image_name`` (or ``image``)."""
    rows = _load(path)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise DatasetError(f"{path}: expected a JSON list of objects, as the paper's dataset files are")
    items = []
    for i, row in enumerate(rows):
        image = row.get("image_name", row.get("image"))
        items.append(EditItem(id=str(i), source_prompt=_text(row, ("soure_prompt", "source_prompt", "prompt"), path, i),
                              target_prompt=_text(row, ("edit_prompt",), path, i),
                              image=str(image) if image is not None else None))
    return items


def write_official(items: list[EditItem], path: Path) -> None:
    """The paper's layout (``image_name`` first where there is one; ``soure_prompt`` spelled as published)."""
    rows = []
    for item in items:
        row = {"image_name": item.image} if item.image is not None else {}
        row.update(soure_prompt=item.source_prompt, edit_prompt=item.target_prompt)
        rows.append(row)
    Path(path).write_text(json.dumps(rows, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


def read_imagenet_queries(path: Path) -> list[Query]:
    """FlexIT's ImageNet.json (path, source, target, is_test as the strings 'True'/'False')."""
    rows = _load(path)
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: expected FlexIT's ImageNet.json, a JSON list of queries")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(Query(str(row["path"]), str(row["source"]), str(row["target"]),
                             str(row.get("is_test")).lower() == "true"))
        except (KeyError, TypeError):
            raise DatasetError(f"{path}: row {i} lacks path, source or target") from None
    return out


# --- generators (supplement §7.2) -------------------------------------------------------------------

def car_fake_edit(colours=COLOURS_28) -> list[EditItem]:
    """Every ordered pair of distinct colours, "a <c1> car" -> "a <c2> car" (28 colours: 756 pairs)."""
    pairs = [(a, b) for a in colours for b in colours if a != b]
    return [EditItem(str(i), f"a {a} car", f"a {b} car") for i, (a, b) in enumerate(pairs)]


def animal_park_pairs(animals=ANIMALS_10) -> list[EditItem]:
    """"a <a> standing in the park" -> "a <b> standing in the park", every ordered pair (10 animals: 90)."""
    pairs = [(a, b) for a in animals for b in animals if a != b]
    return [EditItem(f"animal-{i}", f"a {a} standing in the park", f"a {b} standing in the park")
            for i, (a, b) in enumerate(pairs)]


def car_real_edit(stanford_cars: list[EditItem], colours=COLOURS_28) -> list[EditItem]:
    """Each Stanford Cars photo (``StanfordCar.json``: its CLIP-matched "a <colour> car") to every other
    colour; reproduces the published Car_real_edit.json (150 photos: 4058 pairs)."""
    pairs = []
    for car in stanford_cars:
        words = car.source_prompt.split()
        own = words[1] if len(words) == 3 else None  # "a ivory car": a colour outside the 28 keeps all 28
        pairs += [(car, colour) for colour in colours if colour != own]
    return [EditItem(str(i), car.source_prompt, f"a {colour} car", image=car.image)
            for i, (car, colour) in enumerate(pairs)]


def imagenet_real_edit(queries: list[Query]) -> list[EditItem]:
    """The test queries as "a photo of a <source>" -> "a photo of a <target>" (1092; the published file)."""
    tests = [q for q in queries if q.is_test]
    return [EditItem(str(i), f"a photo of a {q.source}", f"a photo of a {q.target}", image=q.path)
            for i, q in enumerate(tests)]


def imagenet_fake_edit(queries: list[Query], seed: int = 0, animals=ANIMALS_10) -> list[EditItem]:
    """The test queries, each in a template drawn with ``seed`` (the published file's draw is not
    recoverable), then the 90 animal pairs: 1182 for FlexIT's 1092 test queries."""
    rng = random.Random(seed)
    tests = [q for q in queries if q.is_test]
    items = []
    for i, q in enumerate(tests):
        template = rng.choice(IMAGENET_TEMPLATES)
        items.append(EditItem(str(i), template.format(q.source), template.format(q.target)))
    return items + animal_park_pairs(animals)


# --- the demo model's world ---------------------------------------------------------------------------

DEMO_REAL_SEED = 10_000_000  # demo-real-edit's scenes: far above the training scenes' (20260604 + 0..15999)
DEMO_PHOTOS = "demo_photos"  # the folder beside the dataset file that holds demo-real-edit's photos


def demo_pairs() -> list[tuple[str, str, str, str]]:
    """(colour, other colour, shape, ground) for every ordered pair of the world's 6 colours (30), in the
    order car-fake-edit pairs its colours; the shape cycles with the pair's number and the ground with every
    4th (the first 16 pairs meet every shape on every ground)."""
    colours = tuple(world.COLOURS)
    pairs = [(a, b) for a in colours for b in colours if a != b]
    shapes, grounds = world.SHAPES, world.GROUNDS
    return [(a, b, shapes[i % len(shapes)], grounds[i // len(shapes) % len(grounds)]) for i, (a, b) in enumerate(pairs)]


def demo_colours() -> list[EditItem]:
    """"a <c1> <shape> on <ground>" -> "a <c2> <shape> on <ground>", every ordered pair of colours (30): the
    demo model's counterpart of car-fake-edit, in the captions it was trained on."""
    return [EditItem(str(i), f"a {a} {shape} on {ground}", f"a {b} {shape} on {ground}")
            for i, (a, b, shape, ground) in enumerate(demo_pairs())]


def demo_real_scenes() -> list[tuple[world.Scene, str]]:
    """demo-real-edit's photos as scenes (one object, drawn from seed DEMO_REAL_SEED + i), each with the
    colour its edit asks for: demo-colours' pairs, shapes and grounds."""
    return [(world.random_scene(DEMO_REAL_SEED + i, objects=1, colour=a, shape=shape, ground=ground), b)
            for i, (a, b, shape, ground) in enumerate(demo_pairs())]


def demo_photo_name(scene: world.Scene) -> str:
    """The photo's path relative to the dataset file's folder (the seed first: one name, one picture)."""
    thing = scene.things[0]
    return f"{DEMO_PHOTOS}/{scene.seed}_{thing.colour}_{thing.shape}_{scene.ground}.png"


def demo_real_edit() -> list[EditItem]:
    """Each drawn photo, captioned as the world captions it, to its other colour (30 photos, 30 edits)."""
    return [EditItem(str(i), scene.caption, scene.with_colour(0, colour).caption, image=demo_photo_name(scene))
            for i, (scene, colour) in enumerate(demo_real_scenes())]


def write_demo_photos(folder: Path) -> list[Path]:
    """Draw demo-real-edit's photos (128 px PNG) into ``folder``/demo_photos, the names its items give."""
    paths = []
    for scene, _ in demo_real_scenes():
        path = Path(folder) / demo_photo_name(scene)
        path.parent.mkdir(parents=True, exist_ok=True)
        world.draw(scene).save(path)
        paths.append(path)
    return paths


# --- PIE-Bench ---------------------------------------------------------------------------------------

def strip_markers(prompt: str) -> str:
    """PIE-Bench marks the edited words with [ ]; its evaluation removes the brackets before encoding."""
    return prompt.replace("[", "").replace("]", "")


def read_pie_bench(path: Path) -> list[EditItem]:
    """``mapping_file.json``: {id: {image_path, original_prompt, editing_prompt, blended_word, mask,
    editing_type_id, ...}}, in the file's order."""
    entries = _load(path)
    if not isinstance(entries, dict):
        raise DatasetError(f"{path}: PIE-Bench expects an object of entries keyed by image id "
                           f"({{\"000000000000\": {{\"image_path\": ..., \"original_prompt\": ...}}, ...}}), not a "
                           f"{_json_kind(entries)}")
    if not entries:
        raise DatasetError(f"{path}: no entries in the mapping; add PIE-Bench's entries (an object per image id)")
    items = []
    size = PIE_SIZE[0] * PIE_SIZE[1]
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: entry {key!r} is not an object")
        mask = entry.get("mask")
        mask = [] if mask is None else mask
        if (not isinstance(mask, list) or len(mask) % 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in mask)):
            raise DatasetError(f"{path}: entry {key!r}: mask must be (start, length) pairs of whole numbers")
        # A run that starts in the picture and ends past it is cut, as PIE-Bench's own decoder does; one that
        # starts past it is a broken annotation.
        outside = next(((start, length) for start, length in zip(mask[0::2], mask[1::2], strict=True)
                        if start >= size), None)
        if outside is not None:
            raise DatasetError(f"{path}: entry {key!r}: mask run (start {outside[0]}, length {outside[1]}) starts past "
                               f"the {PIE_SIZE[0]}x{PIE_SIZE[1]} picture ({size} pixels); mask runs must start inside it")
        image = entry.get("image_path")
        items.append(EditItem(
            id=str(key), source_prompt=strip_markers(_text(entry, ("original_prompt",), path, key)),
            target_prompt=strip_markers(_text(entry, ("editing_prompt",), path, key)),
            image=str(image) if image is not None else None,
            blended_words=tuple(str(entry.get("blended_word") or "").split()), mask=tuple(mask),
            edit_type=str(entry["editing_type_id"]) if "editing_type_id" in entry else None))
    return items


def _json_kind(value) -> str:
    return {list: "list", str: "string", bool: "true/false", type(None): "null"}.get(type(value), "number")


def decode_mask(runs: tuple[int, ...], shape: tuple[int, int] = PIE_SIZE, border: bool = True) -> np.ndarray:
    """A PIE-Bench mask as a bool array: (start, length) runs over the flattened image; with ``border``
    its outermost pixels count as edited, as PIE-Bench's evaluation sets them (annotation errors there)."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    for start, length in zip(runs[0::2], runs[1::2], strict=True):
        flat[start:start + length] = True  # a run past the picture is cut at its end, as PIE-Bench's decoder does
    mask = flat.reshape(shape)
    if border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def encode_mask(mask: np.ndarray) -> tuple[int, ...]:
    """The (start, length) runs of a bool mask, flattened row by row (the inverse of ``decode_mask``
    without the border)."""
    flat = np.concatenate([[False], np.asarray(mask, dtype=bool).reshape(-1), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return tuple(int(v) for pair in zip(starts, ends - starts, strict=True) for v in pair)


# --- the user's photos -------------------------------------------------------------------------------

def read_csv_rows(path: Path, need: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV with a header naming ``need`` (more columns allowed): UTF-8, with or
    without Excel's byte-order mark; blank lines skipped (line numbers stay the file's: a row's first line)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            rows, spans, start = [], [(1, reader.line_num, header)], reader.line_num + 1
            for fields in reader:
                if fields:
                    rows.append((start, {name: fields[i] if i < len(fields) else None
                                         for i, name in enumerate(header)}))
                    spans.append((start, reader.line_num, fields))
                start = reader.line_num + 1
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save it as CSV UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read it as CSV ({exc})") from None
    _check_quotes(path, header, spans)
    _check_fields(path, header, spans)
    lacking = [name for name in need if name not in header]
    if lacking:
        raise DatasetError(f"{path}: the header lacks {', '.join(lacking)} (it has: {', '.join(header) or 'nothing'}); "
                           f"the first line names the columns {','.join(need)}")
    for line, row in rows:
        if any(not (row.get(key) or "").strip() for key in need):
            raise DatasetError(f"{path}: line {line} has an empty {next(k for k in need if not (row.get(k) or '').strip())}")
    if not rows:
        raise DatasetError(f"{path}: no rows under the header {','.join(need)}")
    return rows


def _check_quotes(path: Path, header: list[str], spans: list[tuple[int, int, list[str]]]) -> None:
    """A field with a line break in it is a quote left open: the csv module reads on to the quote that
    closes it, or to the end of the file, and the rows in between become one field (a prompt, an image
    name and an id are one line each)."""
    for first, last, fields in spans:
        broken = next((i for i, text in enumerate(fields) if "\n" in text or "\r" in text), None)
        if broken is None:
            continue
        column = header[broken] if first > 1 and broken < len(header) else f"field {broken + 1}"
        if _ends_inside_quotes(path):
            swallowed = f", and lines {first + 1} to {last} went into that field" if last > first else ""
            raise DatasetError(f"{path}: line {first}: the quote that opens {column} is never closed (the file ends "
                               f"inside it){swallowed}; close the quote, or write a quote meant as text as two (\"\")")
        raise DatasetError(f"{path}: line {first}: the quote that opens {column} closes only on line {last}, so the "
                           f"lines between went into that field; close it on line {first}, or write a quote meant as "
                           'text as two ("")')
    if spans and _ends_inside_quotes(path):  # opened on the last line of a file without a final line break
        first = spans[-1][0]
        raise DatasetError(f"{path}: line {first}: a quote opened on that line is never closed (the file ends inside "
                           'it); close the quote, or write a quote meant as text as two ("")')


def _check_fields(path: Path, header: list[str], spans: list[tuple[int, int, list[str]]]) -> None:
    """A column named twice (which one counts is unknown), and a row with more fields than the header names:
    an unquoted comma in a prompt, which would cut the prompt at the comma without a word (empty fields past
    the header, as spreadsheets write them, lose nothing and pass)."""
    named = [name for name in header if name]
    twice = next((name for i, name in enumerate(named) if name in named[:i]), None)
    if twice is not None:
        raise DatasetError(f"{path}: the header names the column {twice} twice; name each column once")
    for first, _last, fields in spans[1:]:
        if len(fields) > len(header) and any(text.strip() for text in fields[len(header):]):
            raise DatasetError(f"{path}: line {first} has {len(fields)} fields but the header names {len(header)}; "
                               'quote a prompt that holds a comma ("a dog, wearing a hat")')


def _ends_inside_quotes(path: Path) -> bool:
    # The strict reader says "unexpected end of data" where the lenient one ends the open field at EOF.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, strict=True)
        while True:
            try:
                if next(reader, None) is None:
                    return False
            except csv.Error as exc:  # other strict complaints ('"a"b') the lenient reader accepts: read on
                if "unexpected end of data" in str(exc):
                    return True


def read_folder(folder: Path, prompts: Path) -> list[EditItem]:
    """Photos in ``folder`` with a CSV ``prompts`` of ``image,source_prompt,target_prompt`` (a header row;
    several rows may share a photo: its inversion is then paid once)."""
    folder, prompts = Path(folder), Path(prompts)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder of images")
    items = []
    for n, (line, row) in enumerate(read_csv_rows(prompts, ("image", "source_prompt", "target_prompt"))):
        image = row["image"].strip()
        if not (folder / image).is_file():
            raise DatasetError(f"{prompts}: line {line}: no image {image!r} in {folder}")
        items.append(EditItem(str(n), row["source_prompt"].strip(), row["target_prompt"].strip(), image=image))
    return items
