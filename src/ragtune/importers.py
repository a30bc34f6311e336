"""`ragtune import`: a human-annotated QA file (SQuAD v2, HotpotQA, RAFT, JSONL, CSV; read by
`ragtune.qa_formats`) merged into RUN/qa.jsonl, its invalid rows into RUN/qa_rejected.jsonl."""

from __future__ import annotations

from pathlib import Path

from ragtune.qa_formats import FORMATS, detect_format, import_file
from ragtune.records import QAItem, read_jsonl, write_jsonl
from ragtune.runfolder import RunFolder

__all__ = ["FORMATS", "detect_format", "import_file", "import_to_run"]


def import_to_run(path: str | Path, run: str | Path, fmt: str | None = None, skip_invalid: bool = False) -> dict:
    """Merge imported QA into RUN/qa.jsonl (same ids are replaced); rejected rows go to
    RUN/qa_rejected.jsonl. Returns counts."""
    folder = RunFolder(Path(run)).ensure()
    rejected: list[dict] = []
    items = import_file(path, fmt, skip_invalid, rejected)
    new_ids = {q.id for q in items}
    kept = [q for q in read_jsonl(folder.qa, QAItem) if q.id not in new_ids] if folder.qa.is_file() else []
    total = write_jsonl(folder.qa, [*kept, *items])
    if rejected:
        old = list(read_jsonl(folder.qa_rejected)) if folder.qa_rejected.is_file() else []
        write_jsonl(folder.qa_rejected, [*old, *rejected])
    counts = {
        "imported": len(items),
        "answerable": sum(q.answerable for q in items),
        "unanswerable": sum(not q.answerable for q in items),
        "rejected": len(rejected),
        "qa_total": total,
    }
    folder.record_stage("import", inputs=[Path(path)], source=str(path), **counts)
    print(
        f"imported {counts['imported']} QA rows ({counts['answerable']} answerable, "
        f"{counts['unanswerable']} unanswerable, {counts['rejected']} rejected) into {folder.qa}"
    )
    return counts
