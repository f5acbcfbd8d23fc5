"""Multiple-choice helpers shared by MMBench and ScienceQA: option blocks, rotations, and a rule-based
option extractor.

The extractor follows MMBench's own "prefetch" rules (VLMEvalKit / lmms-eval `can_infer_option` then
`can_infer_text`), without the GPT fallback those use when the rules fail — an answer no rule can read
counts as wrong:
1. the letter alone ("B", "B.", "(B)", "B)", "B:"), or at the start followed by a delimiter ("B. cat",
   "(B) cat", "B: cat", "B, ..."), or after "answer is" / "answer:";
2. exactly one valid letter appearing as a token, bare or wrapped as above — a bare "A" inside a longer
   sentence is skipped, since it is usually the article;
3. otherwise, exactly one option whose text occurs in the answer (case-insensitive).
"""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase
_WRAPS = (("", ""), ("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), ("(", ""))


def option_block(options: dict[str, str]) -> str:
    """'A. first\\nB. second' in letter order."""
    return "\n".join(f"{letter}. {text}" for letter, text in options.items())


def rotate(texts: list[str], answer: int, shift: int) -> tuple[dict[str, str], str]:
    """Options shifted circularly by `shift` (new position j shows old option (j + shift) mod n) and the new
    letter of the correct option — MMBench's CircularEval copies."""
    n = len(texts)
    assert 0 <= answer < n, f"answer index {answer} outside {n} options"
    rotated = {LETTERS[j]: texts[(j + shift) % n] for j in range(n)}
    return rotated, LETTERS[(answer - shift) % n]


def extract_option(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an answer picks, or None when no rule identifies exactly one."""
    text = answer.strip()
    if not text:
        return None
    valid = "".join(options)
    head = re.match(rf"^\(?([{valid}])(?:$|[\s.,:)\]])", text)
    if head and not (head.group(1) == "A" and re.match(r"^A\s+[a-z]", text)):
        return head.group(1)
    stated = re.search(rf"answer\s*(?:is|:)\s*\(?([{valid}])\b", text, flags=re.IGNORECASE)
    if stated and stated.group(1) in options:
        return stated.group(1)
    tokens = text.split()
    for prefix, suffix in _WRAPS:
        hits = {c for c in valid if prefix + c + suffix in tokens}
        if prefix == suffix == "" and "A" in hits and len(tokens) > 3:
            hits.discard("A")  # "A" as the article
        if len(hits) == 1:
            return hits.pop()
    lowered = text.lower()
    matches = [letter for letter, option in options.items() if option and str(option).lower() in lowered]
    return matches[0] if len(matches) == 1 else None
