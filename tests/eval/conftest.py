"""Fixtures of the eval tests: a tiny random base saved like `make base` saves one."""

from __future__ import annotations

import json

import pytest

MICRO_WORLD = {"image_size": 32, "max_objects": 3, "max_cells": 1, "max_distractors": 2}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from steprune.backbones.tiny import tiny_llava

    root = tmp_path_factory.mktemp("world") / "base"
    model, processor = tiny_llava(text_layers=4)
    model.save_pretrained(root)
    processor.save_pretrained(root)
    (root / "build_info.json").write_text(json.dumps({"world": MICRO_WORLD}))
    return root
