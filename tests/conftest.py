"""Shared fixtures: a real BPE tokenizer and a real tiny Llama, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.config import TinyModelConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
EXAMPLE_KB = ROOT / "examples" / "kb"

# The smallest shape that still exercises every code path (attention, MLP, tied embeddings).
TEST_MODEL = TinyModelConfig(
    vocab_size=512,
    hidden_size=64,
    num_layers=2,
    num_heads=2,
    intermediate_size=128,
    seq_len=128,
    batch_size=8,
    max_steps=40,
    minutes=2.0,
)


def corpus_texts() -> list[str]:
    files = sorted(EXAMPLE_KB.rglob("*.md")) or sorted((ROOT / "docs").rglob("*.md"))
    return [f.read_text(encoding="utf-8") for f in files]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer trained on the example knowledge base and a briefly pretrained tiny Llama."""
    from ragtune.models import make_tiny_model

    out = tmp_path_factory.mktemp("tiny_model")
    make_tiny_model(corpus_texts(), out, TEST_MODEL)
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):
    from ragtune.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA
