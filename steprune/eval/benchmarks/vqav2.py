"""VQAv2: open-ended questions on COCO, scored by VQA soft accuracy against 10 human answers.

Data (lmms-eval `vqav2_val`): `lmms-lab/VQAv2` (now `lmms-lab-encoder/VQAv2`), split `validation` (214,354
questions; the `testdev` / `test` splits carry no answers — LLaVA-1.5's table figure is test-dev, scored
by the EvalAI server) — columns question_id, question, answers (10 x {answer, answer_confidence,
answer_id}), multiple_choice_answer, image_id, answer_type, question_type, image. Answers given as plain
strings are accepted too.

Prompt (LLaVA-1.5): question + "\\nAnswer the question using a single word or phrase."
Metric: `vqa_eval.vqa_soft_accuracy` with the official normalisation, human answers normalised only
when they disagree (official `vqaEval.py`; the prediction always, as the evaluation server processes machine
answers); mean ×100. lmms-eval 0.7.3's `vqav2_process_results` normalises the human answers always, so it
scores higher when all ten agree on a form that normalisation changes ("two", "the dog"); see
reports/lmms_metric_agreement.md.
"""

from __future__ import annotations

from collections.abc import Iterator

from steprune.eval.benchmarks.base import SHORT_ANSWER, Benchmark, ImageDecoder, MeanScore, Record
from steprune.eval.benchmarks.vqa_eval import vqa_soft_accuracy


def answer_texts(answers) -> tuple[str, ...]:
    """The human answers as strings, from [{answer: ...}, ...] or [str, ...]."""
    return tuple(str(a["answer"] if isinstance(a, dict) else a) for a in answers)


def _convert(row: dict, decode: ImageDecoder) -> Iterator[Record]:
    question = str(row["question"]).strip()
    yield Record(
        id=str(row.get("question_id", row["_row"])),
        image=decode(row["image"]),
        question=question,
        prompt=f"{question}\n{SHORT_ANSWER}",
        answers=answer_texts(row["answers"]),
        metadata={"answer_type": row.get("answer_type")},
    )


def vqav2_accuracy(prediction: str, record: Record) -> float:
    return vqa_soft_accuracy(prediction, record.answers, gt_normalization="if_disagree")


VQAV2 = Benchmark(
    name="vqav2",
    title="VQAv2",
    dataset="VQAv2",
    config=None,
    split="validation",
    convert=_convert,
    metric=lambda: MeanScore(vqav2_accuracy),
    doc="validation; short-answer prompt; VQA soft accuracy (official normalisation, leave-one-out)",
)
