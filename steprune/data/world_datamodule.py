"""The built-in world as a LightningDataModule: records generated on the fly, collated by the processor.

    dm = WorldDataModule(backbone="artifacts/base", batch_size=32, val_size=256)
    dm = WorldDataModule(backbone="artifacts/base", world={"max_objects": 4})   # difficulty knobs

Training records are an endless deterministic stream: batch i always holds records
[start + i*B, start + (i+1)*B) of the train split, so a resumed run sees exactly the records it would
have seen (`start` follows the trainer's step on resume). Val/test are fixed prefixes of their splits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from steprune.data.collate import InstructCollator
from steprune.data.world import WorldConfig, generate_record, generate_records


class WorldStream(IterableDataset):
    """Endless train records, from index `start` on."""

    def __init__(self, cfg: WorldConfig, seed: int, start: int = 0, split: str = "train") -> None:
        self.cfg, self.seed, self.start, self.split = cfg, seed, start, split

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index = self.start
        while True:
            yield generate_record(self.split, index, self.cfg, self.seed)
            index += 1


def world_config(world: dict[str, Any] | None) -> WorldConfig:
    """A WorldConfig from a dict of knobs (YAML-friendly); tuples may be given as lists."""
    knobs = dict(world or {})
    for key in ("colors", "shapes", "glyph_shapes"):
        if key in knobs:
            knobs[key] = tuple(knobs[key])
    return WorldConfig(**knobs)


class WorldDataModule(L.LightningDataModule):
    """Train stream + fixed val/test prefixes of the built-in world, for the backbone in `backbone`."""

    def __init__(
        self,
        backbone: str,
        world: dict[str, Any] | None = None,
        seed: int = 0,
        batch_size: int = 32,
        val_size: int = 256,
        val_batch_size: int = 64,
        include_captions: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if world is None:  # the world the base model was trained on, when it says so
            info = Path(backbone) / "build_info.json"
            world = json.loads(info.read_text()).get("world") if info.is_file() else None
        self.cfg = world_config(world)
        if not include_captions:
            self.cfg = WorldConfig(**{**self.cfg.__dict__, "caption_prob": 0.0})
        self._processor: Any = None
        self.start = 0

    @property
    def processor(self) -> Any:
        if self._processor is None:
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self.hparams.backbone)
        return self._processor

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        step = trainer.global_step if trainer is not None else 0
        stream = WorldStream(self.cfg, self.hparams.seed, start=self.start + step * self.hparams.batch_size)
        return DataLoader(
            stream,
            batch_size=self.hparams.batch_size,
            collate_fn=InstructCollator(self.processor),
            num_workers=self.hparams.num_workers,
        )

    def _fixed(self, split: str, size: int) -> DataLoader:
        records = generate_records(split, size, self.cfg, self.hparams.seed)
        return DataLoader(
            records, batch_size=self.hparams.val_batch_size, collate_fn=InstructCollator(self.processor, "eval")
        )

    def val_dataloader(self) -> DataLoader:
        return self._fixed("val", self.hparams.val_size)

    def test_dataloader(self) -> DataLoader:
        return self._fixed("test", self.hparams.val_size)
