"""The builder's guarantees on real documents (python-docs sample; skipped without ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.build import assemble_examples, contains_answer, overlaps
from ragtune.config import BuildConfig, IngestConfig, SynthConfig
from ragtune.ingest import ingest
from ragtune.synth import synthesize


def check_python_docs(docs: Path, tokenizer, workdir: Path, n_files: int = 20) -> dict:
    """Ingest n_files .rst.txt files (linked, not copied, into workdir), synthesise, build with
    P=0.8, k=4; count violations of the distractor and split rules."""
    src = docs / "_sources"
    for f in sorted(src.rglob("*.rst.txt"))[::25][:n_files]:  # spread over the whole tree
        link = workdir / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f)
    cfg = IngestConfig(chunk_tokens=160, max_chunk_tokens=200, overlap_tokens=24, min_chunk_tokens=32)
    chunks = ingest(workdir, cfg, tokenizer=tokenizer).chunks
    qa = synthesize(chunks, SynthConfig()).items
    res = assemble_examples(qa, chunks, BuildConfig(oracle_p=0.8, k_distractors=4), tokenizer)
    by_id = {c.id: c for c in chunks}
    items = {q.id: q for q in qa}
    bad_overlap = bad_answer = 0
    docs_of = {}
    for split, rows in res.splits.items():
        docs_of[split] = {e.doc_id for e in rows} | {by_id[p].doc_id for e in rows for p in e.passages}
        for e in rows:
            q = items[e.qa_id]
            if q.answerable:
                for p in e.passages:
                    if p != q.chunk_id:
                        bad_overlap += overlaps(by_id[p], by_id[q.chunk_id])
                        bad_answer += contains_answer(by_id[p].text, q.answer)
    shared = sum(
        len(docs_of[a] & docs_of[b]) for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]
    )
    return {"stats": res.stats, "overlap": bad_overlap, "answer": bad_answer, "shared": shared}


@pytest.mark.shared
def test_builder_guarantees_on_python_docs(shared_data: Path, tokenizer, tmp_path: Path) -> None:
    out = check_python_docs(shared_data / "python-docs", tokenizer, tmp_path)
    assert out["stats"]["total"] > 800
    assert abs(out["stats"]["oracle_share_answerable"] - 0.8) <= 0.02
    assert out["overlap"] == 0 and out["answer"] == 0 and out["shared"] == 0
    assert out["stats"]["documents_shared_between_splits"] == 0
