"""The sentence-overlap baseline for the SQuAD v2 sample: for each question, the sentence of
its context with the most words in common with the question. Writes {id: answer} JSON for
`ragtune eval --qa FILE --predictions OUT`.

    python experiments/reader/squad_overlap.py ../shared/data/squad2-sample/dev-sample-v2.0.json OUT.json [RULE]

RULE (how far rules without any reading go; round 12): `sentence` (the issue's heuristic,
the default), `minus-question` (that sentence without the question's words), `typed` (in
that sentence, the first number not in the question for when / how many / what year...,
the first run of capitalised words not in the question for who, else the longest run of
words not in the question).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

_SENT = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")
_ASKS_NUMBER = re.compile(r"\b(how many|how much|what year|when|what percentage|how long|how old)\b")
_NUMBER = re.compile(r"^\d[\d.,%]*$")


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def sentences(context: str) -> list[str]:
    return _SENT.split(context)


def best_sentence(question: str, context: str) -> str:
    q = words(question)
    return max(sentences(context), key=lambda s: len(q & words(s)))


def runs(tokens: list[str], keep: Callable[[str], bool]) -> list[list[str]]:
    """The maximal runs of consecutive tokens that `keep` accepts."""
    out: list[list[str]] = [[]]
    for t in tokens:
        if keep(t):
            out[-1].append(t)
        elif out[-1]:
            out.append([])
    return [r for r in out if r]


def minus_question(question: str, context: str) -> str:
    q = words(question)
    return " ".join(t for t in _WORD.findall(best_sentence(question, context)) if t.lower() not in q)


def typed(question: str, context: str) -> str:
    q, asked = words(question), question.lower()
    sentence = _WORD.findall(best_sentence(question, context))
    tokens = [t for t in sentence if t.lower() not in q]
    if _ASKS_NUMBER.search(asked) and (numbers := [t for t in tokens if _NUMBER.match(t)]):
        return numbers[0]
    if re.search(r"\bwho\b", asked) and (names := runs(tokens, lambda t: t[0].isupper())):
        return " ".join(names[0])
    rest = runs(sentence, lambda t: t.lower() not in q)
    return " ".join(max(rest, key=len)) if rest else ""


RULES: dict[str, Callable[[str, str], str]] = {
    "sentence": best_sentence,
    "minus-question": minus_question,
    "typed": typed,
}


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))["data"]
    rule = RULES[sys.argv[3] if len(sys.argv) > 3 else "sentence"]
    preds = {qa["id"]: rule(qa["question"], p["context"]) for art in data for p in art["paragraphs"] for qa in p["qas"]}
    Path(sys.argv[2]).write_text(json.dumps(preds, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
