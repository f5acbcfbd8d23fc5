"""MME: yes/no questions, two per image, over 10 perception and 4 cognition subtasks.

Data (lmms-eval `mme`): `lmms-lab/MME` (now `lmms-lab-encoder/MME`), split `test` — columns question_id
(the image, e.g. "code_reasoning/0020.png", shared by its two questions), image, question (already ending
in "Please answer yes or no."), answer ("Yes"/"No"), category (the subtask).

Prompt (LLaVA-1.5's MME evaluation): the question as given, which ends in " Please answer yes or no.";
the suffix is added if a local copy lacks it.
Answer parsing (lmms-eval `parse_pred_ans`, from Otter): lower-case, strip, drop "."; "yes"/"no" as is;
a single character "y"/"n"; else "yes" or "no" within the first 4 characters; else "other" (wrong).
Metric (the official MME `calculation.py`; lmms-eval `mme_aggregate_results` gives the same with two
questions per image): per subtask, score = accuracy×100 + accuracy+×100, where accuracy is over questions
and accuracy+ is the fraction of images whose questions are all answered correctly (so 0..200 per
subtask). Perception = sum of the 10 perception subtasks (max 2000), cognition = sum of the 4 cognition
subtasks (max 800); the headline score is their sum (the "MME" column of pruning papers, e.g. 1862 for
LLaVA-1.5-7B).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from torchmetrics import Metric

from steprune.eval.benchmarks.base import Benchmark, ImageDecoder, Record

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
YES_NO_SUFFIX = "Please answer yes or no."


def parse_yes_no_mme(answer: str) -> str:
    """'yes' / 'no' / 'other' by lmms-eval's MME rule (see the module docstring)."""
    text = answer.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _convert(row: dict, decode: ImageDecoder) -> Iterator[Record]:
    question = str(row["question"]).strip()
    prompt = question if question.endswith(YES_NO_SUFFIX) else f"{question} {YES_NO_SUFFIX}"
    category = str(row["category"])
    if category not in PERCEPTION + COGNITION:
        raise ValueError(f"MME: unknown subtask {category!r}; expected one of {PERCEPTION + COGNITION}")
    yield Record(
        id=f"{row['question_id']}#{row['_row']}",
        image=decode(row["image"]),
        question=question,
        prompt=prompt,
        answers=(str(row["answer"]).strip().lower().replace(".", ""),),
        metadata={"category": category, "image_key": str(row["question_id"])},
    )


def mme_scores(results: Sequence[tuple[str, str, bool]]) -> dict:
    """(subtask, image key, correct) per question -> per-subtask scores, perception, cognition, total."""
    by_subtask: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for category, image, correct in results:
        by_subtask[category][image].append(bool(correct))
    subtasks = {}
    for category, images in by_subtask.items():
        answers = [c for per_image in images.values() for c in per_image]
        accuracy = sum(answers) / len(answers)
        accuracy_plus = sum(all(per_image) for per_image in images.values()) / len(images)
        subtasks[category] = 100.0 * accuracy + 100.0 * accuracy_plus
    perception = sum(v for k, v in subtasks.items() if k in PERCEPTION)
    cognition = sum(v for k, v in subtasks.items() if k in COGNITION)
    return {
        "score": perception + cognition,
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "subtasks": dict(sorted(subtasks.items())),
        "questions": len(results),
    }


class MMEScore(Metric):
    """MME perception / cognition scores (accuracy + accuracy+ per subtask, summed)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("results", default=[], dist_reduce_fx=None)  # (subtask, image key, correct) per question

    def update(self, predictions: Sequence[str], records: Sequence[Record]) -> None:
        assert len(predictions) == len(records), f"{len(predictions)} predictions for {len(records)} records"
        for prediction, record in zip(predictions, records, strict=True):
            correct = parse_yes_no_mme(prediction) == record.answers[0]
            self.results.append((record.metadata["category"], record.metadata["image_key"], correct))

    def compute(self) -> dict:
        return mme_scores(self.results)


MME = Benchmark(
    name="mme",
    title="MME",
    dataset="MME",
    config=None,
    split="test",
    convert=_convert,
    metric=MMEScore,
    doc="test; question + 'Please answer yes or no.'; perception + cognition (acc + acc+ per subtask)",
)
