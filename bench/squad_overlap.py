"""The sentence-overlap baseline for the SQuAD v2 sample: for each question, the sentence of
its context with the most words in common with the question. Writes {id: answer} JSON for
`ragtune eval --qa FILE --predictions OUT`.

    python bench/squad_overlap.py ../shared/data/squad2-sample/dev-sample-v2.0.json OUT.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

_SENT = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def sentences(context: str) -> list[str]:
    return _SENT.split(context)


def best_sentence(question: str, context: str) -> str:
    q = words(question)
    return max(sentences(context), key=lambda s: len(q & words(s)))


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))["data"]
    preds = {qa["id"]: best_sentence(qa["question"], p["context"])
             for art in data for p in art["paragraphs"] for qa in p["qas"]}
    Path(sys.argv[2]).write_text(json.dumps(preds, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
