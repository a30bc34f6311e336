"""Ingest + synth + build on a real corpus, with timings and the builder's guarantees checked.

    PYTHONPATH=src python bench/data_pipeline.py --docs ../shared/data/python-docs \
        --run /tmp/pydocs-run [--tokenizer DIR] [--retriever bm25|dense|hybrid] [--skip-to build]

Without --tokenizer a 4096-id byte-level BPE is trained on the corpus first (seconds), the
same tokenizer `ragtune tiny-model` would make. Prints one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ragtune.build import build_to_run, contains_answer, overlaps
from ragtune.config import BuildConfig, IngestConfig, SynthConfig
from ragtune.ingest import ingest_to_run, load_documents
from ragtune.models import load_tokenizer, train_tokenizer
from ragtune.records import Chunk, QAItem, read_jsonl
from ragtune.synth import synth_to_run


def check(run: Path) -> dict:
    """Count violations of the distractor and split rules in the written dataset."""
    chunks = {c.id: c for c in read_jsonl(run / "chunks.jsonl", Chunk)}
    qa = {q.id: q for q in read_jsonl(run / "qa.jsonl", QAItem)}
    docs: dict[str, set[str]] = {}
    equal_or_overlap = holds_answer = 0
    for split in ("train", "validation", "test"):
        rows = list(read_jsonl(run / "dataset" / f"{split}.jsonl"))
        docs[split] = {r["doc_id"] for r in rows} | {chunks[p].doc_id for r in rows for p in r["passages"]}
        for r in rows:
            item = qa[r["qa_id"]]
            if not item.answerable or not item.chunk_id:
                continue
            oracle = chunks[item.chunk_id]
            for p in r["passages"]:
                if p == oracle.id:
                    continue
                equal_or_overlap += overlaps(chunks[p], oracle)
                holds_answer += contains_answer(chunks[p].text, item.answer)
    shared = (docs["train"] & docs["validation"]) | (docs["train"] & docs["test"]) | (docs["validation"] & docs["test"])
    return {
        "distractors_equal_or_overlapping_oracle": equal_or_overlap,
        "distractors_containing_gold_answer": holds_answer,
        "documents_shared_between_splits": len(shared),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--retriever", default="bm25")
    ap.add_argument("--oracle-p", type=float, default=0.8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--skip-to", choices=["ingest", "synth", "build"], default="ingest")
    args = ap.parse_args()
    figures: dict = {}
    tok_dir = args.tokenizer
    if not tok_dir:
        tok_dir = str(args.run / "tokenizer")
        if not (Path(tok_dir) / "tokenizer.json").is_file():
            t0 = time.perf_counter()
            docs, _ = load_documents(args.docs, IngestConfig())
            train_tokenizer([d.text for d in docs], 4096, tok_dir)
            figures["tokenizer_s"] = round(time.perf_counter() - t0, 1)
    if args.skip_to == "ingest":
        t0 = time.perf_counter()
        res = ingest_to_run(args.docs, args.run, IngestConfig(tokenizer=tok_dir))
        figures["ingest"] = {
            "s": round(time.perf_counter() - t0, 1),
            "documents": res.report["documents"],
            "chunks": res.report["chunks"],
            "chunk_tokens": res.report["chunk_tokens"],
            "files_skipped": res.report["files_skipped"],
        }
    if args.skip_to in ("ingest", "synth"):
        t0 = time.perf_counter()
        syn = synth_to_run(args.run, SynthConfig())
        figures["synth"] = {
            "s": round(time.perf_counter() - t0, 1),
            **{k: syn.summary[k] for k in ("items", "answerable", "unanswerable", "rejected")},
        }
    t0 = time.perf_counter()
    cfg = BuildConfig(retriever=args.retriever, oracle_p=args.oracle_p, k_distractors=args.k)
    result = build_to_run(args.run, cfg, tokenizer=load_tokenizer(tok_dir))
    seconds = time.perf_counter() - t0
    s = result.stats
    figures["build"] = {
        "retriever": args.retriever,
        "s_total_with_index": round(seconds, 1),
        "examples": s["total"],
        "examples_per_s": round(s["total"] / seconds, 1),
        "oracle_share_answerable": s["oracle_share_answerable"],
        "unanswerable_share": s["unanswerable_share"],
        "prompt_tokens": s["prompt_tokens"],
        "dropped_too_long": s["dropped_too_long"],
        "examples_fitted": s["examples_fitted"],
        **check(args.run),
    }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
