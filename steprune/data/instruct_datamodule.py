"""LLaVA-Instruct-format data, streamed: a Hugging Face dataset id, local JSON/JSONL/parquet + an image
folder, or a `save_to_disk` directory — tokenised with the backbone's processor and chat template.

    dm = InstructDataModule(backbone="artifacts/base", train_source="data/llava_instruct.json",
                            image_folder="data/images", val_source="data/val.json", batch_size=16)

Records are `{"id", "image": <path relative to image_folder> | PIL image, "conversations": [...]}`.
Text-only records (no image) are skipped: steprune prunes one image per sample. Reading is streamed
(`datasets` iterable datasets), so an instruction set larger than memory trains as is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import PIL.Image
from datasets import IterableDataset, load_dataset, load_from_disk
from torch.utils.data import DataLoader
from torch.utils.data import IterableDataset as TorchIterable

from steprune.data.collate import InstructCollator

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def open_records(source: str, split: str = "train", streaming: bool = True) -> IterableDataset:
    """An iterable dataset from a local file, a saved dataset directory, or a hub id."""
    path = Path(source)
    if path.suffix in LOCAL_FORMATS:
        if not path.exists():
            raise FileNotFoundError(f"instruction data file {path} does not exist")
        return load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train", streaming=streaming)
    if path.is_dir():
        saved = load_from_disk(str(path))
        if hasattr(saved, "keys"):  # a DatasetDict
            if split not in saved:
                raise ValueError(f"{path} has splits {sorted(saved.keys())}, not {split!r}")
            saved = saved[split]
        return saved.to_iterable_dataset()
    if path.suffix or source.startswith((".", "/")):
        raise FileNotFoundError(f"instruction data {source!r}: no such file or directory")
    return load_dataset(source, split=split, streaming=streaming)


class RecordStream(TorchIterable):
    """Yields records with a loaded RGB image, skipping text-only ones; `limit` caps the count."""

    def __init__(self, records: IterableDataset, image_folder: str | None, limit: int | None = None) -> None:
        self.records = records
        self.image_folder = Path(image_folder) if image_folder else None
        self.limit = limit

    def _image(self, value: Any) -> PIL.Image.Image:
        if isinstance(value, PIL.Image.Image):
            return value
        if isinstance(value, str):
            path = Path(value) if self.image_folder is None else self.image_folder / value
            if not path.exists():
                raise FileNotFoundError(f"image {path} not found (set image_folder to the images' root)")
            return PIL.Image.open(path)
        raise TypeError(f"unsupported image value of type {type(value).__name__}")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        count = 0
        for record in self.records:
            if self.limit is not None and count >= self.limit:
                return
            if not record.get("image"):
                continue
            yield {**record, "image": self._image(record["image"]).convert("RGB")}
            count += 1


class InstructDataModule(L.LightningDataModule):
    """Train/val loaders of LLaVA-format records for the backbone in `backbone` (its processor)."""

    def __init__(
        self,
        backbone: str,
        train_source: str,
        val_source: str | None = None,
        image_folder: str | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        val_limit: int | None = 256,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._processor: Any = None

    @property
    def processor(self) -> Any:
        if self._processor is None:
            from transformers import AutoProcessor

            from steprune.base_location import resolve_pretrained

            self._processor = AutoProcessor.from_pretrained(resolve_pretrained(self.hparams.backbone))
        return self._processor

    def train_dataloader(self) -> DataLoader:
        records = open_records(self.hparams.train_source, "train")
        records = records.shuffle(seed=self.hparams.seed, buffer_size=self.hparams.shuffle_buffer)
        return DataLoader(
            RecordStream(records, self.hparams.image_folder),
            batch_size=self.hparams.batch_size,
            collate_fn=InstructCollator(self.processor, "train"),
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.hparams.val_source is None:
            return []
        records = open_records(self.hparams.val_source, "validation")
        return DataLoader(
            RecordStream(records, self.hparams.image_folder, self.hparams.val_limit),
            batch_size=self.hparams.val_batch_size or self.hparams.batch_size,
            collate_fn=InstructCollator(self.processor, "eval"),
            num_workers=self.hparams.num_workers,
        )
