"""The run folder: where each stage finds its inputs and leaves its outputs.

Paths are the contract of docs/architecture.md. `record_stage` appends a stage's config,
counts, timings and input hashes to `manifest.json`, so a run can be audited and re-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("ragtune", "torch", "transformers", "peft", "datasets", "accelerate", "tokenizers")


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def ensure(self) -> RunFolder:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    manifest = property(lambda self: self.root / "manifest.json")
    chunks = property(lambda self: self.root / "chunks.jsonl")
    ingest_report = property(lambda self: self.root / "ingest_report.json")
    index = property(lambda self: self.root / "index")
    qa = property(lambda self: self.root / "qa.jsonl")
    qa_rejected = property(lambda self: self.root / "qa_rejected.jsonl")
    cache = property(lambda self: self.root / "cache")
    dataset = property(lambda self: self.root / "dataset")
    adapter = property(lambda self: self.root / "adapter")
    eval = property(lambda self: self.root / "eval")
    base_model = property(lambda self: self.root / "base_model")

    def read_manifest(self) -> dict[str, Any]:
        if self.manifest.is_file():
            return json.loads(self.manifest.read_text(encoding="utf-8"))
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": {}}

    def record_stage(
        self,
        stage: str,
        config: Any = None,
        inputs: list[Path] | None = None,
        **info: Any,
    ) -> None:
        """Write one stage's entry into manifest.json (atomically; later runs overwrite it)."""
        self.ensure()
        manifest = self.read_manifest()
        manifest.setdefault("environment", environment())
        entry: dict[str, Any] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        if config is not None:
            entry["config"] = config.model_dump() if hasattr(config, "model_dump") else config
        if inputs:
            entry["inputs"] = {str(p): file_hash(p) for p in inputs if Path(p).is_file()}
        manifest.setdefault("stages", {})[stage] = entry
        self._write(manifest)

    def update_stage(self, stage: str, **info: Any) -> None:
        """Add fields to a stage's entry without replacing what the stage wrote."""
        manifest = self.read_manifest()
        manifest.setdefault("stages", {}).setdefault(stage, {}).update(info)
        self._write(manifest)

    def _write(self, manifest: dict[str, Any]) -> None:
        self.ensure()
        tmp = self.manifest.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.manifest)


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def environment() -> dict[str, Any]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}
