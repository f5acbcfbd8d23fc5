"""Records and Hugging Face datasets of the built-in world: LLaVA instruction format, disjoint splits.

Record i of a split is a pure function of (cfg, seed, split, i). Splits never share a scene layout:
every layout fingerprint is assigned to exactly one split by hashing it (`split_of`), and each
split's generator rejects scenes that belong elsewhere. `describe` captions appear in train only.

    python -m steprune.data.world.dataset --out data/world --train 20000 --val 1000 --test 1000

    from steprune.data.world import WorldConfig, build_dataset, save_world, load_world
    dd = build_dataset(WorldConfig(), {"train": 1000, "val": 200, "test": 200}, seed=0)
    save_world(dd, "data/world"); dd = load_world("data/world")
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset as HFDataset
from datasets import DatasetDict, Features, Image, Value, load_from_disk

from steprune.data.world.config import CAPTION_KIND, QUESTION_KINDS, WorldConfig
from steprune.data.world.questions import GENERATORS, world_vocabulary
from steprune.data.world.render import render_scene
from steprune.data.world.scene import dress_layout, layout_fingerprint, sample_layout

__all__ = [
    "FEATURES",
    "IMAGE_TOKEN",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "build_dataset",
    "generate_record",
    "generate_records",
    "load_world",
    "save_world",
    "split_of",
    "world_vocabulary",
]

IMAGE_TOKEN = "<image>"
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
"""Share of all possible scene layouts that belongs to each split (independent of seed and cfg)."""
MAX_ATTEMPTS = 5000

FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "conversations": [{"from": Value("string"), "value": Value("string")}],
        "kind": Value("string"),
        "answer": Value("string"),
        "num_objects": Value("int32"),
        "seed": Value("int64"),
        "index": Value("int64"),
        "scene": Value("string"),
        "fingerprint": Value("string"),
    }
)


def split_of(fingerprint: str) -> str:
    """The one split a scene layout belongs to (a hash of its fingerprint mapped onto SPLIT_FRACTIONS)."""
    u = int(hashlib.sha256(f"split/{fingerprint}".encode()).hexdigest()[:8], 16) / 2**32
    edge = 0.0
    for split in SPLITS:
        edge += SPLIT_FRACTIONS[split]
        if u < edge:
            return split
    return SPLITS[-1]


def _record_rng(seed: int, split: str, index: int) -> np.random.Generator:
    split_code = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, split_code, index]))


def _sample_kind(rng: np.random.Generator, split: str, cfg: WorldConfig) -> str:
    if split == "train" and rng.random() < cfg.caption_prob:
        return CAPTION_KIND
    weights = np.array([cfg.kind_weights.get(k, 0.0) for k in QUESTION_KINDS], dtype=np.float64)
    return QUESTION_KINDS[int(rng.choice(len(QUESTION_KINDS), p=weights / weights.sum()))]


def generate_record(split: str, index: int, cfg: WorldConfig, seed: int) -> dict[str, Any]:
    """Record `index` of `split`: the same (cfg, seed, split, index) always gives the same record."""
    assert split in SPLITS, f"unknown split {split!r}; expected one of {SPLITS}"
    rng = _record_rng(seed, split, index)
    kind = _sample_kind(rng, split, cfg)
    for _ in range(MAX_ATTEMPTS):
        layout = sample_layout(rng, cfg)
        if split_of(layout_fingerprint(layout)) != split:
            continue  # this layout belongs to another split
        scene = dress_layout(layout, rng, cfg)
        qa = GENERATORS[kind](scene, rng, cfg)
        if qa is not None:
            break
    else:
        raise RuntimeError(
            f"no scene supporting a {kind!r} question in split {split!r} after {MAX_ATTEMPTS} "
            f"tries; lower kind_weights[{kind!r}] or loosen the config: {cfg}"
        )
    return {
        "id": f"world-{split}-s{seed}-{index:07d}",
        "image": render_scene(scene, cfg),
        "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{qa.question}"},
            {"from": "gpt", "value": qa.answer},
        ],
        "kind": qa.kind,
        "answer": qa.answer,
        "num_objects": scene.num_objects,
        "seed": seed,
        "index": index,
        "scene": scene.to_json(),
        "fingerprint": scene.fingerprint(),
    }


def generate_records(split: str, num: int, cfg: WorldConfig, seed: int, start: int = 0) -> list[dict[str, Any]]:
    """Records start..start+num-1 of `split` (a prefix of a longer run is identical to a shorter run)."""
    return [generate_record(split, i, cfg, seed) for i in range(start, start + num)]


def build_dataset(cfg: WorldConfig, sizes: dict[str, int], seed: int) -> DatasetDict:
    """A DatasetDict with one split per key of `sizes` (train/val/test), images stored as PNG."""
    unknown = set(sizes) - set(SPLITS)
    assert not unknown, f"unknown splits {sorted(unknown)}; expected a subset of {SPLITS}"
    return DatasetDict(
        {
            split: HFDataset.from_list(generate_records(split, n, cfg, seed), features=FEATURES)
            for split, n in sizes.items()
        }
    )


def save_world(dataset_dict: DatasetDict, path: str | Path) -> Path:
    """Write the world to `path` with `save_to_disk`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset_dict.save_to_disk(str(path))
    return path


def load_world(path: str | Path) -> DatasetDict:
    """Load a world saved by `save_world`; a clear FileNotFoundError when nothing is there."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no built-in world at {path}: build one with `python -m "
            f"steprune.data.world.dataset --out {path}` or save_world(build_dataset(...), path)"
        )
    loaded = load_from_disk(str(path))
    assert isinstance(loaded, DatasetDict), f"{path} holds a single Dataset, not a DatasetDict of splits"
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the built-in world with default difficulty and save it.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    for split, n in (("train", 20000), ("val", 1000), ("test", 1000)):
        parser.add_argument(f"--{split}", type=int, default=n)
    args = parser.parse_args()
    dd = build_dataset(WorldConfig(), {"train": args.train, "val": args.val, "test": args.test}, args.seed)
    print(f"saved {dd} to {save_world(dd, args.out)}")


if __name__ == "__main__":
    main()
