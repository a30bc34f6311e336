"""The question-then-answer pipeline shared by the LLM backends (`openai`, `hf`).

Per chunk: the configured question kinds share the chunk's N questions; each kind is one
call that asks for its count (multi-hop adds a related chunk found with BM25). Each
answerable question then gets its own answer call from (chunk, question), plain or RAFT-style
chain of thought with verbatim quotes and a final-answer tag; an unanswerable question gets an
answer call too, which must come back "NOT IN CONTEXT". Every call goes through the
content-keyed cache. Replies that do not parse become `Rejection`s carrying the raw reply.

A backend supplies one coroutine, `complete(messages, json_mode) -> Reply`; the pipeline
runs chunks concurrently on an event loop in a worker thread and yields rows in chunk
order, so a run's output does not depend on which call finished first.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import string
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ragtune.config import SynthConfig
from ragtune.errors import RagtuneError
from ragtune.llm_client import CallFailed, Complete, Reply
from ragtune.records import Chunk, QAItem, content_id
from ragtune.synth.base import Rejection
from ragtune.synth.cache import CallCache, call_key
from ragtune.synth.filters import enabled

KINDS = ("factoid", "explanatory", "multi_hop", "unanswerable")
NOT_IN_CONTEXT = "NOT IN CONTEXT"
QUOTE_BEGIN, QUOTE_END, ANSWER_TAG = "##begin_quote##", "##end_quote##", "<ANSWER>:"
TEMPLATE_FILES = [f"questions_{k}.txt" for k in KINDS] + ["answer_plain.txt", "answer_cot.txt"]


# ---------------------------------------------------------------- templates
def load_templates(prompts_dir: str | None) -> dict[str, string.Template]:
    """The prompt files, each from `prompts_dir` when the user put one there, else built in.

    Templates use `$name` placeholders ($n, $title, $text, $title2, $text2, $context,
    $question), so JSON braces in a prompt need no escaping.
    """
    user = Path(prompts_dir) if prompts_dir else None
    if user is not None and not user.is_dir():
        raise RagtuneError(f"prompts_dir '{user}' is not a folder; point it at a folder of template files")
    out = {}
    for name in TEMPLATE_FILES:
        path = user / name if user is not None and (user / name).is_file() else None
        text = (
            path.read_text(encoding="utf-8")
            if path
            else resources.files("ragtune").joinpath("templates", name).read_text(encoding="utf-8")
        )
        out[name.removesuffix(".txt")] = string.Template(text)
    return out


# ---------------------------------------------------------------- parsing
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_NUMBERING = re.compile(
    r"^\s*(?:[-*\u2022>]+|\(?\d{1,3}[.):\]]|\(?[a-zA-Z][.)]\s|(?:Q|Question)\s*\d*\s*[:.)-])\s*", re.I
)
_PREAMBLE = re.compile(r"^(?:sure|certainly|okay|ok|of course|here (?:are|is)|below (?:are|is)|the following)\b", re.I)
_QUESTION_END = re.compile(r"[?\uff1f\u061f\u037e]\s*[\"'\u201d\u00bb)]*$")


def _json_questions(reply: str) -> list[str] | None:
    """Questions from a JSON reply ({"questions": [...]} or a bare list), else None."""
    candidates = [m.group(1) for m in _FENCE.finditer(reply)] + [reply]
    for text in candidates:
        for opener, closer in (("{", "}"), ("[", "]")):
            start, end = text.find(opener), text.rfind(closer)
            if start < 0 or end <= start:
                continue
            try:
                data = json.loads(text[start : end + 1])
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                data = next(
                    (v for k, v in data.items() if isinstance(v, list) and "question" in k.lower()),
                    next((v for v in data.values() if isinstance(v, list)), None),
                )
            if isinstance(data, list):
                out = []
                for q in data:
                    if isinstance(q, dict):
                        q = q.get("question") or q.get("q") or ""
                    if isinstance(q, str) and q.strip():
                        out.append(q.strip())
                return out
    return None


def parse_questions(reply: str, n: int) -> tuple[list[str], list[str]]:
    """(questions, rejected lines): JSON when the reply holds it, else one question per line
    with numbering, bullets and quotes stripped; preambles and non-questions are rejected."""
    found = _json_questions(reply)
    lines = found if found is not None else [ln for ln in _FENCE.sub(r"\1", reply).splitlines() if ln.strip()]
    questions: list[str] = []
    rejected: list[str] = []
    for line in lines:
        q = _NUMBERING.sub("", line.strip()).strip().strip("\"'`").strip()
        q = re.sub(r"^\*\*(.*)\*\*$", r"\1", q).strip()
        if not q:
            continue
        if _PREAMBLE.match(q) or q.endswith(":") or not _QUESTION_END.search(q) or len(q) < 8:
            rejected.append(line.strip())
        else:
            questions.append(q)
    return questions[:n], rejected


def parse_answer(reply: str, style: str) -> tuple[str | None, list[str]]:
    """(final answer or None when unparseable, quoted evidence spans)."""
    text = reply.strip()
    if style == "cot":
        quotes = [q.strip() for q in re.findall(re.escape(QUOTE_BEGIN) + r"(.*?)" + re.escape(QUOTE_END), text, re.S)]
        if ANSWER_TAG not in text:
            return None, quotes
        final = text.rsplit(ANSWER_TAG, 1)[1].strip()
        return (final or None), quotes
    text = re.sub(r"^(?:final\s+)?answer\s*:\s*", "", text, flags=re.I).strip()
    return (text or None), []


def is_not_in_context(answer: str) -> bool:
    return NOT_IN_CONTEXT.lower() in answer.lower()


# ---------------------------------------------------------------- allocation
def allocate(chunk_id: str, n: int, kinds: Sequence[str], seed: int) -> dict[str, int]:
    """N questions shared among kinds, rotated by a hash of the chunk so every kind gets its
    share over the corpus even when N is smaller than the number of kinds."""
    if not kinds:
        return {}
    offset = int(content_id(str(seed), chunk_id, n=8), 16) % len(kinds)
    counts = dict.fromkeys(kinds, 0)
    for i in range(n):
        counts[kinds[(offset + i) % len(kinds)]] += 1
    return {k: c for k, c in counts.items() if c}


# ---------------------------------------------------------------- the pipeline
@dataclass
class Stats:
    calls: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, reply: Reply, cached: bool) -> None:
        self.calls += 1
        self.cached += cached
        if not cached:
            self.prompt_tokens += reply.prompt_tokens
            self.completion_tokens += reply.completion_tokens


@dataclass
class LLMGenerator:
    """A generator over an LLM backend. `make_complete` builds the backend's `complete`
    coroutine inside the worker's event loop (clients bind to the loop they are made in)."""

    name: str
    cfg: SynthConfig
    corpus: Sequence[Chunk]
    model_id: str
    make_complete: Callable[[], Complete]
    cache: CallCache = field(default_factory=CallCache)
    stats: dict[str, Stats] = field(default_factory=lambda: {"questions": Stats(), "answers": Stats()})

    def __post_init__(self) -> None:
        bad = [k for k in self.cfg.question_types if k not in KINDS]
        if bad:
            raise RagtuneError(f"unknown question type(s) {bad}; choose from {', '.join(KINDS)}")
        self.templates = load_templates(self.cfg.prompts_dir)
        self.by_id = {c.id: c for c in self.corpus}
        self._partners: Any = None
        self._in_flight: dict[str, asyncio.Future[Reply]] = {}  # call key -> the reply being awaited
        self.on_chunk_done: Callable[[Chunk], None] | None = None

    # ---- prompts
    def params(self, json_mode: bool) -> dict[str, Any]:
        """Sampling parameters; part of every cache key."""
        return {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens, "json": json_mode}

    def question_messages(self, chunk: Chunk, kind: str, count: int, partner: Chunk | None) -> list[dict]:
        text = self.templates[f"questions_{kind}"].safe_substitute(
            n=count,
            title=chunk.title,
            text=chunk.text,
            title2=partner.title if partner else "",
            text2=partner.text if partner else "",
        )
        return [{"role": "user", "content": text}]

    def answer_messages(self, chunks: Sequence[Chunk], question: str) -> list[dict]:
        context = "\n\n".join(f"{c.title}\n{c.text}" if c.title else c.text for c in chunks)
        name = "answer_cot" if self.cfg.answer_style == "cot" else "answer_plain"
        return [{"role": "user", "content": self.templates[name].safe_substitute(context=context, question=question)}]

    def partner(self, chunk: Chunk) -> Chunk | None:
        """The chunk most related to `chunk` by BM25 (another document preferred), for multi-hop."""
        if self._partners is None:
            from ragtune.synth.filters import RoundTrip

            self._partners = RoundTrip(self.corpus, k=min(10, len(self.corpus)))
        ranked = [i for i in self._partners.top(chunk.text[:2000]) if i != chunk.id]
        other_doc = [i for i in ranked if self.by_id[i].doc_id != chunk.doc_id]
        pick = (other_doc or ranked or [None])[0]
        return self.by_id.get(pick) if pick else None

    def plan(self, chunk: Chunk) -> list[tuple[str, int, Chunk | None]]:
        """The question calls of one chunk: (kind, count, partner)."""
        out = []
        for kind, count in allocate(
            chunk.id, self.cfg.questions_per_chunk, self.cfg.question_types, self.cfg.seed
        ).items():
            partner = self.partner(chunk) if kind == "multi_hop" else None
            if kind == "multi_hop" and partner is None:
                kind, partner = "factoid", None  # a one-chunk corpus has no second hop
            out.append((kind, count, partner))
        return out

    # ---- calls
    async def call(self, stage: str, messages: list[dict], json_mode: bool, complete: Complete) -> Reply:
        key = call_key(self.name, self.model_id, messages, self.params(json_mode))
        hit = self.cache.get(key)
        if hit is not None:
            reply = Reply(hit["text"], hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0))
            self.stats[stage].add(reply, cached=True)
            return reply
        if key in self._in_flight:  # the same prompt is being asked right now: share its reply, pay once
            reply = await asyncio.shield(self._in_flight[key])
            self.stats[stage].add(reply, cached=True)
            return reply
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            reply = await complete(messages, json_mode)
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(e)
                future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            if isinstance(e, CallFailed):
                self.stats[stage].failed += 1
            raise
        finally:
            del self._in_flight[key]
        self.cache.put(
            key,
            {"text": reply.text, "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
        )
        future.set_result(reply)
        self.stats[stage].add(reply, cached=False)
        return reply

    async def chunk_rows(self, chunk: Chunk, complete: Complete) -> list[QAItem | Rejection]:
        plans = self.plan(chunk)
        asked = await asyncio.gather(*(self.ask(chunk, k, n, p, complete) for k, n, p in plans))
        rows: list[QAItem | Rejection] = []
        pending = []
        for (kind, _, partner), (questions, rejections) in zip(plans, asked, strict=True):
            rows.extend(rejections)
            pending += [(kind, partner, q) for q in questions]
        answered = await asyncio.gather(*(self.answer(chunk, k, p, q, complete) for k, p, q in pending))
        rows.extend(answered)
        return rows

    async def ask(
        self, chunk: Chunk, kind: str, count: int, partner: Chunk | None, complete: Complete
    ) -> tuple[list[str], list[Rejection]]:
        messages = self.question_messages(chunk, kind, count, partner)
        meta = {"kind": kind, "stage": "questions"}
        try:
            reply = await self.call("questions", messages, True, complete)
        except CallFailed as e:
            return [], [Rejection("api_error", chunk.id, raw=str(e), meta=meta)]
        questions, lines = parse_questions(reply.text, count)
        rejections = []
        if enabled(self.cfg.filters, "non_question"):
            rejections = [Rejection("not_a_question", chunk.id, question=ln, raw=reply.text, meta=meta) for ln in lines]
        elif len(questions) < count:
            questions += [ln for ln in lines if ln][: count - len(questions)]
        if not questions and enabled(self.cfg.filters, "parse"):
            rejections.append(Rejection("parse_failure", chunk.id, raw=reply.text, meta=meta))
        return questions, rejections

    async def answer(
        self, chunk: Chunk, kind: str, partner: Chunk | None, question: str, complete: Complete
    ) -> QAItem | Rejection:
        sources = [chunk, partner] if partner else [chunk]
        meta: dict[str, Any] = {"kind": kind, "stage": "answers"}
        try:
            reply = await self.call("answers", self.answer_messages(sources, question), False, complete)
        except CallFailed as e:
            return Rejection("api_error", chunk.id, question=question, raw=str(e), meta=meta)
        final, quotes = parse_answer(reply.text, self.cfg.answer_style)
        if final is None and not enabled(self.cfg.filters, "parse"):
            final = reply.text.strip() or None  # the parse filter is off: keep the reply as it is
        if final is None:
            return Rejection("parse_failure", chunk.id, question=question, raw=reply.text, meta=meta)
        refused = is_not_in_context(final)
        if kind == "unanswerable":
            if not refused and enabled(self.cfg.filters, "unanswerable_check"):
                return Rejection("unanswerable_answered", chunk.id, question=question, raw=reply.text, meta=meta)
            final, quotes = "", []
        elif refused and enabled(self.cfg.filters, "not_in_context"):
            return Rejection("answer_not_in_context", chunk.id, question=question, raw=reply.text, meta=meta)
        item_meta: dict[str, Any] = {"answer_style": self.cfg.answer_style}
        if kind == "unanswerable":  # no oracle; like extractive's, the source is kept out of its context
            item_meta["source_chunk"] = chunk.id
        if partner is not None:
            item_meta["partner_chunk_id"] = partner.id
        if self.cfg.answer_style == "cot" and kind != "unanswerable":
            item_meta["cot"] = reply.text.strip()
        return QAItem(
            id=content_id(chunk.id, kind, question),
            question=question,
            answer=final,
            answers=[final] if final else [],
            chunk_id=None if kind == "unanswerable" else chunk.id,
            answerable=kind != "unanswerable",
            kind=kind,
            origin=f"{self.name}:{self.model_id}",
            evidence=quotes,
            doc_id=chunk.doc_id,
            meta=item_meta,
        )

    # ---- running
    async def _run(self, chunks: Sequence[Chunk], out: queue.Queue) -> None:
        complete = self.make_complete()
        window = max(2, 2 * self.cfg.concurrency)  # chunks in flight; rows leave in chunk order
        tasks: list[asyncio.Task] = []
        it = iter(chunks)
        for chunk in it:
            tasks.append(asyncio.create_task(self.chunk_rows(chunk, complete)))
            if len(tasks) >= window:
                break
        done_chunks = iter(chunks)
        while tasks:
            rows = await tasks.pop(0)
            out.put(("chunk", next(done_chunks), rows))
            nxt = next(it, None)
            if nxt is not None:
                tasks.append(asyncio.create_task(self.chunk_rows(nxt, complete)))
        closer = getattr(complete, "aclose", None)
        if closer is not None:
            await closer()

    def generate(self, chunks: Sequence[Chunk]) -> Iterator[QAItem | Rejection]:
        out: queue.Queue = queue.Queue(maxsize=64)

        def worker() -> None:
            try:
                asyncio.run(self._run(chunks, out))
                out.put(("end", None, None))
            except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
                out.put(("error", e, None))

        thread = threading.Thread(target=worker, name=f"ragtune-{self.name}", daemon=True)
        thread.start()
        while True:
            tag, value, rows = out.get()
            if tag == "end":
                break
            if tag == "error":
                raise value
            yield from rows
            if self.on_chunk_done is not None:
                self.on_chunk_done(value)
        thread.join()

    # ---- dry run
    def estimate(self, chunks: Sequence[Chunk]) -> dict[str, Any]:
        """Calls and tokens a run would spend, before spending anything (4 characters a token,
        answers at the max_tokens cap: an upper bound)."""
        q_calls = q_prompt = q_cached = a_calls = a_prompt = 0
        for chunk in chunks:
            for kind, count, partner in self.plan(chunk):
                msgs = self.question_messages(chunk, kind, count, partner)
                q_calls += 1
                q_prompt += len(msgs[0]["content"]) // 4
                q_cached += call_key(self.name, self.model_id, msgs, self.params(True)) in self.cache
                a_calls += count
                sources = [chunk, partner] if partner else [chunk]
                a_prompt += count * (len(self.answer_messages(sources, "")[0]["content"]) // 4 + 20)
        return {
            "question_calls": q_calls,
            "question_calls_cached": q_cached,
            "answer_calls": a_calls,
            "prompt_tokens": q_prompt + a_prompt,
            "completion_tokens_max": (q_calls + a_calls) * self.cfg.max_tokens,
        }

    def stats_dict(self) -> dict[str, Any]:
        return {stage: vars(s).copy() for stage, s in self.stats.items()}
