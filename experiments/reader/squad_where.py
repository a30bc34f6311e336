"""Where a model's answers to the SQuAD v2 sample land, answerable questions only: refused,
answer length, inside the gold answer's sentence (and, for comparison, a random span of the
context as long), inside the sentence-overlap heuristic's sentence, sharing a word with a gold
answer; with --model, F1 for prompts within / past the length the model trained on. Reads
`ragtune eval --qa FILE` predictions.

    python experiments/reader/squad_where.py ../shared/data/squad2-sample/dev-sample-v2.0.json \
        RUN/squad/predictions.jsonl [--model MODEL_DIR --trained-length 640]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

from squad_overlap import best_sentence, sentences


def norm_words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def contains(sentence: str, answer: str) -> bool:
    a = " ".join(norm_words(answer))
    return bool(a) and f" {a} " in f" {' '.join(norm_words(sentence))} "


def gold_sentences(squad: Path) -> dict[str, dict]:
    """question id -> context, the gold answer's sentence and the heuristic's."""
    out = {}
    for art in json.loads(squad.read_text(encoding="utf-8"))["data"]:
        for p in art["paragraphs"]:
            ctx = p["context"]
            spans, pos = [], 0
            for s in sentences(ctx):
                start = ctx.find(s, pos)
                spans.append((start, start + len(s), s))
                pos = start + len(s)
            for qa in p["qas"]:
                if qa.get("is_impossible"):
                    continue
                at = qa["answers"][0]["answer_start"]
                gold = next((s for a, b, s in spans if a <= at < b), "")
                out[qa["id"]] = {"context": ctx, "gold_sentence": gold, "heuristic": best_sentence(qa["question"], ctx)}
    return out


def prompt_lengths(model: str, squad: Path) -> dict[str, int]:
    """Token count of each prompt exactly as `ragtune eval --qa` renders it for `model`."""
    from ragtune.evaluate import qa_examples
    from ragtune.importers import import_file
    from ragtune.models import load_tokenizer
    from ragtune.prompts import PromptTemplate

    tok = load_tokenizer(model)
    template = PromptTemplate.find(model) or PromptTemplate.for_tokenizer(tok)
    return {ex.id: len(tok(ex.prompt)["input_ids"]) for ex in qa_examples(import_file(squad), tok, template)}


def random_span(context: str, n_words: int, rng: random.Random) -> str:
    words = context.split()
    n = max(1, min(n_words, len(words)))
    i = rng.randrange(len(words) - n + 1)
    return " ".join(words[i : i + n])


def summary(s: dict[str, float], trained_length: int | None) -> str:
    def pct(key: str, of: str = "answered") -> str:
        return f"{100 * s[key] / max(s[of], 1):.0f}%"

    a = max(s["answered"], 1)
    out = (
        f"n {s['n']:.0f}, F1 {100 * s['f1'] / s['n']:.1f}, refused {pct('refused', 'n')}; of the answered: "
        f"{s['words'] / a:.1f} words, in the gold sentence {pct('in_gold_sentence')} (a random span of the context "
        f"as long: {pct('chance')}), in the heuristic's "
        f"{pct('in_heuristic_sentence')}, sharing a gold word {pct('shares_gold_word')}"
    )
    if trained_length:
        out += (
            f"; F1 prompts <= {trained_length} tokens {100 * s['f1_short'] / max(s['n_short'], 1):.1f} "
            f"({s['n_short']:.0f}), longer {100 * s['f1_long'] / max(s['n_long'], 1):.1f} ({s['n_long']:.0f})"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("squad", type=Path)
    ap.add_argument("predictions", type=Path, nargs="+")
    ap.add_argument("--model", help="tokenizer and saved template, to split by prompt length")
    ap.add_argument("--trained-length", type=int, default=640)
    args = ap.parse_args()
    items = gold_sentences(args.squad)
    lengths = prompt_lengths(args.model, args.squad) if args.model else {}
    for path in args.predictions:
        stats: dict[str, defaultdict] = {}
        rng = random.Random(0)
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            it = items.get(row.get("qa_id") or row["id"])
            if it is None:
                continue
            for name, m in row["models"].items():
                s = stats.setdefault(name, defaultdict(float))
                s["n"] += 1
                long = lengths.get(row.get("qa_id") or row["id"], 0) > args.trained_length
                s["f1_long" if long else "f1_short"] += m["f1"]
                s["n_long" if long else "n_short"] += 1
                s["f1"] += m["f1"]
                if m["refused"]:
                    s["refused"] += 1
                    continue
                pred = m["prediction"]
                s["answered"] += 1
                s["words"] += len(norm_words(pred))
                s["in_gold_sentence"] += contains(it["gold_sentence"], pred)
                s["chance"] += contains(it["gold_sentence"], random_span(it["context"], len(norm_words(pred)), rng))
                s["in_heuristic_sentence"] += contains(it["heuristic"], pred)
                s["shares_gold_word"] += bool(set(norm_words(pred)) & set(norm_words(" ".join(row["answers"]))))
        for name, s in stats.items():
            print(f"{path}  {name}: {summary(s, args.trained_length if lengths else None)}")


if __name__ == "__main__":
    main()
