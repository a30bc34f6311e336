"""`ragtune serve` over a real tiny model, called with the real `openai` client on loopback."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from ragtune.prompts import Passage, PromptTemplate, render_messages
from ragtune.serve import create_app, serving

pytestmark = pytest.mark.slow
KEY = "test-key-123"


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from ragtune.models import load_model

    return load_model(tiny_model_dir, precision="fp32")


@pytest.fixture(scope="module")
def server(model_and_tokenizer):
    model, tok = model_and_tokenizer
    app = create_app(model, tok, PromptTemplate.for_tokenizer(tok), api_key=KEY, model_name="tiny")
    with serving(app) as url:
        yield url


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_models_lists_the_served_model(server):
    assert [m.id for m in client(server).models.list()] == ["tiny"]


def test_chat_completion_honours_max_tokens_and_reports_usage(server):
    r = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "What is a list?"}], max_tokens=5, temperature=0
    )
    assert r.object == "chat.completion"
    assert isinstance(r.choices[0].message.content, str)
    assert 1 <= r.usage.completion_tokens <= 5
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_greedy_is_deterministic_and_stream_matches_it(server):
    c = client(server)
    msgs = [{"role": "user", "content": "Explain tuples."}]
    a = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    b = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    # seeded sampling gives a longer reply from the tiny model: the same one streamed or not
    sampling = {"max_tokens": 16, "temperature": 1.0, "seed": 3}
    whole = c.chat.completions.create(model="tiny", messages=msgs, **sampling).choices[0].message.content
    chunks = list(c.chat.completions.create(model="tiny", messages=msgs, stream=True, **sampling))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    pieces = [ch.choices[0].delta.content for ch in chunks[1:-1]]
    assert "".join(pieces).strip() == whole
    assert len(whole.split()) >= 3 and len(pieces) > 1  # really streamed, piece by piece


def test_stop_string_cuts_the_reply(server):
    c = client(server)
    msgs = [{"role": "user", "content": "Explain tuples."}]
    sampling = {"max_tokens": 24, "temperature": 1.0, "seed": 7}  # seeded: the same reply each time
    full = c.chat.completions.create(model="tiny", messages=msgs, **sampling)
    text = full.choices[0].message.content
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    cut = c.chat.completions.create(model="tiny", messages=msgs, stop=[stop], **sampling)
    assert stop not in cut.choices[0].message.content
    assert cut.choices[0].finish_reason == "stop"
    assert text.startswith(cut.choices[0].message.content)
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(model="tiny", messages=msgs, stop=[stop], stream=True, **sampling)
    )
    assert streamed.strip() == cut.choices[0].message.content


def test_sampling_with_temperature_varies(server):
    c = client(server)
    msgs = [{"role": "user", "content": "Say something."}]
    replies = {
        c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=1.5, seed=s)
        .choices[0]
        .message.content
        for s in range(4)
    }
    assert len(replies) > 1


def test_bad_key_gets_401(server):
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, key="wrong").models.list()
    assert e.value.status_code == 401
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server}/ragtune/stats").status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"model": "tiny"}',
        b'{"messages": []}',
        b'{"messages": [{"role": "wizard", "content": "x"}]}',
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}',
        b'{"messages": [{"role": "user", "content": "x"}], "n": 3}',
    ],
)
def test_malformed_request_gets_400_json_error(server, body):
    r = httpx.post(
        f"{server}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_openai_client_sees_400_as_bad_request(server):
    with pytest.raises(openai.BadRequestError):
        client(server).chat.completions.create(model="tiny", messages=[], max_tokens=3)


def test_concurrent_requests_are_all_served(server):
    c = client(server)
    results: list[str] = []
    errors: list[Exception] = []

    def ask(i: int) -> None:
        try:
            r = c.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4, temperature=0
            )
            results.append(r.choices[0].message.content)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 6
    stats = httpx.get(f"{server}/ragtune/stats", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert stats["completions"] >= 6
    assert stats["max_batch"] >= 2  # requests that waited together were generated together


@pytest.mark.parametrize("seed", [None, 2])  # batched path, single path
def test_a_request_abandoned_by_its_client_is_not_computed(model_and_tokenizer, seed):
    model, tok = model_and_tokenizer
    app = create_app(model, tok)
    with serving(app) as url:
        app.state.engine.executor.submit(time.sleep, 2.0)  # the generation worker is busy for 2 s
        impatient = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(
                model="ragtune",
                messages=[{"role": "user", "content": "Hi."}],
                max_tokens=50,
                temperature=1.0,
                seed=seed,
            )
        time.sleep(2.5)  # the worker is free again; the abandoned request has had its turn
        stats = httpx.get(f"{url}/ragtune/stats").json()
    assert stats["abandoned"] == 1
    assert stats["completions"] == 0  # it never ran


def test_the_abstention_rule_reads_the_rag_questions_support(model_and_tokenizer):
    """A RAG request is scored on how well its context predicts its question: with a support
    threshold of 0 (every log-probability is below it) it is refused; a request without
    context has no question span, so only the answer's confidence could refuse it."""
    from ragtune.abstain import RefusalRule

    model, tok = model_and_tokenizer
    tpl = PromptTemplate.for_tokenizer(tok)
    rule = RefusalRule(threshold=-1e9, support_threshold=0.0)
    rag = tpl.messages("Which port?", [Passage("hub", "The hub listens on port 8080.")])[1:]
    plain = [{"role": "user", "content": "Explain tuples."}]
    with serving(create_app(model, tok, tpl, rule=rule)) as url:

        def reply(messages: list[dict[str, str]]) -> str:
            r = client(url, key="none").chat.completions.create(
                model="ragtune", messages=messages, max_tokens=4, temperature=0
            )
            return r.choices[0].message.content

        assert reply(rag) == tpl.refusal and reply(plain) != tpl.refusal


@pytest.mark.parametrize("question_first", [False, True])
def test_rag_request_renders_like_training(tokenizer, question_first):
    tpl = PromptTemplate.for_tokenizer(tokenizer, question_first=question_first)
    passages = [Passage("Lists", "A list is mutable."), Passage("Tuples", "A tuple is not.")]
    trained = tpl.render(tokenizer, "What is a list?", passages)
    from ragtune.prompts import prompt_ids

    want = prompt_ids(tokenizer, trained, tpl)
    # as PromptTemplate.messages sends it, with any client system message
    msgs = [{"role": "system", "content": "be nice"}, *tpl.messages("What is a list?", passages)[1:]]
    assert render_messages(tokenizer, msgs, tpl) == want
    # through the `passages` extension
    assert render_messages(tokenizer, [{"role": "user", "content": "What is a list?"}], tpl, passages) == want
    # without a template, a plain transcript
    plain = tokenizer.decode(render_messages(tokenizer, msgs, None), skip_special_tokens=True)
    assert plain.endswith("Assistant:") and "System: be nice" in plain


def test_server_starts_and_stops_quickly(model_and_tokenizer):
    model, tok = model_and_tokenizer
    t0 = time.perf_counter()
    with serving(create_app(model, tok)) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 200  # no key configured: open
    assert time.perf_counter() - t0 < 10


def test_cli_serves_an_adapter_with_its_training_template(tiny_model_dir, tmp_path):
    """`ragtune serve --adapter A` as a real process: the base model comes from the adapter's
    config, and a RAG request is answered through the adapter's ragtune_prompt.json."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    adapter = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(str(adapter))
    PromptTemplate(style="plain", refusal="No idea.").save(adapter)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragtune", "serve", "--adapter", str(adapter), "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                models = httpx.get(f"{url}/v1/models").json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.3)
        tpl = PromptTemplate.load(adapter)
        msgs = tpl.messages("What is a list?", [Passage("Lists", "A list is mutable.")])
        r = client(url, key="none").chat.completions.create(model="adapter", messages=msgs, max_tokens=4, temperature=0)
    finally:
        proc.terminate()
        proc.wait(30)
    assert models["data"][0]["id"] == "adapter"
    from ragtune.models import load_tokenizer
    from ragtune.prompts import prompt_ids

    tok = load_tokenizer(tiny_model_dir)
    trained = tpl.render(tok, "What is a list?", [Passage("Lists", "A list is mutable.")])
    assert r.usage.prompt_tokens == len(prompt_ids(tok, trained, tpl))  # rendered exactly as in training
    assert "No idea." in trained and r.choices[0].finish_reason in ("stop", "length")
