"""The built-in world's generator: determinism, disjoint splits, answers re-derived from the scene."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from steprune.data.world import (
    Scene,
    WorldConfig,
    build_dataset,
    generate_record,
    generate_records,
    load_world,
    save_world,
    world_vocabulary,
)
from steprune.data.world.config import SHAPES

CFG = WorldConfig()
PLURAL = {"crosses": "cross", **{f"{s}s": s for s in SHAPES}}


def objects_matching(scene: Scene, phrase: str) -> list:
    """Objects a noun phrase such as 'red square', 'circle', 'blue object', 'object' refers to."""
    words = phrase.split()
    colour = words[0] if words[0] in CFG.colors else None
    noun = words[-1]
    shape = PLURAL.get(noun, noun if noun in SHAPES else None)
    return [o for o in scene.objects if (colour in (None, o.color)) and (shape in (None, o.shape))]


def independent_answer(record: dict) -> str:
    """Answer the record's question from its scene with code written for this test."""
    scene = Scene.from_json(record["scene"])
    q = record["conversations"][0]["value"].split("\n", 1)[1]
    if m := re.fullmatch(r"What (colour|shape) is the (.+)\?", q):
        (obj,) = objects_matching(scene, m[2])
        return obj.color if m[1] == "colour" else obj.shape
    if m := re.fullmatch(r"Is there an? (.+)\?", q):
        return "yes" if objects_matching(scene, m[1]) else "no"
    if m := re.fullmatch(r"How many (.+) are there\?", q):
        return str(len(objects_matching(scene, m[1].removesuffix("s") if m[1].endswith("objects") else m[1])))
    if m := re.fullmatch(r"Is the (.+) (left or right of|above or below) the (.+)\?", q):
        (a,), (b,) = objects_matching(scene, m[1]), objects_matching(scene, m[3])
        ax, ay = a.x + a.size / 2, a.y + a.size / 2
        bx, by = b.x + b.size / 2, b.y + b.size / 2
        if m[2] == "left or right of":
            return "left" if ax < bx else "right"
        return "above" if ay < by else "below"
    if m := re.fullmatch(r"What digit is on the (.+)\?", q):
        (obj,) = objects_matching(scene, m[1])
        return str(obj.glyph)
    raise AssertionError(f"unparsed question {q!r}")


def test_same_seed_same_records_and_pixels():
    a = generate_records("train", 20, CFG, seed=3)
    b = generate_records("train", 20, CFG, seed=3)
    c = generate_records("train", 20, CFG, seed=4)
    for x, y in zip(a, b, strict=True):
        assert x["conversations"] == y["conversations"] and x["scene"] == y["scene"]
        assert np.array_equal(np.asarray(x["image"]), np.asarray(y["image"]))
    assert [x["scene"] for x in a] != [x["scene"] for x in c]
    assert generate_record("train", 7, CFG, 3)["scene"] == a[7]["scene"], "a record does not depend on its run"


def test_splits_never_share_a_scene_layout():
    prints = {s: {r["fingerprint"] for r in generate_records(s, 300, CFG, seed=0)} for s in ("train", "val", "test")}
    assert not prints["train"] & prints["val"]
    assert not prints["train"] & prints["test"]
    assert not prints["val"] & prints["test"]


@pytest.mark.parametrize("split", ["val", "test"])
def test_every_answer_matches_the_scene(split):
    records = generate_records(split, 400, CFG, seed=1)
    kinds = Counter(r["kind"] for r in records)
    assert set(kinds) == {"attribute", "existence", "counting", "spatial", "reading"}, kinds
    for record in records:
        assert independent_answer(record) == record["answer"], record["conversations"]
        assert record["conversations"][0]["value"].startswith("<image>\n")
        assert record["conversations"][1]["value"] == record["answer"]


def test_existence_is_balanced_and_captions_are_train_only():
    existence = [r["answer"] for r in generate_records("test", 1200, CFG, seed=2) if r["kind"] == "existence"]
    assert len(existence) >= 200
    assert abs(existence.count("yes") / len(existence) - 0.5) < 0.08
    assert not any(r["kind"] == "describe" for r in generate_records("val", 300, CFG, seed=2))
    assert any(r["kind"] == "describe" for r in generate_records("train", 300, CFG, seed=2))


def test_scene_complexity_varies_widely():
    counts = Counter(r["num_objects"] for r in generate_records("train", 300, CFG, seed=0))
    assert min(counts) == 1 and max(counts) >= 6


def test_glyphs_change_the_pixels_inside_their_object():
    from steprune.data.world.render import render_scene

    scene = next(
        Scene.from_json(r["scene"])
        for r in generate_records("train", 200, CFG, seed=0)
        if any(o.glyph is not None for o in Scene.from_json(r["scene"]).objects)
    )
    obj = next(o for o in scene.objects if o.glyph is not None)
    no_glyph = type(obj)(obj.color, obj.shape, obj.x, obj.y, obj.size, None)
    plain = Scene(
        tuple(o if o is not obj else no_glyph for o in scene.objects),
        scene.specks,
        scene.background,
        scene.texture_seed,
        scene.image_size,
    )
    with_glyph = np.asarray(render_scene(scene, CFG)).astype(int)
    without = np.asarray(render_scene(plain, CFG)).astype(int)
    box = (slice(obj.y, obj.y + obj.size), slice(obj.x, obj.x + obj.size))
    assert np.abs(with_glyph[box] - without[box]).sum() > 0
    outside = np.ones(with_glyph.shape[:2], dtype=bool)
    outside[box] = False
    assert np.array_equal(with_glyph[outside], without[outside])


def test_vocabulary_covers_every_answer():
    vocab = set(world_vocabulary(CFG))
    assert {r["answer"] for r in generate_records("test", 300, CFG, seed=0)} <= vocab


def test_dataset_round_trip_and_missing_path(tmp_path):
    world = build_dataset(CFG, {"train": 6, "test": 4}, seed=0)
    save_world(world, tmp_path / "world")
    loaded = load_world(tmp_path / "world")
    assert loaded["test"][0]["answer"] == world["test"][0]["answer"]
    assert loaded["train"].num_rows == 6
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_world(tmp_path / "nowhere")
