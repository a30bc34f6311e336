"""A small real OpenAI-compatible server for synth tests: deterministic replies computed from
the prompt (a stand-in for a capable LLM), a fixed delay per request, optional 429s, and a
log of every request it served. It runs on loopback via `ragtune.serve.serving`."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

STOP = {"the", "and", "for", "with", "that", "this", "from", "are", "was", "you", "can", "its", "into"}


def passage_of(prompt: str) -> str:
    m = re.search(r"Passage(?: A)?[^\n]*:\n(.*?)(?:\n\nPassage B|\Z)", prompt, re.S)
    return m.group(1) if m else prompt


def questions_for(prompt: str) -> str:
    """Questions built from the passage's rarer words; every third passage gets a preamble
    line and a non-question line too, as chatty models write them."""
    n = int(re.search(r"write (\d+)", prompt).group(1))
    text = passage_of(prompt)
    words = [w for w in re.findall(r"[A-Za-z_]{4,}", text) if w.lower() not in STOP]
    uniq = list(dict.fromkeys(words))
    qs = []
    how = "explanatory" in prompt
    for i in range(n):
        picked = uniq[i * 4 + 4 * how : (i + 1) * 4 + 4 * how] or uniq[:4] or ["nothing"]
        qs.append(
            f"How do {' '.join(picked)} work?" if how else f"What does the documentation say about {' '.join(picked)}?"
        )
    digest = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    if "does NOT answer" in prompt and digest % 2 == 0:  # a good unanswerable question
        qs = [f"Which release added quantum teleportation to {uniq[i] if i < len(uniq) else 'it'}?" for i in range(n)]
    if digest % 3 == 0:
        return f"Here are {n} questions:\n" + "\n".join(f"{i + 1}. {q}" for i, q in enumerate(qs)) + "\nHope this helps"
    return '{"questions": [' + ", ".join(f'"{q}"' for q in qs) + "]}"


def answer_for(prompt: str) -> str:
    if "quantum teleportation" in prompt.rsplit("Question:", 1)[1]:
        return "NOT IN CONTEXT"
    context = prompt.split("Context:\n", 1)[1].split("\n\nQuestion:", 1)[0]
    body = context.split("\n", 1)[-1] if "\n" in context else context
    sentence = re.split(r"(?<=[.!?])\s", body.strip(), maxsplit=1)[0][:200]
    if "##begin_quote##" in prompt:
        return f"The context says ##begin_quote##{sentence}##end_quote##.\n<ANSWER>: {sentence}"
    return sentence


def make_app(
    delay_s: float = 0.0, fail_first: int = 0, retry_after: str = "0.2", no_response_format: bool = False
) -> FastAPI:
    """`fail_first` requests get 429 with `Retry-After` before any succeeds;
    `no_response_format` answers 400 to requests that ask for structured output."""
    app = FastAPI()
    app.state.log = []  # (time, first 60 chars of prompt, full prompt)
    app.state.rejected = 0

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "scripted", "object": "model", "created": 0, "owned_by": "t"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if app.state.rejected < fail_first:
            app.state.rejected += 1
            return JSONResponse(
                {"error": {"message": "slow down", "type": "rate_limit"}},
                status_code=429,
                headers={"Retry-After": retry_after},
            )
        if no_response_format and "response_format" in body:
            return JSONResponse(
                {"error": {"message": "response_format is not supported", "type": "invalid"}}, status_code=400
            )
        prompt = body["messages"][-1]["content"]
        app.state.log.append((time.monotonic(), prompt))  # on arrival: a call killed in flight counts
        await asyncio.sleep(delay_s)
        text = answer_for(prompt) if "Question:" in prompt and "Context:" in prompt else questions_for(prompt)
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": len(prompt) // 4,
                "completion_tokens": len(text) // 4,
                "total_tokens": (len(prompt) + len(text)) // 4,
            },
        }

    @app.get("/log")
    async def log() -> dict:
        return {"prompts": [p for _, p in app.state.log]}

    return app
