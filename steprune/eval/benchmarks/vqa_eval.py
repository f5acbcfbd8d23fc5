"""VQA answer normalisation and soft accuracy, as the official VQA evaluation computes them (shared by
VQAv2 and TextVQA).

Normalisation (official `vqaEval.py` `processPunctuation` + `processDigitArticle`, the same steps as the
EvalAI answer processor that LLaVA and lmms-eval apply to predictions), written here from its rules:
1. newlines/tabs become spaces; surrounding whitespace is stripped;
2. punctuation  ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !  is deleted when it touches a space somewhere
   in the answer or the answer has a digit,digit comma ("1,000"), and otherwise becomes a space
   ("red/blue" -> "red blue");
3. a period is deleted unless a digit follows it ("3.5" stays; "end." -> "end");
4. lower-cased words: number words zero..ten (and "none") become digits, the articles a/an/the are
   dropped, and apostrophe-less contractions get their apostrophe back ("dont" -> "don't").
(EvalAI's processor also splits a possessive "'s" into " 's" and removes "," and "?" first; steps 2–4
subsume those except the possessive split, which we do not reproduce.)

Soft accuracy (Antol et al. 2015; official `vqaEval.py`): with the 10 human answers, for each of the 10
leave-one-out subsets of 9, acc_i = min(#(answers in the subset equal to the prediction) / 3, 1); the
question's accuracy is the mean of the 10 acc_i. (A prediction matching m of the 10 answers scores
0.3 / 0.6 / 0.9 / 1.0 for m = 1 / 2 / 3 / >= 4.) The official script normalises the human answers only
when they disagree (`gt_normalization="if_disagree"`, used for VQAv2); lmms-eval normalises them always
(`"always"`, used for TextVQA as lmms-eval's `textvqa` does; its `vqav2` does the same, unlike the official
script). The prediction is always normalised.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Literal

_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_DIGIT_COMMA = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# Contractions as annotators typed them with apostrophes missing, mapped to the full spelling. Only
# forms that are not English words themselves ("cant" yes; "wed", "ill", "shed", "its", "hell", "shell",
# "lets" no). The
# official list's capitalised keys ("Im", "Ive") never fire on lower-cased text, so "im"/"ive" stay.
_CONTRACTED = (  # noqa: SIM905 — reads better as one string
    "ain't aren't can't couldn't couldn't've could've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've "
    "might've mustn't must've needn't not've o'clock oughtn't shan't she'd've she's should've "
    "shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll something's that's there'd there'd've "
    "there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll "
    "what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll "
    "why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll "
    "you're you've"
).split()


def _missing_apostrophes(contraction: str) -> list[str]:
    """Every spelling of `contraction` with one or more of its apostrophes left out."""
    parts = contraction.split("'")
    joins = itertools.product(("'", ""), repeat=len(parts) - 1)
    spellings = {parts[0] + "".join(j + p for j, p in zip(glue, parts[1:], strict=True)) for glue in joins}
    return sorted(spellings - {contraction})


_CONTRACTIONS = {variant: c for c in _CONTRACTED for variant in _missing_apostrophes(c)}


def _punctuation(text: str) -> str:
    remove = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        touches_space = f"{p} " in text or f" {p}" in text
        out = out.replace(p, "" if remove or touches_space else " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(text: str) -> str:
    """The official VQA answer normalisation (see the module docstring)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def vqa_soft_accuracy(
    prediction: str, answers: Sequence[str], gt_normalization: Literal["always", "if_disagree"] = "always"
) -> float:
    """Mean over leave-one-out subsets of min(#matches / 3, 1), in [0, 1]."""
    if not answers:
        raise ValueError("VQA accuracy needs the human answers")
    pred = normalize_vqa_answer(prediction)
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if gt_normalization == "always" or len(set(gts)) > 1:
        gts = [normalize_vqa_answer(a) for a in gts]
    matches = [g == pred for g in gts]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(gts)
