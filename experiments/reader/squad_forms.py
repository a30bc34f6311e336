"""The SQuAD v2 sample's answerable items with each question rewritten from the answer's own
sentence in the extractive synth's forms: `cloze`, `wh` (in place) and `loose`; and, as
`sentence`, the real questions with each context cut to the sentence the overlap heuristic
picks (experiments/reader/squad_overlap.py), so the sentence is found for the reader. Scoring a reader on
these next to the real questions splits its gap into question form (real vs cloze), finding
the sentence (real vs sentence) and the rest (domain, prompt length: cloze vs python-docs).
Writes OUT_DIR/{form}.json in SQuAD format, for `ragtune eval --qa`.

    python experiments/reader/squad_forms.py ../shared/data/squad2-sample/dev-sample-v2.0.json OUT_DIR
    ragtune eval --qa OUT_DIR/cloze.json --run RUN --base-model MODEL --no-robustness
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

from ragtune.synth.extractive import Candidate, ExtractiveGenerator

sys.path.insert(0, str(Path(__file__).parent))
from squad_overlap import best_sentence  # noqa: E402

_SENT_END = re.compile(r"(?<=[.!?])\s+")
FORMS = ("cloze", "wh", "loose", "sentence")


def around_answer(context: str, start: int, answer: str) -> tuple[str, str]:
    """The text of the answer's sentence before and after the answer."""
    s0 = max((m.end() for m in _SENT_END.finditer(context, 0, start)), default=0)
    m = _SENT_END.search(context, start + len(answer))
    return context[s0:start], context[start + len(answer) : m.start() if m else len(context)]


def rewrite(question: dict, context: str, form: str, rng: random.Random) -> dict:
    """`question` asked of its answer's sentence in `form`, as the synth generator asks it."""
    gold = question["answers"][0]
    before, after = around_answer(context, gold["answer_start"], gold["text"])
    end = len(before) + len(gold["text"])
    answer = Candidate(
        before + gold["text"] + after, gold["answer_start"] - len(before), len(before), end, kind="squad", score=0.0
    )
    return {**question, "question": ExtractiveGenerator.question(answer, form, rng)}


def in_best_sentence(question: dict, context: str) -> dict:
    """A paragraph of `question` alone, its context cut to the heuristic's sentence; the
    gold answers keep their text (F1 and EM compare text), found there or not (14%)."""
    sentence = best_sentence(question["question"], context)
    answers = [{**a, "answer_start": max(sentence.find(a["text"]), 0)} for a in question["answers"]]
    return {"context": sentence, "qas": [{**question, "answers": answers}]}


def paragraphs(paragraph: dict, form: str, rng: random.Random) -> list[dict]:
    answerable = [q for q in paragraph["qas"] if q["answers"]]
    if form == "sentence":
        return [in_best_sentence(q, paragraph["context"]) for q in answerable]
    return [{**paragraph, "qas": [rewrite(q, paragraph["context"], form, rng) for q in answerable]}]


def main() -> None:
    src, out = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for form in FORMS:
        rng = random.Random(0)
        data = [
            {**art, "paragraphs": [q for p in art["paragraphs"] for q in paragraphs(p, form, rng)]}
            for art in src["data"]
        ]
        (out / f"{form}.json").write_text(json.dumps({"version": "v2.0", "data": data}), encoding="utf-8")
        n = sum(len(p["qas"]) for art in data for p in art["paragraphs"])
        print(f"{form}: {n} answerable questions -> {out / form}.json")


if __name__ == "__main__":
    main()
