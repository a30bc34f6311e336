"""Synthesis throughput, measured side by side in one run.

1. rows/s of the extractive generator on the python-docs corpus (all chunks), with the
   row filters on (default) and off.
2. requests/s of the `openai` backend against `ragtune serve` (a tiny model built on the spot,
   served on loopback) at concurrency 1 and 8, on the same chunks.

    PYTHONPATH=src python bench/synth_throughput.py --docs ../shared/data/python-docs/_sources
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ragtune.config import IngestConfig, SynthConfig, TinyModelConfig
from ragtune.ingest import ingest
from ragtune.synth import synthesize


def extractive(chunks: list, filters_on: bool) -> dict:
    filters = {} if filters_on else dict.fromkeys(["quotes", "grounding", "roundtrip", "dedupe"], False)
    cfg = SynthConfig(generator="extractive", filters=filters)
    t0 = time.perf_counter()
    r = synthesize(chunks, cfg, progress=False)
    s = time.perf_counter() - t0
    rows = len(r.items) + len(r.rejections)
    return {
        "filters": filters_on,
        "chunks": len(chunks),
        "kept": len(r.items),
        "rows": rows,
        "seconds": round(s, 2),
        "rows_per_s": round(rows / s, 1),
        "kept_per_s": round(len(r.items) / s, 1),
        "rejected_by_reason": r.summary["rejected_by_reason"],
    }


def openai_vs_serve(chunks: list, model_dir: Path, concurrencies: list[int], max_tokens: int) -> list[dict]:
    import httpx

    from ragtune.models import load_model
    from ragtune.serve import create_app, serving

    model, tok = load_model(model_dir)
    out = []
    with serving(create_app(model, tok, model_name="tiny")) as url:
        for c in concurrencies:
            cfg = SynthConfig(
                generator="openai",
                base_url=f"{url}/v1",
                model="tiny",
                concurrency=c,
                max_tokens=max_tokens,
                questions_per_chunk=2,
            )
            t0 = time.perf_counter()
            r = synthesize(chunks, cfg, progress=False)
            s = time.perf_counter() - t0
            calls = sum(v["calls"] for v in r.summary["calls"].values())
            stats = httpx.get(f"{url}/ragtune/stats").json()
            out.append(
                {
                    "concurrency": c,
                    "requests": calls,
                    "seconds": round(s, 2),
                    "requests_per_s": round(calls / s, 2),
                    "rows": len(r.items) + len(r.rejections),
                    "server_batches_so_far": stats["batches"],
                    "server_max_batch": stats["max_batch"],
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=Path, required=True)
    ap.add_argument("--llm-chunks", type=int, default=24, help="chunks sent through the openai backend")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    t0 = time.perf_counter()
    chunks = ingest(args.docs, IngestConfig()).chunks
    print(f"ingest: {len(chunks)} chunks in {time.perf_counter() - t0:.1f} s", flush=True)
    results = {"extractive": [extractive(chunks, True), extractive(chunks, False)]}
    print(json.dumps(results["extractive"], indent=1), flush=True)

    from ragtune.models import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        texts = [c.text for c in chunks[:400]]
        make_tiny_model(texts, tmp, TinyModelConfig(max_steps=20, vocab_size=2048))
        results["openai_vs_serve"] = openai_vs_serve(chunks[: args.llm_chunks], Path(tmp), [1, 8], args.max_tokens)
    print(json.dumps(results["openai_vs_serve"], indent=1))


if __name__ == "__main__":
    main()
