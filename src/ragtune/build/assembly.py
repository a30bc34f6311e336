"""Context assembly: which passages each example shows, and what its target is.

Rules (RAFT with its known gaps closed, plus ChatQA-style abstention):
- the oracle chunk is shown with probability `oracle_p`; without it the target is the refusal;
- distractors are never the oracle, never overlap it, never contain a gold answer;
- unanswerable items show no chunk they came from and no chunk holding their hidden answer;
- with probability `cut_oracle_p`, a refusal example shows the chunk its question was written
  from with every sentence holding the answer cut out: the context is on topic and still lacks
  the answer, as SQuAD 2.0's unanswerable questions are;
- passages come only from documents of the example's own split, in random order.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ragtune.config import BuildConfig
from ragtune.records import Chunk, QAItem, content_id

_NON_WORD = re.compile(r"[^\w]+")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")


def normalise(text: str) -> str:
    return " " + _NON_WORD.sub(" ", text.lower()).strip() + " "


def contains_answer(passage: str, answer: str) -> bool:
    """True when the passage holds the answer: as a whole-word phrase (case and punctuation
    ignored), or, for long answers, through at least half of the answer's word 4-grams."""
    ans = normalise(answer)
    if not ans.strip():
        return False
    text = normalise(passage)
    if ans in text:
        return True
    words = ans.split()
    if len(words) < 8:
        return False
    grams = {" ".join(words[i : i + 4]) for i in range(len(words) - 3)}
    return sum(f" {g} " in text for g in grams) / len(grams) >= 0.5


def cut_answer(chunk: Chunk, answers: Sequence[str]) -> Chunk | None:
    """`chunk` without the sentences that hold any of `answers`; None when no sentence holds
    one, when nothing else is left, or when an answer still shows (it spans sentences)."""
    answers = [a for a in answers if a.strip()]
    sentences = _SENTENCE_BREAK.split(chunk.text)
    kept = [s for s in sentences if not any(contains_answer(s, a) for a in answers)]
    if not answers or len(kept) == len(sentences) or not kept:
        return None
    text = " ".join(kept)
    if any(contains_answer(text, a) for a in answers):
        return None
    return replace(chunk, id=content_id(chunk.id, "answer-cut"), text=text)


def overlaps(a: Chunk, b: Chunk) -> bool:
    """Same document and intersecting character ranges (or the same text)."""
    return a.id == b.id or a.text == b.text or (a.doc_id == b.doc_id and a.start < b.end and b.start < a.end)


@dataclass
class Plan:
    """What one example shows; the split and order are decided by the caller."""

    item: QAItem
    oracles: list[Chunk]  # passages that hold the answer (one chunk, or an imported item's contexts)
    banned: list[Chunk] = field(default_factory=list)  # chunks that must not be shown
    hidden_answers: list[str] = field(default_factory=list)  # text no shown passage may contain
    answerable: bool = True
    kind: str = "factoid"


def context_chunks(item: QAItem) -> list[Chunk]:
    """Imported items carry their passages as text: make chunks of them (one pseudo-document)."""
    doc = item.doc_id or content_id(*item.contexts)
    return [
        Chunk(id=content_id(doc, t), doc_id=doc, source="(imported)", title="", text=t, start=0, end=len(t))
        for t in item.contexts
    ]


def plan_item(item: QAItem, by_id: dict[str, Chunk]) -> Plan | None:
    """The oracle and the exclusions of one QA item; None when its oracle chunk is unknown."""
    answers = [a for a in (item.answers or [item.answer]) if a]
    if item.answerable:
        if item.chunk_id:
            if item.chunk_id not in by_id:
                return None
            oracles = [by_id[item.chunk_id]]
        elif item.contexts:
            oracles = context_chunks(item)
        else:
            return None
        return Plan(item, oracles, banned=list(oracles), hidden_answers=answers, kind=item.kind)
    source = item.meta.get("source_chunk") or item.chunk_id
    banned = [by_id[source]] if source in by_id else []
    hidden = [h for h in [item.meta.get("hidden_answer"), *answers] if h]
    # an imported unanswerable question comes with the passage it cannot be answered from
    shown = context_chunks(item) if item.contexts else []
    return Plan(item, shown, banned=banned, hidden_answers=hidden, answerable=False, kind="unanswerable")


def item_doc(item: QAItem, by_id: dict[str, Chunk]) -> str:
    """The document an item belongs to, for splitting."""
    if item.doc_id:
        return item.doc_id
    for cid in (item.chunk_id, item.meta.get("source_chunk")):
        if cid in by_id:
            return by_id[cid].doc_id
    return content_id(*item.contexts) if item.contexts else item.id


def split_documents(doc_sizes: dict[str, int], ratios: Sequence[float], seed: int) -> dict[str, str]:
    """Assign whole documents to train / validation / test, close to the ratios by item count.

    Documents are shuffled with the seed and dealt in order; each split gets at least one
    document when there are enough of them.
    """
    names = ("train", "validation", "test")
    docs = sorted(doc_sizes)
    random.Random(seed).shuffle(docs)
    total = sum(doc_sizes.values()) or 1
    weights = [max(r, 0.0) for r in ratios]
    norm = sum(weights) or 1.0
    cuts = np.cumsum([w / norm for w in weights]) * total
    out: dict[str, str] = {}
    seen = 0
    for d in docs:
        split = next((i for i, c in enumerate(cuts) if seen < c - 1e-9), len(names) - 1)
        out[d] = names[split]
        seen += doc_sizes[d]
    _ensure_nonempty(out, docs, doc_sizes, weights)
    return out


def _ensure_nonempty(out: dict[str, str], docs: list[str], sizes: dict[str, int], weights: list[float]) -> None:
    """Move a document from the largest split into a wanted split that ended up empty."""
    names = ("train", "validation", "test")
    for i, name in enumerate(names):
        if weights[i] <= 0 or name in out.values():
            continue
        counts = {n: [d for d in docs if out[d] == n] for n in names}
        donor = max(names, key=lambda n: len(counts[n]))
        if len(counts[donor]) > 1:
            smallest = min(counts[donor], key=lambda d: sizes[d])
            out[smallest] = name


@dataclass
class Assembled:
    passages: list[Chunk]
    oracle_in_context: bool
    oracle_index: int | None
    n_hard: int
    n_random: int
    answer_cut: Chunk | None = None  # the question's own chunk, shown with its answer cut out


def pick_distractors(
    plan: Plan,
    ranked: Sequence[str],
    pool: Sequence[Chunk],
    by_id: dict[str, Chunk],
    n: int,
    mode: str,
    rng: random.Random,
) -> tuple[list[Chunk], int, int]:
    """n distractors: from the retrieval ranking (hard), the split's pool (random), or both."""
    avoid = plan.oracles + plan.banned

    def ok(c: Chunk, chosen: list[Chunk]) -> bool:
        if any(overlaps(c, o) for o in avoid) or any(c.id == x.id for x in chosen):
            return False
        return not any(contains_answer(c.text, a) for a in plan.hidden_answers)

    n_hard = n if mode == "hard" else (n + 1) // 2 if mode == "mixed" else 0
    chosen: list[Chunk] = []
    for cid in ranked:
        if len(chosen) >= n_hard:
            break
        c = by_id.get(cid)
        if c is not None and ok(c, chosen):
            chosen.append(c)
    hard = len(chosen)
    tries = 0
    while len(chosen) < n and pool and tries < 20 * n + 50:  # random fill (also when hard ran out)
        tries += 1
        c = pool[rng.randrange(len(pool))]
        if ok(c, chosen):
            chosen.append(c)
    return chosen, hard, len(chosen) - hard


def assemble(
    plan: Plan,
    ranked: Sequence[str],
    pool: Sequence[Chunk],
    by_id: dict[str, Chunk],
    cfg: BuildConfig,
    rng: random.Random,
) -> Assembled:
    """The passages of one example, shuffled; the oracle is kept with probability oracle_p."""
    keep_oracle = plan.answerable and rng.random() < cfg.oracle_p
    # every example shows about k + 1 passages, so their number does not give the answer away
    if plan.answerable:
        shown_fixed = plan.oracles if keep_oracle else []
        n = cfg.k_distractors + (0 if keep_oracle else len(plan.oracles))
    else:
        shown_fixed = plan.oracles  # an imported unanswerable item's own passages
        n = max(cfg.k_distractors + 1 - len(shown_fixed), 0)
    cut = None if keep_oracle or shown_fixed else _answer_cut_source(plan, cfg, rng)
    if cut is not None:
        shown_fixed, n = [cut], max(n - 1, 0)
    distractors, n_hard, n_random = pick_distractors(plan, ranked, pool, by_id, n, cfg.distractors, rng)
    passages = list(shown_fixed) + distractors
    rng.shuffle(passages)
    oracle_ids = {o.id for o in plan.oracles}
    idx = next((i for i, p in enumerate(passages) if p.id in oracle_ids), None) if keep_oracle else None
    return Assembled(passages, keep_oracle, idx, n_hard, n_random, cut)


def _answer_cut_source(plan: Plan, cfg: BuildConfig, rng: random.Random) -> Chunk | None:
    """With probability cut_oracle_p, the chunk this refusal example's question came from, its
    answer cut out; None otherwise or when it cannot be cut. No draw is made at p = 0, so
    builds without the option stay as they were."""
    if cfg.cut_oracle_p <= 0 or rng.random() >= cfg.cut_oracle_p:
        return None
    sources = plan.oracles if plan.answerable else plan.banned
    if len(sources) != 1:  # an imported item's several contexts: which sentence to cut is unclear
        return None
    return cut_answer(sources[0], plan.hidden_answers)
