"""RAG-like training rows for the train tests: long-ish contexts, short answers, uneven lengths."""

from __future__ import annotations

import random
import re
from typing import Any

from ragtune.prompts import Passage, PromptTemplate


def sentences() -> list[str]:
    from conftest import corpus_texts

    text = " ".join(corpus_texts())
    out = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if 30 < len(s.strip()) < 200]
    return out or ["The run folder holds every stage's output."]


def rag_rows(tokenizer: Any, n: int, seed: int = 0, template: PromptTemplate | None = None) -> list[dict]:
    rng = random.Random(seed)
    sents = sentences()
    template = template or PromptTemplate.for_tokenizer(tokenizer)
    rows = []
    for i in range(n):
        passages = [
            Passage(title=f"doc {rng.randrange(50)}", text=" ".join(rng.sample(sents, rng.randint(1, 4))))
            for _ in range(rng.randint(1, 4))
        ]
        words = rng.choice(passages).text.split()
        start = rng.randrange(max(1, len(words) - 4))
        answer = " ".join(words[start : start + rng.randint(1, 4)])
        question = f"Which words follow '{words[max(0, start - 2)]}'?"
        rows.append(
            {
                "id": f"ex{seed}-{i}",
                "question": question,
                "prompt": template.render(tokenizer, question, passages),
                "completion": answer,
            }
        )
    return rows


def rag_dataset(tokenizer: Any, n_train: int = 48, n_val: int = 16, template: PromptTemplate | None = None) -> Any:
    from datasets import Dataset, DatasetDict

    return DatasetDict(
        {
            "train": Dataset.from_list(rag_rows(tokenizer, n_train, seed=1, template=template)),
            "validation": Dataset.from_list(rag_rows(tokenizer, n_val, seed=2, template=template)),
            "test": Dataset.from_list(rag_rows(tokenizer, n_val, seed=3, template=template)),
        }
    )
