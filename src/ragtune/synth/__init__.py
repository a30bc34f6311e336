"""Synthesis: turn chunks into (question, answer, source chunk) items with a generator backend.

`synthesize` runs the generator named in the config over the chunks and sorts what comes
back into kept items and rejections; `synth_to_run` reads RUN/chunks.jsonl and writes
RUN/qa.jsonl and RUN/qa_rejected.jsonl. Backends live in their own modules and register
themselves in `synth.base`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.config import SynthConfig
from ragtune.errors import RagtuneError
from ragtune.records import Chunk, QAItem, read_jsonl, write_jsonl
from ragtune.runfolder import RunFolder
from ragtune.synth import extractive as _extractive  # noqa: F401  (registers "extractive")
from ragtune.synth.base import Rejection, get_generator


@dataclass
class SynthResult:
    items: list[QAItem]
    rejections: list[Rejection]
    summary: dict[str, Any] = field(default_factory=dict)


def synthesize(chunks: Sequence[Chunk], cfg: SynthConfig) -> SynthResult:
    """Kept items and rejections for the first `cfg.limit` chunks (all when unset).

    The whole chunk list is the generator's corpus (for corpus statistics and pairing);
    exact duplicate questions are rejected.
    """
    if not chunks:
        raise RagtuneError("there are no chunks to synthesise from; run `ragtune ingest DOCS` first")
    t0 = time.perf_counter()
    todo = list(chunks[: cfg.limit] if cfg.limit else chunks)
    generator = get_generator(cfg, chunks)
    items: list[QAItem] = []
    rejections: list[Rejection] = []
    seen: set[str] = set()
    for out in generator.generate(todo):
        if isinstance(out, Rejection):
            rejections.append(out)
        elif out.question.strip().lower() in seen:
            rejections.append(Rejection("duplicate question", chunk_id=out.chunk_id, question=out.question))
        else:
            seen.add(out.question.strip().lower())
            items.append(out)
    summary = {
        "generator": cfg.generator,
        "chunks": len(todo),
        "items": len(items),
        "by_kind": dict(Counter(i.kind for i in items)),
        "answerable": sum(i.answerable for i in items),
        "unanswerable": sum(not i.answerable for i in items),
        "rejected": len(rejections),
        "rejected_by_reason": dict(Counter(r.reason for r in rejections)),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return SynthResult(items, rejections, summary)


def synth_to_run(run_dir: Path, cfg: SynthConfig) -> SynthResult:
    """Read RUN/chunks.jsonl, write RUN/qa.jsonl and RUN/qa_rejected.jsonl, record the stage."""
    from rich.console import Console

    run = RunFolder(Path(run_dir))
    if not run.chunks.is_file():
        raise RagtuneError(f"{run.chunks} not found; run `ragtune ingest DOCS --run {run.root}` first")
    chunks = list(read_jsonl(run.chunks, Chunk))
    result = synthesize(chunks, cfg)
    write_jsonl(run.qa, result.items)
    write_jsonl(run.qa_rejected, result.rejections)
    run.record_stage("synth", config=cfg, inputs=[run.chunks], **result.summary)
    s = result.summary
    Console(stderr=True).print(
        f"synth ({s['generator']}): {s['items']} items ({s['unanswerable']} unanswerable) from "
        f"{s['chunks']} chunks, {s['rejected']} rejected, in {s['seconds']} s"
    )
    return result
