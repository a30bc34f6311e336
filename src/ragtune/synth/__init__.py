"""Synthesis: turn chunks into (question, answer, source chunk) items with a generator backend.

`synthesize` runs the generator named in the config over the chunks, passes every item
through the row filters (`synth.filters`) and sorts what comes back into kept items and
rejections; `synth_to_run` reads RUN/chunks.jsonl and writes RUN/qa.jsonl and
RUN/qa_rejected.jsonl. Backends live in their own modules and register themselves in
`synth.base`.

Resume: rows are appended to both files as they arrive, and LLM calls are cached by content
in RUN/cache, so a run killed at any point and started again with the same command replays
finished calls from the cache (no repeated paid call), appends only rows not yet on disk (no
duplicate), and finally rewrites both files in the order an uninterrupted run writes them.

Synth never loses rows: rows already in qa.jsonl that this run does not make again stay
(`--replace` keeps only imported rows instead); rows of chunks that left chunks.jsonl move to
qa_rejected.jsonl. A run that keeps no row fails with the reason and leaves qa.jsonl as it was (its rejections
are added to qa_rejected.jsonl, to show why).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.config import SynthConfig
from ragtune.errors import RagtuneError
from ragtune.records import Chunk, JsonlAppender, QAItem, content_id, from_dict, read_jsonl, to_dict, write_jsonl
from ragtune.runfolder import RunFolder
from ragtune.synth import extractive as _extractive  # noqa: F401  (registers "extractive")
from ragtune.synth import hf_backend as _hf  # noqa: F401  (registers "hf")
from ragtune.synth import openai_backend as _openai  # noqa: F401  (registers "openai")
from ragtune.synth.base import Rejection, get_generator
from ragtune.synth.cache import CallCache, read_jsonl_repaired
from ragtune.synth.filters import RowFilters


@dataclass
class SynthResult:
    items: list[QAItem]
    rejections: list[Rejection]
    summary: dict[str, Any] = field(default_factory=dict)


def rejection_id(r: Rejection) -> str:
    """A stable id for a rejected row, so a resumed run does not write it twice."""
    return content_id(r.reason, r.chunk_id or "", r.question or "", r.raw or "")


def _chunks_to_do(chunks: Sequence[Chunk], cfg: SynthConfig) -> list[Chunk]:
    if not chunks:
        raise RagtuneError("there are no chunks to synthesise from; run `ragtune ingest DOCS` first")
    return list(chunks[: cfg.limit] if cfg.limit else chunks)


class _Progress:
    """A tqdm bar over chunks with rate and ETA; kept / rejected / tokens as its postfix."""

    def __init__(self, total: int, name: str, enabled: bool | None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, unit="chunk", desc=f"synth ({name})", disable=enabled is False or None, dynamic_ncols=True
        )

    def pulled(self, chunks: Sequence[Chunk]) -> Iterator[Chunk]:
        for c in chunks:  # a generator without chunk callbacks: count chunks as it takes them
            yield c
            self.bar.update(1)

    def show(self, kept: int, rejected: int, tokens: int) -> None:
        self.bar.set_postfix(kept=kept, rejected=rejected, tokens=tokens, refresh=False)


def synthesize(
    chunks: Sequence[Chunk],
    cfg: SynthConfig,
    on_item: Callable[[QAItem], None] | None = None,
    on_rejection: Callable[[Rejection], None] | None = None,
    progress: bool | None = None,
) -> SynthResult:
    """Kept items and rejections for the first `cfg.limit` chunks (all when unset).

    The whole chunk list is the generator's corpus (for pairing and round-trip retrieval).
    `on_item` / `on_rejection` see each row as soon as it is decided (synth_to_run writes
    them to disk there). With `cfg.dry_run`, nothing is generated: the summary holds the
    estimated calls and tokens.
    """
    t0 = time.perf_counter()
    todo = _chunks_to_do(chunks, cfg)
    generator = get_generator(cfg, chunks)
    if cfg.cache_dir and hasattr(generator, "cache"):
        generator.cache = CallCache(cfg.cache_dir)
    if cfg.dry_run:
        estimate = generator.estimate(todo) if hasattr(generator, "estimate") else {"llm_calls": 0}
        return SynthResult([], [], {"generator": cfg.generator, "chunks": len(todo), "dry_run": True, **estimate})
    filters = RowFilters(chunks, cfg.filters, cfg.grounding_threshold, cfg.roundtrip_k, cfg.dedupe_threshold)
    bar = _Progress(len(todo), cfg.generator, progress)
    source: Sequence[Chunk] | Iterator[Chunk] = todo
    if hasattr(generator, "on_chunk_done"):
        generator.on_chunk_done = lambda _c: bar.bar.update(1)
    else:
        source = bar.pulled(todo)
    items: list[QAItem] = []
    rejections: list[Rejection] = []
    try:
        for out in generator.generate(source):  # type: ignore[arg-type]
            if isinstance(out, QAItem) and (reason := filters.check(out)) is not None:
                out = Rejection(
                    reason, chunk_id=out.chunk_id, question=out.question, raw=out.answer, meta={"item": to_dict(out)}
                )
            if isinstance(out, Rejection):
                rejections.append(out)
                if on_rejection is not None:
                    on_rejection(out)
            else:
                items.append(out)
                if on_item is not None:
                    on_item(out)
            bar.show(len(items), len(rejections), _tokens(generator))
    finally:
        bar.bar.close()
    return SynthResult(items, rejections, _summary(cfg, todo, items, rejections, generator, t0))


def _tokens(generator: Any) -> int:
    stats = generator.stats_dict() if hasattr(generator, "stats_dict") else {}
    return sum(s.get("prompt_tokens", 0) + s.get("completion_tokens", 0) for s in stats.values())


def _summary(
    cfg: SynthConfig, todo: list[Chunk], items: list[QAItem], rejections: list[Rejection], generator: Any, t0: float
) -> dict[str, Any]:
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "generator": cfg.generator,
        "model": getattr(generator, "model_id", None),
        "chunks": len(todo),
        "items": len(items),
        "by_kind": dict(Counter(i.kind for i in items)),
        "answerable": sum(i.answerable for i in items),
        "unanswerable": sum(not i.answerable for i in items),
        "rejected": len(rejections),
        "rejected_by_reason": dict(Counter(r.reason for r in rejections)),
        "seconds": round(seconds, 2),
        "rows_per_s": round((len(items) + len(rejections)) / max(seconds, 1e-9), 1),
    }
    if hasattr(generator, "stats_dict"):
        summary["calls"] = generator.stats_dict()  # per stage: calls, cached, failed, tokens
    return summary


def synth_to_run(run_dir: Path, cfg: SynthConfig, progress: bool | None = None) -> SynthResult:
    """Read RUN/chunks.jsonl, add this run's rows to RUN/qa.jsonl and RUN/qa_rejected.jsonl
    (resumable), record the stage. Rows already there are kept (see `_merged`)."""
    from rich.console import Console

    run = RunFolder(Path(run_dir))
    if not run.chunks.is_file():
        raise RagtuneError(f"{run.chunks} not found; run `ragtune ingest DOCS --run {run.root}` first")
    run.ensure()
    chunks = list(read_jsonl(run.chunks, Chunk))
    cfg = cfg.model_copy(update={"cache_dir": cfg.cache_dir or str(run.cache)})
    console = Console(stderr=True)
    if cfg.dry_run:
        result = synthesize(chunks, cfg, progress=False)
        console.print(f"synth dry run: {result.summary}")
        return result
    old = read_jsonl_repaired(run.qa)
    old_rejected = read_jsonl_repaired(run.qa_rejected)
    have_items = {r["id"] for r in old}
    have_rejections = {rejection_id(from_dict(Rejection, r)) for r in old_rejected}
    with JsonlAppender(run.qa) as qa_out, JsonlAppender(run.qa_rejected) as rej_out:
        result = synthesize(
            chunks,
            cfg,
            progress=progress,
            on_item=lambda i: i.id in have_items or qa_out.write(i),
            on_rejection=lambda r: rejection_id(r) in have_rejections or rej_out.write(r),
        )
    if not result.items:  # nothing was appended to qa.jsonl; the rejections stay, to show why
        raise RagtuneError(_nothing_kept(result.summary, run.qa))
    qa_rows, rejected_rows, stale = _merged(old, old_rejected, result, {c.id for c in chunks}, cfg.replace)
    write_jsonl(run.qa, qa_rows)
    write_jsonl(run.qa_rejected, rejected_rows)
    result.summary["resumed_rows"] = len(result.items) + len(result.rejections) - qa_out.n - rej_out.n
    result.summary["kept_from_before"] = len(qa_rows) - len(result.items)
    result.summary["stale_rows_moved"] = stale
    run.record_stage("synth", config=cfg, inputs=[run.chunks], **result.summary)
    s = result.summary
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["rejected_by_reason"].items())) or "none"
    console.print(
        f"synth ({s['generator']}): kept {s['items']} ({s['unanswerable']} unanswerable) from {s['chunks']} "
        f"chunks; rejected {s['rejected']} ({reasons}); tokens {_tokens_line(s)}; {s['seconds']} s"
        + (f"; {s['resumed_rows']} rows resumed from disk" if s["resumed_rows"] else "")
        + f"; qa.jsonl holds {s['items'] + s['kept_from_before']} rows"
        + (
            f" ({s['stale_rows_moved']} rows of chunks no longer in chunks.jsonl moved to qa_rejected.jsonl)"
            if s["stale_rows_moved"]
            else ""
        )
    )
    return result


def _merged(
    old: list[dict[str, Any]],
    old_rejected: list[dict[str, Any]],
    result: SynthResult,
    chunk_ids: set[str],
    replace: bool,
) -> tuple[list[Any], list[Any], int]:
    """The rows of qa.jsonl and qa_rejected.jsonl after a run: rows from before that this run
    did not produce again, in their order, then this run's rows in generation order. A row made
    again replaces its old copy, so a resumed run (whose partial rows are all made again) writes
    exactly what an uninterrupted one does. Rows whose chunk left chunks.jsonl move to the
    rejections (reason `stale_chunk`), never dropped. `replace` keeps only imported rows."""
    new_ids = {i.id for i in result.items}
    new_rejections = {rejection_id(r) for r in result.rejections}
    if replace:
        kept = [r for r in old if str(r.get("origin", "")).startswith("import:") and r["id"] not in new_ids]
        return [*kept, *result.items], list(result.rejections), 0
    kept, stale = [], []
    for r in old:
        if r["id"] in new_ids:
            continue
        gone = r.get("chunk_id") is not None and r["chunk_id"] not in chunk_ids
        (stale if gone else kept).append(r)
    moved = [
        Rejection(
            "stale_chunk", chunk_id=r.get("chunk_id"), question=r.get("question"), raw=r.get("answer"), meta={"item": r}
        )
        for r in stale
    ]
    seen = new_rejections | {rejection_id(m) for m in moved}
    earlier = [r for r in old_rejected if rejection_id(from_dict(Rejection, r)) not in seen]
    return [*kept, *result.items], [*earlier, *result.rejections, *moved], len(stale)


def _nothing_kept(summary: dict[str, Any], qa: Path) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["rejected_by_reason"].items())) or "no rows made"
    fix = (
        "check --base-url, --model, the API key and --timeout-s"
        if "api_error" in summary["rejected_by_reason"]
        else "check the chunks, --questions-per-chunk and the filters (--no-filter)"
    )
    return (
        f"synth kept no row from {summary['chunks']} chunks (rejected {summary['rejected']}: {reasons}); "
        f"{qa} is unchanged, the rejected rows are in {RunFolder(qa.parent).qa_rejected.name}; {fix}, then re-run"
    )


def _tokens_line(summary: dict[str, Any]) -> str:
    calls = summary.get("calls")
    if not calls:
        return "0 (no LLM calls)"
    return ", ".join(
        f"{stage} {c['calls']} calls ({c['cached']} cached) {c['prompt_tokens']}+{c['completion_tokens']} tok"
        for stage, c in calls.items()
    )
