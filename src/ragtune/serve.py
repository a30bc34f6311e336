"""`ragtune serve`: an OpenAI-compatible HTTP server over a local model and optional adapter.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (plain JSON or server-sent events
with `stream: true`), and `GET /ragtune/stats` (requests and tokens served, for tests and
monitoring). Generation runs in one worker thread (a CPU or single GPU gains nothing from
two at once); requests queue there, so concurrent clients are all served, in arrival order.

How chat messages become a prompt (the rule, in order):
1. With a ragtune template (the adapter's or model's `ragtune_prompt.json`) and a request
   that carries RAG context, the prompt is rendered exactly as in training: the template's
   own instruction as system text, then the context and the question. A request carries
   context when its body has `passages` (a ragtune extension: a list of strings or of
   `{"title", "text"}` objects, formatted with the template's passage format) or when its
   last user message has the shape `Context:\\n<passages>\\n\\nQuestion: <question>`, optionally
   after `Question: <question>\\n\\n` (what `PromptTemplate.messages` sends; the passages are
   used verbatim). The client's system message is then ignored, because the model was
   trained with the template's.
2. Otherwise the messages go through the tokenizer's chat template when it has one,
3. else through a plain transcript (`System: ...`, `User: ...`, ending with `Assistant:`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from ragtune.abstain import RefusalRule
from ragtune.adapter_check import check_adapter_fits
from ragtune.config import REFUSAL
from ragtune.errors import RagtuneError
from ragtune.generation import mean_logprobs
from ragtune.modelstore import local_folder
from ragtune.prompts import Passage, PromptTemplate, prompt_ids

# the question may come first too (a `question_first` template's messages)
_CONTEXT_MESSAGE = re.compile(
    r"\A(?:Question: [^\n]*\n\n)?Context:\n(?P<context>.*)\n\nQuestion: (?P<question>.*)\Z", re.S)


# ---------------------------------------------------------------- request schema
class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class _PassageIn(BaseModel):
    title: str = ""
    text: str


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat-completions request this server honours; others are
    accepted and ignored (e.g. `response_format`, which a small local model cannot enforce)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)  # torch's seed range
    passages: list[str | _PassageIn] | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    def budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


# ---------------------------------------------------------------- prompt rendering
def render_messages(
    tokenizer: Any, messages: list[dict[str, str]], template: PromptTemplate | None,
    passages: list[Passage] | None = None,
) -> list[int]:
    """Prompt token ids for a chat request, by the rule in this module's docstring."""
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if template is not None:
        if passages is not None:
            return _render_rag(tokenizer, template, template.context_block(passages), last_user)
        match = _CONTEXT_MESSAGE.match(last_user.strip("\n"))
        if match:
            return _render_rag(tokenizer, template, match["context"], match["question"])
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return tokenizer("\n\n".join([*lines, "Assistant:"]), add_special_tokens=True)["input_ids"]


def _render_rag(tokenizer: Any, template: PromptTemplate, context: str, question: str) -> list[int]:
    return prompt_ids(tokenizer, template.render_context(tokenizer, question, context), template)


# ---------------------------------------------------------------- generation
@dataclass
class _Job:
    """One request's generation; `on_text` receives finished text pieces as they decode."""

    ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    stops: list[str]
    seed: int | None = None
    deadline: float = math.inf  # time.monotonic() past which generation stops (the request's time limit)
    cancelled: threading.Event = field(default_factory=threading.Event)
    expired: bool = False  # its time limit passed before it started: nothing was generated
    text: str = ""
    n_tokens: int = 0
    finish_reason: str = "length"


class Engine:
    """Runs generation on one worker thread; safe to call from any request.

    Non-streaming requests that wait together with the same settings (token budget, stop
    strings, temperature, top_p; no seed) are generated as one left-padded batch, so
    concurrent clients raise throughput; streamed and seeded requests run one at a time. A
    request whose client hung up is skipped if it has not started, and stopped if it has.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, rule: RefusalRule | None = None,
                 refusal: str = REFUSAL) -> None:
        from ragtune.generation import stop_token_ids

        self.model, self.tokenizer = model, tokenizer
        # The adapter's calibrated abstention rule; it needs a whole answer, so streamed
        # replies (sent token by token) go out without it.
        self.rule, self.refusal = rule, refusal
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-generate")
        self.prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-tokenize")
        self.batch_size = max(1, batch_size)
        self.pending: list[tuple[_Job, asyncio.Future]] = []
        self.drainer: asyncio.Task | None = None
        self.stats = {"requests": 0, "completions": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "batches": 0, "max_batch": 0, "abandoned": 0}
        self._stats_lock = threading.Lock()

    async def run_batched(self, job: _Job) -> _Job:
        """Queue a job; it runs in the next batch of jobs with the same settings."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((job, future))
        if self.drainer is None or self.drainer.done():
            self.drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            await asyncio.sleep(0)  # requests that arrived in this same turn join the batch
            for _job, fut in [p for p in self.pending if p[0].cancelled.is_set()]:
                fut.cancel()  # its client went away before it started: nothing to compute
            self.pending = [p for p in self.pending if not p[0].cancelled.is_set()]
            if not self.pending:
                break
            key = _batch_key(self.pending[0][0])
            batch = [p for p in self.pending if _batch_key(p[0]) == key][: self.batch_size]
            taken = {id(j) for j, _ in batch}
            self.pending = [p for p in self.pending if id(p[0]) not in taken]
            try:
                await loop.run_in_executor(self.executor, self.run_batch, [j for j, _ in batch])
            except Exception as e:  # noqa: BLE001 - each waiting request gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for job, fut in batch:
                if not fut.done():
                    fut.set_result(job)

    def run_batch(self, jobs: list[_Job]) -> None:
        """Generation of jobs with equal settings in one batch with left padding (as
        `ragtune.generation.generate` does), keeping the token ids so usage and finish_reason
        are exact."""
        import torch

        jobs = [j for j in jobs if not j.cancelled.is_set() and not _expire(j)]  # abandoned, or out of time
        if not jobs:
            return
        width = max(len(j.ids) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for r, job in enumerate(jobs):
            ids[r, width - len(job.ids):] = torch.tensor(job.ids)
            mask[r, width - len(job.ids):] = 1
        device = next(self.model.parameters()).device
        sample = jobs[0].temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=jobs[0].max_new_tokens,
                do_sample=sample, temperature=jobs[0].temperature if sample else None,
                top_p=jobs[0].top_p if sample else None, top_k=None, eos_token_id=self.stop_ids,
                pad_token_id=self.pad_id, use_cache=True, stopping_criteria=_halt(jobs),
                output_logits=self.rule is not None, return_dict_in_generate=True)
        gen = out.sequences[:, width:]
        sure = mean_logprobs(out.logits, gen, self.stop_ids) if self.rule is not None and not sample else None
        for r, job in enumerate(jobs):
            toks, job.finish_reason = gen[r].tolist(), "length"
            for k, t in enumerate(toks):
                if t in self.stop_ids:
                    toks, job.finish_reason = toks[:k], "stop"
                    break
            job.n_tokens = min(len(toks) + (job.finish_reason == "stop"), job.max_new_tokens)
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            cut = _first_stop(text, job.stops)
            if cut is not None:
                text, job.finish_reason = text[:cut], "stop"
            job.text = text.strip()
            if sure is not None:
                job.text = self.rule.apply(job.text, sure[r], self.refusal)  # type: ignore[union-attr]
            self.count(completions=1, prompt_tokens=len(job.ids), completion_tokens=job.n_tokens)
        with self._stats_lock:
            self.stats["batches"] += 1
            self.stats["max_batch"] = max(self.stats["max_batch"], len(jobs))

    def count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                self.stats[k] += v

    def run(self, job: _Job, on_text: Any = None) -> _Job:
        """Generate for `job` (blocking). Stops at EOS / end of turn, a stop string, the token
        budget, or cancellation (a streaming client that went away)."""
        import torch
        from transformers import TextStreamer

        if job.cancelled.is_set() or _expire(job):  # abandoned, or out of time, while it waited
            return job
        engine = self

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if job.cancelled.is_set():  # cut at a stop string, or the client left
                    return
                job.text += text
                cut = _first_stop(job.text, job.stops)
                if cut is not None:
                    job.text, job.finish_reason = job.text[:cut], "stop"
                    job.cancelled.set()
                if on_text is not None:
                    on_text(job)

            def put(self, value: Any) -> None:
                if not self.next_tokens_are_prompt:
                    job.n_tokens += int(value.numel())
                    if any(int(t) in engine.stop_ids for t in value.reshape(-1)):
                        job.finish_reason = "stop"
                super().put(value)

        device = next(self.model.parameters()).device
        ids = torch.tensor([job.ids], dtype=torch.long, device=device)
        sample = job.temperature > 0
        if job.seed is not None:
            torch.manual_seed(job.seed)
        with torch.no_grad():
            self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=job.max_new_tokens,
                do_sample=sample, temperature=job.temperature if sample else None,
                top_p=job.top_p if sample else None, top_k=None,
                eos_token_id=self.stop_ids, pad_token_id=self.pad_id, use_cache=True,
                streamer=_Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True),
                stopping_criteria=_halt([job]),
            )
        job.text = job.text.strip() if on_text is None else job.text
        self.count(completions=1, prompt_tokens=len(job.ids), completion_tokens=job.n_tokens)
        return job


def _expire(job: _Job) -> bool:
    if time.monotonic() > job.deadline:
        job.expired = True
    return job.expired


def _halt(jobs: list[_Job]) -> Any:
    """Stopping criteria that end each row whose client left or whose time limit passed, so
    no request, batched or not, holds the worker after it stops mattering."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Halt(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            now = time.monotonic()
            return torch.tensor([j.cancelled.is_set() or now > j.deadline for j in jobs], dtype=torch.bool,
                                device=input_ids.device)

    return StoppingCriteriaList([_Halt()])


def _batch_key(job: _Job) -> tuple[Any, ...]:
    return job.max_new_tokens, tuple(job.stops), job.temperature, job.top_p


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None


# ---------------------------------------------------------------- app
class _BadKey(Exception):
    """A request without the server's API key (answered 401)."""


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> Any:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": None, "code": code}})


@dataclass
class Limits:
    """What one request may ask of the server (ServeConfig's limits)."""

    default_max_tokens: int = 256  # a request without max_tokens
    max_tokens: int = 1024  # any request's max_tokens is capped here (and by the model's context)
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 120.0  # queueing and generation together


def create_app(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate | None = None,
    api_key: str | None = None,
    model_name: str = "ragtune",
    default_max_tokens: int = 256,
    batch_size: int = 8,
    limits: Limits | None = None,
    rule: RefusalRule | None = None,
) -> Any:
    """A FastAPI app serving `model` with OpenAI's chat-completions protocol. Every error is
    JSON in OpenAI's shape; with an API key, the schema is not served at all. `rule` is the
    adapter's abstention rule (`ragtune.abstain`), applied to greedy, non-streamed replies."""
    limits = limits or Limits(default_max_tokens=default_max_tokens)
    engine = Engine(model, tokenizer, batch_size, rule, template.refusal if template else REFUSAL)
    positions = context_positions(model, tokenizer)

    app = FastAPI(title="ragtune", docs_url=None, redoc_url=None, openapi_url=None if api_key else "/openapi.json",
                  dependencies=[Depends(_key_check(api_key))])
    app.state.engine = engine
    _error_handlers(app)
    created = int(time.time())

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "ragtune"}]}

    @app.get("/ragtune/stats")
    async def stats() -> dict:
        return dict(engine.stats)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        engine.count(requests=1)
        prepared = await _prepare(request, engine, template, model_name, limits, positions)
        if isinstance(prepared, JSONResponse):
            return prepared
        req, job = prepared
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            return StreamingResponse(_stream(engine, job, cid, model_name), media_type="text/event-stream")
        if job.seed is None:
            work = engine.run_batched(job)
        else:  # a seeded request runs alone, so its seed alone decides its sample
            work = asyncio.get_running_loop().run_in_executor(engine.executor, engine.run, job)
        if not await _unless_disconnected(work, request, job):
            return _error(499, "client closed the request")
        return _busy(limits) if job.expired else _completion(cid, model_name, job)

    return app


def _key_check(api_key: str | None) -> Any:
    def check_key(request: Request) -> None:
        # A dependency rather than an HTTP middleware: Starlette's BaseHTTPMiddleware hides
        # client disconnects from the endpoint, which needs them to drop abandoned requests.
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise _BadKey()

    return check_key


def _completion(cid: str, model_name: str, job: _Job) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": job.text},
                     "finish_reason": job.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": len(job.ids), "completion_tokens": job.n_tokens,
                  "total_tokens": len(job.ids) + job.n_tokens},
    }


def _error_handlers(app: Any) -> None:
    @app.exception_handler(_BadKey)
    async def bad_key(request: Request, exc: _BadKey) -> JSONResponse:
        return _error(401, "invalid or missing API key; send 'Authorization: Bearer <key>'", code="invalid_api_key")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), kind="not_found_error" if exc.status_code == 404 else
                      "invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:  # a bug: still JSON
        return _error(500, f"internal error ({type(exc).__name__}); see the server log", kind="server_error")


def context_positions(model: Any, tokenizer: Any) -> int | None:
    """How many positions (prompt + answer) the model reads: its config's, capped by the tokenizer's."""
    found = [getattr(getattr(model, "config", None), "max_position_embeddings", None),
             getattr(tokenizer, "model_max_length", None)]
    valid = [n for n in found if isinstance(n, int) and 0 < n < 10_000_000]
    return min(valid) if valid else None


async def _read_body(request: Request, limit: int) -> bytes | JSONResponse:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _error(413, f"the request body is {declared} bytes, over this server's {limit}; send less context")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            return _error(413, f"the request body is over this server's {limit} bytes; send less context")
    return bytes(body)


async def _prepare(request: Request, engine: Engine, template: PromptTemplate | None, model_name: str,
                   limits: Limits, positions: int | None) -> tuple[ChatRequest, _Job] | JSONResponse:
    """The validated request and its job, or the JSON error that answers it."""
    deadline = time.monotonic() + limits.request_timeout_s
    body = await _read_body(request, limits.max_body_bytes)
    if isinstance(body, JSONResponse):
        return body
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the request body is not valid JSON")
    if not isinstance(data, dict):
        return _error(400, "the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        return _error(400, _validation_message(e.errors()))
    if req.model and req.model != model_name:
        return _error(404, f"model '{req.model}' does not exist; this server serves '{model_name}' (GET /v1/models)",
                      kind="not_found_error", code="model_not_found")
    messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in req.messages]
    passages = None
    if req.passages is not None:
        passages = [Passage(title="", text=p) if isinstance(p, str) else Passage(p.title, p.text)
                    for p in req.passages]
    # tokenising a long prompt takes a while: off the event loop, so other clients are not held
    ids = await asyncio.get_running_loop().run_in_executor(
        engine.prep, render_messages, engine.tokenizer, messages, template, passages)
    budget = min(req.budget(limits.default_max_tokens), limits.max_tokens)
    if positions is not None:
        if len(ids) >= positions:
            return _error(400, f"the prompt is {len(ids)} tokens; this model reads at most {positions} positions; "
                          "send shorter messages or fewer passages", code="context_length_exceeded")
        budget = min(budget, positions - len(ids))
    return req, _Job(ids=ids, max_new_tokens=budget, temperature=req.temperature, top_p=req.top_p,
                     stops=req.stops(), seed=req.seed, deadline=deadline)


def _busy(limits: Limits) -> JSONResponse:
    return _error(429, f"the server was busy past this request's time limit ({limits.request_timeout_s:g} s); "
                  "retry later", kind="rate_limit_error", code="timeout")


async def _unless_disconnected(work: Any, request: Request, job: _Job) -> bool:
    """Await `work`; if the client hangs up first (e.g. its timeout fired), mark the job
    cancelled so a queued job is skipped and a running one stops, and return False."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            try:
                task.result()
            except asyncio.CancelledError:
                return False
            return True
        if await request.is_disconnected():
            job.cancelled.set()
            engine = request.app.state.engine
            engine.count(abandoned=1)
            return False
        if time.monotonic() > job.deadline + 1.0:  # still queued behind others: answer 429 in time
            job.cancelled.set()
            job.expired = True
            return True


def _validation_message(errors: list[dict[str, Any]]) -> str:
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
    return f"invalid request: '{where}': {e.get('msg', 'bad value')}"


async def _stream(engine: Engine, job: _Job, cid: str, model_name: str) -> Any:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    hold = max((len(s) for s in job.stops), default=1) - 1  # text that may start a stop string
    state = {"sent": 0}

    def on_text(j: _Job) -> None:
        end = len(j.text) if j.cancelled.is_set() else max(state["sent"], len(j.text) - hold)
        if end > state["sent"]:
            piece, state["sent"] = j.text[state["sent"]:end], end
            loop.call_soon_threadsafe(queue.put_nowait, piece)

    def run() -> None:
        try:
            engine.run(job, on_text)
            on_text_final()
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    def on_text_final() -> None:
        if len(job.text) > state["sent"]:
            loop.call_soon_threadsafe(queue.put_nowait, job.text[state["sent"]:])
            state["sent"] = len(job.text)

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    future = loop.run_in_executor(engine.executor, run)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while (piece := await queue.get()) is not None:
            yield chunk({"content": piece})
        await future
        usage = {"prompt_tokens": len(job.ids), "completion_tokens": job.n_tokens,
                 "total_tokens": len(job.ids) + job.n_tokens}
        yield chunk({}, job.finish_reason, usage)
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client left: stop generating for it


# ---------------------------------------------------------------- entry point
def serve(
    model: str | None = None,
    adapter: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    model_name: str | None = None,
    batch_size: int = 8,
    limits: Limits | None = None,
) -> None:
    """Load the model (and adapter) and serve it until interrupted."""
    import uvicorn

    from ragtune.models import base_model_of, load_model

    if model is None and adapter is None:
        raise RagtuneError("serve needs --model (a model folder or hub id) and/or --adapter")
    model = model or base_model_of(adapter)  # type: ignore[arg-type]
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise RagtuneError(f"environment variable {api_key_env} is empty; export the API key "
                               "clients must send, or drop --api-key-env")
    _check_port_free(host, port)
    if adapter is not None:
        check_adapter_fits(adapter, model)
    lm, tok = load_model(model, adapter=adapter)
    template = PromptTemplate.find(adapter, local_folder(model))
    name = model_name or (Path(adapter).name if adapter else Path(model).name) or "ragtune"
    app = create_app(lm, tok, template, api_key=api_key, model_name=name, batch_size=batch_size, limits=limits,
                     rule=RefusalRule.find(adapter, local_folder(model)))
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {host} without an API key; anyone who can reach it can use it")
    uvicorn.run(app, host=host, port=port, log_level="info")


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line before the model loads, not with uvicorn's error and exit 3 after."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as e:
            raise RagtuneError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or stop "
                               "what uses it") from None


class serving:  # noqa: N801 - used as a context manager, reads like a function
    """Run an ASGI app with uvicorn on a free loopback port in a background thread.

    `with serving(app) as url:` yields `http://127.0.0.1:PORT`; the server stops on exit.
    Used by tests and benchmarks to talk to a real server over real sockets.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning",
                                                    lifespan="off"))
        self.thread: threading.Thread | None = None

    def __enter__(self) -> str:
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return f"http://{self.host}:{port}"

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
