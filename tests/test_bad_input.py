"""The bad-input table: every case exits 2 with one line naming the problem and the fix, through
the real command line, and leaves every file already in the run folder byte-identical."""

from __future__ import annotations

import hashlib
import socket
import sys
from pathlib import Path

import pytest
from evalkit import make_run
from train_helpers import rag_dataset

from ragtune.config import TinyModelConfig

RUN = "{run}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir, tokenizer) -> dict[str, Path]:
    """A run folder with chunks, qa, dataset, a trained adapter with checkpoints, and two bases an
    adapter does not fit: one of other dimensions, one of the same shape with another vocabulary."""
    from conftest import TEST_MODEL, corpus_texts

    from ragtune.config import TrainConfig
    from ragtune.models import make_tiny_model
    from ragtune.train import train

    root = tmp_path_factory.mktemp("bad_input")
    run = make_run(root / "run", tiny_model_dir, tokenizer, adapter=False)
    train(
        rag_dataset(tokenizer, 8, 4),
        tiny_model_dir,
        TrainConfig(max_steps=2, save_steps=1, batch_size=4, lora_r=4),
        run / "adapter",
    )
    assert (run / "adapter" / "checkpoints" / "last" / "trainer_state.pt").is_file()
    narrow = TinyModelConfig(
        vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seq_len=64, max_steps=1
    )
    make_tiny_model(corpus_texts(), root / "narrow", narrow)
    other_words = [" ".join(f"zq{i}x{j} wv{j}" for j in range(40)) for i in range(60)]
    make_tiny_model(other_words, root / "other_vocab", TEST_MODEL.model_copy(update={"max_steps": 1}))
    (root / "latin1.csv").write_bytes(
        "question,answer,context\nQui a peint?,Zoé,Zoé a peint le phare\n".encode("latin-1")
    )
    (root / "latin1.jsonl").write_bytes(
        '{"question": "Où?", "answer": "à Sète", "context": "à Sète"}\n'.encode("latin-1")
    )
    (root / "ctx.txt").write_text("The harbor lighthouse was painted red.\n", encoding="utf-8")
    (root / "a_file").write_text("not a folder\n", encoding="utf-8")
    (root / "zero_batch.yaml").write_text("docs: .\ntrain:\n  batch_size: 0\n", encoding="utf-8")
    (root / "zero_accum.yaml").write_text("docs: .\ntrain:\n  grad_accum: 0\n", encoding="utf-8")
    (root / "eval_batch.yaml").write_text("docs: .\neval:\n  batch_size: 0\n", encoding="utf-8")
    return {"root": root, "run": run, "model": tiny_model_dir}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from ragtune.cli import main

    argv, sys.argv = sys.argv, ["ragtune", *args]
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


ASK = ["ask", "--question", "Who?", "--adapter", "{run}/adapter", "--context", "{root}/ctx.txt"]
CASES: list[tuple[list[str], str]] = [
    # train: every numeric option
    (["train", "--run", RUN, "--batch-size", "0"], "--batch-size"),
    (["train", "--run", RUN, "--grad-accum", "0"], "--grad-accum"),
    (["train", "--run", RUN, "--lr", "-1"], "--lr"),
    (["train", "--run", RUN, "--max-steps", "-5"], "--max-steps"),
    (["train", "--run", RUN, "--epochs", "0"], "--epochs"),
    (["train", "--run", RUN, "--max-minutes", "-1"], "--max-minutes"),
    (["train", "--run", RUN, "--lora-r", "0"], "--lora-r"),
    (["train", "--run", RUN, "--lora-alpha", "0"], "--lora-alpha"),
    (["train", "--run", RUN, "--lora-dropout", "1.5"], "--lora-dropout"),
    (["train", "--run", RUN, "--eval-steps", "0"], "--eval-steps"),
    (["train", "--run", RUN, "--save-steps", "0"], "--save-steps"),
    (["train", "--run", RUN, "--early-stopping-patience", "0"], "--early-stopping-patience"),
    (["train", "--run", RUN, "--seed", "-1"], "--seed"),
    # eval
    (["eval", "--run", RUN, "--batch-size", "0"], "--batch-size"),
    (["eval", "--run", RUN, "--max-new-tokens", "0"], "--max-new-tokens"),
    (["eval", "--run", RUN, "--limit", "0"], "--limit"),
    (["eval", "--run", RUN, "--judge-repeats", "0"], "--judge-repeats"),
    (["eval", "--run", RUN, "--base-model", "{root}/narrow"], "does not fit base model"),
    (["eval", "--run", RUN, "--base-model", "{root}/other_vocab"], "another vocabulary"),
    # synth
    (["synth", "--run", RUN, "--questions-per-chunk", "-3"], "--questions-per-chunk"),
    (["synth", "--run", RUN, "--questions-per-chunk", "0"], "--questions-per-chunk"),
    (["synth", "--run", RUN, "--unanswerable-share", "2"], "--unanswerable-share"),
    (["synth", "--run", RUN, "--limit", "0"], "--limit"),
    (["synth", "--run", RUN, "--concurrency", "0"], "--concurrency"),
    (["synth", "--run", RUN, "--timeout-s", "0"], "--timeout-s"),
    (["synth", "--run", RUN, "--max-tokens", "0"], "--max-tokens"),
    (["synth", "--run", RUN, "--temperature", "-1"], "--temperature"),
    (["synth", "--run", RUN, "--rpm", "0"], "--rpm"),
    (["synth", "--run", RUN, "--tpm", "0"], "--tpm"),
    (["synth", "--run", RUN, "--batch-size", "0"], "--batch-size"),
    (["synth", "--run", RUN, "--question-styles", "cloze=-1"], "question_styles"),  # checked by extractive
    # build, ingest, inspect
    (["build", "--run", RUN, "--max-length", "0"], "--max-length"),
    (["build", "--run", RUN, "--k-distractors", "-1"], "--k-distractors"),
    (["build", "--run", RUN, "--oracle-p", "2"], "--oracle-p"),
    (["build", "--run", RUN, "--unanswerable-share", "1.5"], "--unanswerable-share"),
    (["ingest", "{root}", "--run", RUN, "--chunk-tokens", "0"], "--chunk-tokens"),
    (["ingest", "{root}", "--run", RUN, "--overlap-tokens", "-1"], "--overlap-tokens"),
    (["ingest", "{root}", "--run", RUN, "--chunk-tokens", "600"], "max_chunk_tokens"),
    (["ingest", "{root}", "--run", RUN, "--overlap-tokens", "400"], "overlap_tokens"),
    (["ingest", "{root}", "--run", "{root}/a_file/run"], "cannot write the run folder"),
    (["inspect", "{run}/dataset", "--n", "-1"], "--n"),
    # ask, serve, tiny-model, pretrain
    ([*ASK, "--k", "0"], "--k"),
    ([*ASK, "--max-new-tokens", "0"], "--max-new-tokens"),
    ([*ASK, "--base-model", "{root}/narrow"], "does not fit base model"),
    ([*ASK, "--base-model", "{root}/other_vocab"], "another vocabulary"),
    (
        ["export", "--adapter", "{run}/adapter", "--out", "{root}/merged", "--base-model", "{root}/narrow"],
        "does not fit base model",
    ),
    (["serve", "--model", "{model}", "--port", "-1"], "--port"),
    (["serve", "--model", "{model}", "--port", "70000"], "--port"),
    (["serve", "--model", "{model}", "--batch-size", "0"], "--batch-size"),
    (["serve", "--model", "{model}", "--adapter", "{run}/adapter", "--port", "{busy}"], "cannot listen"),
    (["tiny-model", "--corpus", "{root}", "--out", "{root}/tm", "--vocab-size", "0"], "--vocab-size"),
    (["tiny-model", "--corpus", "{root}", "--out", "{root}/tm", "--minutes", "-1"], "--minutes"),
    (["pretrain", "--model", "{model}", "--corpus", "{root}", "--out", "{root}/pt", "--minutes", "0"], "--minutes"),
    # import: encodings and run folders
    (["import", "{root}/latin1.csv", "--run", RUN], "line 2: not UTF-8"),
    (["import", "{root}/latin1.jsonl", "--run", RUN], "line 1: not UTF-8"),
    (["import", "{root}/ctx.txt", "--run", "{root}/a_file/run", "--format", "jsonl"], "cannot write the run folder"),
    # run: YAML fields
    (["run", "{root}/zero_batch.yaml"], "'train.batch_size'"),
    (["run", "{root}/zero_accum.yaml"], "'train.grad_accum'"),
    (["run", "{root}/eval_batch.yaml"], "'eval.batch_size'"),
]


@pytest.mark.slow
def test_every_bad_input_exits_2_with_one_line_and_changes_no_file(world, capsys):
    before = _snapshot(world["root"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        names = {k: str(v) for k, v in world.items()} | {"busy": str(busy.getsockname()[1])}
        failures = []
        for args, expect in CASES:
            argv = [a.format(**names) for a in args]
            code, err = _cli(argv, capsys)
            lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
            if code != 2 or len(lines) != 1 or expect not in lines[0] or not lines[0].startswith("error: "):
                failures.append(f"{' '.join(args)} -> exit {code}: {err.strip()[-300:]}")
    assert not failures, "\n".join(failures)
    assert _snapshot(world["root"]) == before  # qa.jsonl, adapter, checkpoints: byte-identical
