"""steprune in lmms-eval, the field's evaluation harness: `pip install "steprune[lmms]"`, then

    lmms-eval eval --model steprune \
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=mmtok,budget=64 --tasks pope,mme --batch_size 8
    lmms-eval eval --model steprune --model_args pretrained=artifacts/base,method=uniform,budget=16 \
        --tasks steprune_world --include_path $(python -m steprune.integrations.lmms) --limit 500

The model class (`steprune.integrations.lmms.model.StepruneLMM`) reaches the CLI through the entry point
`lmms_eval.models: steprune = steprune.integrations.lmms:manifest` (pyproject.toml). `TASKS_DIR` is the
`--include_path` of the built-in world's tasks (`steprune_world`, `steprune_world_choice`;
`steprune.integrations.lmms.world_task`). Nothing here imports lmms_eval until lmms-eval itself asks for the
manifest, so steprune installs and tests without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
"""The `--include_path` that holds the built-in world's lmms-eval task YAMLs."""

MODEL_ID = "steprune"
MODEL_CLASS_PATH = "steprune.integrations.lmms.model.StepruneLMM"


def manifest() -> Any:
    """The entry point's payload: lmms-eval calls it and registers `--model steprune`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS_PATH)
