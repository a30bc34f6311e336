"""Done-when of issue 4: `ragtune synth --backend openai` against `ragtune serve` running a
local model on loopback, both as real processes, on a sample of the python-docs corpus."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ragtune.config import IngestConfig
from ragtune.ingest import ingest_to_run
from ragtune.records import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.shared]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def data_dir(request) -> Path:
    """The shared data folder; RAGTUNE_SHARED_DATA points elsewhere (e.g. from a worktree)."""
    if os.environ.get("RAGTUNE_SHARED_DATA"):
        return Path(os.environ["RAGTUNE_SHARED_DATA"])
    return request.getfixturevalue("shared_data")


def test_synth_openai_against_ragtune_serve_on_python_docs(data_dir, tiny_model_dir, tmp_path):
    shared_data = data_dir
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("tutorial/classes.rst.txt", "library/json.rst.txt"):
        src = shared_data / "python-docs" / "_sources" / name
        if not src.is_file():
            pytest.skip(f"{src} not in the shared data")
        shutil.copy(src, docs / Path(name).name.replace(".rst.txt", ".rst"))
    run = tmp_path / "run"
    ingest_to_run(docs, run, IngestConfig(chunk_tokens=200, max_chunk_tokens=256))

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SERVE_KEY": "k-123"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragtune",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--api-key-env",
            "SERVE_KEY",
            "--model-name",
            "tiny",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k-123"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "ragtune serve did not start"
            time.sleep(0.3)
        synth = subprocess.run(
            [
                sys.executable,
                "-m",
                "ragtune",
                "synth",
                "--run",
                str(run),
                "--backend",
                "openai",
                "--base-url",
                f"{url}/v1",
                "--api-key-env",
                "SERVE_KEY",
                "--limit",
                "3",
                "--max-tokens",
                "24",
                "--questions-per-chunk",
                "2",
                "--concurrency",
                "4",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        stats = httpx.get(f"{url}/ragtune/stats", headers={"Authorization": "Bearer k-123"}).json()
    finally:
        server.terminate()
        server.wait(30)
    rejected = list(read_jsonl(run / "qa_rejected.jsonl"))
    if synth.returncode == 2:  # the tiny model's replies may all be rejected: then synth fails, keeping nothing
        assert "kept no row from 3 chunks" in synth.stderr and not (run / "qa.jsonl").exists()
        assert rejected and f"rejected {len(rejected)}:" in synth.stderr and stats["completions"] > 0
        assert all(r["raw"] is not None for r in rejected if r["reason"] == "parse_failure")
        return
    assert synth.returncode == 0, synth.stderr
    entry = json.loads((run / "manifest.json").read_text())["stages"]["synth"]
    kept = list(read_jsonl(run / "qa.jsonl"))
    assert entry["chunks"] == 3 and entry["model"] == "tiny"
    assert len(kept) + len(rejected) > 0
    assert sum(entry["rejected_by_reason"].values()) == len(rejected)  # every rejection counted by reason
    assert all(r["raw"] is not None for r in rejected if r["reason"] == "parse_failure")
    calls = entry["calls"]["questions"]["calls"] + entry["calls"]["answers"]["calls"]
    assert stats["completions"] == calls  # every call really went to the server
    assert "k-123" not in (run / "manifest.json").read_text()
