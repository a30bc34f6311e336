"""Resume after a real kill, the content-keyed cache, dry run and the run summary, with the
`openai` backend talking to a real (scripted) server on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripted_llm import make_app

from ragtune.config import SynthConfig
from ragtune.records import Chunk, content_id, read_jsonl, write_jsonl
from ragtune.serve import serving
from ragtune.synth import synth_to_run

ROOT = Path(__file__).resolve().parents[1]


def pseudo_chunks(n: int, seed: int = 0) -> list[Chunk]:
    """Chunks with their own made-up vocabulary, so each question can retrieve its chunk."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))

    out = []
    for i in range(n):
        sents = [" ".join(word() for _ in range(rng.randint(6, 10))).capitalize() + "." for _ in range(4)]
        text = " ".join(sents)
        out.append(
            Chunk(
                id=content_id(str(i), text),
                doc_id=content_id(f"doc{i // 2}"),
                source=f"doc{i // 2}.rst",
                title=f"Doc {i}",
                text=text,
                start=0,
                end=len(text),
            )
        )
    return out


def make_run(root: Path, chunks: list[Chunk]) -> Path:
    root.mkdir(parents=True)
    write_jsonl(root / "chunks.jsonl", chunks)
    return root


def rows(run: Path) -> tuple[list[dict], list[dict]]:
    return list(read_jsonl(run / "qa.jsonl")), list(read_jsonl(run / "qa_rejected.jsonl"))


def cli(run: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ragtune",
        "synth",
        "--run",
        str(run),
        "--generator",
        "openai",
        "--base-url",
        f"{url}/v1",
        "--model",
        "scripted",
        "--concurrency",
        "2",
        *extra,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


@pytest.mark.slow
def test_killed_run_resumes_with_the_rows_of_an_uninterrupted_run_and_no_repeated_call(tmp_path):
    chunks = pseudo_chunks(30)
    app = make_app(delay_s=0.04)
    with serving(app) as url:
        whole = make_run(tmp_path / "whole", chunks)
        subprocess.run(cli(whole, url), env=env(), check=True, capture_output=True, timeout=300)
        n_whole = len(app.state.log)
        app.state.log.clear()

        killed = make_run(tmp_path / "killed", chunks)
        proc = subprocess.Popen(cli(killed, url), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        qa = killed / "qa.jsonl"
        while time.monotonic() < deadline and (not qa.is_file() or qa.read_text().count("\n") < 12):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        before_kill = [p for _, p in app.state.log]
        cached = [
            json.loads(x) for x in (killed / "cache" / "llm_calls.jsonl").read_text().splitlines() if x.endswith("}")
        ]
        written = qa.read_text().count("\n")
        assert 12 <= written < len(rows(whole)[0])  # really killed midway
        app.state.log.clear()

        subprocess.run(cli(killed, url), env=env(), check=True, capture_output=True, timeout=300)
        after = [p for _, p in app.state.log]

    # exactly the rows of the uninterrupted run, in the same order, none twice
    assert rows(killed) == rows(whole)
    assert len({r["id"] for r in rows(killed)[0]}) == len(rows(killed)[0])
    # no call whose reply was received is made again; only calls in flight at the kill repeat
    in_flight = len(before_kill) - len(cached)
    assert 0 <= in_flight <= 2  # concurrency 2
    assert len(set(after) & set(before_kill)) <= in_flight
    assert len(before_kill) + len(after) == n_whole + in_flight
    summary = json.loads((killed / "manifest.json").read_text())["stages"]["synth"]
    assert summary["resumed_rows"] >= written


def test_rerun_of_a_finished_run_makes_no_call_and_changes_nothing(tmp_path):
    chunks = pseudo_chunks(6)
    app = make_app()
    run = make_run(tmp_path / "run", chunks)
    cfg = SynthConfig(generator="openai", model="scripted", concurrency=4)
    with serving(app) as url:
        cfg.base_url = f"{url}/v1"
        first = synth_to_run(run, cfg, progress=False)
        files = rows(run)
        n = len(app.state.log)
        again = synth_to_run(run, cfg, progress=False)
        assert len(app.state.log) == n
        assert rows(run) == files
        assert again.summary["calls"]["questions"]["cached"] == again.summary["calls"]["questions"]["calls"]
        assert again.summary["resumed_rows"] == len(first.items) + len(first.rejections)

        # an edited chunk invalidates exactly its own calls and rows
        edited = [*chunks[:2], Chunk(**{**vars(chunks[2]), "text": chunks[2].text + " Zebu."}), *chunks[3:]]
        edited[2].id = content_id("2", edited[2].text)
        write_jsonl(run / "chunks.jsonl", edited)
        third = synth_to_run(run, cfg, progress=False)
        assert len(app.state.log) - n == 4  # 2 question calls + 2 answer calls of that chunk
    qa, _ = rows(run)
    assert chunks[2].id not in {r["chunk_id"] for r in qa}
    assert {r["chunk_id"] for r in qa} == {c.id for c in edited}
    s = third.summary
    assert s["items"] == len(qa) and s["chunks"] == 6 and s["seconds"] > 0
    assert s["calls"]["answers"]["prompt_tokens"] > 0
    assert set(s["rejected_by_reason"]) <= {"not_a_question"}


def test_dry_run_estimates_and_spends_nothing(tmp_path):
    chunks = pseudo_chunks(5)
    app = make_app()
    run = make_run(tmp_path / "run", chunks)
    with serving(app) as url:
        cfg = SynthConfig(
            generator="openai",
            model="scripted",
            base_url=f"{url}/v1",
            dry_run=True,
            questions_per_chunk=3,
            question_types=["factoid", "explanatory"],
            limit=4,
        )
        result = synth_to_run(run, cfg)
    assert app.state.log == []
    assert not (run / "qa.jsonl").exists()
    s = result.summary
    assert s["chunks"] == 4 and s["question_calls"] == 8 and s["answer_calls"] == 12
    assert s["prompt_tokens"] > 0 and s["completion_tokens_max"] == 20 * 512


def test_api_key_never_reaches_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-very-secret-value")
    run = make_run(tmp_path / "run", pseudo_chunks(2))
    with serving(make_app()) as url:
        synth_to_run(
            run,
            SynthConfig(generator="openai", model="scripted", base_url=f"{url}/v1", api_key_env="MY_LLM_KEY"),
            progress=False,
        )
    for f in run.rglob("*"):
        if f.is_file():
            assert "sk-very-secret-value" not in f.read_text(encoding="utf-8", errors="replace")


def test_identical_prompts_in_flight_are_asked_once(tmp_path):
    one = pseudo_chunks(1)[0]
    twins = [Chunk(**{**vars(one), "id": f"twin{i}", "doc_id": f"d{i}"}) for i in range(3)]  # same title and text
    app = make_app(delay_s=0.2)
    run = make_run(tmp_path / "run", twins)
    with serving(app) as url:
        result = synth_to_run(
            run,
            SynthConfig(
                generator="openai",
                model="scripted",
                base_url=f"{url}/v1",
                concurrency=4,
                questions_per_chunk=1,
                question_types=["factoid"],
            ),
            progress=False,
        )
    prompts = [p for _, p in app.state.log]
    assert len(prompts) == len(set(prompts))  # no prompt paid for twice
    calls = result.summary["calls"]["questions"]
    assert calls["calls"] == 3 and calls["calls"] - calls["cached"] == 1
