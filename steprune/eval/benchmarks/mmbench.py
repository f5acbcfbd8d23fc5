"""MMBench (en) and MMBench-CN: single-choice questions under circular evaluation.

Data (lmms-eval `mmbench_en_dev` / `mmbench_cn_dev`): `lmms-lab/MMBench` (now `lmms-lab-encoder/MMBench`),
configs `en` / `cn`, split `dev` (the test split has no answers) — columns index, question, hint, A, B, C,
D (E), answer (a letter), category, L2-category, source, split, image. Rows with index >= 1e6 are the
dataset's own pre-rotated copies (index % 1e6 names the original); they are skipped because the loader
builds the rotations itself, which keeps `limit` meaningful.

Prompt (LLaVA-1.5 `model_vqa_mmbench`): "[hint\\n]question\\nA. ...\\nB. ...\\n" + "Answer with the option's
letter from the given choices directly." (CN: "请直接回答选项字母。").
Metric: CircularEval (MMBench paper, Liu et al. 2023; VLMEvalKit / lmms-eval `MMBench_Evaluator`): a
question with n options is asked n times with the options rotated by 0..n-1; it counts as correct only if
every rotation is answered correctly. Answers are read by the rule-based extractor in `options.py` (no
GPT fallback). Score = circular accuracy ×100; first-rotation accuracy is reported alongside.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torchmetrics import Metric

from steprune.eval.benchmarks.base import OPTION_LETTER, Benchmark, ImageDecoder, Record, is_missing
from steprune.eval.benchmarks.options import LETTERS, extract_option, option_block, rotate

CN_SUFFIX = "请直接回答选项字母。"
CIRCULAR_OFFSET = 1_000_000  # MMBench's index of the k-th pre-rotated copy: index + k * 1e6


def _converter(suffix: str):
    def convert(row: dict, decode: ImageDecoder) -> Iterator[Record]:
        index = int(row["index"])
        if index >= CIRCULAR_OFFSET:
            return
        texts = [str(row[c]) for c in LETTERS[:5] if c in row and not is_missing(row[c])]
        answer = LETTERS.index(str(row["answer"]).strip())
        image = decode(row["image"])
        question = str(row["question"]).strip()
        hint = row.get("hint")
        stem = question if is_missing(hint) else f"{str(hint).strip()}\n{question}"
        for shift in range(len(texts)):
            options, letter = rotate(texts, answer, shift)
            yield Record(
                id=f"{index}/r{shift}",
                image=image,
                question=question,
                prompt=f"{stem}\n{option_block(options)}\n{suffix}",
                answers=(letter,),
                options=options,
                metadata={
                    "index": index,
                    "rotation": shift,
                    "category": row.get("category"),
                    "l2_category": row.get("L2-category", row.get("l2-category")),
                },
            )

    return convert


class CircularAccuracy(Metric):
    """MMBench CircularEval: a question scores only if all its rotations are answered correctly."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("group", default=[], dist_reduce_fx="cat")  # (n,) question index per answer
        self.add_state("rotation", default=[], dist_reduce_fx="cat")  # (n,) rotation per answer
        self.add_state("correct", default=[], dist_reduce_fx="cat")  # (n,) bool

    def update(self, predictions: Sequence[str], records: Sequence[Record]) -> None:
        assert len(predictions) == len(records), f"{len(predictions)} predictions for {len(records)} records"
        hits = [extract_option(p, r.options or {}) == r.answers[0] for p, r in zip(predictions, records, strict=True)]
        self.group.append(torch.tensor([r.metadata["index"] for r in records], dtype=torch.long))
        self.rotation.append(torch.tensor([r.metadata["rotation"] for r in records], dtype=torch.long))
        self.correct.append(torch.tensor(hits, dtype=torch.bool))

    def compute(self) -> dict[str, float]:
        if not self.group:
            return {"score": 0.0, "circular_accuracy": 0.0, "first_rotation_accuracy": 0.0, "questions": 0}
        group, rotation, correct = (torch.cat(s) for s in (self.group, self.rotation, self.correct))
        ids, inverse = torch.unique(group, return_inverse=True)
        all_right = torch.ones(len(ids), dtype=torch.long).scatter_reduce(0, inverse, correct.long(), "amin")
        circular = 100.0 * all_right.float().mean().item()
        first = correct[rotation == 0]
        return {
            "score": circular,
            "circular_accuracy": circular,
            "first_rotation_accuracy": 100.0 * first.float().mean().item() if len(first) else 0.0,
            "questions": len(ids),
        }


MMBENCH_EN = Benchmark(
    name="mmbench_en",
    title="MMB",
    dataset="MMBench",
    config="en",
    split="dev",
    convert=_converter(OPTION_LETTER),
    metric=CircularAccuracy,
    doc="dev; options + option-letter prompt; CircularEval with a rule-based extractor",
)
MMBENCH_CN = Benchmark(
    name="mmbench_cn",
    title="MMB-CN",
    dataset="MMBench",
    config="cn",
    split="dev",
    convert=_converter(CN_SUFFIX),
    metric=CircularAccuracy,
    doc="dev (Chinese); options + option-letter prompt; CircularEval with a rule-based extractor",
)
