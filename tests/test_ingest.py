from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers_docs import TOPICS, make_kb, make_mixed_folder, make_pdf, prose

from ragtune.config import IngestConfig
from ragtune.errors import RagtuneError
from ragtune.ingest import ingest, ingest_to_run, load_documents, rst_blocks
from ragtune.records import Chunk, read_jsonl


def test_every_format_read_and_bad_files_counted(tmp_path: Path) -> None:
    folder = make_mixed_folder(tmp_path / "docs")
    result = ingest(folder, IngestConfig())
    sources = {c.source.split("#")[0] for c in result.chunks}
    assert sources == {"a.md", "b.txt", "c.rst", "d.html", "e.pdf", "f.jsonl"}
    skipped = {s["source"]: s["reason"] for s in result.report["skipped"]}
    assert skipped["binary.txt"].startswith("binary")
    assert skipped["empty.md"].startswith("empty")
    assert skipped["latin1.txt"].startswith("undecodable")
    assert skipped["broken.pdf"].startswith("unreadable PDF")
    assert skipped["image.png"].startswith("unsupported extension")
    assert result.report["files_skipped"] == 5
    assert result.report["documents"] == 7  # jsonl holds two


def test_formats_are_cleaned(tmp_path: Path) -> None:
    folder = make_mixed_folder(tmp_path / "docs")
    docs, _ = load_documents(folder, IngestConfig())
    by = {d.source: d for d in docs}
    assert "print('code')" not in by["a.md"].text and by["a.md"].title == "Harbor Lights"
    rst = by["c.rst"].text
    assert by["c.rst"].title == "Orchard Notes"
    assert "Quince trees are hardy." in rst  # note body kept
    assert "x = 1" not in rst and "secret_code" not in rst and "+-----" not in rst
    assert "Example:" in rst and "The end of notes." in rst
    html = by["d.html"]
    assert html.title == "Rail Timetable" and "var x" not in html.text
    assert "Second paragraph about trains." in html.text
    assert by["f.jsonl#w1"].title == "Weather"
    assert "  " not in html.text  # whitespace normalised


def test_pdf_pages_are_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "pdf"
    folder.mkdir()
    make_pdf(folder / "book.pdf", [prose(0, 1)[:200], prose(1, 1)[:200], prose(2, 1)[:200]])
    chunks = ingest(
        folder, IngestConfig(chunk_tokens=30, max_chunk_tokens=40, overlap_tokens=0, min_chunk_tokens=5)
    ).chunks
    assert {c.page for c in chunks} == {1, 2, 3}
    first_words = {1: "lighthouse", 2: "glassworks", 3: "Quince"}
    for c in chunks:
        assert first_words[c.page] in c.text or c.start > 0


def test_chunks_respect_token_budget_with_real_tokenizer(tmp_path: Path, tokenizer) -> None:
    folder = make_kb(tmp_path / "kb", n_docs=4, paragraphs=8)
    sentences = [s for _, body in TOPICS for s in body.split(". ")]
    long_para = " ".join(f"Fact {i}: {s.rstrip('.')}." for i, s in enumerate(sentences * 2))  # > a chunk
    (folder / "long.txt").write_text(long_para, encoding="utf-8")
    cfg = IngestConfig(chunk_tokens=60, max_chunk_tokens=80, overlap_tokens=10, min_chunk_tokens=20)
    result = ingest(folder, cfg, tokenizer=tokenizer)
    assert len(result.chunks) > 10
    for c in result.chunks:
        n = len(tokenizer(c.text, add_special_tokens=False)["input_ids"])
        assert n == c.n_tokens <= cfg.max_chunk_tokens
    docs = {d.doc_id: d for d in load_documents(folder, cfg)[0]}
    for c in result.chunks:  # offsets index the normalised document text exactly
        assert docs[c.doc_id].text[c.start : c.end] == c.text
    # neighbouring chunks of the long paragraph overlap, and together cover it
    longs = sorted((c for c in result.chunks if c.source == "long.txt"), key=lambda c: c.start)
    assert len(longs) >= 3
    assert all(b.start < a.end for a, b in zip(longs, longs[1:], strict=False))
    assert longs[0].start == 0 and longs[-1].end == len(long_para)


def test_chunks_prefer_paragraph_boundaries(tmp_path: Path, tokenizer) -> None:
    folder = make_kb(tmp_path / "kb", n_docs=2, paragraphs=10)
    cfg = IngestConfig(chunk_tokens=250, max_chunk_tokens=320, overlap_tokens=0, min_chunk_tokens=20)
    chunks = ingest(folder, cfg, tokenizer=tokenizer).chunks
    docs = {d.doc_id: d.text for d in load_documents(folder, cfg)[0]}
    ends_at_paragraph = sum(c.end == len(docs[c.doc_id]) or docs[c.doc_id][c.end : c.end + 2] == "\n\n" for c in chunks)
    assert len(chunks) >= 4 and ends_at_paragraph == len(chunks)


def test_approximate_count_without_tokenizer(tmp_path: Path) -> None:
    folder = make_kb(tmp_path / "kb", n_docs=3, paragraphs=10)
    cfg = IngestConfig(chunk_tokens=50, max_chunk_tokens=70, overlap_tokens=8, min_chunk_tokens=10)
    result = ingest(folder, cfg)
    assert result.report["tokenizer"].startswith("approximate")
    assert all(0 < c.n_tokens <= 70 for c in result.chunks)


def test_ids_are_stable_and_content_based(tmp_path: Path) -> None:
    folder = make_kb(tmp_path / "kb", n_docs=3)
    a = ingest(folder, IngestConfig()).chunks
    b = ingest(folder, IngestConfig()).chunks
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == len(a)
    (folder / "doc00.md").write_text("# New\n\nCompletely different text now.", encoding="utf-8")
    c = ingest(folder, IngestConfig()).chunks
    changed = {x.id for x in c} ^ {x.id for x in a}
    assert changed and all(x.source == "doc00.md" for x in a + c if x.id in changed)


def test_missing_or_empty_folder_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(RagtuneError, match="not found"):
        ingest(tmp_path / "nope", IngestConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(RagtuneError, match="empty"):
        ingest(tmp_path / "empty", IngestConfig())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.txt").write_bytes(b"\x00\x01")
    with pytest.raises(RagtuneError, match="no readable documents"):
        ingest(tmp_path / "bad", IngestConfig())


def test_bad_config_is_error(tmp_path: Path) -> None:
    folder = make_kb(tmp_path / "kb", n_docs=1)
    with pytest.raises(RagtuneError, match="overlap"):
        ingest(folder, IngestConfig(chunk_tokens=50, overlap_tokens=50))


def test_ingest_to_run_writes_files_and_manifest(tmp_path: Path) -> None:
    folder = make_mixed_folder(tmp_path / "docs")
    run = tmp_path / "run"
    ingest_to_run(folder, run, IngestConfig())
    chunks = list(read_jsonl(run / "chunks.jsonl", Chunk))
    report = json.loads((run / "ingest_report.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(chunks) == report["chunks"] == manifest["stages"]["ingest"]["chunks"]
    assert manifest["stages"]["ingest"]["files_skipped"] == 5


def test_rst_directives_and_roles() -> None:
    text = (
        ".. _label:\n\nTitle\n=====\n\n.. function:: spam(a, *args, **kw)\n   :noindex:\n\n"
        "   Return :class:`Eggs` for *a*; see :ref:`the guide <guide>`.\n\n"
        "   >>> spam(1)\n   Eggs\n\n.. toctree::\n   :maxdepth: 2\n\n   intro\n"
    )
    blocks, heads = rst_blocks(text)
    assert blocks == ["Title", "spam(a, *args, **kw)", "Return Eggs for a; see the guide."]
    assert heads == {0, 1}


@pytest.mark.shared
def test_python_docs_ingest_quick(shared_data: Path) -> None:
    t0 = time.perf_counter()
    docs, skipped = load_documents(shared_data / "python-docs", IngestConfig())
    assert len(docs) >= 490
    assert all("unsupported" in s.reason for s in skipped)  # only COPYRIGHT (no extension)
    assert time.perf_counter() - t0 < 60
