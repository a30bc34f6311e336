"""Do SQuAD 2.0's unanswerable questions differ from the answerable ones in their words?

For each question of a SQuAD 2.0 file, three word-overlap scores against its own paragraph
(content words, first five letters, so "launched" meets "launch"): the share of the question's
content words found in the paragraph, the share found in the sentence holding a tuned model's
answer (from an `eval --qa` predictions file), and minus the number of content words missing
from the paragraph. AUC 0.5 means the score does not tell them apart. Measured 2026-12-07 on the
sample with the best adapter's predictions: 0.522, 0.591, 0.482. Every offline negative ragtune
can make (the oracle left out, its answer sentences cut, a term swapped) lacks some of the
question's words in its context; SQuAD's lack none more often than the answerable ones do.

    python experiments/abstention/lexical.py --squad ../shared/data/squad2-sample/dev-sample-v2.0.json \
        --predictions RUN/eval-squad/predictions.jsonl
"""

from __future__ import annotations

import argparse
import json
import re

from scores import pairwise_auc  # this folder's scores.py: the script's folder is on sys.path

from ragtune.synth.extractive import STOPWORDS, sentences


def stems(text: str) -> list[str]:
    return [w[:5] for w in re.findall(r"\w+", text.lower()) if w not in STOPWORDS and len(w) > 1]


def overlaps(question: str, paragraph: str, answer: str) -> dict[str, float]:
    asked, found = stems(question), set(stems(paragraph))
    held = next((s for _, s in sentences(paragraph) if answer and answer.lower() in s.lower()), "")
    in_sentence = set(stems(held))
    return {
        "paragraph overlap": sum(w in found for w in asked) / max(len(asked), 1),
        "answer-sentence overlap": sum(w in in_sentence for w in asked) / max(len(asked), 1),
        "minus missing words": -sum(w not in found for w in asked),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--squad", required=True, help="the SQuAD 2.0 file the predictions answer")
    p.add_argument("--predictions", required=True, help="predictions.jsonl of `ragtune eval --qa`")
    p.add_argument("--model", default="tuned", help="whose answers locate the sentence")
    args = p.parse_args()
    with open(args.squad, encoding="utf-8") as f:
        paras = [para for art in json.load(f)["data"] for para in art["paragraphs"]]
    paragraph = {qa["id"]: para["context"] for para in paras for qa in para["qas"]}
    with open(args.predictions, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    scored = [
        (r["answerable"], overlaps(r["question"], paragraph[r["qa_id"]], r["models"][args.model]["prediction"]))
        for r in rows
    ]
    for key in scored[0][1]:
        pos = [s[key] for answerable, s in scored if answerable]
        neg = [s[key] for answerable, s in scored if not answerable]
        print(f"{key:24s} AUC {pairwise_auc(pos, neg):.3f} (answerable above unanswerable)")


if __name__ == "__main__":
    main()
