"""Content-keyed cache of LLM calls that survives a kill at any byte.

A call's key is a hash of (backend, model, messages, sampling parameters): the same prompt
with the same settings is never paid for twice, and changing a chunk's text or a prompt
template changes exactly the keys of the calls built from it. Entries are appended one line
at a time and fsynced (`records.append_jsonl`); a line torn by a kill is dropped on the next
load, so the worst a kill costs is the one call that was in flight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragtune.records import append_jsonl, content_id, read_jsonl

CACHE_FILE = "llm_calls.jsonl"


def call_key(backend: str, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """The cache key of one chat call."""
    return content_id(
        backend,
        model,
        json.dumps(messages, sort_keys=True, ensure_ascii=False),
        json.dumps(params, sort_keys=True),
        n=32,
    )


def read_jsonl_repaired(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an append-only JSONL file; a torn last line (killed writer) is cut off the file."""
    path = Path(path)
    return list(read_jsonl(path, repair=True)) if path.is_file() else []


class CallCache:
    """Replies of finished LLM calls, in memory and (when `directory` is given) on disk."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.path = Path(directory) / CACHE_FILE if directory else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for row in read_jsonl_repaired(self.path):
                self.entries[row["key"]] = row

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        row = {"key": key, **value}
        self.entries[key] = row
        if self.path is not None:
            append_jsonl(self.path, row)
