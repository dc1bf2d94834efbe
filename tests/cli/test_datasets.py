"""Datasets for batch edits: the paper's files read and written as published, their generators, PIE-Bench.

Where the paper's published files are beside the project (``../shared/data/fpe-datasets``), the generators
are checked to rebuild them row for row; the format tests use files written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpe_headless.batch import datasets

PUBLISHED = Path(__file__).resolve().parents[3] / "shared" / "data" / "fpe-datasets"
needs_published = pytest.mark.skipif(not PUBLISHED.is_dir(), reason="the paper's dataset files are not here")


def _pairs(items):
    return [(item.image, item.source_prompt, item.target_prompt) for item in items]


def test_generators_give_the_documented_counts():
    cars = datasets.car_fake_edit()
    assert len(cars) == 756 == len({(i.source_prompt, i.target_prompt) for i in cars})
    assert all(i.source_prompt != i.target_prompt for i in cars)
    animals = datasets.animal_park_pairs()
    assert len(animals) == 90 and animals[0].target_prompt == "a giraffe standing in the park"
    queries = [datasets.Query(f"n{i}/x.JPEG", f"class{i}", f"class{i + 1}", i % 2 == 0) for i in range(10)]
    fake = datasets.imagenet_fake_edit(queries, seed=3)
    assert len(fake) == 5 + 90 and fake == datasets.imagenet_fake_edit(queries, seed=3)
    for item, query in zip(fake[:5], queries[0::2], strict=True):  # one template, both sides
        template = next(t for t in datasets.IMAGENET_TEMPLATES if t.format(query.source) == item.source_prompt)
        assert item.target_prompt == template.format(query.target)
    real = datasets.imagenet_real_edit(queries)
    assert _pairs(real)[0] == ("n0/x.JPEG", "a photo of a class0", "a photo of a class1") and len(real) == 5


def test_official_layout_round_trips(tmp_path):
    rows = [{"image_name": "a.jpg", "soure_prompt": "a red car", "edit_prompt": "a blue car"},
            {"image_name": "b.jpg", "soure_prompt": "a cat", "edit_prompt": "a dog"}]
    path = tmp_path / "set.json"
    path.write_text(json.dumps(rows))
    items = datasets.read_official(path)
    assert _pairs(items) == [("a.jpg", "a red car", "a blue car"), ("b.jpg", "a cat", "a dog")]
    out = tmp_path / "out.json"
    datasets.write_official(items, out)
    assert json.loads(out.read_text()) == rows and list(json.loads(out.read_text())[0]) == list(rows[0])
    stanford = tmp_path / "stanford.json"
    stanford.write_text(json.dumps([{"image": "c.jpg", "prompt": "a ivory car", "edit_prompt": "a red car"}]))
    assert len(datasets.car_real_edit(datasets.read_official(stanford))) == 28  # ivory is not one of the 28
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"edit_prompt": "x"}]))
    with pytest.raises(datasets.DatasetError, match="row 0 has no 'soure_prompt'"):
        datasets.read_official(bad)


@needs_published
def test_generators_rebuild_the_published_files():
    def published(name):
        return _pairs(datasets.read_official(PUBLISHED / name))

    assert _pairs(datasets.car_fake_edit()) == published("Car_fake_edit.json")
    stanford = datasets.read_official(PUBLISHED / "StanfordCar.json")
    assert _pairs(datasets.car_real_edit(stanford)) == published("Car_real_edit.json")  # 4058 rows
    queries = datasets.read_imagenet_queries(PUBLISHED / "ImageNet.json")
    assert _pairs(datasets.imagenet_real_edit(queries)) == published("ImageNet_real_edit.json")  # 1092
    fake = published("ImageNet_fake_edit.json")
    assert len(fake) == 1182 == len(datasets.imagenet_fake_edit(queries))
    assert fake[-90:] == _pairs(datasets.animal_park_pairs())
    tests = [q for q in queries if q.is_test]
    for (_, source, target), query in zip(fake[:1092], tests, strict=True):  # a template per query, in order
        assert any(t.format(query.source) == source and t.format(query.target) == target
                   for t in datasets.IMAGENET_TEMPLATES), (source, target)


def test_pie_bench_markers_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    truth = np.zeros((512, 512), dtype=bool)
    truth[100:200, 50:300] = True
    truth[rng.integers(0, 512, 40), rng.integers(0, 512, 40)] = True
    runs = datasets.encode_mask(truth)
    mapping = {"000000000001": {
        "image_path": "0_random_140/000000000001.jpg", "original_prompt": "a [white] horse in a field",
        "editing_prompt": "a [black] horse in a field", "editing_instruction": "make it black",
        "editing_type_id": "6", "blended_word": "horse horse", "mask": list(runs)}}
    path = tmp_path / "mapping_file.json"
    path.write_text(json.dumps(mapping))
    (item,) = datasets.read_pie_bench(path)
    assert (item.source_prompt, item.target_prompt) == ("a white horse in a field", "a black horse in a field")
    assert item.image == "0_random_140/000000000001.jpg" and item.edit_type == "6"
    assert item.blended_words == ("horse", "horse")
    assert np.array_equal(datasets.decode_mask(item.mask, border=False), truth)
    flat = np.zeros(512 * 512, dtype=bool)  # the format read directly: (start, length) pairs
    for start, length in zip(runs[0::2], runs[1::2], strict=True):
        for j in range(length):
            flat[start + j] = True
    with_border = flat.reshape(512, 512).copy()
    with_border[[0, -1], :] = True
    with_border[:, [0, -1]] = True
    assert np.array_equal(datasets.decode_mask(item.mask), with_border)
    mapping["000000000001"]["mask"] = [5]
    path.write_text(json.dumps(mapping))
    with pytest.raises(datasets.DatasetError, match="mask must be"):
        datasets.read_pie_bench(path)


def test_a_folder_of_photos_with_a_prompt_file(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"png")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("image,source_prompt,target_prompt\ncat.png,a cat,a dog\ncat.png,a cat,a fox\n")
    items = datasets.read_folder(tmp_path / "photos", prompts)
    assert _pairs(items) == [("cat.png", "a cat", "a dog"), ("cat.png", "a cat", "a fox")]
    prompts.write_text("image,source_prompt,target_prompt\ncat.png,a cat,a dog\nowl.png,an owl,a hawk\n")
    with pytest.raises(datasets.DatasetError, match=r"line 3: no image 'owl.png'"):
        datasets.read_folder(tmp_path / "photos", prompts)


def test_a_repeated_key_is_a_broken_file(tmp_path):
    """A JSON object naming a key twice loses a value without a word (json keeps the last): refused by name."""
    def entry(image):
        return json.dumps({"image_path": image, "original_prompt": "a [white] horse",
                           "editing_prompt": "a [black] horse", "mask": []})

    mapping = tmp_path / "mapping_file.json"
    mapping.write_text('{"000000000001": ' + entry("a.jpg") + ',\n "000000000001": ' + entry("b.jpg") + "}")
    with pytest.raises(datasets.DatasetError, match=r"mapping_file.json: the key '000000000001' appears twice"):
        datasets.read_pie_bench(mapping)
    paper = tmp_path / "Car_fake_edit.json"  # the paper's layout: a row with two edit_prompt
    paper.write_text('[{"soure_prompt": "a red car", "edit_prompt": "a blue car", "edit_prompt": "a gold car"}]')
    with pytest.raises(datasets.DatasetError, match=r"Car_fake_edit.json: the key 'edit_prompt' appears twice"):
        datasets.read_official(paper)
    queries = tmp_path / "ImageNet.json"
    queries.write_text('[{"path": "a.JPEG", "source": "cat", "target": "dog", "target": "fox", "is_test": "True"}]')
    with pytest.raises(datasets.DatasetError, match=r"ImageNet.json: the key 'target' appears twice"):
        datasets.read_imagenet_queries(queries)
    mapping.write_text('{"000000000001": ' + entry("a.jpg") + ',\n "000000000002": ' + entry("b.jpg") + "}")
    assert [item.image for item in datasets.read_pie_bench(mapping)] == ["a.jpg", "b.jpg"]  # distinct keys read


def test_an_unclosed_quote_is_named_where_it_opens(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"png")
    (tmp_path / "owl.png").write_bytes(b"png")
    prompts = tmp_path / "prompts.csv"
    # the file: the csv module reads to the end of the file inside the quote, and the check that
    # followed blamed "line 3 has an empty target_prompt"
    prompts.write_text('image,source_prompt,target_prompt\ncat.png,"a cat,a dog\nowl.png,an owl,a hawk\n')
    with pytest.raises(datasets.DatasetError) as caught:
        datasets.read_folder(tmp_path, prompts)
    message = str(caught.value)
    assert "line 2: the quote that opens source_prompt is never closed" in message and "lines 3 to 3" in message
    assert "empty" not in message and "\n" not in message
    # a stray quote that a later one closes: the rows between became one field
    prompts.write_text('image,source_prompt,target_prompt\ncat.png,"a cat,a dog\nowl.png,an owl,a hawk\n'
                       'cat.png,"a cat",a fox\n')
    with pytest.raises(datasets.DatasetError, match=r"line 2: the quote that opens source_prompt closes only on "
                                                    r"line 4"):
        datasets.read_folder(tmp_path, prompts)
    prompts.write_text('image,source_prompt,target_prompt\ncat.png,a cat,"a ""big"" dog\n')  # the last field
    with pytest.raises(datasets.DatasetError, match=r"line 2: the quote that opens target_prompt is never closed "
                                                    r"\(the file ends inside it\); close the quote"):
        datasets.read_folder(tmp_path, prompts)
    # opened on the last line of a file saved without a final line break: no field holds a line break
    prompts.write_text('image,source_prompt,target_prompt\ncat.png,a cat,a dog\nowl.png,"an owl,a hawk')
    with pytest.raises(datasets.DatasetError, match=r"line 3: a quote opened on that line is never closed \(the "
                                                    r"file ends inside it\)"):
        datasets.read_folder(tmp_path, prompts)
    prompts.write_text('image,source_prompt,target_prompt\ncat.png,"a ""big"" cat",a dog\n\nowl.png,an owl,'
                       'a 5" hawk\n')  # quotes as CSV writes them, a blank line, a quote inside a plain field
    items = datasets.read_folder(tmp_path, prompts)
    assert [(i.source_prompt, i.target_prompt) for i in items] == [('a "big" cat', "a dog"), ("an owl", 'a 5" hawk')]
    prompts.write_text('image,source_prompt,target_prompt\ncat.png,a cat,a dog\n\nowl.png,an owl,\n')
    with pytest.raises(datasets.DatasetError, match=r"line 4 has an empty target_prompt"):  # lines stay the file's
        datasets.read_folder(tmp_path, prompts)


def test_pie_bench_mask_and_mapping_mistakes_are_named(tmp_path):
    """A mask that is a number or true (a TypeError before), a run starting past the 512x512 picture, an
    empty mapping (a success with no results before) and a list (read as the paper's format before)."""
    from fpe_headless.batch import batch

    entry = {"image_path": "a.jpg", "original_prompt": "a [cat]", "editing_prompt": "a [dog]", "mask": [0, 10]}
    path = tmp_path / "mapping_file.json"
    for mask in (5, True, "abc", [[0, 10]], [True, 5]):
        path.write_text(json.dumps({"000": {**entry, "mask": mask}}))
        with pytest.raises(datasets.DatasetError, match=r"entry '000': mask must be \(start, length\) pairs"):
            datasets.read_pie_bench(path)
    for mask in ([10**12, 5], [512 * 512, 5]):
        path.write_text(json.dumps({"000": {**entry, "mask": mask}}))
        with pytest.raises(datasets.DatasetError, match=rf"entry '000': mask run \(start {mask[0]}, length 5\) "
                                                        r"starts past the 512x512 picture"):
            datasets.read_pie_bench(path)
    path.write_text(json.dumps({"000": {**entry, "mask": [512 * 512 - 4, 5]}}))  # ends past it: cut, as PIE-Bench's
    cut = datasets.decode_mask(datasets.read_pie_bench(path)[0].mask, border=False)
    assert cut.sum() == 4 and cut.reshape(-1)[-4:].all()
    path.write_text(json.dumps({"000": {**entry, "mask": [512 * 512 - 5, 5]}}))  # the last pixels: inside
    assert datasets.read_pie_bench(path)[0].mask == (512 * 512 - 5, 5)
    path.write_text("{}")
    with pytest.raises(datasets.DatasetError, match=r"mapping_file.json: no entries"):
        batch.load_items(str(path))
    path.write_text(json.dumps([entry]))
    with pytest.raises(batch.BatchError, match=r"PIE-Bench expects an object of entries.*not a list"):
        batch.load_items(str(path))
    other = tmp_path / "pie.json"  # another name, PIE-Bench's keys: still told
    other.write_text(json.dumps([entry]))
    with pytest.raises(batch.BatchError, match=r"PIE-Bench expects an object of entries"):
        batch.load_items(str(other))
    paper = tmp_path / "Car_fake_edit.json"  # the paper's list still reads
    paper.write_text(json.dumps([{"soure_prompt": "a red car", "edit_prompt": "a blue car"}]))
    assert batch.load_items(str(paper))[1][0].target_prompt == "a blue car"


def test_a_comma_in_an_unquoted_prompt_or_a_column_named_twice_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("image,source_prompt,target_prompt\na.png,a cat,a dog, wearing a red hat\n")
    with pytest.raises(datasets.DatasetError) as caught:
        datasets.read_folder(tmp_path, prompts)
    assert str(caught.value) == (f"{prompts}: line 2 has 4 fields but the header names 3; quote a prompt that holds "
                                 'a comma ("a dog, wearing a hat")')
    prompts.write_text("image,source_prompt,target_prompt,image\na.png,a cat,a dog,b.png\n")
    with pytest.raises(datasets.DatasetError, match=r"the header names the column image twice"):
        datasets.read_folder(tmp_path, prompts)
    prompts.write_text('image,source_prompt,target_prompt\na.png,a cat,"a dog, wearing a red hat"\n'
                       "a.png,a cat,a fox,,\n")  # quoted; empty fields past the header (a spreadsheet's) lose nothing
    assert [i.target_prompt for i in datasets.read_folder(tmp_path, prompts)] == ["a dog, wearing a red hat", "a fox"]


# --- the demo model's sets over its drawn world -------------------------------------------------------

TRAINING_SEEDS = range(20260604, 20260604 + 16000)  # dev/train_demo_model.py's scenes


def _scene_words(caption: str) -> tuple[str, str, str]:
    """(colour, shape, ground) of a one-object caption, read back through the world: the caption the world
    writes for that scene is the caption given."""
    from fpe_headless.demo import world

    words = caption.split()
    assert len(words) == 5 and words[0] == "a" and words[3] == "on", caption
    colour, shape, ground = words[1], words[2], words[4]
    assert colour in world.COLOURS and shape in world.SHAPES and ground in world.GROUNDS, caption
    scene = world.random_scene(0, objects=1, colour=colour, shape=shape, ground=ground)
    assert scene.caption == caption
    return colour, shape, ground


def test_demo_colours_pairs_every_colour_of_the_world():
    from itertools import permutations, product

    from fpe_headless.demo import world

    items = datasets.demo_colours()
    assert len(items) == 30 and [item.id for item in items] == [str(i) for i in range(30)]
    assert all(item.image is None for item in items)
    parsed = [(_scene_words(item.source_prompt), _scene_words(item.target_prompt)) for item in items]
    assert sorted((s[0], t[0]) for s, t in parsed) == sorted(permutations(world.COLOURS, 2))  # each pair once
    assert all(s[1:] == t[1:] for s, t in parsed)  # only the colour changes
    # shape and ground cycle over the pairs: the first 16 meet every shape on every ground
    assert [s[1:] for s, _ in parsed[:16]] == [(shape, ground) for ground, shape in product(world.GROUNDS,
                                                                                           world.SHAPES)]
    assert {s[1] for s, _ in parsed} == set(world.SHAPES) and {s[2] for s, _ in parsed} == set(world.GROUNDS)
    assert items == datasets.demo_colours()  # deterministic
    from fpe_headless.batch import batch

    assert batch.load_items("demo-colours") == ("demo-colours", items, None)  # by name, as car-fake-edit


def test_demo_real_edit_draws_its_photos_beside_the_file(tmp_path, capsys):
    from fpe_headless.batch import batch
    from fpe_headless.batch.cli import run_datasets_command
    from fpe_headless.demo import world

    assert run_datasets_command(["list"], "fpe datasets") == 0
    listed = capsys.readouterr().out
    assert "demo-colours" in listed and "(30)" in listed and "demo-real-edit" in listed
    out = tmp_path / "sets" / "demo_real.json"
    out.parent.mkdir()
    assert run_datasets_command(["generate", "demo-real-edit", "--out", str(out)], "fpe datasets") == 0
    assert "wrote 30 prompt pairs" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert len(rows) == 30 and list(rows[0]) == ["image_name", "soure_prompt", "edit_prompt"]  # the paper's layout
    items = datasets.read_official(out)
    assert _pairs(items) == _pairs(datasets.demo_real_edit())
    # the same pairs, shapes and grounds as demo-colours, each on its own drawn photo
    assert [(i.source_prompt, i.target_prompt) for i in items] == [
        (i.source_prompt, i.target_prompt) for i in datasets.demo_colours()]
    assert len({item.image for item in items}) == 30
    photos = sorted((out.parent / datasets.DEMO_PHOTOS).iterdir())
    assert [p.relative_to(out.parent).as_posix() for p in photos] == sorted(item.image for item in items)
    for item in items:
        seed = int(Path(item.image).name.split("_")[0])
        assert seed >= 10_000_000 and seed not in TRAINING_SEEDS  # never a training scene
        picture = np.asarray(Image.open(out.parent / item.image))
        assert picture.shape == (128, 128, 3) and picture.dtype == np.uint8
        colour, shape, ground = _scene_words(item.source_prompt)
        (seen,) = world.read(picture, objects=1)  # the photo shows what its caption says
        assert (seen.colour, seen.shape) == (colour, shape), item
        target = _scene_words(item.target_prompt)
        assert target[0] != colour and target[1:] == (shape, ground)
        scene = world.random_scene(seed, objects=1, colour=colour, shape=shape, ground=ground)
        assert np.array_equal(picture, np.asarray(world.draw(scene)))  # drawn from its seed
    # fpe batch reads it as a real-image set with the photos beside it
    name, loaded, images = batch.load_items(str(out))
    assert name == "demo_real" and images == out.parent and loaded == items
    batch.check_items(loaded, images)
    before = {p.name: p.read_bytes() for p in photos}  # written again: the same files
    assert run_datasets_command(["generate", "demo-real-edit", "--out", str(out)], "fpe datasets") == 0
    assert {p.name: p.read_bytes() for p in (out.parent / datasets.DEMO_PHOTOS).iterdir()} == before
    with pytest.raises(batch.BatchError, match=r"fpe datasets generate demo-real-edit --out"):
        batch.load_items("demo-real-edit")  # by name: its photos exist only once generated
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / datasets.DEMO_PHOTOS).write_text("a file where the photos go")
    assert run_datasets_command(["generate", "demo-real-edit", "--out", str(tmp_path / "blocked" / "x.json")],
                                "fpe datasets") == 2
    assert "cannot write the photos there" in capsys.readouterr().err
    assert not (tmp_path / "blocked" / "x.json").exists()
