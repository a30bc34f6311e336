"""`ragtune run`: every stage from one YAML, resumable, with real files and a real tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ragtune.config import load_run_config
from ragtune.pipeline import run_pipeline

KB = Path(__file__).resolve().parents[1] / "examples" / "kb"
STAGES = ["tiny_model", "ingest", "synth", "build", "train", "eval", "run"]


def tiny_run_config(tmp_path: Path) -> Path:
    docs = tmp_path / "kb"
    docs.mkdir()
    for f in sorted(KB.rglob("*.md"))[:10]:  # enough documents for three splits
        shutil.copy(f, docs / f.name)
    cfg = {
        "docs": "kb",
        "run_dir": str(tmp_path / "run"),
        "tiny_model": {
            "vocab_size": 512,
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 128,
            "seq_len": 128,
            "max_steps": 20,
        },
        "ingest": {"chunk_tokens": 96, "max_chunk_tokens": 128, "overlap_tokens": 16},
        "synth": {"questions_per_chunk": 1},
        "build": {"k_distractors": 1},
        "train": {"max_steps": 6, "batch_size": 4},
        "eval": {"limit": 6, "robustness": False, "max_new_tokens": 4},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_run_writes_every_stage_and_resumes_without_redoing_work(tmp_path, capsys):
    cfg = load_run_config(tiny_run_config(tmp_path))
    metrics = run_pipeline(cfg)
    run = Path(cfg.run_dir)
    for path in [
        "base_model/config.json",
        "chunks.jsonl",
        "qa.jsonl",
        "dataset/dataset_dict.json",
        "adapter/adapter_config.json",
        "adapter/ragtune_prompt.json",
        "eval/metrics.json",
        "eval/report.md",
    ]:
        assert (run / path).exists(), path
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s in manifest["stages"] for s in STAGES)
    assert manifest["environment"]["packages"]["torch"]
    assert set(metrics["models"]) == {"base", "tuned"}
    for name in ("base", "tuned"):
        m = metrics["models"][name]
        assert {"em", "f1", "answer_nll", "has_ans", "no_ans"} <= set(m)
    out = capsys.readouterr().out
    assert "answer NLL" in out and "EM" in out  # the before/after table is printed

    adapter_mtime = (run / "adapter" / "adapter_model.safetensors").stat().st_mtime
    run_pipeline(cfg)  # nothing changed: every stage is skipped
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_mtime == adapter_mtime
    err = capsys.readouterr().err
    assert err.count("up to date, skipped") == 6


@pytest.mark.slow
def test_a_changed_stage_config_reruns_that_stage_and_those_after_it(tmp_path, capsys):
    path = tiny_run_config(tmp_path)
    cfg = load_run_config(path)
    run_pipeline(cfg)
    capsys.readouterr()
    cfg.build.k_distractors = 2
    run_pipeline(cfg)
    err = capsys.readouterr().err
    assert err.count("up to date, skipped") == 3  # tiny_model, ingest, synth
