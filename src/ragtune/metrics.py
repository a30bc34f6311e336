"""Judge-free answer metrics: SQuAD v2 exact match and F1, refusals, and RAG extras.

The SQuAD v2 rules (official evaluation script): answers are normalised (lower case, ASCII
punctuation removed, articles a/an/the removed, whitespace collapsed); EM compares the
normalised strings, F1 the token multisets; a question whose references all normalise to
nothing is unanswerable and its gold is the empty string; an empty gold or prediction scores
1 only when both are empty; the score is the max over references. A refusal counts as the
empty answer, so refusing an unanswerable question is correct and refusing an answerable
one scores 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.config import REFUSAL

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)

# Ways a model says "not in the context" besides the configured sentence (normalised form).
REFUSAL_PARAPHRASES = (
    "cannot find the answer",
    "can not find the answer",
    "cant find the answer",
    "could not find the answer",
    "couldnt find the answer",
    "cannot be found in the context",
    "cannot be answered",
    "cannot answer",
    "unable to answer",
    "unable to find",
    "not enough information",
    "no information",
    "does not contain the answer",
    "doesnt contain the answer",
    "does not provide",
    "doesnt provide",
    "context does not",
    "passages do not",
    "not mentioned in",
    "not stated in",
    "not found in the context",
    "no answer",
    "unanswerable",
    "i dont know",
    "i do not know",
)


# ---------------------------------------------------------------- SQuAD v2
def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1(prediction: str, gold: str) -> float:
    gold_toks, pred_toks = answer_tokens(gold), answer_tokens(prediction)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Iterable[str]) -> list[str]:
    """References that survive normalisation; [""] (no answer) when none does."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def max_over(fn: Any, prediction: str, answers: Iterable[str]) -> float:
    return max(fn(prediction, g) for g in gold_answers(answers))


# ---------------------------------------------------------------- refusals
def is_refusal(text: str, refusal: str = REFUSAL) -> bool:
    """True when `text` abstains: empty, the configured refusal, or a known paraphrase.

    An empty output is the SQuAD v2 "no answer", so it counts as an abstention too.
    """
    norm = normalize_answer(text)
    if not norm:
        return True
    ref = normalize_answer(refusal)
    if ref and ref in norm:
        return True
    # compared normalised like the text: "cannot find the answer" becomes "cannot find answer"
    return any(normalize_answer(p) in norm for p in REFUSAL_PARAPHRASES)


def scored_answer(prediction: str, refusal: str = REFUSAL) -> str:
    """The answer SQuAD v2 scores: the empty string for an abstention."""
    return "" if is_refusal(prediction, refusal) else prediction


# ---------------------------------------------------------------- extras
FINAL_ANSWER_MARKERS = ("<ANSWER>:", "Final answer:", "Final Answer:", "FINAL ANSWER:")
QUOTE_SPAN = re.compile(r"##begin_quote##(.*?)##end_quote##|[\"\u201c](.+?)[\"\u201d]", re.DOTALL)
CITATION = re.compile(r"\[(\d{1,3})\]")


def extract_final_answer(text: str, markers: Sequence[str] = FINAL_ANSWER_MARKERS) -> str:
    """The text after the last final-answer marker of a chain-of-thought output, else all of it."""
    best = -1
    cut = 0
    for m in markers:
        i = text.rfind(m)
        if i > best:
            best, cut = i, i + len(m)
    return text[cut:].strip() if best >= 0 else text.strip()


def contains_match(prediction: str, gold: str) -> int:
    """1 when the normalised gold appears, on word boundaries, in the normalised prediction."""
    g, p = normalize_answer(gold), normalize_answer(prediction)
    if not g or not p:
        return int(g == p)
    return int(f" {g} " in f" {p} ")


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F1 (longest common subsequence of normalised tokens)."""
    a, b = answer_tokens(prediction), answer_tokens(gold)
    if not a or not b:
        return float(a == b)
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def quoted_spans(text: str) -> list[str]:
    spans = []
    for m in QUOTE_SPAN.finditer(text):
        span = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
        if span:
            spans.append(span)
    return spans


def quote_validity(text: str, context: str) -> float | None:
    """Share of quoted spans present verbatim (modulo whitespace) in the context; None if no quotes."""
    spans = quoted_spans(text)
    if not spans:
        return None
    flat = " ".join(context.split())
    return sum(" ".join(s.split()) in flat for s in spans) / len(spans)


def citation_precision(text: str, passage_texts: Sequence[str], answers: Iterable[str]) -> float | None:
    """Share of cited passages ([n], 1-based) that exist and hold a gold answer; None if none cited."""
    cited = sorted({int(n) for n in CITATION.findall(text)})
    if not cited:
        return None
    golds = [normalize_answer(a) for a in answers if normalize_answer(a)]

    def relevant(n: int) -> bool:
        if not 1 <= n <= len(passage_texts):
            return False
        passage = f" {normalize_answer(passage_texts[n - 1])} "
        return any(f" {g} " in passage for g in golds)

    return sum(relevant(n) for n in cited) / len(cited)


# ---------------------------------------------------------------- per item and aggregate
@dataclass
class ItemScore:
    em: float
    f1: float
    contains: float
    rouge_l: float
    refused: bool
    answer: str  # the extracted answer that was scored ("" for a refusal)
    empty: bool = False  # the model wrote nothing (counted as a refusal under SQuAD v2)
    quote_validity: float | None = None
    citation_precision: float | None = None


def score_item(
    prediction: str,
    answers: Sequence[str],
    refusal: str = REFUSAL,
    context: str = "",
    passage_texts: Sequence[str] = (),
) -> ItemScore:
    """All judge-free scores of one prediction; `answers` empty means unanswerable."""
    final = extract_final_answer(prediction)
    refused = is_refusal(final, refusal)
    answer = "" if refused else final
    return ItemScore(
        em=max_over(exact_match, answer, answers),
        f1=max_over(f1, answer, answers),
        contains=max_over(contains_match, answer, answers),
        rouge_l=max_over(rouge_l, answer, answers),
        refused=refused,
        answer=answer,
        empty=not prediction.strip(),
        quote_validity=quote_validity(prediction, context),
        citation_precision=citation_precision(prediction, passage_texts, answers),
    )


def _mean(xs: Sequence[float]) -> float | None:
    return round(100.0 * sum(xs) / len(xs), 2) if xs else None


def aggregate(scores: Sequence[ItemScore], answerable: Sequence[bool]) -> dict[str, Any]:
    """EM / F1 (percent, SQuAD v2 rules), the HasAns / NoAns split, and the abstention matrix."""
    has = [s for s, a in zip(scores, answerable, strict=True) if a]
    no = [s for s, a in zip(scores, answerable, strict=True) if not a]
    quotes = [s.quote_validity for s in scores if s.quote_validity is not None]
    cites = [s.citation_precision for s in scores if s.citation_precision is not None]
    return {
        "n": len(scores),
        "em": _mean([s.em for s in scores]),
        "f1": _mean([s.f1 for s in scores]),
        "contains": _mean([s.contains for s in scores]),
        "rouge_l": _mean([s.rouge_l for s in scores]),
        "has_ans": {
            "n": len(has),
            "em": _mean([s.em for s in has]),
            "f1": _mean([s.f1 for s in has]),
            "refused": _mean([float(s.refused) for s in has]),
            "empty": _mean([float(s.empty) for s in has]),
        },
        "no_ans": {
            "n": len(no),
            "em": _mean([s.em for s in no]),
            "refused": _mean([float(s.refused) for s in no]),
            "empty": _mean([float(s.empty) for s in no]),
        },
        "abstention": {
            "answerable": {"answered": sum(not s.refused for s in has), "refused": sum(s.refused for s in has)},
            "unanswerable": {"answered": sum(not s.refused for s in no), "refused": sum(s.refused for s in no)},
        },
        "quote_validity": _mean(quotes),
        "n_quoted": len(quotes),
        "citation_precision": _mean(cites),
        "n_cited": len(cites),
    }


def squad_v2_scores(
    dataset: Sequence[dict[str, Any]], predictions: dict[str, str], refusal: str | None = None
) -> dict[str, Any]:
    """Scores of a SQuAD v2 prediction file, as the official script reports them.

    `dataset` is the file's `data` list; `predictions` maps question id to answer text
    (missing ids score as the empty answer, as in the official script's warning path).
    With `refusal` set, refusal sentences count as the empty answer first.
    """
    exact, f1s, has_ids = {}, {}, set()
    for article in dataset:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                qid = qa["id"]
                golds = [a["text"] for a in qa.get("answers", [])]
                if golds:
                    has_ids.add(qid)
                pred = predictions.get(qid, "")
                if refusal is not None:
                    pred = scored_answer(pred, refusal)
                exact[qid] = max_over(exact_match, pred, golds)
                f1s[qid] = max_over(f1, pred, golds)

    def block(ids: list[str]) -> dict[str, float]:
        return {
            "exact": 100.0 * sum(exact[i] for i in ids) / len(ids),
            "f1": 100.0 * sum(f1s[i] for i in ids) / len(ids),
            "total": len(ids),
        }

    ids = list(exact)
    out = block(ids)
    has = [i for i in ids if i in has_ids]
    no = [i for i in ids if i not in has_ids]
    if has:
        out.update({f"HasAns_{k}": v for k, v in block(has).items()})
    if no:
        out.update({f"NoAns_{k}": v for k, v in block(no).items()})
    return out
