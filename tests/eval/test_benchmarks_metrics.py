"""Benchmark metrics against hand-computed values: VQA normalisation and leave-one-out soft accuracy,
MME's accuracy+, POPE per split and averaged, MMBench circular evaluation and its option extractor,
exact/letter match, retention."""

from __future__ import annotations

import math

import PIL.Image
import pytest

from steprune.eval.benchmarks import Record
from steprune.eval.benchmarks.gqa import exact_match
from steprune.eval.benchmarks.mmbench import CircularAccuracy
from steprune.eval.benchmarks.mme import MMEScore, parse_yes_no_mme
from steprune.eval.benchmarks.options import extract_option, rotate
from steprune.eval.benchmarks.pope import POPEScore, parse_yes_no
from steprune.eval.benchmarks.scienceqa import letter_match
from steprune.eval.benchmarks.vqa_eval import normalize_vqa_answer, vqa_soft_accuracy
from steprune.eval.suite import retention, retention_per_benchmark

IMG = PIL.Image.new("RGB", (4, 4))


def rec(answers, options=None, **metadata) -> Record:
    return Record(
        id="x", image=IMG, question="q", prompt="q", answers=tuple(answers), options=options, metadata=metadata
    )


# --- VQA ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two dogs.", "2 dogs"),  # number word, trailing period
        ("the cat", "cat"),  # article
        ("An apple", "apple"),
        ("A Dog!", "dog"),  # case, "!" next to nothing -> space, stripped
        ("dont", "don't"),  # contraction
        ("couldnt've", "couldn't've"),
        ("1,000", "1000"),  # digit,digit comma: punctuation deleted
        ("yes, it is", "yes it is"),  # punctuation touching a space: deleted
        ("red/blue", "red blue"),  # otherwise: becomes a space
        ("3.5", "3.5"),  # a period before a digit stays
        ("none", "0"),
        ("  left\n", "left"),
        ("shell", "shell"),  # a word, not a contraction
    ],
)
def test_vqa_normalisation(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_vqa_soft_accuracy_leave_one_out():
    # a prediction matching m of the 10 answers: mean over the 10 leave-one-out subsets of min(matches/3, 1)
    def answers(m):
        return ["cat"] * m + ["dog"] * (10 - m)

    # m=1: the one subset without the match scores 0, the nine others 1/3 -> 0.3
    assert vqa_soft_accuracy("cat", answers(1)) == pytest.approx(0.3)
    assert vqa_soft_accuracy("cat", answers(2)) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)  # 0.6
    assert vqa_soft_accuracy("cat", answers(3)) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 0.9
    assert vqa_soft_accuracy("cat", answers(4)) == pytest.approx(1.0)
    assert vqa_soft_accuracy("fish", answers(4)) == 0.0
    # normalisation on both sides: "Two." matches "2"
    assert vqa_soft_accuracy("Two.", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_vqa_gt_normalization_modes():
    # official VQAv2: the human answers are normalised only when they disagree
    agree = ["Two"] * 10
    assert vqa_soft_accuracy("2", agree, gt_normalization="if_disagree") == 0.0
    assert vqa_soft_accuracy("2", agree, gt_normalization="always") == 1.0
    disagree = ["Two"] * 9 + ["three"]
    assert vqa_soft_accuracy("2", disagree, gt_normalization="if_disagree") == 1.0


# --- MME ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, parsed",
    [("Yes", "yes"), ("No.", "no"), ("yes, there is", "yes"), ("No, it is not", "no"), ("y", "yes"), ("n", "no")]
    + [("maybe", "other"), ("I think yes", "other"), ("x", "other")],
)
def test_mme_answer_parsing(answer, parsed):
    assert parse_yes_no_mme(answer) == parsed


def test_mme_accuracy_plus_perception_cognition():
    metric = MMEScore()
    # existence: image 1 both right, image 2 one right -> acc 3/4, acc+ 1/2 -> 75 + 50 = 125
    # count: image 3 both wrong -> 0
    # code_reasoning (cognition): image 4 both right -> 100 + 100 = 200
    rows = [
        ("existence", "e1", "yes", "Yes"),
        ("existence", "e1", "no", "No"),
        ("existence", "e2", "yes", "Yes"),
        ("existence", "e2", "no", "Yes"),
        ("count", "c3", "yes", "No"),
        ("count", "c3", "no", "maybe"),
        ("code_reasoning", "k4", "yes", "yes."),
        ("code_reasoning", "k4", "no", "no"),
    ]
    preds = [r[3] for r in rows]
    records = [rec([r[2]], category=r[0], image_key=r[1]) for r in rows]
    metric.update(preds[:3], records[:3])  # in two batches: state accumulates
    metric.update(preds[3:], records[3:])
    out = metric.compute()
    assert out["subtasks"] == pytest.approx({"existence": 125.0, "count": 0.0, "code_reasoning": 200.0})
    assert out["perception"] == pytest.approx(125.0)
    assert out["cognition"] == pytest.approx(200.0)
    assert out["total"] == out["score"] == pytest.approx(325.0)
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute()["score"] == 0.0


# --- POPE -----------------------------------------------------------------------------------------------
def test_pope_per_split_and_average():
    metric = POPEScore()
    cases = {
        # TP, FN, FP, TN -> acc 50, P 50, R 50, F1 50, yes-ratio 50
        "adversarial": (["yes", "yes", "no", "no"], ["yes", "no", "yes", "no"]),
        # TP 2, TN 1, one unparseable ("Yes." is not exactly yes) -> acc 75, P 100, R 100, F1 100, yes 50
        "popular": (["yes", "yes", "no", "no"], ["yes", " YES ", "no", "no."]),
        # TP 1, FP 1 -> acc 50, P 50, R 100, F1 66.7, yes 100
        "random": (["yes", "no"], ["Yes", "yes"]),
    }
    for split, (gts, preds) in cases.items():
        metric.update(preds, [rec([g], split=split) for g in gts])
    out = metric.compute()
    s = out["splits"]
    assert s["adversarial"] == pytest.approx(
        {"accuracy": 50.0, "precision": 50.0, "recall": 50.0, "f1": 50.0, "yes_ratio": 50.0, "questions": 4}
    )
    assert s["popular"] == pytest.approx(
        {"accuracy": 75.0, "precision": 100.0, "recall": 100.0, "f1": 100.0, "yes_ratio": 50.0, "questions": 4}
    )
    assert s["random"] == pytest.approx(
        {"accuracy": 50.0, "precision": 50.0, "recall": 100.0, "f1": 200 / 3, "yes_ratio": 100.0, "questions": 2}
    )
    assert out["accuracy"] == pytest.approx((50 + 75 + 50) / 3)
    assert out["precision"] == pytest.approx((50 + 100 + 50) / 3)
    assert out["f1"] == out["score"] == pytest.approx((50 + 100 + 200 / 3) / 3)
    assert out["questions"] == 10


def test_pope_answer_rules():
    assert parse_yes_no(" Yes ") == "yes" and parse_yes_no("No") == "no"
    assert parse_yes_no("Yes, there is.") == "other"  # lmms-eval: exact yes/no only
    assert parse_yes_no("Yes, there is.", rule="llava") == "yes"
    assert parse_yes_no("There is not a dog. Yes.", rule="llava") == "no"
    with pytest.raises(ValueError, match="unknown yes/no rule"):
        parse_yes_no("yes", rule="gpt")


# --- MMBench --------------------------------------------------------------------------------------------
OPTS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    "answer, letter",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C)", "C"),
        ("C) bird", "C"),
        ("D. fish", "D"),
        ("B: dog", "B"),
        ("The answer is C.", "C"),
        ("I would pick (D) here", "D"),
        ("It is a dog", "B"),  # option text, unique
        ("A cat and a dog", None),  # "A" is the article; two option texts match
        ("A", "A"),
        ("A. cat", "A"),
        ("E", None),  # not a valid option
        ("", None),
        ("something else", None),
    ],
)
def test_option_extractor(answer, letter):
    assert extract_option(answer, OPTS) == letter


def test_rotation_moves_the_answer_letter():
    texts = ["cat", "dog", "bird"]
    assert rotate(texts, 1, 0) == ({"A": "cat", "B": "dog", "C": "bird"}, "B")
    assert rotate(texts, 1, 1) == ({"A": "dog", "B": "bird", "C": "cat"}, "A")
    assert rotate(texts, 1, 2) == ({"A": "bird", "B": "cat", "C": "dog"}, "C")


def test_mmbench_circular_evaluation():
    metric = CircularAccuracy()
    texts4, texts3 = ["cat", "dog", "bird", "fish"], ["1", "2", "3"]
    records, preds = [], []
    for shift in range(4):  # question 7: every rotation right (answered by letter, or by option text)
        options, letter = rotate(texts4, 1, shift)
        records.append(rec([letter], options, index=7, rotation=shift))
        preds.append(letter if shift % 2 else f"It is a {options[letter]}.")
    for shift in range(3):  # question 9: right, right, wrong
        options, letter = rotate(texts3, 2, shift)
        records.append(rec([letter], options, index=9, rotation=shift))
        preds.append(letter if shift < 2 else "A" if letter != "A" else "B")
    metric.update(preds[:5], records[:5])
    metric.update(preds[5:], records[5:])
    out = metric.compute()
    assert out["circular_accuracy"] == out["score"] == pytest.approx(50.0)
    assert out["first_rotation_accuracy"] == pytest.approx(100.0)
    assert out["questions"] == 2


# --- exact / letter match, retention --------------------------------------------------------------------
def test_gqa_exact_match_ignores_case_and_punctuation():
    assert exact_match("Left.", rec(["left"])) == 1.0
    assert exact_match(" RED ", rec(["red"])) == 1.0
    assert exact_match("on the left", rec(["left"])) == 0.0


def test_scienceqa_letter_match():
    r = rec(["B"], {"A": "shark", "B": "whale"})
    assert letter_match("B", r) == 1.0
    assert letter_match("B. whale", r) == 1.0
    assert letter_match("A. shark", r) == 0.0
    assert letter_match("b", r) == 1.0  # lmms-eval: the lone letter in either case
    assert letter_match("whale", r) == 0.0  # lmms-eval/LLaVA: the letter is required
    assert letter_match("The answer is B", r) == 0.0


def test_retention_is_the_mean_per_benchmark_ratio():
    vanilla = {"gqa": 60.0, "mme": 1800.0, "pope": 80.0}
    method = {"gqa": 54.0, "mme": 1800.0, "pope": 84.0}
    assert retention_per_benchmark(method, vanilla) == pytest.approx({"gqa": 0.9, "mme": 1.0, "pope": 1.05})
    assert retention(method, vanilla) == pytest.approx(100 * (0.9 + 1.0 + 1.05) / 3)
    assert retention({"gqa": 30.0, "textvqa": 10.0}, vanilla) == pytest.approx(50.0)  # shared benchmarks only
    assert math.isnan(retention({"gqa": 1.0}, {"gqa": 0.0}))  # no ratio where the unpruned model scores 0
