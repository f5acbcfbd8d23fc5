"""ScienceQA-IMG: the image questions of ScienceQA's test split, answered with an option letter.

Data (lmms-eval `scienceqa_img`): `lmms-lab/ScienceQA` (now `lmms-lab-encoder/ScienceQA`), config
`ScienceQA-IMG`, split `test` (2017 questions) — columns image, question, choices (list), answer (index
into choices), hint, task, grade, subject, topic, category, skill, lecture, solution. Rows without an
image (a local copy of the full ScienceQA) are skipped.

Prompt (LLaVA-1.5 / lmms-eval): "[Context: hint\\n]question\\nA. ...\\nB. ...\\n" + "Answer with the
option's letter from the given choices directly."
Metric: lmms-eval `sqa_process_results`: correct if the stripped answer is the letter in either case ("b"
counts), or has the form "X. ..." with X the upper-case letter; accuracy ×100. (LLaVA's `eval_science_qa.py`
differs: case-sensitive, "X. " needs the space, and it also reads "The answer is X."; checked against
lmms-eval 0.7.3 in reports/lmms_metric_agreement.md.)
"""

from __future__ import annotations

from collections.abc import Iterator

from steprune.eval.benchmarks.base import OPTION_LETTER, Benchmark, ImageDecoder, MeanScore, Record, is_missing
from steprune.eval.benchmarks.options import LETTERS, option_block


def letter_match(prediction: str, record: Record) -> float:
    target = record.answers[0]
    pred = prediction.strip()
    if pred.lower() == target.lower():
        return 1.0
    if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
        return float(pred[0] == target)
    return 0.0


def _convert(row: dict, decode: ImageDecoder) -> Iterator[Record]:
    if row.get("image") is None:
        return
    choices = [str(c) for c in row["choices"]]
    options = {LETTERS[i]: c for i, c in enumerate(choices)}
    question = str(row["question"]).strip()
    hint = row.get("hint")
    context = "" if is_missing(hint) else f"Context: {str(hint).strip()}\n"
    yield Record(
        id=str(row.get("id", row["_row"])),
        image=decode(row["image"]),
        question=question,
        prompt=f"{context}{question}\n{option_block(options)}\n{OPTION_LETTER}",
        answers=(LETTERS[int(row["answer"])],),
        options=options,
        metadata={k: row.get(k) for k in ("subject", "category", "grade") if k in row},
    )


SCIENCEQA_IMG = Benchmark(
    name="scienceqa_img",
    title="SQA",
    dataset="ScienceQA",
    config="ScienceQA-IMG",
    split="test",
    convert=_convert,
    metric=lambda: MeanScore(letter_match),
    doc="IMG subset of test; context + options + option-letter prompt; letter match (lmms-eval/LLaVA rule)",
)
