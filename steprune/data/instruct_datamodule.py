"""LLaVA-Instruct-format data, streamed: a Hugging Face dataset id, local JSON/JSONL/parquet + an image
folder, or a `save_to_disk` directory — tokenised with the backbone's processor and chat template.

    dm = InstructDataModule(backbone="artifacts/base", train_source="data/llava_instruct.json",
                            image_folder="data/images", val_source="data/val.json", batch_size=16)

Records are `{"id", "image": <path relative to image_folder> | PIL image, "conversations": [...]}`.
Text-only records (no image) are skipped: steprune prunes one image per sample. Reading is streamed
(`datasets` iterable datasets), so an instruction set larger than memory trains as is.

One epoch is one pass over the records, in the order of `.shuffle(seed, shuffle_buffer)` with the datasets
epoch set to the trainer's epoch (a new order each epoch, the same order in every run). A resumed fit
(`--ckpt_path last`) continues at the exact record: before each pass, the train loader reads the trainer's
restored counters (epoch, batches already trained in it) and the stream skips that many image-bearing
records without opening their images. Exact for `num_workers` 0 or 1 (more workers split the records by
shard, and the skip would have to be per worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import PIL.Image
import torch
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
    """Yields records with a loaded RGB image, skipping text-only ones; `limit` caps the count.

    A pass reads the records of epoch `epoch` (the datasets `set_epoch`, which reseeds the shuffle) and
    drops the first `skip` image-bearing ones unopened: where a resumed run picks up (`set_position`).
    """

    def __init__(self, records: IterableDataset, image_folder: str | None, limit: int | None = None) -> None:
        self.records = records
        self.image_folder = Path(image_folder) if image_folder else None
        self.limit = limit
        self.epoch = 0
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """The next pass reads epoch `epoch` from its `skip`-th image-bearing record on."""
        if epoch < 0 or skip < 0:
            raise ValueError(f"a stream position is (epoch >= 0, skip >= 0), got ({epoch}, {skip})")
        self.epoch, self.skip = epoch, skip

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
        self.records.set_epoch(self.epoch)
        count = 0  # image-bearing records of this pass, skipped ones included
        for record in self.records:
            if self.limit is not None and count >= self.limit:
                return
            if not record.get("image"):
                continue
            count += 1
            if count <= self.skip:  # already trained on before the resume: not opened
                continue
            yield {**record, "image": self._image(record["image"]).convert("RGB")}


class PositionedLoader(DataLoader):
    """A DataLoader over a `RecordStream` that sets the stream's position from `position()` before each pass."""

    def __init__(self, dataset: RecordStream, position: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.position = position

    def __iter__(self) -> Iterator[Any]:
        self.dataset.set_position(*self.position())
        return super().__iter__()


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

    def loader_generator(self) -> torch.Generator:
        """The loaders' own generator: each `iter(loader)` draws its workers' base seed from it, not from the
        global torch RNG, so starting a pass (a new epoch, a validation) never shifts the training noise."""
        return torch.Generator().manual_seed(self.hparams.seed)

    def train_position(self) -> tuple[int, int]:
        """(epoch, image-bearing records to skip) for the next train pass, from the trainer's counters.

        On a fresh epoch the epoch loop has reset its batch count to 0; on a resume the counters are the
        checkpoint's: the epoch in progress and the batches whose step ran (`processed`; a checkpoint written
        in on_train_batch_end has not counted that batch as `completed` yet). A checkpoint written after the
        epoch's last batch (`is_last_batch`, known to the prefetching fetcher) resumes in the next epoch, as
        Lightning's fit loop does. Outside a fit: (0, 0).
        """
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        fit = trainer.fit_loop
        epoch, batches = fit.epoch_progress.current.processed, fit.epoch_loop.batch_progress
        if batches.is_last_batch:  # resumed after the epoch's last batch: Lightning goes on with the next epoch
            return epoch + 1, 0
        return epoch, batches.current.processed * self.hparams.batch_size

    def train_dataloader(self) -> DataLoader:
        records = open_records(self.hparams.train_source, "train")
        records = records.shuffle(seed=self.hparams.seed, buffer_size=self.hparams.shuffle_buffer)
        return PositionedLoader(
            RecordStream(records, self.hparams.image_folder),
            self.train_position,
            batch_size=self.hparams.batch_size,
            collate_fn=InstructCollator(self.processor, "train"),
            num_workers=self.hparams.num_workers,
            generator=self.loader_generator(),
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
            generator=self.loader_generator(),
        )
