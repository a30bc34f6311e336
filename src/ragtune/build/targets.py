"""Target texts: the answer (optionally with a citation), or a chain of thought that quotes
the shown oracle verbatim and ends with a final-answer marker (RAFT style), or the refusal."""

from __future__ import annotations

import re

ANSWER_MARKER = "<ANSWER>:"
QUOTE_OPEN, QUOTE_CLOSE = "##begin_quote##", "##end_quote##"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def pick_quote(passage: str, answer: str, evidence: list[str]) -> str:
    """A verbatim piece of the passage that holds the answer: the item's evidence sentence when
    the passage shows it whole, else the shortest sentence of the passage with the answer."""
    for e in evidence:
        if e and e in passage and answer in e:
            return e
    holding = [s for part in passage.split("\n\n") for s in _SENTENCE.split(part) if answer in s]
    return min(holding, key=len) if holding else answer


def target_text(
    answer: str | None, refusal: str, passage: str | None, index: int | None, evidence: list[str], cot: bool, cite: bool
) -> str:
    """`answer` None: the example's target is the refusal."""
    if answer is None or passage is None or index is None:
        if not cot:
            return refusal
        return f"None of the passages states the answer to this question.\n{ANSWER_MARKER} {refusal}"
    citation = f" [{index + 1}]" if cite else ""
    if not cot:
        return answer + citation
    quote = pick_quote(passage, answer, evidence)
    return (
        f"Passage [{index + 1}] says: {QUOTE_OPEN}{quote}{QUOTE_CLOSE} So the answer is {answer}.\n"
        f"{ANSWER_MARKER} {answer}{citation}"
    )


def final_answer(completion: str) -> str:
    """The answer part of a target or a generation (the text after the marker, if any)."""
    if ANSWER_MARKER in completion:
        completion = completion.rsplit(ANSWER_MARKER, 1)[1]
    return re.sub(r"\s*\[\d+\]\s*$", "", completion.strip())
