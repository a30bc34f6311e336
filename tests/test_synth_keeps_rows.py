"""Synth never loses rows: later runs add to qa.jsonl, and a run that keeps nothing fails and
leaves the run folder as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_docs import make_kb

from ragtune.config import IngestConfig, SynthConfig
from ragtune.errors import RagtuneError
from ragtune.ingest import ingest_to_run
from ragtune.records import read_jsonl
from ragtune.synth import synth_to_run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    ingest_to_run(
        make_kb(tmp_path / "kb", n_docs=4),
        run,
        IngestConfig(chunk_tokens=60, max_chunk_tokens=80, overlap_tokens=0, min_chunk_tokens=10),
    )
    synth_to_run(run, SynthConfig(), progress=False)
    return run


def ids(run: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(run / "qa.jsonl")]


def test_a_smaller_run_adds_to_qa_jsonl_and_replace_is_explicit(run: Path) -> None:
    before = ids(run)
    synth_to_run(run, SynthConfig(limit=1), progress=False)
    assert sorted(ids(run)) == sorted(before)  # --limit 1 used to cut the file to its own rows
    synth_to_run(run, SynthConfig(seed=1), progress=False)
    assert set(before) < set(ids(run))  # another seed adds rows
    limited = synth_to_run(run, SynthConfig(limit=1, replace=True), progress=False)
    assert ids(run) == [i.id for i in limited.items]


def test_a_run_that_keeps_nothing_fails_and_leaves_qa_jsonl_as_it_was(run: Path) -> None:
    files = {p.name: p.read_bytes() for p in run.glob("*.jsonl") if p.name != "qa_rejected.jsonl"}
    cfg = SynthConfig(generator="openai", model="m", base_url="http://127.0.0.1:1/v1", timeout_s=1, max_retries=0)
    with pytest.raises(RagtuneError, match=r"kept no row .*api_error .*unchanged.*; check --base-url") as e:
        synth_to_run(run, cfg, progress=False)
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in run.glob("*.jsonl") if p.name != "qa_rejected.jsonl"} == files
    assert '"api_error"' in (run / "qa_rejected.jsonl").read_text()  # why, row by row


def test_a_torn_last_line_is_repaired_and_other_bad_lines_are_named(run: Path) -> None:
    qa = run / "qa.jsonl"
    good = qa.read_bytes()
    qa.write_bytes(good + b'{"id": "torn", "quest')
    assert ids(run) == [r for r in ids(run)]  # readers skip it
    synth_to_run(run, SynthConfig(), progress=False)
    assert qa.read_bytes() == good
    qa.write_bytes(b'{"id": 1}\nnot json\n' + good)
    with pytest.raises(RagtuneError, match=r"qa.jsonl line 2: not valid JSON"):
        synth_to_run(run, SynthConfig(), progress=False)
