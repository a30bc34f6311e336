"""Quality filters for generated rows; each one is switchable and counted by its reason.

| filter (config key) | rejects a row when | reason |
|---|---|---|
| `parse` | the LLM reply holds no question / no final answer | `parse_failure` |
| `non_question` | a reply line is a preamble or not a question ("Here are 3 questions:") | `not_a_question` |
| `quotes` | a quoted evidence span is not in the source chunk (verbatim modulo whitespace) | `quote_not_in_source` |
| `grounding` | too few of the answer's content words occur in the source | `answer_not_grounded` |
| `roundtrip` | BM25 over the whole corpus does not rank the source in the question's top k | `roundtrip_failed` |
| `dedupe` | the question repeats an earlier one (normalised exact, or MinHash Jaccard) | `duplicate_question` |
| `not_in_context` | an answerable question got "NOT IN CONTEXT" from the answer call | `answer_not_in_context` |
| `unanswerable_check` | a deliberately unanswerable question got an answer from the chunk | `unanswerable_answered` |

`parse`, `non_question`, `not_in_context` and `unanswerable_check` run inside the LLM
generators (they need the raw reply); the others run over every backend's rows in
`apply_filters`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from ragtune.records import Chunk, QAItem

FILTERS = (
    "parse",
    "non_question",
    "quotes",
    "grounding",
    "roundtrip",
    "dedupe",
    "not_in_context",
    "unanswerable_check",
)

_WORD = re.compile(r"\w+", re.UNICODE)
# Function words carry no evidence that an answer came from the chunk.
_STOP_TEXT = (
    "a an the of to in on at by for from with and or but not no is are was were be been being it its "
    "this that these those as if then than so such can could may might must shall should will would do "
    "does did has have had you your we our they their he she his her i me my what which who whom whose "
    "when where why how there here into out up down over under about also only just very more most"
)
_STOPWORDS = frozenset(_STOP_TEXT.split())


def enabled(filters: dict[str, bool], name: str) -> bool:
    """Every filter is on unless the config switches it off by name."""
    return filters.get(name, True)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(unicodedata.normalize("NFKC", text))]


def squash(text: str) -> str:
    """Whitespace collapsed to single spaces (quotes keep their case and punctuation)."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


# ---------------------------------------------------------------- quotes
def unverified_quotes(quotes: Sequence[str], source: str) -> list[str]:
    """The quoted spans that are not verbatim (modulo whitespace) in `source`."""
    flat = squash(source)
    return [q for q in quotes if not squash(q) or squash(q) not in flat]


# ---------------------------------------------------------------- grounding
def grounding_score(answer: str, source: str) -> float:
    """Share of the answer's content words (stopwords removed) that occur in `source`."""
    content = [w for w in words(answer) if w not in _STOPWORDS] or words(answer)
    if not content:
        return 0.0
    vocab = set(words(source))
    return sum(w in vocab for w in content) / len(content)


# ---------------------------------------------------------------- round trip
class RoundTrip:
    """ARES-style check: the question, used as a BM25 query over the whole corpus, must rank
    its source chunk in the top `k` with a positive score (a vague question retrieves nothing)."""

    def __init__(self, corpus: Sequence[Chunk], k: int = 10) -> None:
        from ragtune.retrieval import build_retriever

        self.k = min(k, len(corpus))
        self.retriever = build_retriever("bm25", corpus)

    def top(self, question: str) -> list[str]:
        from ragtune.retrieval import search

        return [cid for cid, _ in search(self.retriever, question, self.k)]

    def passes(self, question: str, sources: Sequence[str]) -> bool:
        top = self.top(question)
        return any(s in top for s in sources)


# ---------------------------------------------------------------- dedupe
def normalise_question(q: str) -> str:
    return " ".join(words(q))


class Deduper:
    """Normalised exact match, then MinHash LSH over word uni- and bigrams (datasketch)."""

    def __init__(self, threshold: float = 0.9, num_perm: int = 128) -> None:
        from datasketch import MinHash, MinHashLSH

        self.threshold, self.num_perm = threshold, num_perm
        self.exact: set[str] = set()
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        template = MinHash(num_perm=num_perm, seed=1)
        self.permutations, self.scheme = template.permutations, template.scheme  # made once, reused
        self.n = 0

    def _minhash(self, norm: str) -> Any:
        from datasketch import MinHash

        toks = norm.split()
        shingles = set(toks) | {f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False)}
        m = MinHash(num_perm=self.num_perm, seed=1, permutations=self.permutations, scheme=self.scheme)
        m.update_batch([s.encode("utf-8") for s in shingles])
        return m

    def seen(self, question: str) -> bool:
        """True when `question` duplicates one added before; otherwise remember it."""
        norm = normalise_question(question)
        if norm in self.exact:
            return True
        m = self._minhash(norm)
        if self.lsh.query(m):
            return True
        self.exact.add(norm)
        self.lsh.insert(f"q{self.n}", m)
        self.n += 1
        return False


# ---------------------------------------------------------------- all row filters
class RowFilters:
    """The filters that judge finished rows, for any backend. `check` returns a rejection
    reason, or None when the row is kept (and then remembered for dedupe)."""

    def __init__(
        self,
        corpus: Sequence[Chunk],
        filters: dict[str, bool],
        grounding_threshold: float = 0.5,
        roundtrip_k: int = 10,
        dedupe_threshold: float = 0.9,
    ) -> None:
        self.filters = filters
        self.texts = {c.id: c.text for c in corpus}
        self.grounding_threshold = grounding_threshold
        self.roundtrip = RoundTrip(corpus, roundtrip_k) if enabled(filters, "roundtrip") and corpus else None
        self.deduper = Deduper(dedupe_threshold) if enabled(filters, "dedupe") else None

    def sources(self, item: QAItem) -> list[str]:
        ids = [item.chunk_id, item.meta.get("partner_chunk_id")]
        return [i for i in ids if i]

    def check(self, item: QAItem) -> str | None:
        source = "\n".join(self.texts.get(i, "") for i in self.sources(item)) or "\n".join(item.contexts)
        if enabled(self.filters, "quotes") and item.evidence and unverified_quotes(item.evidence, source):
            return "quote_not_in_source"
        if (
            enabled(self.filters, "grounding")
            and item.answerable
            and item.answer
            and grounding_score(item.answer, source) < self.grounding_threshold
        ):
            return "answer_not_grounded"
        if (
            self.roundtrip is not None
            and item.answerable
            and self.sources(item)
            and not self.roundtrip.passes(item.question, self.sources(item))
        ):
            return "roundtrip_failed"
        if self.deduper is not None and self.deduper.seen(item.question):
            return "duplicate_question"
        return None

    def remember(self, item: QAItem) -> None:
        """Register a row kept by an earlier (resumed) run, so dedupe sees it."""
        if self.deduper is not None:
            self.deduper.seen(item.question)
