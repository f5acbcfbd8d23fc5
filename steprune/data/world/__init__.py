"""The built-in world: procedurally generated scenes of coloured shapes with visual-QA records.

Deterministic given a seed, disjoint train/val/test splits, LLaVA instruction format.

    from steprune.data.world import WorldConfig, build_dataset, save_world
    dd = build_dataset(WorldConfig(), {"train": 20000, "val": 1000, "test": 1000}, seed=0)
    save_world(dd, "data/world")
    # or: python -m steprune.data.world.dataset --out data/world
"""

from steprune.data.world.config import CAPTION_KIND, LOCATE_KIND, PALETTE, QUESTION_KINDS, SHAPES, WorldConfig
from steprune.data.world.dataset import (
    FEATURES,
    IMAGE_TOKEN,
    SPLITS,
    build_dataset,
    generate_record,
    generate_records,
    load_world,
    save_world,
    split_of,
)
from steprune.data.world.questions import (
    GENERATORS,
    QA,
    QuestionSpec,
    Ref,
    answer_from_scene,
    caption,
    question_text,
    split_words,
    world_vocabulary,
)
from steprune.data.world.render import render_scene
from steprune.data.world.scene import (
    Scene,
    SceneObject,
    Speck,
    dress_layout,
    layout_fingerprint,
    sample_layout,
    sample_scene,
)

__all__ = [
    "CAPTION_KIND",
    "LOCATE_KIND",
    "FEATURES",
    "GENERATORS",
    "IMAGE_TOKEN",
    "PALETTE",
    "QA",
    "QUESTION_KINDS",
    "SHAPES",
    "SPLITS",
    "QuestionSpec",
    "Ref",
    "Scene",
    "SceneObject",
    "Speck",
    "WorldConfig",
    "answer_from_scene",
    "build_dataset",
    "caption",
    "dress_layout",
    "generate_record",
    "generate_records",
    "layout_fingerprint",
    "load_world",
    "question_text",
    "render_scene",
    "sample_layout",
    "sample_scene",
    "save_world",
    "split_of",
    "split_words",
    "world_vocabulary",
]
