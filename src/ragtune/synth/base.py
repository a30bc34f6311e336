"""The generator interface: every question/answer backend is one of these.

A generator turns chunks into kept `QAItem`s and `Rejection`s. Backends register under a
name (`extractive`, `openai`, `hf`) and are built from the `SynthConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ragtune.config import SynthConfig
from ragtune.errors import RagtuneError
from ragtune.records import Chunk, QAItem


@dataclass
class Rejection:
    """A row that did not pass: kept in qa_rejected.jsonl with its reason and raw reply."""

    reason: str
    chunk_id: str | None = None
    question: str | None = None
    raw: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Generator(Protocol):
    name: str

    def generate(self, chunks: Sequence[Chunk]) -> Iterator[QAItem | Rejection]:
        """Yield items as they are made, so a caller can write them as they arrive."""
        ...


GeneratorFactory = Callable[[SynthConfig, Sequence[Chunk]], Generator]
_REGISTRY: dict[str, GeneratorFactory] = {}


def register_generator(name: str) -> Callable[[GeneratorFactory], GeneratorFactory]:
    def deco(factory: GeneratorFactory) -> GeneratorFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


def get_generator(cfg: SynthConfig, corpus: Sequence[Chunk]) -> Generator:
    """The generator named by `cfg.generator`; `corpus` is the whole knowledge base (for
    unanswerable pairing and multi-hop partners)."""
    if cfg.generator not in _REGISTRY:
        names = ", ".join(sorted(_REGISTRY))
        raise RagtuneError(f"unknown generator '{cfg.generator}'; choose one of: {names}")
    return _REGISTRY[cfg.generator](cfg, corpus)


def generator_names() -> Iterable[str]:
    return sorted(_REGISTRY)
