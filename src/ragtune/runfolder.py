"""The run folder: where each stage finds its inputs and leaves its outputs.

Paths are the contract of docs/architecture.md. `record_stage` appends a stage's config,
counts, timings and input hashes to `manifest.json`, so a run can be audited and re-run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from ragtune.errors import RagtuneError

_PACKAGES = ("ragtune", "torch", "transformers", "peft", "datasets", "accelerate", "tokenizers")


@dataclass(frozen=True)
class RunFolder:
    """The run folder's paths, and the names of the files stages write inside their folders
    (also used where such a folder is outside a run: `eval --out`, a dataset given to `inspect`)."""

    root: Path

    # dataset/: the HF DatasetDict (save_to_disk), each split as JSONL, the build's figures
    DATASET_DICT: ClassVar[str] = "dataset_dict.json"
    BUILD_REPORT: ClassVar[str] = "build_report.json"
    # eval/
    METRICS: ClassVar[str] = "metrics.json"
    PREDICTIONS: ClassVar[str] = "predictions.jsonl"
    REPORT_MD: ClassVar[str] = "report.md"
    REPORT_HTML: ClassVar[str] = "report.html"

    @staticmethod
    def split_file(dataset_dir: str | Path, split: str) -> Path:
        """One split's rows in a dataset folder."""
        return Path(dataset_dir) / f"{split}.jsonl"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def ensure(self) -> RunFolder:
        """Create the folder and prove it writable, so a bad --run fails before any work."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise RagtuneError(
                f"cannot write the run folder {self.root} ({e.strerror or type(e).__name__}); "
                "pass a --run folder you can create and write"
            ) from None
        return self

    manifest = property(lambda self: self.root / "manifest.json")
    chunks = property(lambda self: self.root / "chunks.jsonl")
    ingest_report = property(lambda self: self.root / "ingest_report.json")
    index = property(lambda self: self.root / "index")
    qa = property(lambda self: self.root / "qa.jsonl")
    qa_rejected = property(lambda self: self.root / "qa_rejected.jsonl")
    cache = property(lambda self: self.root / "cache")
    eval_cache = property(lambda self: self.cache / "eval_predictions.jsonl")  # eval's predictions, by key
    dataset = property(lambda self: self.root / "dataset")
    adapter = property(lambda self: self.root / "adapter")
    eval = property(lambda self: self.root / "eval")
    base_model = property(lambda self: self.root / "base_model")

    def read_manifest(self) -> dict[str, Any]:
        if self.manifest.is_file():
            try:
                return json.loads(self.manifest.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RagtuneError(
                    f"{self.manifest} is not valid JSON; restore it or delete it (the run's stages then re-run)"
                ) from None
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
        entry: dict[str, Any] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        if config is not None:
            entry["config"] = config.model_dump() if hasattr(config, "model_dump") else config
        if inputs:
            entry["inputs"] = {str(p): file_hash(p) for p in inputs if Path(p).is_file()}
        with self._locked():
            manifest = self.read_manifest()
            manifest.setdefault("environment", environment())
            manifest.setdefault("stages", {})[stage] = entry
            self._write(manifest)

    def update_stage(self, stage: str, **info: Any) -> None:
        """Add fields to a stage's entry without replacing what the stage wrote."""
        self.ensure()
        with self._locked():
            manifest = self.read_manifest()
            manifest.setdefault("stages", {}).setdefault(stage, {}).update(info)
            self._write(manifest)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One read-modify-write of the manifest at a time (two stages, or ranks, at once)."""
        with open(self.root / ".manifest.lock", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _write(self, manifest: dict[str, Any]) -> None:
        from ragtune.records import fsync_dir

        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".manifest.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.manifest)
        fsync_dir(self.root)


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
