"""`ragtune run`: every stage from one YAML config into one run folder.

Each stage's entry in manifest.json carries a key made of its config and the hashes of its
inputs. A re-run skips a stage whose key is unchanged and whose output is on disk, so a
killed run resumes where it stopped and a changed setting re-runs exactly the stages after it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from ragtune.config import IngestConfig, RunConfig, TinyModelConfig
from ragtune.errors import RagtuneError
from ragtune.modelstore import resolve_model
from ragtune.records import Chunk
from ragtune.runfolder import RunFolder, file_hash

console = Console(stderr=True)


def corpus_texts(docs: str | Path) -> list[str]:
    """The normalised text of every readable document in a folder."""
    from ragtune.ingest import load_documents

    docs_list, _skipped = load_documents(Path(docs), IngestConfig())
    return [d.text for d in docs_list]


def document_chunks(docs: Path, tokenizer_source: str | None) -> list[Chunk]:
    """A documents folder ingested on the spot (what `ragtune ask --docs FOLDER` retrieves from)."""
    from ragtune.ingest import ingest

    return ingest(docs, IngestConfig(tokenizer=tokenizer_source)).chunks


def tiny_model_from_docs(corpus: str | Path, out: str | Path, cfg: TinyModelConfig) -> dict:
    from ragtune.models import make_tiny_model

    t0 = time.perf_counter()
    info = make_tiny_model(corpus_texts(corpus), out, cfg)
    console.print(f"tiny model saved to {out} in {time.perf_counter() - t0:.0f} s: {info}")
    return info


def pretrain_on_docs(model: str, corpus: str | Path, out: str | Path, minutes: float) -> dict:
    """Domain adaptation: the tiny model's causal-LM loop, run on any model."""
    from ragtune.models import load_model, pretrain_causal_lm

    net, tok = load_model(model, precision="fp32")
    info = pretrain_causal_lm(net, tok, corpus_texts(corpus), TinyModelConfig(minutes=minutes, lr=5e-5))
    net.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    console.print(f"adapted model saved to {out}: {info}")
    return info


_HASH_LIMIT = 64 << 20  # larger files (model weights) are keyed by size and mtime, not read


def _key(config: Any, *inputs: Path) -> str:
    """A stage's identity: its config and the content of its inputs."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for p in inputs:
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                st = f.stat()
                digest = file_hash(f) if st.st_size <= _HASH_LIMIT else f"{st.st_size}:{st.st_mtime_ns}"
                h.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{digest}".encode())
    return h.hexdigest()[:16]


def _stage(run: RunFolder, name: str, key: str, output: Path, fn: Callable[[], Any]) -> bool:
    """Run `fn` unless the manifest says this stage already finished with the same key."""
    done = run.read_manifest().get("stages", {}).get(name, {})
    if done.get("key") == key and output.exists():
        console.print(f"[dim]{name}: up to date, skipped[/dim]")
        return False
    console.rule(name)
    t0 = time.perf_counter()
    fn()
    run.update_stage(name, key=key, seconds=round(time.perf_counter() - t0, 1))
    return True


def run_pipeline(cfg: RunConfig) -> dict:
    """Tiny model (if asked), ingest, synth, build, train, eval; returns the eval metrics."""
    from ragtune.evaluate import format_table

    docs = Path(cfg.docs)
    if not docs.is_dir():
        raise RagtuneError(f"docs folder {docs} not found; set `docs:` to a folder of documents")
    run = RunFolder(Path(cfg.run_dir)).ensure()
    t0 = time.perf_counter()
    metrics = _run_stages(cfg, run, docs, _base_model(cfg, run, docs))
    run.record_stage("run", config=cfg, seconds=round(time.perf_counter() - t0, 1), seed=cfg.seed)
    Console().print(format_table(metrics))
    console.print(f"run folder: {run.root}  ({time.perf_counter() - t0:.0f} s)")
    return metrics


def _base_model(cfg: RunConfig, run: RunFolder, docs: Path) -> str:
    """The base model's name as the stages record it, built first when it is the tiny model."""
    if cfg.base_model != "tiny":
        return cfg.base_model
    _stage(
        run,
        "tiny_model",
        _key(cfg.tiny_model.model_dump(), docs),
        run.base_model / "config.json",
        lambda: tiny_model_from_docs(docs, run.base_model, cfg.tiny_model),
    )
    return str(run.base_model)


def _run_stages(cfg: RunConfig, run: RunFolder, docs: Path, base: str) -> dict:
    """Each stage whose config or inputs changed since it last ran; the eval metrics."""
    from ragtune.build import build_to_run
    from ragtune.evaluate import evaluate_run
    from ragtune.ingest import ingest_to_run
    from ragtune.models import TRAIN_INFO
    from ragtune.synth import synth_to_run
    from ragtune.train import train_to_run

    # A named model or GGUF file is fetched and converted once, here, in view; the stages record
    # its name and find the converted folder in the cache.
    base_files = Path(resolve_model(base))
    ingest_cfg = cfg.ingest.model_copy(update={"tokenizer": cfg.ingest.tokenizer or base})
    _stage(
        run,
        "ingest",
        _key(ingest_cfg.model_dump(), docs, base_files),
        run.chunks,
        lambda: ingest_to_run(docs, run.root, ingest_cfg),
    )
    _stage(run, "synth", _key(cfg.synth.model_dump(), run.chunks), run.qa, lambda: synth_to_run(run.root, cfg.synth))
    _stage(
        run,
        "build",
        _key(cfg.build.model_dump(), run.qa, run.chunks),
        run.dataset,
        lambda: build_to_run(run.root, cfg.build, tokenizer=base),
    )
    _stage(
        run,
        "train",
        _key(cfg.train.model_dump(), run.dataset, base_files),
        run.adapter / TRAIN_INFO,
        lambda: train_to_run(run.root, cfg.train, base_model=base),
    )
    metrics_file = run.eval / RunFolder.METRICS
    _stage(
        run,
        "eval",
        _key(cfg.eval.model_dump(), run.dataset, run.adapter),
        metrics_file,
        lambda: evaluate_run(run.root, cfg.eval, base_model=base),
    )
    return json.loads(metrics_file.read_text(encoding="utf-8"))
