"""Our benchmark metrics (`steprune.eval.benchmarks`) against lmms-eval's own task code on the same predictions.

    .venv-lmms/bin/python -m steprune.integrations.lmms.metric_agreement --out reports/lmms_metric_agreement

For POPE, MME, VQAv2, TextVQA, GQA, ScienceQA-IMG and MMBench (circular), a seeded set of questions with
predictions written the ways models answer (exact, capitalised, with punctuation, articles, number words,
option letters in brackets, option text, hedges, wrong answers) is scored by our metric and by lmms-eval's
`process_results` + aggregation of the task (imported from the installed lmms-eval, nothing re-implemented
on its side). Prints a Markdown table (per metric: both scores, the questions whose per-question verdicts
differ) and writes the JSON behind it with examples of each disagreement; reports/lmms_metric_agreement.md
holds the table with the findings. No data set, model or
network is used: the rows are built here in each task's own column schema.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steprune.eval.benchmarks import get_benchmark
from steprune.eval.benchmarks.base import Record
from steprune.eval.benchmarks.options import rotate

YES_NO = ["yes", "no", "Yes", "No.", "Yes, there is.", "no, there is not", " yes", "Y", "n", "maybe", "not sure", ""]
WORDS = ["two", "2", "the dog", "dog", "Dog.", "a red car", "red/blue", "1,000", "3.5", "dont know", "man's hat"]
LETTERS_SAID = ["{L}", "{l}", "{L}.", "{L}. {T}", "({L})", "{L})", "The answer is {L}.", "{T}", "Answer: {L}", ""]


def _lmms(module: str) -> Any:
    return importlib.import_module(f"lmms_eval.tasks.{module}")


@dataclass
class Comparison:
    name: str
    ours: float
    harness: float
    questions: int
    differing: list[dict[str, Any]] = field(default_factory=list)  # per-question verdicts that differ

    def row(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "ours": self.ours,
            "lmms_eval": self.harness,
            "questions": self.questions,
            "differing_questions": len(self.differing),
            "examples": self.differing[:4],
        }


def _pred(rng: random.Random, pool: list[str], truth: str) -> str:
    """The truth as given, or one of the pool's phrasings (a third of the time each way)."""
    return truth if rng.random() < 0.3 else rng.choice(pool)


# ---------------------------------------------------------------------------------------------------
def _ours(name: str, preds: list[str], records: list[Record]) -> dict[str, Any]:
    metric = get_benchmark(name).metric()
    metric.update(preds, records)
    return metric.compute()


def _ours_each(name: str, preds: list[str], records: list[Record]) -> list[float]:
    """Our per-question verdict (score of the question alone, 0..1) for the metrics that are means."""
    return [_ours(name, [p], [r])["score"] / 100 for p, r in zip(preds, records, strict=True)]


def pope(rng: random.Random, n: int) -> list[Comparison]:
    utils = _lmms("pope.utils")
    splits = [("adversarial", n), ("popular", n), ("random", n // 2)]  # unequal sizes, as a --limit can give
    docs, records, preds = [], [], []
    for split, size in splits:
        for i in range(size):
            truth = rng.choice(["yes", "no"])
            docs.append({"question_id": f"{split}-{i}", "answer": truth, "category": split})
            records.append(Record(f"{split}-{i}", None, "q", "q", (truth,), metadata={"split": split}))
            preds.append(_pred(rng, YES_NO, truth))
    results = [utils.pope_process_results(d, [p]) for d, p in zip(docs, preds, strict=True)]
    from steprune.eval.benchmarks.pope import parse_yes_no

    shown = [{"prediction": p, "truth": d["answer"]} for d, p in zip(docs, preds, strict=True)]
    ours_q = [float(parse_yes_no(p) == d["answer"]) for d, p in zip(docs, preds, strict=True)]
    per = _per_question(ours_q, [r["pope_accuracy"]["score"] for r in results], shown)
    pooled_records = [Record(r.id, None, "q", "q", r.answers, metadata={"split": "random"}) for r in records]
    pooled, averaged = _ours("pope", preds, pooled_records), _ours("pope", preds, records)
    out = []
    for key, agg in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("f1", "f1_score")):
        harness = getattr(utils, f"pope_aggregate_{agg}")
        pooled_h = 100 * harness([r[f"pope_{agg}"] for r in results])
        out.append(Comparison(f"POPE {key}, splits pooled (lmms-eval `pope`)", pooled[key], pooled_h, len(docs), per))
        each = [
            100 * harness([r[f"pope_{agg}"] for r, d in zip(results, docs, strict=True) if d["category"] == split])
            for split, _ in splits
        ]
        name = f"POPE {key}, mean over splits (lmms-eval `pope_adv/pop/random`)"
        out.append(Comparison(name, averaged[key], statistics.mean(each), len(docs), per))
    yes = 100 * utils.pope_aggregate_yes_ratio([r["pope_yes_ratio"] for r in results])
    out.append(Comparison("POPE yes-ratio, splits pooled", pooled["yes_ratio"], yes, len(docs), []))
    return out


def mme(rng: random.Random, n: int) -> list[Comparison]:
    from steprune.eval.benchmarks.mme import COGNITION, PERCEPTION

    utils = _lmms("mme.utils")
    docs, records, preds = [], [], []
    for i in range(n):
        category = rng.choice(PERCEPTION + COGNITION)
        for truth in rng.sample(["Yes", "No"], 2):  # two questions per image, one yes and one no
            key = f"{category}/{i:04d}.png"
            docs.append({"question_id": key, "answer": truth, "category": category})
            gt = truth.lower()
            records.append(
                Record(f"{key}#{len(docs)}", None, "q", "q", (gt,), metadata={"category": category, "image_key": key})
            )
            preds.append(_pred(rng, YES_NO, gt))
    ours = _ours("mme", preds, records)
    results = [utils.mme_process_results(d, [p]) for d, p in zip(docs, preds, strict=True)]
    from steprune.eval.benchmarks.mme import parse_yes_no_mme

    ours_q = [float(parse_yes_no_mme(p) == r.answers[0]) for p, r in zip(preds, records, strict=True)]
    theirs_q = [next(iter(r.values()))["score"] for r in results]
    shown = [{"prediction": p, "truth": d["answer"]} for d, p in zip(docs, preds, strict=True)]
    per = _per_question(ours_q, theirs_q, shown)
    out = []
    for part, key in (("perception", "mme_perception_score"), ("cognition", "mme_cognition_score")):
        harness = utils.mme_aggregate_results([r[key] for r in results if key in r])
        out.append(Comparison(f"MME {part}", ours[part], harness, len(docs), per))
    return out


def _ten(rng: random.Random) -> list[str]:
    style, base = rng.random(), rng.choice(WORDS)
    if style < 0.3:
        return [base] * 10
    k = rng.randint(1, 9) if style < 0.7 else 0
    return [base] * k + [rng.choice(WORDS) for _ in range(10 - k)]


def vqa(rng: random.Random, n: int, name: str, normalised_gt: bool = False) -> list[Comparison]:
    """`normalised_gt`: the human answers already in normalised form (lower case, digits, no articles)."""
    from steprune.eval.benchmarks.vqa_eval import normalize_vqa_answer

    utils = _lmms(f"{'vqav2' if name == 'vqav2' else 'textvqa'}.utils")
    docs, records, preds = [], [], []
    for i in range(n):
        answers = [normalize_vqa_answer(a) for a in _ten(rng)] if normalised_gt else _ten(rng)
        if name == "vqav2":
            docs.append(
                {"question_id": i, "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)]}
            )
        else:
            docs.append({"question_id": i, "answers": list(answers)})
        records.append(Record(str(i), None, "q", "q", tuple(answers)))
        preds.append(_pred(rng, WORDS, rng.choice(answers)))
    process = utils.vqav2_process_results if name == "vqav2" else utils.textvqa_process_results
    theirs_q = [process(json.loads(json.dumps(d)), [p])["exact_match"] for d, p in zip(docs, preds, strict=True)]
    ours_q = _ours_each(name, preds, records)
    shown = [{"prediction": p, "answers": list(r.answers)} for p, r in zip(preds, records, strict=True)]
    title = "VQAv2 soft accuracy" if name == "vqav2" else "TextVQA soft accuracy"
    title += ", human answers already normalised" if normalised_gt else ", human answers as typed"
    ours = _ours(name, preds, records)["score"]
    return [Comparison(title, ours, 100 * statistics.mean(theirs_q), n, _per_question(ours_q, theirs_q, shown))]


def gqa(rng: random.Random, n: int) -> list[Comparison]:
    from lmms_eval.api.metrics import exact_match_hf_evaluate

    truths = ["yes", "no", "left", "right", "the dog", "white", "Table", "t-shirt"]
    phrasings = ["Yes", "yes.", "Left.", "dog", "the dog", "White!", "table", "tshirt", "t shirt", "no, it is not"]
    records, preds = [], []
    for i in range(n):
        truth = rng.choice(truths)
        records.append(Record(str(i), None, "q", "q", (truth,)))
        preds.append(_pred(rng, phrasings, truth).strip())  # the harness strips responses before scoring
    theirs_q = [
        float(exact_match_hf_evaluate([p], [r.answers[0]], ignore_case=True, ignore_punctuation=True)["exact_match"])
        for p, r in zip(preds, records, strict=True)
    ]
    ours_q = _ours_each("gqa", preds, records)
    shown = [{"prediction": p, "truth": r.answers[0]} for p, r in zip(preds, records, strict=True)]
    ours = _ours("gqa", preds, records)["score"]
    return [
        Comparison("GQA exact match", ours, 100 * statistics.mean(theirs_q), n, _per_question(ours_q, theirs_q, shown))
    ]


def _said(rng: random.Random, letter: str, text: str) -> str:
    return rng.choice(LETTERS_SAID).format(L=letter, l=letter.lower(), T=text)


def scienceqa(rng: random.Random, n: int) -> list[Comparison]:
    utils = _lmms("scienceqa.utils")
    records, docs, preds = [], [], []
    for i in range(n):
        choices = rng.sample(["cat", "dog", "bird", "fish", "frog"], rng.randint(2, 4))
        answer = rng.randrange(len(choices))
        letters = "ABCDE"[: len(choices)]
        records.append(
            Record(str(i), None, "q", "q", (letters[answer],), options=dict(zip(letters, choices, strict=True)))
        )
        docs.append({"answer": answer, "choices": choices})
        said = rng.choice(letters)
        preds.append(_said(rng, said, choices[letters.index(said)]).strip())
    theirs_q = [utils.sqa_process_results(d, [p])["exact_match"] for d, p in zip(docs, preds, strict=True)]
    ours_q = _ours_each("scienceqa_img", preds, records)
    shown = [{"prediction": p, "truth": r.answers[0]} for p, r in zip(preds, records, strict=True)]
    ours = _ours("scienceqa_img", preds, records)["score"]
    per = _per_question(ours_q, theirs_q, shown)
    return [Comparison("ScienceQA-IMG accuracy", ours, 100 * statistics.mean(theirs_q), n, per)]


def mmbench(rng: random.Random, n: int) -> list[Comparison]:
    """Circular accuracy: each question asked once per rotation of its options (lmms-eval: index + k * 1e6)."""
    utils = _lmms("mmbench.en_utils")
    records, results, preds = [], [], []
    for i in range(n):
        texts = rng.sample(["cat", "dog", "bird", "fish", "a red car", "blue"], rng.randint(2, 4))
        answer = rng.randrange(len(texts))
        right = rng.random() < 0.5  # a model that knows the answer says it in every rotation (in its own words)
        for shift in range(len(texts)):
            options, letter = rotate(texts, answer, shift)
            said = letter if right or rng.random() < 0.4 else rng.choice(list(options))
            pred = _said(rng, said, options[said]).strip()
            records.append(Record(f"{i}/r{shift}", None, "q", "q", (letter,), options, {"index": i, "rotation": shift}))
            preds.append(pred)
            doc = {"index": i + shift * 1_000_000, "question": "q", "answer": letter, "hint": "nan", "source": "s"}
            doc.update({"split": "dev", "category": "c", "L2-category": "l2", **options})
            results.append(utils.mmbench_process_results(doc, [pred])["gpt_eval_score"])
    ours = _ours("mmbench_en", preds, records)["score"]
    overall, _, _ = utils.mmbench_evaluator.eval_result(results, eval_method="static")
    import pandas as pd

    frame = pd.DataFrame(results)
    answers = dict(zip(frame["index"], frame["answer"], strict=True))
    ours_q, theirs_q, shown = [], [], []
    for i in range(n):
        mine = [k for k, r in enumerate(records) if r.metadata["index"] == i]
        ours_q.append(_ours("mmbench_en", [preds[k] for k in mine], [records[k] for k in mine])["score"] / 100)
        group = frame[frame["index"] % 1_000_000 == i]
        theirs_q.append(float(utils.mmbench_evaluator.eval_sub_data(group, answers, static_only=True)))
        shown.append({"predictions": [preds[k] for k in mine], "truths": [records[k].answers[0] for k in mine]})
    per = _per_question(ours_q, theirs_q, shown)
    return [Comparison("MMBench circular accuracy (static extraction, no GPT)", ours, 100 * overall, n, per)]


def _per_question(ours: list[float], theirs: list[float], shown: list[dict]) -> list[dict]:
    return [{**s, "ours": a, "lmms_eval": b} for a, b, s in zip(ours, theirs, shown, strict=True) if abs(a - b) > 1e-9]


def compare(seed: int = 0, n: int = 200) -> list[Comparison]:
    rng = random.Random(seed)
    runs: list[Callable[[], list[Comparison]]] = [
        lambda: pope(rng, n),
        lambda: mme(rng, n // 2),
        lambda: vqa(rng, n, "vqav2"),
        lambda: vqa(rng, n, "vqav2", normalised_gt=True),
        lambda: vqa(rng, n, "textvqa"),
        lambda: gqa(rng, n),
        lambda: scienceqa(rng, n),
        lambda: mmbench(rng, n // 2),
    ]
    return [c for run in runs for c in run()]


def markdown(rows: list[Comparison]) -> str:
    lines = [
        "| metric | ours | lmms-eval 0.7.3 | questions | questions scored differently | agree |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for c in rows:
        same = "yes" if abs(c.ours - c.harness) < 1e-4 else "**no**"  # ours: torchmetrics states in float32
        lines.append(f"| {c.name} | {c.ours:.4f} | {c.harness:.4f} | {c.questions} | {len(c.differing)} | {same} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="reports/lmms_metric_agreement", help="writes OUT.json (the table is printed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args(argv)
    rows = compare(args.seed, args.questions)
    table = markdown(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps([c.row() for c in rows], indent=2, default=str))
    print(f"wrote {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
