"""A small real run folder for eval / ask tests: chunks, QA, a built test split and a LoRA adapter.

The dataset rows are rendered with the real `PromptTemplate` and tokenizer; the adapter is a
real PEFT LoRA on the tiny model with random (non-zero) weights, so "tuned" differs from "base".
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ragtune.prompts import Passage, PromptTemplate
from ragtune.records import Chunk, Example, QAItem, content_id, write_jsonl

FACTS = [
    ("Harbor", "The harbor lighthouse was painted red in 1921 by the keeper Ada Moss."),
    ("Mill", "The old mill on the river ground barley until the flood of 1903."),
    ("Library", "The town library keeps its rare maps in a cellar vault below the reading room."),
    ("Bridge", "The stone bridge has seven arches and was finished by mason Tomas Vell."),
    ("Market", "The Saturday market sells cheese, honey and wool from the valley farms."),
    ("School", "The village school was founded in 1888 and teaches forty pupils."),
    ("Chapel", "The hill chapel rings its bell at noon and at six in the evening."),
    ("Bakery", "The corner bakery is famous for rye bread baked in a wood oven."),
]
QUESTIONS = [
    ("Who painted the harbor lighthouse?", "the keeper Ada Moss", 0),
    ("What did the old mill grind?", "barley", 1),
    ("Where does the library keep its rare maps?", "in a cellar vault", 2),
    ("How many arches does the stone bridge have?", "seven", 3),
    ("What does the Saturday market sell?", "cheese, honey and wool", 4),
    ("When was the village school founded?", "1888", 5),
]
UNANSWERABLE = ["What colour is the mayor's car?", "How tall is the radio mast?"]


def make_chunks() -> list[Chunk]:
    chunks = []
    for title, text in FACTS:
        src = f"{title.lower()}.md"
        chunks.append(
            Chunk(
                id=content_id(src, text),
                doc_id=content_id(src),
                source=src,
                title=title,
                text=text,
                start=0,
                end=len(text),
            )
        )
    return chunks


def make_run(run: Path, model_dir: Path, tokenizer, adapter: bool = True) -> Path:
    """Write chunks.jsonl, qa.jsonl, dataset/ (test split) and adapter/ under `run`."""
    from datasets import Dataset, DatasetDict

    template = PromptTemplate.for_tokenizer(tokenizer)
    chunks = make_chunks()
    rng = random.Random(0)
    qa, rows = [], []
    for q, a, ci in QUESTIONS:
        item = QAItem(
            id=content_id(q), question=q, answer=a, answers=[a], chunk_id=chunks[ci].id, doc_id=chunks[ci].doc_id
        )
        qa.append(item)
        shown = [chunks[ci], chunks[(ci + 1) % len(chunks)]]
        rng.shuffle(shown)
        rows.append(_example(item, shown, template, tokenizer, a, True))
    for q in UNANSWERABLE:
        item = QAItem(
            id=content_id(q),
            question=q,
            answer="",
            answers=[],
            answerable=False,
            kind="unanswerable",
            chunk_id=chunks[6].id,
        )
        qa.append(item)
        rows.append(_example(item, [chunks[6], chunks[7]], template, tokenizer, template.refusal, False))
    write_jsonl(run / "chunks.jsonl", chunks)
    write_jsonl(run / "qa.jsonl", qa)
    ds = Dataset.from_list([r.__dict__ for r in rows])
    DatasetDict({"test": ds}).save_to_disk(str(run / "dataset"))
    template.save(run / "dataset")
    if adapter:
        make_adapter(model_dir, run / "adapter", template)
    return run


def _example(
    item: QAItem, shown: list[Chunk], template: PromptTemplate, tokenizer, target: str, answerable: bool
) -> Example:
    passages = [Passage(title=c.title, text=c.text, id=c.id) for c in shown]
    return Example(
        id=item.id,
        qa_id=item.id,
        doc_id=item.doc_id or "",
        question=item.question,
        prompt=template.render(tokenizer, item.question, passages),
        completion=target,
        answers=item.answers,
        passages=[c.id for c in shown],
        passage_texts=[c.text for c in shown],
        oracle_in_context=answerable,
        answerable=answerable,
    )


def make_adapter(model_dir: Path, out: Path, template: PromptTemplate, seed: int = 0) -> Path:
    """A real LoRA adapter with random weights (init_lora_weights=False) on the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    peft_model.save_pretrained(str(out))
    template.save(out)
    (out / "ragtune_train.json").write_text(json.dumps({"base_model": str(model_dir)}), encoding="utf-8")
    return out
