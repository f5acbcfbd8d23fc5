"""POPE: object-hallucination yes/no questions on COCO, in three negative-sampling splits.

Data (lmms-eval `pope`): `lmms-lab/POPE` (now `lmms-lab-encoder/POPE`), default config, split `test`
(9000 questions, 3000 per split) — columns id, question_id, question, answer ("yes"/"no"), image_source,
image, category ("adversarial" / "popular" / "random"). `load(split="adversarial")` (or popular/random)
reads the `Full` config's split of that name instead. With `limit=N` the loader keeps the first
ceil(N/3) questions of each split, so the three stay represented.

Prompt (LLaVA-1.5 / lmms-eval): question + "\\nAnswer the question using a single word or phrase."
Answer parsing (lmms-eval `pope_process_results`): the answer lower-cased and stripped must be exactly
"yes" or "no"; anything else is "other" — wrong for accuracy, and (as in lmms-eval's aggregation) neither
a positive nor a negative prediction for precision / recall. `rule="llava"` uses LLaVA's `eval_pope.py`
instead: first sentence; "no" if it contains the word "no"/"not", else "yes".
Metric ("yes" is the positive class; lmms-eval `pope_aggregate_*`, the POPE paper's definitions):
accuracy = correct / all, precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R),
yes-ratio = answered "yes" / all; per split, then each averaged over the splits present. The headline
score is the split-averaged F1 ×100 (the "POPE" column of LLaVA-1.5 and the pruning papers).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torchmetrics import Metric

from steprune.eval.benchmarks.base import SHORT_ANSWER, Benchmark, ImageDecoder, Record

SPLITS = ("adversarial", "popular", "random")
_PRED = ("yes", "no", "other")


def parse_yes_no(answer: str, rule: Literal["lmms-eval", "llava"] = "lmms-eval") -> str:
    """'yes' / 'no' / 'other' for a POPE answer (see the module docstring for both rules)."""
    if rule == "lmms-eval":
        text = answer.lower().strip()
        return text if text in ("yes", "no") else "other"
    if rule == "llava":
        first = answer.split(".")[0].replace(",", "")
        words = first.split()
        return "no" if any(w in words for w in ("No", "not", "no")) else "yes"
    raise ValueError(f"unknown yes/no rule {rule!r}; use 'lmms-eval' or 'llava'")


def _convert(row: dict, decode: ImageDecoder) -> Iterator[Record]:
    question = str(row["question"]).strip()
    category = str(row.get("category") or row.get("_split"))
    if category not in SPLITS:
        raise ValueError(f"POPE: unknown split/category {category!r}; expected one of {SPLITS}")
    yield Record(
        id=str(row.get("question_id", row["_row"])),
        image=decode(row["image"]),
        question=question,
        prompt=f"{question}\n{SHORT_ANSWER}",
        answers=(str(row["answer"]).strip().lower(),),
        metadata={"split": category},
    )


def pope_scores(counts: torch.Tensor) -> dict:
    """counts (3 splits, 2 gt [yes, no], 3 pred [yes, no, other]) -> per-split and averaged metrics (×100)."""
    per_split = {}
    for i, name in enumerate(SPLITS):
        c = counts[i].double()
        total = float(c.sum())
        if total == 0:
            continue
        tp, fn, fp, tn = float(c[0, 0]), float(c[0, 1]), float(c[1, 0]), float(c[1, 1])
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_split[name] = {
            "accuracy": 100.0 * (tp + tn) / total,
            "precision": 100.0 * precision,
            "recall": 100.0 * recall,
            "f1": 100.0 * f1,
            "yes_ratio": 100.0 * float(c[:, 0].sum()) / total,
            "questions": int(total),
        }
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    mean = {k: sum(s[k] for s in per_split.values()) / len(per_split) if per_split else 0.0 for k in keys}
    return {"score": mean["f1"], **mean, "splits": per_split, "questions": int(counts.sum())}


class POPEScore(Metric):
    """POPE accuracy / precision / recall / F1 ("yes" positive), per split and averaged over the splits."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, rule: Literal["lmms-eval", "llava"] = "lmms-eval", **kwargs) -> None:
        super().__init__(**kwargs)
        self.rule = rule
        self.add_state("counts", default=torch.zeros(len(SPLITS), 2, 3, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], records: Sequence[Record]) -> None:
        assert len(predictions) == len(records), f"{len(predictions)} predictions for {len(records)} records"
        for prediction, record in zip(predictions, records, strict=True):
            gt = record.answers[0]
            assert gt in ("yes", "no"), f"POPE answers are yes/no, got {gt!r}"
            pred = parse_yes_no(prediction, self.rule)
            self.counts[SPLITS.index(record.metadata["split"]), 0 if gt == "yes" else 1, _PRED.index(pred)] += 1

    def compute(self) -> dict:
        return pope_scores(self.counts)


@dataclass(frozen=True)
class POPEBenchmark(Benchmark):
    def rows(self, split, source, streaming, config=None):
        if split in SPLITS:  # one negative-sampling split: the `Full` config names its splits so
            rows, base, where, total = super().rows(split, source, streaming, config="Full")
            return ({**row, "_split": split} for row in rows), base, where, total
        return super().rows(split, source, streaming, config)

    def take(self, rows: Iterable[dict], limit: int | None) -> Iterable[dict]:
        if limit is None:
            return rows
        rows = iter(rows)
        first = next(rows, None)
        if first is None:
            return iter(())
        rows = itertools.chain([first], rows)
        if "_split" in first:  # a single split was asked for
            return itertools.islice(rows, limit)
        per_split = math.ceil(limit / len(SPLITS))

        def balanced() -> Iterator[dict]:
            seen = dict.fromkeys(SPLITS, 0)
            for row in rows:
                name = str(row.get("category") or row.get("_split"))
                if seen.get(name, 0) < per_split:
                    seen[name] = seen.get(name, 0) + 1
                    yield row
                if all(seen[s] >= per_split for s in SPLITS) or sum(seen.values()) >= limit:
                    return

        return balanced()


POPE = POPEBenchmark(
    name="pope",
    title="POPE",
    dataset="POPE",
    config=None,
    split="test",
    convert=_convert,
    metric=POPEScore,
    doc="test (adversarial/popular/random); short-answer prompt; F1 with 'yes' positive, averaged over splits",
)
