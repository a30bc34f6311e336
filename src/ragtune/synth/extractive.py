"""The offline, LLM-free generator: questions from sentences of a chunk, answers copied from it.

A question keeps the words of its source sentence around the answer ("Fill in the blank:
... ____ ..." or the sentence with a wh-word in the answer's place), so a model can
answer by finding those words in a passage and copying the span that follows. The `loose`
form (`SynthConfig.question_styles`) puts the wh-word first and keeps only some of the words
near the answer, as people's questions do (SQuAD's): the passage must be matched on words,
not on a string. Answers are
short spans (identifiers, numbers, names, quoted strings, noun phrases) that occur once in
their chunk and are rare in the corpus, so guessing a frequent answer does not work.

Unanswerable items reuse a question whose answer is hidden: `answerable=False`, answer "",
`meta.source_chunk` names the chunk it came from and `meta.hidden_answer` the removed span.
`build` keeps that chunk, and any chunk containing the hidden answer, out of their context.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ragtune.config import SynthConfig
from ragtune.errors import RagtuneError
from ragtune.records import Chunk, QAItem, content_id
from ragtune.synth.base import Rejection, register_generator

_STOP = (
    "a an the and or but if then else of to in on at by for with from as is are was were be been being "
    "it its this that these those there here which who whom whose what when where why how not no nor "
    "so than too very can could may might must shall should will would do does did done has have had "
    "having i you he she we they them their our your his her my me us also such only other any all each "
    "both more most some same own into over under about after before between through during above below "
    "up down out off again further once just now new one two see used use using e.g i.e etc"
)
STOPWORDS = frozenset(_STOP.split())
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[A-Za-z_][\w.]*\w|\w")
SPAN_PATTERNS: list[tuple[str, float, re.Pattern[str]]] = [
    (
        "identifier",
        3.0,
        re.compile(
            r"(?<![\w.])(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?|_\w+_|[A-Za-z]\w*_\w+|[A-Za-z_]\w*\(\))(?![\w(])"
        ),
    ),
    ("number", 2.5, re.compile(r"(?<![\w.])\d+(?:[.,:]\d+)*(?![\w.]\w)")),
    # quotes open after no word and close before none: apostrophes (isn't, module's) are not quotes
    ("quoted", 2.0, re.compile(r"(?<![\w\"'])[\"']([^\"'\n]{2,40})[\"'](?!\w)")),
    ("name", 2.5, re.compile(r"(?<![\w.])[A-Z][A-Za-z0-9]+(?:[ -][A-Z][A-Za-z0-9]+){0,3}(?![\w])")),
    ("noun_phrase", 1.0, re.compile(r"\b(?:the|a|an) ([a-z][a-z-]+(?: [a-z][a-z-]+){0,2})\b")),
]
_EDGE_PUNCT = re.compile(r"^\W+|\W+$")
MIN_SENTENCE_WORDS, MAX_SENTENCE_WORDS = 6, 45
MAX_SPAN_WORDS = 6


@dataclass
class Candidate:
    sentence: str
    sentence_start: int  # offset of the sentence in the chunk text
    start: int  # answer span, offsets in the sentence
    end: int
    kind: str
    score: float

    @property
    def answer(self) -> str:
        return self.sentence[self.start : self.end]


def sentences(text: str) -> Iterator[tuple[int, str]]:
    """(offset, sentence) for every sentence of every paragraph of a chunk."""
    pos = 0
    for block in text.split("\n\n"):
        off = pos
        for part in _SENTENCE.split(block):
            i = text.find(part, off)
            if part.strip():
                yield i, part
            off = i + len(part)
        pos += len(block) + 2


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _occurrences(span: str, text: str) -> int:
    return len(re.findall(r"(?<!\w)" + re.escape(span) + r"(?!\w)", text, flags=re.I))


def _trim_noun_phrase(words: str) -> str:
    """At most two words, cut before stopwords and verb-like words ('value of' -> 'value')."""
    parts: list[str] = []
    for w in words.split(" "):
        if w in STOPWORDS or w.endswith(("ing", "ed", "ly")):
            break
        parts.append(w)
    return " ".join(parts[:2])


class ExtractiveGenerator:
    name = "extractive"

    def __init__(self, cfg: SynthConfig, corpus: Sequence[Chunk]) -> None:
        self.cfg = cfg
        df: Counter[str] = Counter()
        for c in corpus:
            df.update(set(_words(c.text)))
        self.df = df
        self.n_docs = max(len(corpus), 1)

    def idf(self, word: str) -> float:
        return math.log((self.n_docs + 1) / (self.df.get(word, 0) + 1))

    # ---------------------------------------------------------- candidates
    def candidates(self, chunk: Chunk) -> list[Candidate]:
        """The best answer span of each usable sentence of the chunk."""
        out = []
        for off, sent in sentences(chunk.text):
            n_words = len(sent.split())
            if not MIN_SENTENCE_WORDS <= n_words <= MAX_SENTENCE_WORDS or sent.rstrip()[-1:] not in ".!?:":
                continue
            best = self._best_span(sent, chunk.text)
            if best:
                out.append(Candidate(sent, off, *best))
        return out

    def _best_span(self, sent: str, chunk_text: str) -> tuple[int, int, str, float] | None:
        best = None
        seen: set[tuple[int, int]] = set()
        for kind, weight, pattern in SPAN_PATTERNS:
            for m in pattern.finditer(sent):
                g = 1 if pattern.groups else 0  # the span is group 1 where the pattern has one
                start, text = m.start(g), m.group(g)
                if kind == "name" and start == 0:
                    continue  # a capital at the start of a sentence says nothing
                if kind == "noun_phrase":
                    text = _trim_noun_phrase(text)
                end = start + len(text)
                if (start, end) in seen or not self._usable(text, sent, start, end, chunk_text):
                    continue
                seen.add((start, end))
                words = _words(text)
                rarity = sum(self.idf(w) for w in words) / len(words)
                score = weight + rarity
                if best is None or score > best[3]:
                    best = (start, end, kind, score)
        return best

    def _usable(self, span: str, sent: str, start: int, end: int, chunk_text: str) -> bool:
        words = _words(span)
        if not words or len(span.split()) > MAX_SPAN_WORDS or len(span) < 2:
            return False
        if all(w in STOPWORDS for w in words):
            return False
        rest = sent[:start] + " " + sent[end:]
        if len(rest.split()) < 5:  # too little left to locate the answer
            return False
        if span.lower() in rest.lower():  # the question would give the answer away
            return False
        return _occurrences(span, chunk_text) == 1  # ambiguous when it appears twice

    # ---------------------------------------------------------- questions
    @staticmethod
    def question(c: Candidate, style: str, rng: random.Random) -> str:
        before, after = c.sentence[: c.start], c.sentence[c.end :]
        if style == "cloze":
            return f"Fill in the blank: {before}____{after}".strip()
        wh = _wh_word(c, after)
        if style == "loose":
            return loose_question(before, after, wh, rng)
        if not before.strip():
            wh = wh[0].upper() + wh[1:]
        text = f"{before}{wh}{after}".strip()
        return re.sub(r"[.!:;]+$", "", text).rstrip() + "?"

    def generate(self, chunks: Sequence[Chunk]) -> Iterator[QAItem | Rejection]:
        for chunk in chunks:
            rng = random.Random(f"{self.cfg.seed}:{chunk.id}")  # independent of chunk order
            cands = self.candidates(chunk)
            if not cands:
                yield Rejection("no usable sentence with a short, unique answer span", chunk_id=chunk.id)
                continue
            cands.sort(key=lambda c: c.score + rng.random() * 0.5, reverse=True)
            for c in cands[: self.cfg.questions_per_chunk]:
                yield self._item(chunk, c, rng)

    def _item(self, chunk: Chunk, c: Candidate, rng: random.Random) -> QAItem:
        style = pick_style(self.cfg.question_styles, rng.random())
        q = self.question(c, style, rng)
        meta = {"style": style, "span_type": c.kind, "answer_start": c.sentence_start + c.start}
        if rng.random() < self.cfg.unanswerable_share:
            return QAItem(
                id=content_id(chunk.id, q, "unanswerable"),
                question=q,
                answer="",
                answers=[],
                chunk_id=None,
                answerable=False,
                kind="unanswerable",
                origin="extractive",
                doc_id=chunk.doc_id,
                meta={**meta, "source_chunk": chunk.id, "hidden_answer": c.answer},
            )
        return QAItem(
            id=content_id(chunk.id, q, c.answer),
            question=q,
            answer=c.answer,
            answers=[c.answer],
            chunk_id=chunk.id,
            answerable=True,
            kind="factoid",
            origin="extractive",
            evidence=[c.sentence],
            doc_id=chunk.doc_id,
            meta=meta,
        )


def pick_style(shares: dict[str, float], u: float) -> str:
    """The question style that the uniform draw `u` falls on, shares taken in order."""
    total, acc = sum(shares.values()), 0.0
    for style, share in shares.items():
        acc += share / total
        if u < acc:
            return style
    return style


def loose_question(before: str, after: str, wh: str, rng: random.Random) -> str:
    """The wh-word, then 4-10 words before the answer and 0-6 after it, each content word kept
    with p .85 and each stopword with p .5, at least two content words: "What ... module ... provides ... ?"."""

    def words(text: str) -> list[str]:
        return [w for w in (_EDGE_PUNCT.sub("", w) for w in text.split()) if w]

    near = words(before)[-rng.randint(4, 10) :] + words(after)[: rng.randint(0, 6)]
    kept = [w for w in near if rng.random() < (0.5 if w.lower() in STOPWORDS else 0.85)]
    if sum(w.lower() not in STOPWORDS for w in kept) < 2:
        kept = near
    return f"{wh[0].upper()}{wh[1:]} {' '.join(kept)}?"


def _wh_word(c: Candidate, after: str) -> str:
    if c.kind == "number":
        value = c.answer.replace(",", "")
        if value.isdigit() and 1000 <= int(value) <= 2100:
            return "what year"
        if value.isdigit() and re.match(r"\s+[a-z]", after):
            return "how many"
        return "what number"
    return "what"


QUESTION_STYLES = ("cloze", "wh", "loose")


@register_generator("extractive")
def make_extractive(cfg: SynthConfig, corpus: Sequence[Chunk]) -> ExtractiveGenerator:
    shares = cfg.question_styles
    if (
        any(s not in QUESTION_STYLES for s in shares)
        or any(v < 0 for v in shares.values())
        or not any(v > 0 for v in shares.values())
    ):
        raise RagtuneError(
            f"question_styles needs positive shares for some of {', '.join(QUESTION_STYLES)}; got {shares}"
        )
    return ExtractiveGenerator(cfg, corpus)
