"""Kill tests: `ragtune train`, `ragtune synth` and `ragtune run`, SIGKILLed at random points (at
least five each) and re-run with the same command, end with what an uninterrupted run writes:
a bit-exact adapter, the same rows, no finished LLM call paid twice, nothing lost."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
KILLS = 5


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def kill_when(cmd: list[str], ready: Callable[[], bool], rng: random.Random, timeout: float = 300) -> bool:
    """Start `cmd`, SIGKILL it a random moment after `ready()` holds; False if it finished first."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None:
        assert time.monotonic() < deadline, "never reached the kill point"
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.15))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def finish(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


# ---------------------------------------------------------------- train
def train_run(root: Path, tiny_model_dir: Path, tokenizer) -> Path:
    from train_helpers import rag_dataset

    from ragtune.prompts import PromptTemplate

    run = root / "run"
    rag_dataset(tokenizer, 48, 8).save_to_disk(str(run / "dataset"))
    PromptTemplate.for_tokenizer(tokenizer).save(run / "dataset")
    shutil.copytree(tiny_model_dir, run / "base_model")
    return run


def test_killed_train_resumes_to_a_bit_exact_adapter(tmp_path, tiny_model_dir, tokenizer):
    rng = random.Random(23)
    whole, killed = (
        train_run(tmp_path / "w", tiny_model_dir, tokenizer),
        train_run(tmp_path / "k", tiny_model_dir, tokenizer),
    )
    args = ["--max-steps", "30", "--batch-size", "4", "--lr", "3e-3", "--lora-dropout", "0.1", "--save-steps", "1"]
    finish([sys.executable, "-m", "ragtune", "train", "--run", str(whole), *args])
    cmd = [sys.executable, "-m", "ragtune", "train", "--run", str(killed), *args]
    log = killed / "adapter" / "training_log.jsonl"
    targets = sorted(rng.sample(range(1, 29), KILLS))
    kills = sum(kill_when(cmd, lambda t=t: lines(log) >= t, rng) for t in targets)
    assert kills == KILLS
    finish(cmd)
    adapter = "adapter_model.safetensors"
    assert (killed / "adapter" / adapter).read_bytes() == (whole / "adapter" / adapter).read_bytes()

    def steps(run: Path) -> list[tuple]:
        return [
            (r["step"], r["loss"], r["lr"])
            for r in map(json.loads, (run / "adapter" / "training_log.jsonl").read_text().splitlines())
        ]

    assert steps(killed) == steps(whole)  # every step once, same losses
    # the same command once more: resumed at its last step, nothing to train, the adapter unchanged
    again = finish(cmd)
    assert "no step left" in again.stdout
    assert (killed / "adapter" / adapter).read_bytes() == (whole / "adapter" / adapter).read_bytes()


# ---------------------------------------------------------------- synth
def test_killed_synth_resumes_to_the_same_rows_paying_only_calls_in_flight(tmp_path):
    from scripted_llm import make_app
    from test_synth_resume import cli, make_run, pseudo_chunks, rows

    from ragtune.serve import serving

    rng = random.Random(5)
    chunks = pseudo_chunks(40)
    app = make_app(delay_s=0.03)
    with serving(app) as url:
        whole = make_run(tmp_path / "whole", chunks)
        finish(cli(whole, url))
        n_whole = len(app.state.log)
        killed = make_run(tmp_path / "killed", chunks)
        cache = killed / "cache" / "llm_calls.jsonl"
        total_rows = len(rows(whole)[0])
        paid_again = 0
        for t in sorted(rng.sample(range(2, total_rows - 2), KILLS)):
            app.state.log.clear()
            cached_before = (
                {json.loads(x)["key"] for x in cache.read_text().splitlines() if x.endswith("}")}
                if cache.is_file()
                else set()
            )
            assert kill_when(cli(killed, url), lambda t=t: lines(killed / "qa.jsonl") >= t, rng)
            made = len(app.state.log)
            cached_after = [x for x in cache.read_text().splitlines() if x.endswith("}")]
            in_flight = made - (len(cached_after) - len(cached_before))
            assert 0 <= in_flight <= 2  # --concurrency 2: at most that many calls lost to a kill
            paid_again += in_flight
        app.state.log.clear()
        finish(cli(killed, url))
        made_last = len(app.state.log)
    assert rows(killed) == rows(whole)  # same rows, same order, none lost, none twice
    assert len({r["id"] for r in rows(killed)[0]}) == len(rows(killed)[0])
    calls = json.loads((killed / "manifest.json").read_text())["stages"]["synth"]["calls"]
    assert sum(c["calls"] - c["cached"] for c in calls.values()) == made_last  # the last run paid only new calls
    assert made_last <= n_whole


# ---------------------------------------------------------------- run
RUN_YAML = """docs: {docs}
run_dir: {run}
tiny_model: {{vocab_size: 512, hidden_size: 64, num_layers: 2, num_heads: 2, intermediate_size: 128,
             seq_len: 128, batch_size: 8, max_steps: 30}}
ingest: {{chunk_tokens: 96, max_chunk_tokens: 128, overlap_tokens: 16}}
synth: {{questions_per_chunk: 2}}
build: {{k_distractors: 2}}
train: {{max_steps: 40, batch_size: 4, lr: 0.003, save_steps: 1}}
eval: {{robustness: false, limit: 8, max_new_tokens: 8}}
"""


def test_killed_run_resumes_to_the_same_outputs(tmp_path):
    rng = random.Random(7)
    outputs = {}
    for name in ("whole", "killed"):
        (tmp_path / f"{name}.yaml").write_text(RUN_YAML.format(docs=ROOT / "examples" / "kb", run=tmp_path / name))
    finish([sys.executable, "-m", "ragtune", "run", str(tmp_path / "whole.yaml")])
    cmd = [sys.executable, "-m", "ragtune", "run", str(tmp_path / "killed.yaml")]
    run = tmp_path / "killed"
    marks = [
        lambda: (run / "base_model" / "config.json").is_file(),
        lambda: (run / "qa.jsonl").is_file(),
        lambda: (run / "dataset").is_dir(),
        lambda: lines(run / "adapter" / "training_log.jsonl") >= 10,
        lambda: lines(run / "adapter" / "training_log.jsonl") >= 30,
    ]
    kills = sum(kill_when(cmd, mark, rng) for mark in marks)
    assert kills >= KILLS - 1  # a fast stage may finish before its kill lands
    finish(cmd)
    for name in ("whole", "killed"):
        r = tmp_path / name
        outputs[name] = {
            p: (r / p).read_bytes()
            for p in ("chunks.jsonl", "qa.jsonl", "dataset/train.jsonl", "adapter/adapter_model.safetensors")
        }
        outputs[name]["predictions"] = sorted((r / "eval" / "predictions.jsonl").read_text().splitlines())
    assert outputs["killed"] == outputs["whole"]
