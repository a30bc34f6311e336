"""The `openai` generator against real servers on loopback: a scripted one (deterministic,
capable replies, a fixed delay, 429s) and `ragtune serve` running the tiny model."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from scripted_llm import make_app

from ragtune.config import SynthConfig
from ragtune.errors import RagtuneError
from ragtune.llm_client import CallFailed, OpenAIComplete, RateLimiter
from ragtune.records import Chunk, QAItem, content_id
from ragtune.serve import create_app, serving
from ragtune.synth.base import Rejection
from ragtune.synth.cache import CallCache
from ragtune.synth.llm import load_templates
from ragtune.synth.openai_backend import make_openai

TEXTS = {
    "lists": "Lists are mutable sequences, typically used to store collections of homogeneous items. "
    "The sort method orders the items in place.",
    "tuples": "Tuples are immutable sequences, typically used to store collections of heterogeneous data. "
    "Packing and unpacking assign several names at once.",
    "dicts": "Dictionaries map hashable keys to arbitrary values. They preserve insertion order and the "
    "popitem method removes the most recently inserted pair.",
    "sockets": "The socket module provides access to the BSD socket interface. Servers bind an address, "
    "listen for connections and accept clients.",
    "threads": "The threading module constructs higher-level threading interfaces on top of the lower "
    "level thread module. A lock serialises access to shared state.",
    "json": "The json module encodes Python objects as JSON text and decodes JSON documents into "
    "dictionaries, lists, strings, numbers, booleans and None.",
}
CHUNKS = [
    Chunk(id=content_id(t, x), doc_id=content_id(t), source=f"{t}.rst", title=t, text=x, start=0, end=len(x))
    for t, x in TEXTS.items()
]


def cfg(url: str, **kw) -> SynthConfig:
    base = {
        "generator": "openai",
        "base_url": f"{url}/v1",
        "model": "scripted",
        "questions_per_chunk": 2,
        "concurrency": 4,
        "max_retries": 2,
        "timeout_s": 30,
    }
    return SynthConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def scripted():
    app = make_app()
    with serving(app) as url:
        yield url, app


def test_generates_rows_and_counts_preambles_as_rejections(scripted):
    url, _ = scripted
    gen = make_openai(cfg(url, question_types=["factoid", "explanatory"]), CHUNKS)
    rows = list(gen.generate(CHUNKS))
    items = [r for r in rows if isinstance(r, QAItem)]
    rejections = [r for r in rows if isinstance(r, Rejection)]
    assert len(items) == 2 * len(CHUNKS)  # every chunk's 2 questions, preambles stripped away
    assert all(i.question.endswith("?") and i.answer and i.chunk_id for i in items)
    assert {i.kind for i in items} == {"factoid", "explanatory"}
    assert all(i.origin == "openai:scripted" for i in items)
    by_id = {c.id: c for c in CHUNKS}
    assert all(i.answer in by_id[i.chunk_id].text for i in items)
    preambles = [r for r in rejections if r.reason == "not_a_question"]
    assert preambles and all(r.raw for r in preambles)
    assert {r.question for r in preambles} <= {"Here are 1 questions:", "Hope this helps"}
    s = gen.stats_dict()
    assert s["questions"]["calls"] == 2 * len(CHUNKS) and s["answers"]["calls"] == len(items)
    assert s["answers"]["completion_tokens"] > 0


def test_cot_answers_carry_verified_quotes(scripted):
    url, _ = scripted
    gen = make_openai(cfg(url, answer_style="cot", question_types=["factoid"]), CHUNKS[:2])
    items = [r for r in gen.generate(CHUNKS[:2]) if isinstance(r, QAItem)]
    assert items and all(i.evidence and i.meta["cot"].count("##begin_quote##") == 1 for i in items)
    assert all(i.evidence[0] in CHUNKS[0].text + CHUNKS[1].text for i in items)


def test_multi_hop_pairs_a_related_chunk_and_unanswerable_is_checked(scripted):
    url, _ = scripted
    gen = make_openai(cfg(url, question_types=["multi_hop", "unanswerable"], questions_per_chunk=2), CHUNKS)
    rows = list(gen.generate(CHUNKS))
    hops = [r for r in rows if isinstance(r, QAItem) and r.kind == "multi_hop"]
    assert hops and all(r.meta["partner_chunk_id"] not in (None, r.chunk_id) for r in hops)
    # an unanswerable question the chunk really does not answer is kept, without an oracle ...
    unans = [r for r in rows if isinstance(r, QAItem) and r.kind == "unanswerable"]
    assert unans and all(not r.answerable and r.answer == "" and r.chunk_id is None for r in unans)
    assert all("teleportation" in r.question and r.meta["source_chunk"] in {c.id for c in CHUNKS} for r in unans)
    # ... and one the chunk answers after all is caught and rejected
    answered = [r for r in rows if isinstance(r, Rejection) and r.reason == "unanswerable_answered"]
    assert answered and all("teleportation" not in r.question for r in answered)


def test_cache_repeats_no_call(scripted, tmp_path):
    url, app = scripted
    c = cfg(url)
    first = make_openai(c, CHUNKS[:3])
    first.cache = CallCache(tmp_path)
    rows1 = list(first.generate(CHUNKS[:3]))
    n = len(app.state.log)
    again = make_openai(c, CHUNKS[:3])
    again.cache = CallCache(tmp_path)  # reloaded from disk
    rows2 = list(again.generate(CHUNKS[:3]))
    assert len(app.state.log) == n  # no request reached the server
    assert rows1 == rows2
    assert again.stats_dict()["questions"]["cached"] == again.stats_dict()["questions"]["calls"]
    # a changed prompt invalidates exactly the calls built from it
    edited = [CHUNKS[0], Chunk(**{**vars(CHUNKS[1]), "text": CHUNKS[1].text + " Edited."}), CHUNKS[2]]
    third = make_openai(c, edited)
    third.cache = CallCache(tmp_path)
    list(third.generate(edited))
    st = third.stats_dict()
    assert st["questions"]["calls"] - st["questions"]["cached"] == 2  # the edited chunk: one call per kind
    assert st["answers"]["calls"] - st["answers"]["cached"] == 2


def test_prompts_dir_overrides_one_template(tmp_path):
    (tmp_path / "answer_plain.txt").write_text("Q: $question\nC: $context", encoding="utf-8")
    t = load_templates(str(tmp_path))
    assert t["answer_plain"].substitute(question="q", context="c") == "Q: q\nC: c"
    assert "$text" in t["questions_factoid"].template  # the others stay built in
    with pytest.raises(RagtuneError):
        load_templates(str(tmp_path / "missing"))


def test_concurrency_16_requests_take_far_less_than_16_times_one():
    delay = 0.4
    with serving(make_app(delay_s=delay)) as url:

        async def run(concurrency: int, n: int) -> float:
            complete = OpenAIComplete(cfg(url, concurrency=concurrency), "scripted")
            msgs = [[{"role": "user", "content": f"Passage:\nword{i} alpha beta gamma. write 1"}] for i in range(n)]
            t0 = time.perf_counter()
            replies = await asyncio.gather(*(complete(m, True) for m in msgs))
            await complete.aclose()
            assert all("questions" in r.text for r in replies)
            return time.perf_counter() - t0

        one = asyncio.run(run(1, 1))
        sixteen = asyncio.run(run(16, 16))
        serial = asyncio.run(run(1, 4))
    assert one >= delay
    assert serial >= 4 * delay  # concurrency 1 really serialises
    assert sixteen < 4 * one, (one, sixteen)  # well under 16x one request


def test_429_with_retry_after_is_retried_then_succeeds():
    with serving(make_app(fail_first=2, retry_after="0.3")) as url:

        async def one() -> tuple[float, str]:
            complete = OpenAIComplete(cfg(url, max_retries=3), "scripted")
            t0 = time.perf_counter()
            r = await complete([{"role": "user", "content": "Passage:\nalpha beta. write 1"}], True)
            await complete.aclose()
            return time.perf_counter() - t0, r.text

        elapsed, text = asyncio.run(one())
    assert "questions" in text and elapsed >= 0.6  # waited as told, twice


def test_retries_spent_become_rejections_not_crashes():
    with serving(make_app(fail_first=100, retry_after="0")) as url:
        gen = make_openai(cfg(url, max_retries=1, questions_per_chunk=1), CHUNKS[:2])
        rows = list(gen.generate(CHUNKS[:2]))
    assert [r.reason for r in rows] == ["api_error", "api_error"]
    assert "HTTP 429" in rows[0].raw


def test_rate_limiter_holds_requests_to_the_window():
    async def go() -> float:
        lim = RateLimiter(rpm=2, tpm=None, window_s=0.5)
        t0 = time.perf_counter()
        for _ in range(5):
            await lim.acquire(10)
        return time.perf_counter() - t0

    assert asyncio.run(go()) >= 1.0  # 5 requests at 2 per 0.5 s: two full waits

    async def tokens() -> float:
        lim = RateLimiter(rpm=None, tpm=100, window_s=0.4)
        t0 = time.perf_counter()
        for _ in range(3):
            await lim.acquire(60)
        return time.perf_counter() - t0

    assert asyncio.run(tokens()) >= 0.8


@pytest.mark.slow
def test_against_ragtune_serve_garbage_replies_become_counted_rejections(tiny_model_dir, monkeypatch):
    from ragtune.models import load_model

    model, tok = load_model(tiny_model_dir, precision="fp32")
    monkeypatch.setenv("RAGTUNE_TEST_KEY", "sekrit")
    with serving(create_app(model, tok, api_key="sekrit", model_name="tiny")) as url:
        c = cfg(url, model=None, api_key_env="RAGTUNE_TEST_KEY", max_tokens=24, questions_per_chunk=1)
        gen = make_openai(c, CHUNKS[:3])
        assert gen.model_id == "tiny"  # found through /v1/models
        rows = list(gen.generate(CHUNKS[:3]))
        served = httpx.get(f"{url}/ragtune/stats", headers={"Authorization": "Bearer sekrit"}).json()
        monkeypatch.setenv("RAGTUNE_TEST_KEY", "wrong")
        with pytest.raises(RagtuneError, match="refused the API key"):
            list(make_openai(c, CHUNKS[:1]).generate(CHUNKS[:1]))
    assert rows and all(isinstance(r, (Rejection, QAItem)) for r in rows)
    assert served["completions"] == gen.stats_dict()["questions"]["calls"] + gen.stats_dict()["answers"]["calls"]
    assert all(r.raw is not None for r in rows if isinstance(r, Rejection))


def test_call_failed_is_an_exception():
    assert issubclass(CallFailed, Exception)


def test_server_without_structured_output_falls_back_to_plain_json_prompting():
    with serving(make_app(no_response_format=True)) as url:
        gen = make_openai(cfg(url, response_format="json_schema", questions_per_chunk=1, max_retries=0), CHUNKS[:2])
        items = [r for r in gen.generate(CHUNKS[:2]) if isinstance(r, QAItem)]
    assert len(items) == 2 and gen.stats_dict()["questions"]["failed"] == 0


def test_per_request_timeout_becomes_a_rejection():
    with serving(make_app(delay_s=2.0)) as url:
        gen = make_openai(cfg(url, timeout_s=0.3, max_retries=0, questions_per_chunk=1), CHUNKS[:1])
        t0 = time.perf_counter()
        rows = list(gen.generate(CHUNKS[:1]))
        elapsed = time.perf_counter() - t0
    assert [r.reason for r in rows] == ["api_error"] and "Timeout" in rows[0].raw
    assert elapsed < 1.9
