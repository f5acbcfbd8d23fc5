"""TextVQA: questions that need reading text in the image, scored by VQA soft accuracy.

Data (lmms-eval `textvqa_val`): `lmms-lab/textvqa` (now `lmms-lab-encoder/textvqa`), split `validation`
(5000 questions) — columns image_id, question_id, question, question_tokens, image, image_width,
image_height, flickr_original_url, flickr_300k_url, answers (10 strings), image_classes, set_name,
ocr_tokens.

Prompt (lmms-eval default, no OCR tokens): question.capitalize() + "\\nAnswer the question using a single
word or phrase." (`ocr=True` appends "\\nReference OCR token: ..." to the question, as LLaVA-1.5's own
TextVQA file does.)
Metric: `vqa_eval.vqa_soft_accuracy`, prediction and human answers always normalised (lmms-eval
`textvqa_process_results`); mean ×100.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from steprune.eval.benchmarks.base import SHORT_ANSWER, Benchmark, ImageDecoder, MeanScore, Record
from steprune.eval.benchmarks.vqa_eval import vqa_soft_accuracy


def _converter(ocr: bool):
    def convert(row: dict, decode: ImageDecoder) -> Iterator[Record]:
        question = str(row["question"]).strip()
        reference = f"\nReference OCR token: {', '.join(row.get('ocr_tokens') or [])}" if ocr else ""
        yield Record(
            id=str(row.get("question_id", row["_row"])),
            image=decode(row["image"]),
            question=question,
            prompt=f"{question.capitalize()}{reference}\n{SHORT_ANSWER}",
            answers=tuple(str(a) for a in row["answers"]),
            metadata={"image_id": row.get("image_id")},
        )

    return convert


def textvqa_accuracy(prediction: str, record: Record) -> float:
    return vqa_soft_accuracy(prediction, record.answers, gt_normalization="always")


TEXTVQA = Benchmark(
    name="textvqa",
    title="TextVQA",
    dataset="textvqa",
    config=None,
    split="validation",
    convert=_converter(ocr=False),
    metric=lambda: MeanScore(textvqa_accuracy),
    doc="validation; short-answer prompt (no OCR tokens); VQA soft accuracy (normalised, leave-one-out)",
)
TEXTVQA_OCR = replace(TEXTVQA, name="textvqa_ocr", title="TextVQA+OCR", convert=_converter(ocr=True))
