"""`ragtune serve`: an OpenAI-compatible HTTP server over a local model and optional adapter.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (plain JSON or server-sent events
with `stream: true`), and `GET /ragtune/stats` (requests and tokens served, for tests and
monitoring). Generation runs in one worker thread (a CPU or single GPU gains nothing from
two at once); requests queue there, so concurrent clients are all served, in arrival order.

Chat messages become a prompt by the rule of `ragtune.prompts.render_messages`: with a ragtune
template (the adapter's or model's `ragtune_prompt.json`) and a request that carries RAG context
(`passages`, a ragtune extension: a list of strings or of `{"title", "text"}` objects, or a last
user message shaped as `PromptTemplate.messages` sends it), exactly as in training; otherwise
through the tokenizer's chat template, else a plain transcript.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
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
from ragtune.batching import MicroBatcher
from ragtune.config import REFUSAL, ServeConfig, field_default
from ragtune.errors import RagtuneError
from ragtune.generation import Decoding, generate_batch, generate_stream, stop_token_ids
from ragtune.modelstore import local_folder
from ragtune.prompts import Passage, PromptTemplate, question_span, rag_parts, render_messages


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


# ---------------------------------------------------------------- generation
@dataclass
class _Job:
    """One request: its prompt and settings and, once generated, its reply and counts."""

    ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    stops: list[str]
    seed: int | None = None
    deadline: float = math.inf  # time.monotonic() past which generation stops (the request's time limit)
    question: tuple[int, int] | None = None  # the RAG question's token span, for the abstention rule
    cancelled: threading.Event = field(default_factory=threading.Event)
    expired: bool = False  # its time limit passed before it started: nothing was generated
    text: str = ""
    n_tokens: int = 0
    finish_reason: str = "length"

    def decoding(self) -> Decoding:
        """Its settings; jobs with equal ones may share a batch."""
        return Decoding(self.max_new_tokens, tuple(self.stops), self.temperature, self.top_p)


class Engine:
    """Runs generation on one worker thread; safe to call from any request.

    Non-streaming requests that wait together with the same settings (token budget, stop
    strings, temperature, top_p; no seed) are generated as one left-padded batch, so
    concurrent clients raise throughput; streamed and seeded requests run one at a time. A
    request whose client hung up is skipped if it has not started, and stopped if it has.
    Generation itself is `ragtune.generation`'s, as for eval and ask.
    """

    def __init__(
        self, model: Any, tokenizer: Any, batch_size: int = 8, rule: RefusalRule | None = None, refusal: str = REFUSAL
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        # The adapter's calibrated abstention rule; it needs a whole answer, so streamed
        # replies (sent token by token) go out without it.
        self.rule, self.refusal = rule, refusal
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-generate")
        self.prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-tokenize")
        self.batcher: MicroBatcher[_Job, _Job] = MicroBatcher(
            self._run_jobs, batch_size, self.executor, key=_Job.decoding, dropped=lambda j: j.cancelled.is_set()
        )
        self.stats = {
            "requests": 0,
            "completions": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "batches": 0,
            "max_batch": 0,
            "abandoned": 0,
        }
        self._stats_lock = threading.Lock()

    async def run_batched(self, job: _Job) -> _Job:
        """Queue a job; it runs in the next batch of jobs with the same settings."""
        return await self.batcher.submit(job)

    def _run_jobs(self, jobs: list[_Job]) -> list[_Job]:
        self.run_batch(jobs)
        return jobs

    def run_batch(self, jobs: list[_Job]) -> None:
        """Generation of jobs with equal settings in one batch (`generation.generate_batch`);
        greedy replies go through the abstention rule."""
        jobs = [j for j in jobs if not j.cancelled.is_set() and not _expire(j)]  # abandoned, or out of time
        if not jobs:
            return
        decoding = jobs[0].decoding()
        ruled = self.rule is not None and not decoding.sampled
        done = generate_batch(
            self.model,
            self.tokenizer,
            [j.ids for j in jobs],
            decoding,
            with_confidence=ruled,
            halt=lambda: _halted(jobs),
            stop_ids=self.stop_ids,
            spans=[j.question for j in jobs] if ruled else None,
        )
        for job, completion in zip(jobs, done, strict=True):
            job.text, job.n_tokens, job.finish_reason = completion.text, completion.n_tokens, completion.finish_reason
            if ruled:
                # greedy and ruled: the confidence is there
                job.text = self.rule.apply(job.text, completion.confidence, self.refusal, completion.support)  # type: ignore[arg-type,union-attr]
            self.count(completions=1, prompt_tokens=len(job.ids), completion_tokens=job.n_tokens)
        with self._stats_lock:
            self.stats["batches"] += 1
            self.stats["max_batch"] = max(self.stats["max_batch"], len(jobs))

    def count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                self.stats[k] += v

    def run(self, job: _Job, on_text: Callable[[_Job, bool], None] | None = None) -> _Job:
        """Generate for `job` alone (blocking; `generation.generate_stream`), calling
        `on_text(job, final)` as its text grows. Stops at EOS / end of turn, a stop string, the
        token budget, or cancellation (a streaming client that went away)."""
        if job.cancelled.is_set() or _expire(job):  # abandoned, or out of time, while it waited
            return job

        def grown(text: str, final: bool) -> None:
            job.text = text
            if on_text is not None:
                on_text(job, final)

        done = generate_stream(
            self.model,
            self.tokenizer,
            job.ids,
            job.decoding(),
            grown,
            halt=lambda: _halted([job])[0],
            seed=job.seed,
            stop_ids=self.stop_ids,
        )
        job.n_tokens, job.finish_reason = done.n_tokens, done.finish_reason
        job.text = done.text.strip() if on_text is None else done.text
        self.count(completions=1, prompt_tokens=len(job.ids), completion_tokens=job.n_tokens)
        return job


def _expire(job: _Job) -> bool:
    if time.monotonic() > job.deadline:
        job.expired = True
    return job.expired


def _halted(jobs: list[_Job]) -> list[bool]:
    """Per job, whether its client left or its time limit passed: generation ends those rows,
    so no request, batched or not, holds the worker after it stops mattering."""
    now = time.monotonic()
    return [j.cancelled.is_set() or now > j.deadline for j in jobs]


# ---------------------------------------------------------------- app
class _BadKey(Exception):
    """A request without the server's API key (answered 401)."""


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> Any:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": None, "code": code}}
    )


@dataclass
class Limits:
    """What one request may ask of the server (ServeConfig's limits, with its defaults)."""

    default_max_tokens: int = 256  # a request without max_tokens
    # any request's max_tokens is capped here (and by the model's context)
    max_tokens: int = field_default(ServeConfig, "max_tokens")
    max_body_bytes: int = field_default(ServeConfig, "max_body_bytes")
    request_timeout_s: float = field_default(ServeConfig, "request_timeout_s")  # queueing and generation together


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

    app = FastAPI(
        title="ragtune",
        docs_url=None,
        redoc_url=None,
        openapi_url=None if api_key else "/openapi.json",
        dependencies=[Depends(_key_check(api_key))],
    )
    app.state.engine = engine
    _error_handlers(app)
    created = int(time.time())

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "ragtune"}],
        }

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
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": job.text},
                "finish_reason": job.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": len(job.ids),
            "completion_tokens": job.n_tokens,
            "total_tokens": len(job.ids) + job.n_tokens,
        },
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
        return _error(
            exc.status_code,
            str(exc.detail),
            kind="not_found_error" if exc.status_code == 404 else "invalid_request_error",
        )

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:  # a bug: still JSON
        return _error(500, f"internal error ({type(exc).__name__}); see the server log", kind="server_error")


def context_positions(model: Any, tokenizer: Any) -> int | None:
    """How many positions (prompt + answer) the model reads: its config's, capped by the tokenizer's."""
    found = [
        getattr(getattr(model, "config", None), "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
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


async def _prepare(
    request: Request,
    engine: Engine,
    template: PromptTemplate | None,
    model_name: str,
    limits: Limits,
    positions: int | None,
) -> tuple[ChatRequest, _Job] | JSONResponse:
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
        return _error(
            404,
            f"model '{req.model}' does not exist; this server serves '{model_name}' (GET /v1/models)",
            kind="not_found_error",
            code="model_not_found",
        )
    messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in req.messages]
    passages = None
    if req.passages is not None:
        passages = [Passage(title="", text=p) if isinstance(p, str) else Passage(p.title, p.text) for p in req.passages]
    # tokenising a long prompt takes a while: off the event loop, so other clients are not held
    ids, question = await asyncio.get_running_loop().run_in_executor(
        engine.prep, _prompt, engine.tokenizer, messages, template, passages, engine.rule is not None
    )
    budget = min(req.budget(limits.default_max_tokens), limits.max_tokens)
    if positions is not None:
        if len(ids) >= positions:
            return _error(
                400,
                f"the prompt is {len(ids)} tokens; this model reads at most {positions} positions; "
                "send shorter messages or fewer passages",
                code="context_length_exceeded",
            )
        budget = min(budget, positions - len(ids))
    return req, _Job(
        ids=ids,
        max_new_tokens=budget,
        temperature=req.temperature,
        top_p=req.top_p,
        stops=req.stops(),
        seed=req.seed,
        deadline=deadline,
        question=question,
    )


def _prompt(
    tokenizer: Any,
    messages: list[dict[str, str]],
    template: PromptTemplate | None,
    passages: list[Passage] | None,
    ruled: bool,
) -> tuple[list[int], tuple[int, int] | None]:
    """The prompt's ids and, for a RAG prompt under an abstention rule, its question's token span
    (the rule's support score)."""
    ids = render_messages(tokenizer, messages, template, passages)
    rag = rag_parts(messages, template, passages) if ruled else None
    return ids, question_span(tokenizer, ids, rag[1]) if rag is not None else None


def _busy(limits: Limits) -> JSONResponse:
    return _error(
        429,
        f"the server was busy past this request's time limit ({limits.request_timeout_s:g} s); retry later",
        kind="rate_limit_error",
        code="timeout",
    )


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

    def on_text(j: _Job, final: bool) -> None:
        end = len(j.text) if final or j.cancelled.is_set() else max(state["sent"], len(j.text) - hold)
        if end > state["sent"]:
            piece, state["sent"] = j.text[state["sent"] : end], end
            loop.call_soon_threadsafe(queue.put_nowait, piece)

    def run() -> None:
        try:
            engine.run(job, on_text)
            on_text(job, True)  # the held-back tail
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    future = loop.run_in_executor(engine.executor, run)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while (piece := await queue.get()) is not None:
            yield chunk({"content": piece})
        await future
        usage = {
            "prompt_tokens": len(job.ids),
            "completion_tokens": job.n_tokens,
            "total_tokens": len(job.ids) + job.n_tokens,
        }
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
            raise RagtuneError(
                f"environment variable {api_key_env} is empty; export the API key "
                "clients must send, or drop --api-key-env"
            )
    _check_port_free(host, port)
    if adapter is not None:
        check_adapter_fits(adapter, model)
    lm, tok = load_model(model, adapter=adapter)
    template = PromptTemplate.find(adapter, local_folder(model))
    name = model_name or (Path(adapter).name if adapter else Path(model).name) or "ragtune"
    app = create_app(
        lm,
        tok,
        template,
        api_key=api_key,
        model_name=name,
        batch_size=batch_size,
        limits=limits,
        rule=RefusalRule.find(adapter, local_folder(model)),
    )
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
            raise RagtuneError(
                f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or stop what uses it"
            ) from None


class serving:  # noqa: N801 - used as a context manager, reads like a function
    """Run an ASGI app with uvicorn on a free loopback port in a background thread.

    `with serving(app) as url:` yields `http://127.0.0.1:PORT`; the server stops on exit.
    Used by tests and benchmarks to talk to a real server over real sockets.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="off"))
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
