"""A client of OpenAI-compatible chat-completions endpoints, shared by the `openai` generator
and the LLM judge.

OpenAI, Azure's v1 endpoint, vLLM, Ollama, llama.cpp, TGI or `ragtune serve`, through the
official client's `AsyncOpenAI`. The API key is read from the environment variable the
config names and is never written anywhere. Requests are bounded by a semaphore
(`concurrency`) and by requests- and tokens-per-minute windows; 429 and 5xx replies,
timeouts and dropped connections are retried with exponential backoff that honours
`Retry-After`; other 4xx replies fail that one call (`CallFailed`), except a rejected key or
unknown model, which stop the run with one clear line.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ragtune.config import SynthConfig
from ragtune.errors import RagtuneError


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CallFailed(Exception):
    """A call that failed for good (retries spent, or refused as a bad request)."""


# A backend's one coroutine: (messages, json_mode) -> Reply
Complete = Callable[[list[dict[str, str]], bool], Awaitable[Reply]]


class RateLimiter:
    """Sliding one-minute windows of requests and (estimated) tokens."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float = 60.0) -> None:
        self.rpm, self.tpm, self.window = rpm, tpm, window_s
        self.events: deque[tuple[float, int]] = deque()
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if self.rpm is None and self.tpm is None:
            return
        async with self.lock:  # one waiter at a time keeps the order fair
            while True:
                now = time.monotonic()
                while self.events and now - self.events[0][0] >= self.window:
                    self.events.popleft()
                used = sum(t for _, t in self.events)
                fits_r = self.rpm is None or len(self.events) < self.rpm
                fits_t = self.tpm is None or used + tokens <= self.tpm or not self.events
                if fits_r and fits_t:
                    self.events.append((now, tokens))
                    return
                await asyncio.sleep(self.window - (now - self.events[0][0]) + 0.01)


def retry_after(response: Any) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` seconds or date)."""
    headers = getattr(response, "headers", None) or {}
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def backoff(attempt: int, base: float = 0.5, cap: float = 60.0) -> float:
    return min(cap, base * 2**attempt) * (0.5 + random.random() / 2)


class OpenAIComplete:
    """The `complete` coroutine over an `AsyncOpenAI` client (made inside the running loop)."""

    def __init__(self, cfg: SynthConfig, model: str, schema: dict[str, Any] | None = None) -> None:
        import openai

        self.cfg, self.model = cfg, model
        self.schema = schema  # the response_format sent in `json_schema` mode
        self.client = openai.AsyncOpenAI(
            base_url=cfg.base_url, api_key=api_key(cfg), max_retries=0, timeout=cfg.timeout_s
        )
        self.semaphore = asyncio.Semaphore(max(1, cfg.concurrency))
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.response_format: str = cfg.response_format

    async def __call__(self, messages: list[dict[str, str]], json_mode: bool) -> Reply:
        import openai

        est = sum(len(m["content"]) for m in messages) // 4 + self.cfg.max_tokens
        last, attempt = "no attempt", 0
        while attempt <= self.cfg.max_retries:
            await self.limiter.acquire(est)
            wait = None
            request = self.request(messages, json_mode)
            try:
                async with self.semaphore:
                    r = await self.client.chat.completions.create(**request)
                text = (r.choices[0].message.content or "") if r.choices else ""
                usage = r.usage
                return Reply(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)
            except openai.APIStatusError as e:
                last = f"HTTP {e.status_code}: {e.message}"
                if e.status_code in (401, 403):
                    raise RagtuneError(
                        f"the endpoint refused the API key from ${self.cfg.api_key_env} "
                        f"(HTTP {e.status_code}); export a valid key"
                    ) from None
                if e.status_code == 404:
                    raise RagtuneError(
                        f"the endpoint has no model '{self.model}' or no chat-completions route "
                        f"(HTTP 404); check --model and --base-url"
                    ) from None
                if e.status_code == 400 and "response_format" in request and "response_format" in str(e.message):
                    self.response_format = "none"  # this server does not do structured output
                    continue  # not a failed attempt: the same call again, without it
                if e.status_code != 429 and e.status_code < 500:
                    raise CallFailed(last) from None
                wait = retry_after(e.response)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < self.cfg.max_retries:
                await asyncio.sleep(wait if wait is not None else backoff(attempt))
            attempt += 1
        raise CallFailed(f"gave up after {self.cfg.max_retries + 1} attempts; last error: {last}")

    def request(self, messages: list[dict[str, str]], json_mode: bool) -> dict[str, Any]:
        req: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if json_mode and self.response_format == "json_schema" and self.schema is not None:
            req["response_format"] = self.schema
        elif json_mode and self.response_format in ("json_object", "json_schema"):
            req["response_format"] = {"type": "json_object"}
        return req

    async def aclose(self) -> None:
        await self.client.close()


def api_key(cfg: SynthConfig) -> str:
    """The key from the environment. Local servers often need none, so a missing variable is
    only an error for the default (OpenAI's) endpoint."""
    key = os.environ.get(cfg.api_key_env, "")
    if not key and not cfg.base_url:
        raise RagtuneError(f"no API key: export {cfg.api_key_env}, or pass --base-url for a local server")
    return key or "unused"


def resolve_model(cfg: SynthConfig) -> str:
    """`cfg.model`, or the first model the endpoint lists (a local server serves one)."""
    if cfg.model:
        return cfg.model
    if not cfg.base_url:
        raise RagtuneError("the openai generator needs --model (e.g. gpt-4o-mini)")
    import openai

    try:
        models = openai.OpenAI(
            base_url=cfg.base_url, api_key=api_key(cfg), max_retries=2, timeout=cfg.timeout_s
        ).models.list()
        return next(iter(models)).id
    except openai.AuthenticationError:
        raise RagtuneError(
            f"the endpoint refused the API key from ${cfg.api_key_env} (HTTP 401); export a valid key"
        ) from None
    except (openai.OpenAIError, StopIteration) as e:
        raise RagtuneError(f"cannot list models at {cfg.base_url} ({type(e).__name__}); pass --model") from None
