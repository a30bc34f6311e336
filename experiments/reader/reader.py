"""The `reader` tiny-model recipe (a small Llama that copies from its context) and the
induction probe. Research code, outside the ragtune package (NOTES.md has every run):

    PYTHONPATH=src python experiments/reader/reader.py build --corpus DOCS --out MODEL [key=value ...]
    PYTHONPATH=src python experiments/reader/reader.py probe MODEL [--lengths 8,32,128] [--rows 64]

A tiny model pretrained on plain text for minutes never forms induction heads, so it cannot
copy an answer out of a passage. The recipe here forms them first, with the loss only on the
second copies of repeated random spans (the decisive lever, NOTES.md), then
trains the cloze hops in random ids, then keeps both while it learns the corpus and tasks
shaped like RAG prompts:

- phase 1 (copy): rows of `<s> span span <s> span span ...` of random tokens. Spans start
  at up to 16 tokens in 128-token rows (cheap steps, many copies per step: the induction
  phase change came after ~400 steps) and widen to `max_span` only while the training
  copies are exact (`widen_acc`); a share stays short. The phase ends when the longest spans
  are copied (`copy_switch_acc`) or at `copy_phase_max` of the budget.
- phase 2 (find): a context of random ids, then questions `b_1..b_k ____ f_1..f_m` whose
  answer follows `b_1..b_k` in the context: three hops a two-layer model cannot make.
  Levels widen k, m and the context while first answer ids are right (`find_widen_acc`),
  until `find_phase_max` of the budget.
- phase 3 (recall): spans of a window of text copied to their end (word pieces repeat, so a
  copy must match more than its last id), at the full learning rate, with a share of find
  steps so the find circuit is kept (with `find_spread="after_find"`, at levels up to the
  one reached); until `recall_phase_max` of the budget.
- phase 4 (mix): per step one task drawn from `task_mix`: recall, copy, find, RAG-shaped
  cloze over corpus paragraphs (`rag`) or over passages of random words (`locate`, several
  questions per context), and plain text; at `late_seq_len`.

Prompts longer than `late_seq_len` get dynamic NTK RoPE scaling (`rope_dynamic_factor`).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from rich.console import Console

from ragtune.config import REFUSAL, TinyModelConfig
from ragtune.errors import RagtuneError
from ragtune.models import pick_device, pick_dtype, train_tokenizer
from ragtune.prompts import Passage, PromptTemplate
from ragtune.synth.extractive import loose_question


class ReaderConfig(TinyModelConfig):
    """The `reader` recipe's settings: the tiny model's, plus the curriculum's. Shape / budget
    fields of TinyModelConfig that are not set explicitly take the reader's measured defaults
    (READER_DEFAULTS, or the GPU preset)."""

    scale: Literal["auto", "cpu", "gpu"] = "auto"  # gpu: bigger model, more tokens per step
    warmup_steps: int = 100
    max_span: int = 160  # longest repeated random span in the copy curriculum
    widen_acc: float = 0.85  # copy spans widen (16 -> max_span) while training copies are this exact
    short_span_share: float = 0.25  # share of spans of 2-12 tokens, so short spans copy too
    copy_phase_max: float = 0.55  # share of the budget the copy-only phase may take at most
    copy_switch_acc: float = 0.9  # leave a self-paced phase once its training answers are this exact
    find_widen_acc: float = 0.75  # `find` levels widen while this share of first answer tokens is right
    find_phase_max: float = 0.35  # end of the `find` phase at the latest, as a share of the budget (0: none)
    recall_phase_max: float = 0.6  # end of the `recall` phase (after find) at the latest, share of the budget; 0: none
    recall_phase_find: float = 0.25  # share of `find` steps in the recall phase, which keep the find circuit
    recall_phase_copy: float = 0.0  # share of `copy` steps (spans up to max_span) in the recall phase (round 12)
    # find rows at levels from 0 to the one reached: "after_find" (recall phase and mix, round 8), "mix" (round 9)
    find_spread: Literal["off", "mix", "after_find"] = "off"
    recall_ambiguous_weight: float = 1.0  # loss weight of recall ids whose previous id has several followers
    copy_patience_steps: int = 1500  # copy phase unfinished after this many steps: start over (normal: 550-1000)
    find_patience_steps: int = 300  # find still at level 0 after this many steps or at its cap: start over
    max_restarts: int = 0  # fresh starts after a stalled phase, while half the budget is left (round 4: off)
    refusal_share: float = 0.0  # RAG-shaped examples whose oracle is swapped out; target: the refusal
    locate_follow_ups: int = 6  # more questions on each `locate` context: denser targets
    rag_follow_ups: int = 0  # more questions on each `rag` context, on any of its passages
    loose_question_share: float = 0.0  # `rag` / `locate` questions in the synth's `loose` form (wh first, some words)
    question_first: bool = True  # `rag` / `locate` prompts ask the question before the context too (round 10)
    loose_shuffled: bool = False  # loose questions' words in random order: matched as a bag of words, not a string
    same_doc_distractors: float = 0.75  # share of `rag` examples whose distractors come from the oracle's document
    first_token_weight: float = 3.0  # loss weight of each answer's first token, where the passage is found
    late_seq_len: int = 640  # sequence length of the mixed phase (RAG-shaped examples)
    rope_dynamic_factor: float = 2.0  # prompts past late_seq_len: dynamic NTK RoPE with this factor; 0: off
    threads: int | None = None  # CPU threads; None: 1 when the CPU is already busy, else torch's default
    # mixed-phase task weights (copy 0.05 until round 12); also available: echo, recall_ids, scatter, lookup, continue
    task_mix: dict[str, float] = Field(
        default_factory=lambda: {"copy": 0.15, "recall": 0.4, "find": 0.1, "rag": 0.25, "locate": 0.15, "text": 0.05}
    )

    @field_validator("find_spread", mode="before")
    @classmethod
    def _find_spread_bool(cls, value: object) -> object:
        """Round 8's boolean still reads: true spreads the levels after the find phase ("after_find")."""
        return ("after_find" if value else "off") if isinstance(value, bool) else value


# Measured on 2 CPU cores (NOTES.md): small vocabulary and FFN, three layers
# (a cloze answer is three hops away: the words before the blank, their place, what follows).
READER_DEFAULTS: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 128,
    "num_layers": 3,
    "num_heads": 4,
    "intermediate_size": 256,
    "seq_len": 336,
    "batch_size": 16,
    "lr": 3e-3,
    "minutes": 15.0,
}
# Untested preset for a GPU: same recipe, bigger model and batches.
READER_GPU_DEFAULTS: dict[str, Any] = {
    **READER_DEFAULTS,
    "vocab_size": 2048,
    "hidden_size": 512,
    "num_layers": 4,
    "num_heads": 8,
    "intermediate_size": 1024,
    "batch_size": 64,
    "lr": 1e-3,
    "minutes": 15.0,
}
TASKS = ("copy", "echo", "recall", "recall_ids", "find", "scatter", "lookup", "continue", "rag", "locate", "text")
PLAIN_LOSS = ("copy", "echo", "recall", "recall_ids", "text")  # no question: no first answer token to weigh
console = Console(stderr=True)
CHECKPOINT_EVERY_S = 120.0
FIND_TOP_LEVEL = 10
RECALL_FORMED_LOSS = 0.6  # mixed-phase recall loss: 0.20-0.36 where word copying formed, 0.92-1.09 elsewhere


def reader_config(cfg: ReaderConfig) -> ReaderConfig:
    """`cfg` with every field the user did not set explicitly replaced by the reader default."""
    gpu = cfg.scale == "gpu" or (cfg.scale == "auto" and torch.cuda.is_available())
    defaults = READER_GPU_DEFAULTS if gpu else READER_DEFAULTS
    unset = {k: v for k, v in defaults.items() if k not in cfg.model_fields_set}
    out = cfg.model_copy(update=unset)
    bad = [t for t in out.task_mix if t not in TASKS]
    if bad or not any(v > 0 for v in out.task_mix.values()):
        raise RagtuneError(f"task_mix needs positive weights for some of {', '.join(TASKS)}; got {out.task_mix}")
    if out.max_span * 2 + 1 > out.seq_len:
        raise RagtuneError(f"max_span {out.max_span} needs seq_len >= {out.max_span * 2 + 1}")
    return out


def reader_llama(cfg: ReaderConfig, tokenizer: Any, trained_length: int | None = None) -> Any:
    """ragtune's tiny Llama (`ragtune.models.tiny_llama`); with `trained_length` (the longest
    sequence it will be trained on) and `cfg.rope_dynamic_factor`, longer prompts get dynamic
    NTK RoPE scaling, so relative distances never seen in training are squeezed into the seen
    range (NOTES.md)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ragtune.models import tiny_llama

    if not (trained_length and cfg.rope_dynamic_factor):
        return tiny_llama(cfg, tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=trained_length,
        rope_parameters={"rope_type": "dynamic", "factor": cfg.rope_dynamic_factor, "rope_theta": 10000.0},
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------- corpus
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(])")
_PLAIN = re.compile(r"[A-Za-z][a-z]{1,14}")


class Corpus:
    """Paragraphs, their sentences and a title per document, for the text-based tasks."""

    def __init__(self, texts: Sequence[str]):
        self.paragraphs: list[tuple[str, str, list[str]]] = []  # (title, text, sentences)
        self.doc_of: list[int] = []  # document index of each paragraph
        self.docs: list[list[int]] = []  # paragraph indices of each document
        for text in texts:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            title = lines[0][:60] if lines else ""
            self.docs.append([])
            for para in re.split(r"\n\s*\n", text):
                para = " ".join(para.split())
                n_words = len(para.split())
                if 12 <= n_words <= 160:
                    self.docs[-1].append(len(self.paragraphs))
                    self.doc_of.append(len(self.docs) - 1)
                    self.paragraphs.append((title, para, [s for s in _SENT.split(para) if s]))
        # Frequent plain words, for passages of random words (the `locate` task).
        counts = Counter(w for _, text, _ in self.paragraphs for w in text.split() if _PLAIN.fullmatch(w))
        self.words = [w for w, _ in counts.most_common(4000)] or ["word"]
        if len(self.paragraphs) < 3:
            raise RagtuneError(
                "the corpus for the reader recipe needs at least 3 paragraphs of "
                "12-160 words; point --corpus at more documents"
            )

    def pick(self, rng: random.Random, max_words: int = 160, near: int | None = None) -> int:
        """Index of a random paragraph of at most `max_words` words; with `near` (a paragraph
        index), one of the same document where it has another, as a retriever's distractor is."""
        pool = self.docs[self.doc_of[near]] if near is not None else None
        for _ in range(20):
            i = rng.choice(pool) if pool and len(pool) > 1 else rng.randrange(len(self.paragraphs))
            if i != near and len(self.paragraphs[i][1].split()) <= max_words:
                return i
        # no short other paragraph in that document: any paragraph, never the oracle twice
        return self.pick(rng, max_words) if near is not None else i


# ---------------------------------------------------------------- tasks
class Tasks:
    """Each task returns (ids, target_mask): target_mask[i] = 1 where token i is trained."""

    def __init__(self, tokenizer: Any, corpus: Corpus, stream: torch.Tensor, cfg: ReaderConfig):
        self.tok, self.corpus, self.stream, self.cfg = tokenizer, corpus, stream, cfg
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.lo = len(tokenizer.all_special_ids)  # random tokens avoid special ids
        self.vocab = len(tokenizer)
        self.template = PromptTemplate(style="plain", refusal=REFUSAL, question_first=cfg.question_first)
        self.eq = self.enc_mid(" =")
        self.q_ids, self.a_ids = self.enc_mid("\n\n### Question:\n"), self.enc_mid("\n\n### Answer:\n")
        self.blank_ids, self.what_ids = self.enc_mid(" ____"), self.enc_mid(" what")
        instruction = PromptTemplate(style="plain", refusal=REFUSAL).render(None, "", []).split("### Context:")[0]
        self.instruction_ids = [self.bos, *self.enc(instruction + "### Context:\n")]
        self.semi = self.enc_mid(";")
        self.stop = self.enc_mid(".")[-1]
        self.word_starts = {i for t, i in tokenizer.get_vocab().items() if t.startswith("\u0120")}  # Ġ: a space

    def enc(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def enc_mid(self, text: str) -> list[int]:
        """The ids of `text` where it follows other text (no space is put before it)."""
        return self.enc("x" + text)[len(self.enc("x")) :]

    def rand(self, rng: random.Random, n: int) -> list[int]:
        return [rng.randrange(self.lo, self.vocab) for _ in range(n)]

    def span_len(self, rng: random.Random, max_len: int) -> int:
        if rng.random() < self.cfg.short_span_share:
            return rng.randint(2, 12)
        return rng.randint(4, max(4, max_len))

    def copy(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        return self.twice(self.rand(rng, self.span_len(rng, max_len)))

    def echo(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        """`copy` over a window of corpus text: its sub-word ids repeat within the window, so
        copying it takes matching several ids back, as copying an answer out of a passage does."""
        n = rng.randint(8, 96)
        s = rng.randrange(0, max(1, len(self.stream) - n))
        return self.twice(self.stream[s : s + n].tolist())

    def recall(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        """A window of corpus text, then 3-6 of its spans (4-32 ids, from a word start), each
        after the answer marker and trained but its first id. Word pieces repeat in the window,
        so the previous id alone does not say where a copy is: what an answer copied out of a
        passage after its first word piece needs (round 5)."""
        n = rng.randint(min(96, self.cfg.late_seq_len // 4), min(320, self.cfg.late_seq_len // 2))  # spans fit too
        s = rng.randrange(0, max(1, len(self.stream) - n))
        window = self.stream[s : s + n].tolist()
        return self.recite(rng, window, [i for i, t in enumerate(window[:-4]) if t in self.word_starts])

    def recall_ids(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        """`recall` over 48-128 random ids from an alphabet of 12-24: each id recurs 2-10 times
        in the window, a pair of ids rarely twice, so copying a span takes matching two ids
        back, and nothing else helps (round 5)."""
        alphabet = self.rand(rng, rng.randint(12, 24))
        return self.recite(rng, [rng.choice(alphabet) for _ in range(rng.randint(48, 128))], [])

    def recite(self, rng: random.Random, window: list[int], starts: list[int]) -> tuple[list[int], list[int]]:
        """`<s> window`, then 3-6 spans of it, each after the answer marker (from `starts`
        where given), trained but its first id, which nothing in the row predicts."""
        starts = starts or list(range(len(window) - 4))
        weight = self.cfg.recall_ambiguous_weight
        followers: dict[int, set[int]] = {}
        if weight != 1:  # where the previous id has several followers, only ids further back say which
            for a, b in zip(window, window[1:], strict=False):
                followers.setdefault(a, set()).add(b)
        ids, mask = [self.bos, *window], [0] * (len(window) + 1)
        for _ in range(rng.randint(3, 6)):
            i = rng.choice(starts)
            span = window[i : i + rng.randint(4, 32)]
            ids += [*self.a_ids, *span]
            mask += [0] * (len(self.a_ids) + 1) + [
                weight if len(followers.get(prev, ())) > 1 else 1 for prev in span[:-1]
            ]
        return ids, mask

    def twice(self, span: list[int]) -> tuple[list[int], list[int]]:
        """`<s> span span`, trained on the second copy but its first token, which is
        unpredictable (the span's end is unknown)."""
        return [self.bos, *span, *span], [0] * (len(span) + 2) + [1] * (len(span) - 1)

    def find(self, rng: random.Random, level: int) -> tuple[list[int], list[int]]:
        """The cloze skill in random ids: a context, then questions `Q: b_1..b_k ____ f_1..f_m
        A:` whose answer is the 1-3 ids that follow b_1..b_k in the context. Answering takes
        three hops: the ids before the blank marker, where they are in the context, what
        follows there. `level` (0-10) widens k, m and the context towards real prompts (long
        sentences around the blank, passages of hundreds of tokens after the instruction):
        a circuit learnt at one size does not carry to the next (NOTES.md)."""
        ctx = self.rand(rng, rng.randint(16, 48 + 35 * level))
        head = self.instruction_ids if rng.random() < level / 10 else [self.bos]
        ids, mask = [*head, *ctx], [0] * (len(head) + len(ctx))
        for _ in range(rng.randint(2, 5)):
            n, m = rng.randint(1, 3), rng.randint(0, 8 + 2 * level)
            s = rng.randint(6, len(ctx) - n)
            # the fewest ids before the answer that occur once in the context, or more
            k = next((k for k in range(2, 7) if _count(ctx, ctx[s - k : s]) == 1), None)
            if k is None:
                continue
            k = rng.randint(k, min(s, 4 + 2 * level))
            marker = self.blank_ids if rng.random() < 0.5 else self.what_ids
            q = [*self.q_ids, *ctx[s - k : s], *marker, *ctx[s + n : s + n + m], *self.a_ids]
            a = [*ctx[s : s + n], self.eos]
            ids, mask = ids + q + a, mask + [0] * len(q) + [1] * len(a)
        return ids, mask

    def scatter(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        """Matching a sentence on a bag of words, in random ids (round 11): a context of 4-8
        "sentences" (8-16 ids and a full stop); the question is some of one sentence's ids in
        random order with 0-2 foreign ids (a paraphrase), then 1-2 anchor ids, the blank
        marker and the answer's next id. The anchor also occurs in 1-3 other sentences, so
        only the sentence sharing the question's other ids says which occurrence the answer
        (the 1-2 ids after it) follows: what a paraphrased question (SQuAD's) asks of a reader."""

        def words(n: int) -> list[int]:  # random ids but the full stop, which ends a sentence
            return [x + (x >= self.stop) for x in (rng.randrange(self.lo, self.vocab - 1) for _ in range(n))]

        sents = [[*words(rng.randint(8, 16)), self.stop] for _ in range(rng.randint(4, 8))]
        t = rng.randrange(len(sents))
        sent, a, n = sents[t], rng.randint(1, 2), rng.randint(1, 2)
        s = rng.randint(a + 1, len(sent) - n - 2)  # a bag id before the anchor, the next id after the answer
        anchor, answer = sent[s - a : s], sent[s : s + n]
        for other in rng.sample([i for i in range(len(sents)) if i != t], rng.randint(1, min(3, len(sents) - 1))):
            j = rng.randint(0, len(sents[other]) - a - 2)
            sents[other][j : j + a] = anchor  # a decoy: the same anchor followed by other ids
        if any(
            x[j : j + a] == anchor and x[j + a : j + a + n] == answer
            for i, x in enumerate(sents)
            for j in range(len(x))
            if (i, j) != (t, s - a)
        ):
            return self.scatter(rng, max_len)  # the answer must follow the anchor in one place only
        rest = [x for i, x in enumerate(sent[:-1]) if not s - a <= i <= s + n]
        bag = [x for x in rest if rng.random() < 0.7]
        bag = bag if len(bag) >= 2 else rng.sample(rest, 2)  # more than a decoy shares with the question
        bag += words(rng.randint(0, 2))
        rng.shuffle(bag)
        marker = self.blank_ids if rng.random() < 0.5 else self.what_ids
        question = [*self.q_ids, *bag, *anchor, *marker, sent[s + n]]
        context = [x for sentence in sents for x in sentence]
        first = question if self.cfg.question_first else []
        ids = [self.bos, *first, *context, *question, *self.a_ids]
        return [*ids, *answer, self.eos], [0] * len(ids) + [1] * (n + 1)

    def lookup(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        pairs = [(self.rand(rng, 2), self.rand(rng, rng.randint(1, 3))) for _ in range(rng.randint(2, 12))]
        ids, mask = [self.bos], [0]
        for k, v in pairs:
            piece = k + self.eq + v + self.semi
            ids += piece
            mask += [0] * len(piece)
        k, v = rng.choice(pairs)
        ids += k + self.eq + v
        mask += [0] * (len(k) + len(self.eq)) + [1] * len(v)
        return ids, mask

    def cont(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        title, text, sents = self.corpus.paragraphs[self.corpus.pick(rng)]
        sent = rng.choice(sents).split()
        k = min(len(sent) - 1, rng.randint(3, 6))
        if k < 1:
            return self.text(rng, max_len)
        prompt = self.enc(f"{text}\n\n{' '.join(sent[:k])}")
        target = self.enc_mid(" " + " ".join(sent[k : k + 20]))
        return [self.bos, *prompt, *target], [0] * (len(prompt) + 1) + [1] * len(target)

    def rag(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        """A cloze question on a sentence of the oracle passage among two distractors."""
        # Short passages, so three of them, the instruction and the answer fit late_seq_len.
        # Distractors from the oracle's document share its words, as BM25's do: the question
        # must then be matched on more than one word.
        corpus, first = self.corpus, [self.corpus.pick(rng, max_words=45)]
        near = first[0] if rng.random() < self.cfg.same_doc_distractors else None

        def passage() -> tuple[str, str, list[str]]:  # the oracle first, then distractors
            return corpus.paragraphs[first.pop() if first else corpus.pick(rng, 45, near)]

        return self.cloze(rng, passage, max_len, follow_ups=self.cfg.rag_follow_ups)

    def locate(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        """`rag` over passages of random corpus words: no language prior can guess the
        answer, only finding the question's words in a passage and copying what follows."""

        def passage() -> tuple[str, str, list[str]]:
            sents = [
                " ".join(rng.choices(self.corpus.words, k=rng.randint(6, 14))) + "." for _ in range(rng.randint(1, 3))
            ]
            return " ".join(rng.choices(self.corpus.words, k=2)).title(), " ".join(sents), sents

        return self.cloze(rng, passage, max_len, follow_ups=self.cfg.locate_follow_ups)

    def cloze(
        self, rng: random.Random, passage: Callable[[], tuple[str, str, list[str]]], max_len: int, follow_ups: int = 0
    ) -> tuple[list[int], list[int]]:
        """The question blanks a span of a sentence of the first of three passages (the
        oracle); a `refusal_share` of the time the oracle is swapped for another passage
        and the target is the refusal, as build does when it drops the oracle.
        `follow_ups` more questions on the same context follow the answer (denser targets)."""
        passages = [passage() for _ in range(3)]
        qa = self.blank(rng, passages[0])
        if qa is None:
            return self.cont(rng, max_len)
        question, answer = qa
        if rng.random() < self.cfg.refusal_share:
            passages[0], answer = passage(), REFUSAL
        rng.shuffle(passages)
        prompt = self.template.render(None, question, [Passage(t, x) for t, x, _ in passages])
        ids = [self.bos, *self.enc(prompt)]
        mask = [0] * len(ids)
        for k in range(follow_ups + 1):
            a_ids = [*self.enc(answer), self.eos]
            ids, mask = ids + a_ids, mask + [1] * len(a_ids)
            if k == follow_ups:
                break
            refuse = rng.random() < self.cfg.refusal_share
            qa = self.blank(rng, passage() if refuse else rng.choice(passages))
            if qa is None:
                break
            question, answer = qa[0], REFUSAL if refuse else qa[1]
            q_ids = self.enc_mid(f"\n\n### Question:\n{question}\n\n### Answer:\n")
            if len(ids) + len(q_ids) + len(self.enc(answer)) + 1 > self.cfg.late_seq_len:
                break
            ids, mask = ids + q_ids, mask + [0] * len(q_ids)
        return ids, mask

    def blank(self, rng: random.Random, passage: tuple[str, str, list[str]]) -> tuple[str, str] | None:
        """(question, answer): a 1-4 word span of one sentence of `passage`, blanked in the
        question styles of the extractive synth generator (`loose` a `loose_question_share`)."""
        sent = rng.choice(passage[2]).split()
        if len(sent) < 5:
            return None
        n = rng.randint(1, min(4, len(sent) - 3))
        start = rng.randint(1, len(sent) - n)
        answer = " ".join(sent[start : start + n]).strip(".,;:()")
        before, after = " ".join(sent[:start]), " ".join(sent[start + n :])
        if self.cfg.loose_question_share and rng.random() < self.cfg.loose_question_share:
            question = loose_question(before, after, "what", rng)
            if self.cfg.loose_shuffled:
                wh, *words = question[:-1].split(" ")
                rng.shuffle(words)
                question = f"{wh} {' '.join(words)}?"
            return question, answer
        if rng.random() < 0.5:
            return f"Fill in the blank: {before} ____ {after}".strip(), answer
        return re.sub(r"[.!:;]+$", "", f"{before} what {after}".strip()) + "?", answer

    def text(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        n = self.cfg.late_seq_len
        s = rng.randrange(0, max(1, len(self.stream) - n - 1))
        ids = self.stream[s : s + n].tolist()
        return ids, [0] + [1] * (len(ids) - 1)

    def row(self, task: str, rng: random.Random, seq_len: int, max_span: int) -> tuple[list[int], list[int]]:
        """Examples of one task packed into `seq_len` tokens; an example that would be cut
        keeps its prompt and loses its targets, so no target is ever truncated."""
        make = {
            "copy": self.copy,
            "echo": self.echo,
            "recall": self.recall,
            "recall_ids": self.recall_ids,
            "find": self.find,
            "scatter": self.scatter,
            "lookup": self.lookup,
            "continue": self.cont,
            "rag": self.rag,
            "locate": self.locate,
            "text": self.text,
        }[task]
        ids: list[int] = []
        mask: list[int] = []
        while len(ids) < seq_len:
            i, m = make(rng, max_span)
            room = seq_len - len(ids)
            if len(i) > room and task != "text":
                m = [0] * len(m)
            ids += i[:room]
            mask += m[:room]
        return ids, mask


def batch_of(rows: list[tuple[list[int], list[int]]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([r[1] for r in rows], dtype=torch.float32, device=device)
    return ids, mask


def masked_loss(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, first_only: bool = False, first_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean next-token loss over target tokens (each answer's first token, which
    follows an untrained token, weighs `first_weight`), and argmax hits (for the self-paced
    levels) over every target token, or with `first_only` over each answer's first token."""
    logits, target, m = logits[:, :-1].float(), ids[:, 1:], mask[:, 1:]
    first = m * (1 - mask[:, :-1])
    w = m + (first_weight - 1.0) * first
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none")
    loss = (ce * w.reshape(-1)).sum() / w.sum().clamp(min=1)
    m = first if first_only else m
    hits = ((logits.argmax(-1) == target).float() * m).sum() / m.sum().clamp(min=1)
    return loss, hits


def _count(seq: list[int], sub: list[int]) -> int:
    return sum(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


# ---------------------------------------------------------------- training
def make_reader_model(texts: Sequence[str], out_dir: str | Path, cfg: ReaderConfig) -> dict:
    """Train a tokenizer on `texts`, build a small Llama, run the copy curriculum; save."""
    if not texts:
        raise RagtuneError("the corpus for the reader recipe holds no text; point --corpus at documents")
    cfg = reader_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tokenizer = train_tokenizer(texts, cfg.vocab_size, out)
    corpus = Corpus(texts)
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    stream = torch.tensor([i for ids in encoded for i in [*ids, tokenizer.eos_token_id]], dtype=torch.long)
    model = reader_llama(cfg, tokenizer, trained_length=cfg.late_seq_len)
    prep_s = time.perf_counter() - t_start
    tasks = Tasks(tokenizer, corpus, stream, cfg)
    stats = train_reader(model, tokenizer, tasks, cfg, out)
    probe = probe_model(model, tokenizer=tokenizer)
    info = {
        "recipe": "reader",
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": cfg.model_dump(),
        "prep_seconds": round(prep_s, 1),
        "corpus_tokens": len(stream),
        **stats,
        "probe": probe,
    }
    save(model, tokenizer, out, info)
    tasks.template.save(out)  # the prompt its RAG-shaped rows used: ask and serve follow it (build: --question-first)
    return info


def save(model: Any, tokenizer: Any, out: Path, info: dict) -> None:
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "ragtune_tiny_model.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


def unformed_advice(phase: str, cfg: ReaderConfig) -> str:
    """What a phase that ended without its circuit means, and what to try next."""
    skill = "copy reliably" if phase == "copy" else "find answers in passages"
    fix = "Another --seed may form it"
    if phase == "find" and cfg.vocab_size > READER_DEFAULTS["vocab_size"]:
        # Round 13: with 1,024 ids find did not form in two runs, nor with 1.4x the find steps.
        fix += f", or --vocab-size {READER_DEFAULTS['vocab_size']}, where find has formed"
    return (
        f"the {phase} phase ended before its circuit formed; this model will not {skill}. {fix} "
        "(experiments/reader/NOTES.md)."
    )


def train_reader(model: Any, tokenizer: Any, tasks: Tasks, cfg: ReaderConfig, out: Path) -> dict:
    """The phased loop within `cfg.minutes`; checkpoints to `out` so a kill loses little.
    With `cfg.max_restarts`, a self-paced phase that stalls (its circuit did not form: seeds 1
    and 2 in NOTES.md) starts the model over from new weights, while half the
    budget is left."""
    device = pick_device()
    model.to(device).train()
    dtype = pick_dtype("auto", device)
    threads_before = torch.get_num_threads()
    threads = cpu_threads(cfg, device)
    torch.set_num_threads(threads)
    t_end = time.perf_counter() + cfg.minutes * 60
    restart_until = t_end - cfg.minutes * 30
    restarts: list[dict] = []
    try:
        while True:
            seed = cfg.seed + 1000 * len(restarts)
            may_restart = len(restarts) < cfg.max_restarts
            stats = _train_loop(
                model, tasks, cfg, out, device, dtype, seed, t_end, restart_until if may_restart else 0.0
            )
            if "stalled" not in stats:
                return stats | {"threads": threads, "restarts": restarts}
            restarts.append(stats["stalled"])
            console.print(
                f"reader: the {stats['stalled']['phase']} phase stalled at step "
                f"{stats['stalled']['steps']}; starting over from new weights"
            )
            fresh = reader_llama(cfg.model_copy(update={"seed": seed + 1000}), tokenizer, cfg.late_seq_len)
            model.load_state_dict(fresh.state_dict())
    finally:
        torch.set_num_threads(threads_before)


def cpu_threads(cfg: ReaderConfig, device: torch.device) -> int:
    """One thread on a CPU that is already busy: at this size two threads that wait on each
    other ran 2-6x slower than one when other jobs shared the cores (NOTES.md)."""
    if cfg.threads:
        return cfg.threads
    n = torch.get_num_threads()
    if device.type == "cpu" and os.getloadavg()[0] >= (os.cpu_count() or 1) - 0.5:
        return 1
    return n


def _train_loop(
    model: Any,
    tasks: Tasks,
    cfg: ReaderConfig,
    out: Path,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    t_end: float,
    restart_until: float,
) -> dict:
    """Phases until `t_end`; returns early with a "stalled" entry where a phase stalls before
    `restart_until` (a perf_counter time)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(seed)
    names = [t for t in TASKS if cfg.task_mix.get(t, 0) > 0]
    weights = [cfg.task_mix[t] for t in names]
    late_batch = max(1, cfg.batch_size * cfg.seq_len // cfg.late_seq_len)
    # Self-paced phases before the mix: (task, first level, top level, widening step, end of
    # the phase at the latest as a share of the budget). Levels widen only while the training
    # answers are exact, so a busy CPU never widens them before the circuit has formed.
    phases = [("copy", min(16, cfg.max_span), cfg.max_span, 4, cfg.copy_phase_max)]
    if cfg.find_phase_max > 0:  # levels 0 -> 10, one at a time
        phases.append(("find", 0, FIND_TOP_LEVEL, 1, cfg.find_phase_max))
    if cfg.recall_phase_max > 0:  # one level: it ends once spans are copied word for word
        phases.append(("recall", 0, 0, 0, max(cfg.recall_phase_max, cfg.find_phase_max)))
    top = {"copy": cfg.max_span, "find": FIND_TOP_LEVEL}
    t0 = last_save = time.perf_counter()
    budget = t_end - t0
    step, mix_s, acc_avg, tokens, phase_step = 0, None, 0.0, 0, 0
    at = 0  # index of the current self-paced phase; len(phases): the mix
    level = phases[0][1]
    ended: dict[str, dict] = {}
    log: list[dict] = []
    task_loss: dict[str, list[float]] = {t: [] for t in names}
    while (elapsed := time.perf_counter() - t0) < budget and (cfg.max_steps is None or step < cfg.max_steps):
        phase = phases[at][0] if at < len(phases) else "mix"
        if phase != "mix":
            _, _, last, widen_by, _ = phases[at]
            if acc_avg >= (cfg.widen_acc if phase == "copy" else cfg.find_widen_acc) and step % 5 == 0:
                level = min(last, level + widen_by)
            if phase == "copy":
                row_len, n_rows = min(cfg.seq_len, max(128, 2 * level + 2)), cfg.batch_size
            else:  # find: contexts grow to ~400 tokens; recall: windows of up to late_seq_len / 2
                row_len, n_rows = cfg.late_seq_len, late_batch
            task = _recall_phase_task(rng, cfg) if phase == "recall" else phase
            rows = [
                tasks.row(
                    task,
                    rng,
                    row_len,
                    level
                    if task == phase
                    else top["copy"]
                    if task == "copy"
                    else _find_level(top, cfg, rng, in_mix=False),
                )
                for _ in range(n_rows)
            ]
        else:
            task = rng.choices(names, weights)[0]
            rows = [
                tasks.row(
                    task,
                    rng,
                    cfg.late_seq_len,
                    _find_level(top, cfg, rng, in_mix=True) if task == "find" else top.get(task, 0),
                )
                for _ in range(late_batch)
            ]
        ids, mask = batch_of(rows, device)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        if mix_s is not None:  # linear decay to 10% over the mixed phase sharpens the copies
            lr *= 1.0 - 0.9 * min(1.0, (elapsed - mix_s) / max(budget - mix_s, 1e-9))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, hits = masked_loss(
                model(input_ids=ids).logits,
                ids,
                mask,
                first_only=task == "find",
                first_weight=1.0 if task in PLAIN_LOSS else cfg.first_token_weight,
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += ids.numel()
        step += 1
        if phase != "mix":
            if task == phase:
                acc_avg = 0.9 * acc_avg + 0.1 * hits.item()
            at_cap = elapsed / budget >= phases[at][4]
            if _stalled(phase, step - phase_step, level, cfg, at_cap) and time.perf_counter() < restart_until:
                return _stall_record(phase, step, level, acc_avg, seed, t0)
            if (level >= last and acc_avg >= cfg.copy_switch_acc) or at_cap:
                ended[phase] = {
                    "steps": step,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "level": level,
                    "train_acc": round(acc_avg, 3),
                }
                console.print(
                    f"reader: {phase} phase done at step {step} ({ended[phase]['seconds']:.0f} s): "
                    f"training answers {acc_avg:.0%} exact at level {level}"
                )
                if phase != "recall":  # recall's verdict is its loss at the end of the mix, where it forms
                    ended[phase]["formed"] = _formed(phase, level, acc_avg, last, cfg)
                if not ended[phase].get("formed", True):
                    console.print(f"[yellow]reader: {unformed_advice(phase, cfg)}[/yellow]")
                if phase == "find":  # the mix asks at the level reached, not beyond (NOTES.md)
                    top["find"] = level
                at += 1
                level, acc_avg, phase_step = (phases[at][1] if at < len(phases) else 0), 0.0, step
                mix_s = round(time.perf_counter() - t0, 1) if at == len(phases) else None
        elif mask[:, 1:].any():  # a step whose rows lost every target to truncation says nothing
            task_loss[task].append(loss.item())
        if step % 50 == 0:
            if step % 500 == 0:
                console.print(f"reader: step {step}, {elapsed:.0f}/{budget:.0f} s, {task} loss {loss.item():.3f}")
            log.append(
                {
                    "step": step,
                    "s": round(elapsed, 1),
                    "task": task,
                    "loss": round(loss.item(), 3),
                    "acc": round(hits.item(), 3),
                    "level": level,
                }
            )
        if time.perf_counter() - last_save > CHECKPOINT_EVERY_S:
            model.save_pretrained(str(out))
            last_save = time.perf_counter()
    seconds = time.perf_counter() - t0
    model.eval()
    if task_loss.get("recall"):
        ended["mix"] = _recall_record(task_loss["recall"])
    copy = ended.get("copy", {"steps": step, "seconds": round(seconds, 1), "level": level, "train_acc": acc_avg})
    return {
        "steps": step,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / max(seconds, 1e-9)),
        "copy_phase_steps": copy["steps"],
        "copy_max_span": copy["level"],
        "copy_phase_seconds": copy["seconds"],
        "copy_train_acc": round(copy["train_acc"], 3),
        "phases": ended,
        "mix_task_loss": {t: round(sum(v[-20:]) / len(v[-20:]), 3) for t, v in task_loss.items() if v},
        "log": log,
    }


def _recall_phase_task(rng: random.Random, cfg: ReaderConfig) -> str:
    """A share of find rows in the recall phase keeps the find circuit (round 6); a share of
    copy rows at the longest spans (off) made long copies more exact but cost recall in one of
    two runs (round 12)."""
    if cfg.find_phase_max <= 0 and cfg.recall_phase_copy <= 0:
        return "recall"
    draw = rng.random()  # one draw per step, as before round 12, so the shipped run is unchanged
    if cfg.find_phase_max > 0 and draw < cfg.recall_phase_find:
        return "find"
    return "copy" if draw >= 1 - cfg.recall_phase_copy else "recall"


def _find_level(top: dict[str, int], cfg: ReaderConfig, rng: random.Random, in_mix: bool) -> int:
    """The level of a find row after the find phase: the one reached, or where `find_spread`
    says so any from 0 to it, so easy rows keep the circuit while the top ones are still
    uncertain. "mix" leaves the recall phase as it was, since recall forms there (round 9)."""
    spread = cfg.find_spread == "after_find" or (cfg.find_spread == "mix" and in_mix)
    return rng.randint(0, top["find"]) if spread else top["find"]


def _stalled(phase: str, steps: int, level: int, cfg: ReaderConfig, at_cap: bool = False) -> bool:
    """Copy not done, or find still at its first level, long after it usually is; or find at
    its share of the budget after half that wait (a busy CPU reaches the cap in fewer steps)."""
    if phase == "copy":
        return steps > cfg.copy_patience_steps
    patience = cfg.find_patience_steps // 2 if at_cap else cfg.find_patience_steps
    return phase == "find" and level == 0 and steps > patience


def _formed(phase: str, level: int, acc: float, top_level: int, cfg: ReaderConfig) -> bool:
    if phase == "copy":
        return level >= top_level and acc >= cfg.copy_switch_acc
    return level > 0


def _recall_record(losses: list[float]) -> dict:
    """Did copying words out of text form? Its loss ends bimodal: 0.2-0.4 where it formed, ~1.0
    where the model still copies from the first place its last id occurs (round 5)."""
    loss = sum(losses[-20:]) / len(losses[-20:])
    formed = loss < RECALL_FORMED_LOSS
    if not formed:
        console.print(
            f"[yellow]reader: recall loss {loss:.2f} at the end (formed: < {RECALL_FORMED_LOSS}); this "
            "model copies the first piece of an answer but rarely the rest. Another --seed may form "
            "it (experiments/reader/NOTES.md).[/yellow]"
        )
    return {"recall_loss": round(loss, 3), "formed": formed}


def _stall_record(phase: str, step: int, level: int, acc: float, seed: int, t0: float) -> dict:
    return {
        "stalled": {
            "phase": phase,
            "steps": step,
            "seconds": round(time.perf_counter() - t0, 1),
            "level": level,
            "train_acc": round(acc, 3),
            "seed": seed,
        }
    }


# ---------------------------------------------------------------- probe
@torch.no_grad()
def probe_model(
    model: Any,
    lengths: Sequence[int] = (8, 32, 128),
    tokenizer: Any = None,
    rows: int = 64,  # 16 rows put one model's greedy share at 128 anywhere from 38% to 94% (round 12)
    seed: int = 0,
    show: bool = True,
) -> dict:
    """Induction probe on `<s> x_1..x_L x_1..x_L`, x: L distinct random non-special ids
    (distinct, so that a perfect copier is never sent astray by a repeated token).

    Per length L, over positions 2..L of each copy (the first token of a copy cannot be
    predicted): `first_loss` / `second_loss` are the mean next-token losses on the first and
    second copy; `ratio` = second / first (about 1: no copying); `next_token_acc` is the
    teacher-forced argmax accuracy on the second copy; `greedy_acc` the share of tokens of a
    free-running greedy continuation (given the first copy and x_1) equal to x_2..x_L.
    `model` is a model folder / hub id or a loaded causal LM (then pass `tokenizer` too, or
    special ids are taken to be the first four).
    """
    if isinstance(model, (str, Path)):
        from ragtune.models import load_model

        model, tokenizer = load_model(model)
    if any(n < 2 for n in lengths):
        raise RagtuneError("probe lengths must be at least 2 tokens; e.g. --lengths 8,32,128")
    model.eval()
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    special = set(tokenizer.all_special_ids) if tokenizer is not None else set(range(4))
    bos = tokenizer.bos_token_id if tokenizer is not None and tokenizer.bos_token_id is not None else 0
    pool = torch.tensor([i for i in range(vocab) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    results: dict[str, dict[str, float]] = {}
    for n in lengths:
        if n > len(pool):
            raise RagtuneError(f"probe length {n} exceeds the {len(pool)} usable token ids")
        ids = repeated_spans(pool, n, rows, bos, gen).to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = ids[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        first = ce[:, 1:n]  # predicting x_2..x_L of copy 1
        second = ce[:, n + 1 : 2 * n]  # predicting x_2..x_L of copy 2
        hits = (logits.argmax(-1) == target)[:, n + 1 : 2 * n].float()
        greedy = greedy_continuation(model, ids[:, : n + 2], n - 1)
        results[str(n)] = {
            "first_loss": round(float(first.mean()), 4),
            "second_loss": round(float(second.mean()), 4),
            "ratio": round(float(second.mean() / first.mean()), 4),
            "next_token_acc": round(float(hits.mean()), 4),
            "greedy_acc": round(float((greedy == ids[:, n + 2 :]).float().mean()), 4),
        }
    if show:
        print_probe(results)
    return results


def repeated_spans(pool: torch.Tensor, n: int, rows: int, bos: int, gen: torch.Generator) -> torch.Tensor:
    """The probe's rows `<s> x_1..x_n x_1..x_n`, x: n distinct ids drawn from `pool`."""
    span = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:n]] for _ in range(rows)])
    return torch.cat([torch.full((rows, 1), bos), span, span], dim=1)


def kv_cache_arg(model: Any) -> str:
    """The name `model.forward` takes its KV cache by, which is also the output's attribute."""
    # transformers 5 names the KV cache `cache`; older versions and other models `past_key_values`.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def greedy_continuation(model: Any, prefix: torch.Tensor, n_new: int) -> torch.Tensor:
    """`n_new` argmax tokens after `prefix`, with a KV cache; no stopping at EOS."""
    if n_new <= 0:
        return prefix[:, :0]
    key = kv_cache_arg(model)
    out = model(input_ids=prefix, use_cache=True)
    nxt, new = out.logits[:, -1].argmax(-1, keepdim=True), []
    for _ in range(n_new):
        new.append(nxt)
        if len(new) == n_new:
            break
        out = model(input_ids=nxt, use_cache=True, **{key: getattr(out, key)})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return torch.cat(new, dim=1)


def print_probe(results: dict[str, dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Induction probe: repeated random spans")
    for col in ("span", "1st-copy loss", "2nd-copy loss", "ratio", "next-token acc", "greedy acc"):
        table.add_column(col, justify="right")
    for n, r in results.items():
        table.add_row(
            n,
            f"{r['first_loss']:.3f}",
            f"{r['second_loss']:.3f}",
            f"{r['ratio']:.3f}",
            f"{r['next_token_acc']:.1%}",
            f"{r['greedy_acc']:.1%}",
        )
    Console().print(table)


def copies(results: dict[str, dict[str, float]], lengths: Sequence[int] = (32, 128)) -> bool:
    """The issue's bar: second-copy loss below a quarter of the first, greedy >= 80%."""
    return all(
        results[str(n)]["ratio"] < 0.25 and results[str(n)]["greedy_acc"] >= 0.8 for n in lengths if str(n) in results
    ) and not math.isnan(sum(r["ratio"] for r in results.values()))


# ---------------------------------------------------------------- command line
def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs, values parsed as JSON where they parse (numbers, booleans, dicts)."""
    out: dict[str, Any] = {}
    for kv in pairs:
        if "=" not in kv:
            raise RagtuneError(f"'{kv}' is not key=value; e.g. seed=4 or task_mix='{{\"recall\": 1}}'")
        k, v = kv.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="The reader recipe and the induction probe (research code).")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="Build a reader model from a folder of documents.")
    build.add_argument("--corpus", required=True, type=Path, help="Folder of documents.")
    build.add_argument("--out", required=True, type=Path, help="Output model folder.")
    build.add_argument("settings", nargs="*", help="ReaderConfig fields as key=value, e.g. seed=4 minutes=15")
    probe = sub.add_parser("probe", help="Induction probe: first vs second copy of repeated random spans.")
    probe.add_argument("model", help="Model folder or hub id.")
    probe.add_argument("--lengths", default="8,32,128", help="Span lengths to probe.")
    probe.add_argument("--rows", type=int, default=64, help="Random spans per length.")
    args = parser.parse_args(argv)
    if args.command == "build":
        from ragtune.pipeline import corpus_texts

        info = make_reader_model(corpus_texts(args.corpus), args.out, ReaderConfig(**_overrides(args.settings)))
        console.print({k: v for k, v in info.items() if k not in ("log", "config", "probe")})
        return
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        raise RagtuneError(
            f"--lengths '{args.lengths}' is not a comma-separated list of integers; e.g. 8,32,128"
        ) from None
    if args.rows < 1:
        raise RagtuneError("--rows must be at least 1")
    probe_model(args.model, lengths, rows=args.rows)


if __name__ == "__main__":
    main()
