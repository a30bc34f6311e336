"""Typed records that flow between stages, and their JSONL files.

Every stage reads and writes these through `read_jsonl` / `write_jsonl`, so a run folder
stays plain, inspectable text. Field names are the contract in docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ragtune.errors import RagtuneError

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


def read_text_file(path: str | Path) -> str:
    """A text file's content under the one encoding policy: UTF-8, a leading BOM accepted.
    Anything else is a one-line error naming the file and the line of the first bad byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RagtuneError(
            f"{path} line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8 and retry"
        ) from None


def jsonl_lines(path: str | Path, repair: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSONL file: the one reader.

    A torn last line (no newline and not JSON: a writer killed mid-row) is skipped with a
    warning, and with `repair` also cut off the file so later appends start on a clean line.
    Any other line that is not JSON, or not UTF-8, is a one-line error naming the line."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            yield n, json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if n == len(lines) and not raw.endswith(b"\n"):
                _drop_torn_line(path, len(data) - len(raw), n, repair)
                return
            what = "not UTF-8" if isinstance(e, UnicodeDecodeError) else f"not valid JSON ({e.msg})"
            raise RagtuneError(f"{path} line {n}: {what}; fix or delete that line") from None


def _drop_torn_line(path: Path, good_end: int, n: int, repair: bool) -> None:
    action = "cut it off" if repair else "skipped it"
    print(f"warning: {path} line {n} is cut short (a writer was killed); {action}", file=sys.stderr)
    if repair:
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())


def read_jsonl(path: str | Path, cls: type[T] | None = None, repair: bool = False) -> Iterator[Any]:
    """Yield rows of a JSONL file, as `cls` records when given (see `jsonl_lines`)."""
    for n, row in jsonl_lines(path, repair):
        if cls is None:
            yield row
        elif not isinstance(row, dict):
            raise RagtuneError(
                f"{path} line {n}: expected a JSON object, got {type(row).__name__}; fix or delete that line"
            )
        else:
            yield from_dict(cls, row)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable (the directory entry itself is synced)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows atomically and durably: a unique temp file, fsynced, renamed over the old
    one, then the folder synced. A killed writer leaves the old file; two writers never share
    a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp's 0600 would hide it
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(to_dict(row), ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return n


def append_jsonl(path: str | Path, row: Any) -> None:
    """Append one row and flush it to disk, for results that must survive a kill."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(to_dict(row), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


class JsonlAppender:
    """Append rows to a JSONL file as they arrive. Each row is flushed to the OS at once (a
    killed process loses nothing) and fsynced at most every `fsync_s` seconds and at close
    (a fast generator is not slowed to one disk sync per row)."""

    def __init__(self, path: str | Path, fsync_s: float = 1.0) -> None:
        self._clock = time.monotonic
        self.path = Path(path)
        self.f: Any = None  # opened at the first row: a run that fails early creates no file
        self.fsync_s = fsync_s
        self.last_sync = self._clock()
        self.n = 0

    def write(self, row: Any) -> None:
        if self.f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.f.write(json.dumps(to_dict(row), ensure_ascii=False) + "\n")
        self.f.flush()
        self.n += 1
        if self._clock() - self.last_sync >= self.fsync_s:
            os.fsync(self.f.fileno())
            self.last_sync = self._clock()

    def close(self) -> None:
        if self.f is not None and not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
