"""The MMTok authors' question-keyword filter, on the prompt rows a `PruneContext` carries.

    keyword_rows(("USER", ":", " What", " colour", " is", " it", "?"))   # -> [F, F, F, T, F, F, F]

The authors (Ironieser/MMTok, `core/text_processor.py`, LLaVA path) take the benchmark question, delete the two
benchmark suffix prompts, split it into words (regex \\b\\w+\\b), drop a fixed list of stop-words (case-insensitive)
and embed the remaining words one by one (no BOS); when nothing is left, the cleaned question is used whole.
Here the prompt is already tokenised and embedded, so a prompt row is kept when its token overlaps a kept word
of the decoded prompt; the chat template's special tokens decode to nothing and its role words (user,
assistant, system) are dropped like stop-words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# the authors' NON_VISUAL_WORDS: articles, auxiliaries, pronouns, question words, conjunctions, prepositions
STOP_WORDS_TEXT = (
    "a an the is are was were be been being have has had do does did it they he she we you i "
    "what where when why how who which and or but so if then question answer "
    "to for with by from at into onto upon"
)
STOP_WORDS = frozenset(STOP_WORDS_TEXT.split())
SUFFIX_PROMPTS = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
)
ROLE_WORDS = frozenset({"user", "assistant", "system"})  # ours: chat-template roles, not in the question
WORD = re.compile(r"\b\w+\b")


def keyword_rows(pieces: Sequence[str]) -> list[bool]:
    """Per prompt row (the text each token decodes to): True where the token is part of a question keyword."""
    text = "".join(pieces)
    removed = [False] * len(text)
    for suffix in SUFFIX_PROMPTS:
        for match in re.finditer(re.escape(suffix), text):
            removed[match.start() : match.end()] = [True] * len(suffix)
    words = [m for m in WORD.finditer(text) if not removed[m.start()] and m.group().lower() not in ROLE_WORDS]
    kept = [m for m in words if m.group().lower() not in STOP_WORDS] or words  # nothing left: the whole question
    rows, start = [], 0
    for piece in pieces:
        end = start + len(piece)
        rows.append(any(m.start() < end and start < m.end() for m in kept) if piece else False)
        start = end
    return rows
