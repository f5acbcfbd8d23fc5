"""Tests of the built-in world generator: determinism, disjoint splits, answers re-derived independently.

.venv/bin/pytest tests/data/test_world.py -q
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from steprune.data.world import (
    CAPTION_KIND,
    LOCATE_KIND,
    QUESTION_KINDS,
    SPLITS,
    Scene,
    SceneObject,
    WorldConfig,
    build_dataset,
    generate_records,
    load_world,
    render_scene,
    sample_scene,
    save_world,
    split_words,
    world_vocabulary,
)

CFG = WorldConfig()
N_PER_SPLIT = 200
PLURAL_TO_SHAPE = {
    "squares": "square",
    "circles": "circle",
    "triangles": "triangle",
    "crosses": "cross",
    "diamonds": "diamond",
}


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
    return {split: generate_records(split, N_PER_SPLIT, CFG, seed=0) for split in SPLITS}


def _question(rec: dict) -> str:
    first = rec["conversations"][0]["value"]
    assert first.startswith("<image>\n"), first
    return first.removeprefix("<image>\n")


def _select(objs: list[dict], phrase: str) -> list[dict]:
    """Objects matching a noun phrase: 'red square', 'square' or 'red object' (written independently)."""
    words = phrase.split()
    if words[-1] == "object":
        return [o for o in objs if o["color"] == words[0]]
    if len(words) == 2:
        return [o for o in objs if o["color"] == words[0] and o["shape"] == words[1]]
    return [o for o in objs if o["shape"] == words[0]]


def _only(objs: list[dict], phrase: str) -> dict:
    hits = _select(objs, phrase)
    assert len(hits) == 1, f"'{phrase}' is ambiguous or absent: {hits}"
    return hits[0]


def _expected(question: str, objs: list[dict]) -> str:
    """Re-derive the answer from the raw scene JSON by parsing the question text."""
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        return _only(objs, m[1])["color"]
    if m := re.fullmatch(r"What shape is the (\w+ object)\?", question):
        return _only(objs, m[1])["shape"]
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return "yes" if any(o["color"] == m[1] and o["shape"] == m[2] for o in objs) else "no"
    if question == "How many objects are there?":
        return str(len(objs))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o["color"] == m[1] for o in objs))
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        return str(sum(o["shape"] == PLURAL_TO_SHAPE[m[1]] for o in objs))
    if m := re.fullmatch(r"Is the (.+?) (left or right of|above or below) the (.+?)\?", question):
        a, b = _only(objs, m[1]), _only(objs, m[3])
        key = "x" if m[2].startswith("left") else "y"
        lo_a, lo_b = a[key], b[key]
        assert lo_a + a["size"] <= lo_b or lo_b + b["size"] <= lo_a, "objects overlap along the asked axis"
        before = lo_a < lo_b
        return ("left" if before else "right") if key == "x" else ("above" if before else "below")
    if m := re.fullmatch(r"What digit is on the (.+?)\?", question):
        digit = _only(objs, m[1])["glyph"]
        assert digit is not None
        return str(digit)
    if m := re.fullmatch(r"Where is the (.+?)\?", question):
        obj = _only(objs, m[1])
        row = min(2, int(3 * (obj["y"] + obj["size"] / 2) / CFG.image_size))
        col = min(2, int(3 * (obj["x"] + obj["size"] / 2) / CFG.image_size))
        return f"{('top', 'middle', 'bottom')[row]} {('left', 'center', 'right')[col]}"
    raise AssertionError(f"unparsed question {question!r}")


def test_same_seed_same_records_and_pixels() -> None:
    a = generate_records("val", 8, CFG, seed=3)
    b = generate_records("val", 8, CFG, seed=3)
    c = generate_records("val", 8, CFG, seed=4)
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k != "image"} == {k: v for k, v in rb.items() if k != "image"}
        assert np.array_equal(np.asarray(ra["image"]), np.asarray(rb["image"]))
    assert [r["scene"] for r in a] != [r["scene"] for r in c]
    # record i does not depend on how many records were asked for
    assert generate_records("val", 3, CFG, seed=3, start=5)[0]["scene"] == a[5]["scene"]
    # rendering a scene twice gives the same pixels
    scene = Scene.from_json(a[0]["scene"])
    assert np.array_equal(np.asarray(render_scene(scene, CFG)), np.asarray(a[0]["image"]))


def test_splits_never_share_a_scene(records: dict[str, list[dict]]) -> None:
    prints = {split: {r["fingerprint"] for r in recs} for split, recs in records.items()}
    assert not prints["train"] & prints["val"]
    assert not prints["train"] & prints["test"]
    assert not prints["val"] & prints["test"]
    for recs in records.values():
        assert all(Scene.from_json(r["scene"]).fingerprint() == r["fingerprint"] for r in recs)


def test_every_answer_rederived_from_scene(records: dict[str, list[dict]]) -> None:
    seen: Counter[str] = Counter()
    for recs in records.values():
        for rec in recs:
            scene = json.loads(rec["scene"])
            objs = scene["objects"]
            assert rec["num_objects"] == len(objs)
            assert rec["conversations"][1] == {"from": "gpt", "value": rec["answer"]}
            if rec["kind"] == CAPTION_KIND:
                assert _question(rec) == "Describe the image."
                n = len(objs)
                assert rec["answer"].startswith(f"There {'is' if n == 1 else 'are'} {n} object")
                for o in objs:
                    assert f"{o['color']} {o['shape']}" in rec["answer"]
            else:
                assert rec["answer"] == _expected(_question(rec), objs), rec["id"]
            seen[rec["kind"]] += 1
    assert set(seen) == {*QUESTION_KINDS, CAPTION_KIND}, seen


def test_existence_is_balanced(records: dict[str, list[dict]]) -> None:
    answers = [r["answer"] for recs in records.values() for r in recs if r["kind"] == "existence"]
    answers += [r["answer"] for r in generate_records("test", 250, WorldConfig(kind_weights={"existence": 1}), 1)]
    assert len(answers) >= 200
    assert 0.42 <= answers.count("yes") / len(answers) <= 0.58
    assert set(answers) == {"yes", "no"}


def test_negatives_are_adversarial_when_possible() -> None:
    for rec in generate_records("val", 60, WorldConfig(kind_weights={"existence": 1}), 2):
        objs = json.loads(rec["scene"])["objects"]
        colors, shapes = {o["color"] for o in objs}, {o["shape"] for o in objs}
        present = {(o["color"], o["shape"]) for o in objs}
        if rec["answer"] == "no" and any((c, s) not in present for c in colors for s in shapes):
            color, shape = re.fullmatch(r"Is there an? (\w+) (\w+)\?", _question(rec)).groups()
            assert color in colors and shape in shapes


def test_captions_only_in_train(records: dict[str, list[dict]]) -> None:
    assert any(r["kind"] == CAPTION_KIND for r in records["train"])
    assert not any(r["kind"] == CAPTION_KIND for r in records["val"] + records["test"])


def test_locate_turns_are_training_only_and_answered_from_the_scene(records: dict[str, list[dict]]) -> None:
    from steprune.data.world_datamodule import chat_turns

    assert not any(r["kind"] == LOCATE_KIND for recs in records.values() for r in recs)
    located = Counter()
    for rec in records["train"][:80]:
        objs = json.loads(rec["scene"])["objects"]
        plain = chat_turns(rec, CFG, turns=5, seed=0, view=1)
        assert not any(q.startswith("Where is") for q, _ in plain)
        pairs = chat_turns(rec, CFG, turns=5, seed=0, view=1, locate_turns=2)
        assert pairs[:3] == plain[:3], "the regular turns come first and do not change"
        where = [i for i, (q, _) in enumerate(pairs) if q.startswith("Where is")]
        assert where == list(range(len(pairs) - len(where), len(pairs))) and len(where) <= 2
        located[len(where)] += 1
        for question, answer in pairs:
            if question != "Describe the image.":
                assert answer == _expected(question, objs), (rec["id"], question)
    assert located[2] > 40, located  # most scenes have two uniquely described objects
    with pytest.raises(AssertionError, match="locate_turns"):
        chat_turns(records["train"][0], CFG, turns=2, locate_turns=2)


def test_glyph_changes_pixels_inside_object_only() -> None:
    scene = sample_scene(np.random.default_rng(0), CFG)
    obj = SceneObject("yellow", "square", 40, 40, 16, glyph=None)
    plain = Scene((obj,), (), scene.background, scene.texture_seed, CFG.image_size)
    marked = Scene(
        (SceneObject("yellow", "square", 40, 40, 16, glyph=7),),
        (),
        plain.background,
        plain.texture_seed,
        plain.image_size,
    )
    a, b = np.asarray(render_scene(plain, CFG)), np.asarray(render_scene(marked, CFG))
    inside = np.zeros(a.shape[:2], dtype=bool)
    inside[40:56, 40:56] = True
    assert (a != b).any(axis=-1)[inside].sum() >= 10
    assert not (a != b).any(axis=-1)[~inside].any()


def test_llava_format_and_vocabulary(records: dict[str, list[dict]]) -> None:
    vocab = set(world_vocabulary(CFG))
    for rec in records["train"][:100] + records["test"][:100]:
        conv = rec["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"]
        assert conv[0]["value"].count("<image>") == 1 and conv[0]["value"].startswith("<image>\n")
        assert rec["image"].size == (CFG.image_size, CFG.image_size) and rec["image"].mode == "RGB"
        assert set(split_words(_question(rec)) + split_words(rec["answer"])) <= vocab, rec["id"]


def test_scene_complexity_varies(records: dict[str, list[dict]]) -> None:
    counts = Counter(r["num_objects"] for recs in records.values() for r in recs)
    assert min(counts) == CFG.min_objects and max(counts) == CFG.max_objects


def test_build_save_load_roundtrip(tmp_path: Path) -> None:
    dd = build_dataset(CFG, {"train": 6, "val": 3, "test": 3}, seed=0)
    path = save_world(dd, tmp_path / "world")
    loaded = load_world(path)
    assert set(loaded) == set(SPLITS) and loaded["train"].num_rows == 6
    row, orig = loaded["val"][0], dd["val"][0]
    assert row["conversations"] == orig["conversations"] and row["scene"] == orig["scene"]
    assert np.array_equal(np.asarray(row["image"]), np.asarray(orig["image"]))


def test_load_world_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_world(missing)


def test_config_rejects_bad_knobs() -> None:
    with pytest.raises(ValueError, match="unknown names"):
        WorldConfig(colors=("red", "mauve"))
    with pytest.raises(ValueError, match="multiple"):
        WorldConfig(image_size=100)
