"""`ragtune serve` limits, over the real tiny model on loopback: every error is JSON in OpenAI's
shape, no request can hold the server past its time limit, and a client that leaves frees it."""

from __future__ import annotations

import time

import httpx
import pytest

from ragtune.serve import Limits, create_app, serving

pytestmark = pytest.mark.slow
KEY = "k-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from ragtune.models import load_model

    return load_model(tiny_model_dir, precision="fp32")


@pytest.fixture(scope="module")
def url(model_and_tokenizer):
    model, tok = model_and_tokenizer
    limits = Limits(max_tokens=16, max_body_bytes=64_000, request_timeout_s=1.0)
    with serving(create_app(model, tok, api_key=KEY, model_name="tiny", limits=limits)) as url:
        yield url


def post(url: str, body: dict | bytes, timeout: float = 30) -> httpx.Response:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=timeout, **kw)


def msg(text: str = "Hi.", **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


def assert_openai_error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and words in err["message"]


def test_bad_requests_get_json_errors(url, model_and_tokenizer):
    assert_openai_error(post(url, msg(seed=2**70)), 400, "seed")
    assert_openai_error(post(url, {**msg(), "model": "gpt-9"}), 404, "does not exist")
    assert_openai_error(post(url, b"x" * 70_000), 413, "over this server's 64000")
    long_prompt = " ".join(f"w{i}" for i in range(3000))
    r = post(url, msg(long_prompt))
    assert_openai_error(r, 400, "this model reads at most")
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.get(f"{url}/openapi.json").status_code == 404  # no schema without... at all, with a key
    assert httpx.get(f"{url}/v1/models").status_code == 401


def test_max_tokens_is_capped_and_a_request_ends_at_its_time_limit(url):
    r = post(url, msg(max_tokens=10**9))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 16


def test_time_limit_and_a_leaving_client_free_the_worker(model_and_tokenizer):
    model, tok = model_and_tokenizer
    limits = Limits(max_tokens=1500, request_timeout_s=1.5)
    app = create_app(model, tok, model_name="tiny", limits=limits)
    app.state.engine.stop_ids = [tok.unk_token_id]  # no end of turn: every request runs to its budget
    with serving(app) as url:
        t0 = time.monotonic()
        r = post(url, msg(max_tokens=1500, temperature=1.0, stop=["\u2603"]))  # batched path, sampling
        assert r.status_code == 200 and time.monotonic() - t0 < 1.5 + 1.0
        assert r.json()["usage"]["completion_tokens"] < 1500  # stopped by the time limit
        # a client that leaves a batched request: the worker stops for it, the next one is served at once
        with pytest.raises(httpx.TimeoutException):
            post(url, msg(max_tokens=1500, temperature=1.0), timeout=0.3)
        time.sleep(0.6)
        t0 = time.monotonic()
        assert post(url, msg(max_tokens=2)).status_code == 200
        assert time.monotonic() - t0 < 1.0
        assert app.state.engine.stats["abandoned"] == 1
