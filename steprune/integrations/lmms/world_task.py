"""The built-in world as lmms-eval tasks (the YAMLs in `steprune/integrations/lmms/tasks/steprune_world/`).

    lmms-eval eval --model steprune --model_args pretrained=artifacts/base,method=mmtok,budget=16 \
        --tasks steprune_world --include_path $(python -m steprune.integrations.lmms) --limit 500 --batch_size 64

- `steprune_world`: the questions `steprune eval --suite world` asks (test split, seed 0, record i = question
  i), answered by generation (4 new tokens) and scored like it: exact match after
  `steprune.training.stepprune_module.normalise_answer`; `accuracy` overall and one metric per question kind.
  `--limit N` with the same `--batch_size` gives the numbers of `steprune eval --suite world --limit N`.
- `steprune_world_choice`: the same questions as multiple choice over the answers of the question's kind
  (lmms-eval's `loglikelihood` path; `acc` = the gold answer has the highest log-likelihood).

The task's rows (`questions.jsonl`) hold only (split, seed, index) for the first 2,000 test questions; each
record (image, question, answer) is generated from them when lmms-eval first reads it. The world's knobs come
from the base's build_info.json: `STEPRUNE_WORLD_BASE` (a base directory), else the default base
(`$STEPRUNE_HOME/base`, by default `artifacts/base` under the working directory).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from steprune.data.world import WorldConfig, generate_record
from steprune.data.world_datamodule import world_config
from steprune.training.stepprune_module import normalise_answer

KIND_METRICS = ("attribute", "existence", "counting", "spatial", "reading")


@lru_cache(maxsize=1)
def _config() -> WorldConfig:
    from steprune.base_location import default_base_dir

    base = Path(os.environ.get("STEPRUNE_WORLD_BASE") or default_base_dir())
    info = base / "build_info.json"
    return world_config(json.loads(info.read_text()).get("world") if info.exists() else None)


@lru_cache(maxsize=4096)
def _record(split: str, seed: int, index: int) -> dict[str, Any]:
    return generate_record(split, index, _config(), seed)


def record(doc: dict[str, Any]) -> dict[str, Any]:
    """The world record a task row names."""
    return _record(str(doc["split"]), int(doc["seed"]), int(doc["index"]))


def doc_to_visual(doc: dict[str, Any]) -> list:
    return [record(doc)["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question without its <image> tag (the model class puts the image before it, as the collator does)."""
    return record(doc)["conversations"][0]["value"].replace("<image>", "").strip()


def doc_to_target(doc: dict[str, Any]) -> str:
    return record(doc)["answer"]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the generated answer, under `accuracy` and under the question's kind."""
    rec = record(doc)
    correct = float(normalise_answer(results[0]) == normalise_answer(rec["answer"]))
    return {"accuracy": correct, rec["kind"]: correct}


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """Every answer a question of this kind can have under the world's config."""
    cfg, kind = _config(), record(doc)["kind"]
    choices = {
        "existence": ["yes", "no"],
        "spatial": ["left", "right", "above", "below"],
        "counting": [str(n) for n in range(cfg.max_objects + 1)],
        "reading": [str(d) for d in range(10)],
        "attribute": [*cfg.colors, *cfg.shapes],
    }[kind]
    answer = record(doc)["answer"]
    return choices if answer in choices else [*choices, answer]


def doc_to_choice_target(doc: dict[str, Any]) -> int:
    return doc_to_choice(doc).index(record(doc)["answer"])
