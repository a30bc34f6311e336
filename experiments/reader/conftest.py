"""Fixtures for the reader experiment's tests (run apart from the product's suite):

PYTHONPATH=src python -m pytest experiments/reader
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))  # `import reader`, wherever pytest was started
sys.path.insert(0, str(ROOT / "src"))  # ragtune, if it is not installed

from ragtune.config import TinyModelConfig  # noqa: E402

# The product suite's test model (tests/conftest.py): 40 steps of plain causal LM, no copying.
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
    files = sorted((ROOT / "examples" / "kb").rglob("*.md"))
    return [f.read_text(encoding="utf-8") for f in files]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ragtune.models import make_tiny_model

    out = tmp_path_factory.mktemp("tiny_model")
    make_tiny_model(corpus_texts(), out, TEST_MODEL)
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):
    from ragtune.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)
