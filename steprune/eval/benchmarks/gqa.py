"""GQA (testdev-balanced): compositional questions on Visual Genome images, scored by exact match.

Data (lmms-eval `gqa` task): `lmms-lab/GQA` (now `lmms-lab-encoder/GQA`), config
`testdev_balanced_instructions`, split `testdev` — columns id, imageId, question, answer, fullAnswer,
... — with the images in config `testdev_balanced_images` (columns id, image), joined on imageId.
A local copy may instead carry the image in an `image` column, or as `images/<imageId>.jpg|png`.

Prompt: question + "\\nAnswer the question using a single word or phrase." (LLaVA-1.5 / lmms-eval).
Metric: exact match as lmms-eval's `exact_match` with ignore_case and ignore_punctuation — both
prediction and answer lower-cased, every `string.punctuation` character removed, whitespace stripped;
accuracy ×100.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steprune.eval.benchmarks.base import (
    SHORT_ANSWER,
    Benchmark,
    BenchmarkDataError,
    ImageDecoder,
    MeanScore,
    Record,
)

IMAGES_CONFIG = "testdev_balanced_images"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_exact(text: str) -> str:
    """lmms-eval exact_match(ignore_case=True, ignore_punctuation=True), plus surrounding whitespace."""
    return text.lower().translate(_PUNCTUATION).strip()


def exact_match(prediction: str, record: Record) -> float:
    return float(normalize_exact(prediction) in {normalize_exact(a) for a in record.answers})


def _convert(row: dict, decode: ImageDecoder) -> Iterator[Record]:
    question = row["question"].strip()
    yield Record(
        id=str(row["id"]),
        image=decode(row["image"]),
        question=question,
        prompt=f"{question}\n{SHORT_ANSWER}",
        answers=(str(row["answer"]),),
        metadata={"image_id": str(row.get("imageId", ""))},
    )


class _ImageIndex:
    """imageId -> raw image, pulled lazily from the images config (stops as soon as an id is found)."""

    def __init__(self, rows: Iterable[dict]) -> None:
        self._rows = iter(rows)
        self._seen: dict[str, Any] = {}

    def __getitem__(self, image_id: str) -> Any:
        while image_id not in self._seen:
            row = next(self._rows, None)
            if row is None:
                raise BenchmarkDataError(f"GQA: image {image_id!r} is not in the {IMAGES_CONFIG} data")
            self._seen[str(row["id"])] = row["image"]
        return self._seen[image_id]


@dataclass(frozen=True)
class GQABenchmark(Benchmark):
    def rows(self, split, source, streaming, config=None):
        questions, base, where, total = super().rows(split, source, streaming)
        columns = getattr(questions, "column_names", None) or list(getattr(questions, "features", None) or {})
        if "image" in columns:
            return questions, base, where, total
        if base is not None:  # a local copy: an images/ folder, unless the images config sits beside it
            root = Path(source).expanduser()
            folder = next((f for f in (base / "images", root / "images") if f.is_dir()), None)
            if folder is not None and not (root / IMAGES_CONFIG).exists():
                return self._with_image_files(questions, folder), base, where, total
        images, _, _, _ = super().rows(split, source, streaming, config=IMAGES_CONFIG)
        index = _ImageIndex(images)
        joined = ({**row, "image": index[str(row["imageId"])]} for row in questions)
        return joined, base, where, total

    @staticmethod
    def _with_image_files(questions: Iterable[dict], folder: Path) -> Iterator[dict]:
        for row in questions:
            stem = str(row["imageId"])
            found = [folder / f"{stem}{ext}" for ext in (".jpg", ".png", ".jpeg") if (folder / f"{stem}{ext}").exists()]
            path = found[0] if found else None
            if path is None:
                raise BenchmarkDataError(f"GQA: no image file for imageId {stem!r} in {folder}")
            yield {**row, "image": str(path)}


GQA = GQABenchmark(
    name="gqa",
    title="GQA",
    dataset="GQA",
    config="testdev_balanced_instructions",
    split="testdev",
    convert=_convert,
    metric=lambda: MeanScore(exact_match),
    doc="testdev-balanced; short-answer prompt; exact match (lmms-eval: ignore case and punctuation)",
)
