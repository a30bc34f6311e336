"""Typed records that flow between stages, and their JSONL files.

Every stage reads and writes these through `read_jsonl` / `write_jsonl`, so a run folder
stays plain, inspectable text. Field names are the contract in docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def content_id(*parts: str, n: int = 16) -> str:
    """A stable id from content: the same text always gets the same id."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:n]


@dataclass
class Chunk:
    id: str
    doc_id: str
    source: str  # path relative to the docs folder
    title: str
    text: str
    start: int  # character offsets in the normalised document text
    end: int
    page: int | None = None
    n_tokens: int = 0


@dataclass
class QAItem:
    id: str
    question: str
    answer: str  # gold answer; "" when unanswerable
    answers: list[str] = field(default_factory=list)  # all references
    chunk_id: str | None = None  # oracle chunk; None for imported items without one
    contexts: list[str] = field(default_factory=list)  # explicit passages (imported items)
    answerable: bool = True
    kind: str = "factoid"  # factoid / explanatory / multi_hop / unanswerable / human
    origin: str = ""  # generator name + model, or import file
    evidence: list[str] = field(default_factory=list)  # verified quotes
    doc_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Example:
    """One dataset row: a rendered prompt and its target."""

    id: str
    qa_id: str
    doc_id: str
    question: str
    prompt: str  # rendered text the model sees (chat template applied)
    completion: str  # target text, refusal included; EOS is appended at tokenisation
    answers: list[str] = field(default_factory=list)  # gold references ([] when unanswerable)
    passages: list[str] = field(default_factory=list)  # chunk ids in shown order
    passage_texts: list[str] = field(default_factory=list)
    oracle_in_context: bool = True
    answerable: bool = True
    n_prompt_tokens: int = 0
    n_target_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Build a record from a dict, ignoring unknown keys (newer files stay readable)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in names})


def to_dict(record: Any) -> dict[str, Any]:
    return asdict(record) if hasattr(record, "__dataclass_fields__") else dict(record)


def read_jsonl(path: str | Path, cls: type[T] | None = None) -> Iterator[Any]:
    """Yield rows of a JSONL file, as `cls` records when given."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                yield from_dict(cls, row) if cls else row


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows atomically (temp file + rename): a killed writer leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(to_dict(row), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def append_jsonl(path: str | Path, row: Any) -> None:
    """Append one row and flush it to disk, for results that must survive a kill."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(to_dict(row), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
