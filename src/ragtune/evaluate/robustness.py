"""Robustness curves: the same questions closed book, with the oracle plus k retrieved
distractors for each k, and with the oracle removed (where abstaining is right).

Distractors are the chunks the run's BM25 index ranks highest for the question (random chunks
when it finds too few), minus the oracle and minus any chunk that happens to contain a gold
answer, so "oracle removed" really lacks the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ragtune.config import EvalConfig
from ragtune.evaluate.core import ModelOutput, ModelSpec, PredictionCache, run_model
from ragtune.metrics import normalize_answer
from ragtune.prompts import Passage, PromptTemplate
from ragtune.records import Chunk, Example, QAItem, read_jsonl
from ragtune.retrieval import retrieve
from ragtune.runfolder import RunFolder


def _holds_answer(text: str, answers: Sequence[str]) -> bool:
    flat = f" {normalize_answer(text)} "
    return any(f" {g} " in flat for g in (normalize_answer(a) for a in answers) if g)


def robustness_items(
    examples: Sequence[Example],
    qa: dict[str, QAItem],
    chunks: Sequence[Chunk],
    ks: Sequence[int],
    template: PromptTemplate,
    tokenizer: Any,
    limit: int | None = None,
    seed: int = 0,
    index_dir: Path | None = None,
) -> list[tuple[str, Example]]:
    """(setting, item) pairs: settings 'closed_book', 'k=N' for each N, and 'no_oracle'."""
    by_id = {c.id: i for i, c in enumerate(chunks)}
    base = [
        ex for ex in examples if ex.answerable and ex.answers and qa.get(ex.qa_id) and qa[ex.qa_id].chunk_id in by_id
    ]
    base = base[:limit] if limit else base
    if not base:
        return []
    k_max = max([*ks, 1])
    ranked = retrieve(chunks, [ex.question for ex in base], k_max + 10, index_dir)
    rng = random.Random(seed)
    out: list[tuple[str, Example]] = []

    def item(ex: Example, setting: str, idx: list[int], answerable: bool) -> tuple[str, Example]:
        passages = [Passage(title=chunks[i].title, text=chunks[i].text, id=chunks[i].id) for i in idx]
        return setting, replace(
            ex,
            id=f"{ex.id}:{setting}",
            prompt=template.render(tokenizer, ex.question, passages),
            completion=ex.completion if answerable else template.refusal,
            answers=ex.answers if answerable else [],
            passages=[chunks[i].id for i in idx],
            passage_texts=[chunks[i].text for i in idx],
            oracle_in_context=answerable,
            answerable=answerable,
        )

    for ex, hits in zip(base, ranked, strict=True):
        oracle = by_id[qa[ex.qa_id].chunk_id]  # type: ignore[index]
        distractors = [i for i in hits if i != oracle and not _holds_answer(chunks[i].text, ex.answers)]
        if len(distractors) < k_max:  # BM25 found too few: fill up with random chunks
            taken = {oracle, *distractors}
            pool = [i for i in rng.sample(range(len(chunks)), min(len(chunks), 4 * k_max + 8)) if i not in taken]
            fill = [i for i in pool if not _holds_answer(chunks[i].text, ex.answers)]
            distractors += fill[: k_max - len(distractors)]
        out.append(item(ex, "closed_book", [], True))
        for k in ks:
            idx = distractors[:k]
            idx.insert(rng.randint(0, len(idx)), oracle)
            out.append(item(ex, f"k={k}", idx, True))
        out.append(item(ex, "no_oracle", distractors[: max(k_max, 1)], False))
    return out


def robustness_for_run(
    run: RunFolder,
    examples: Sequence[Example],
    specs: Sequence[ModelSpec],
    cfg: EvalConfig,
    template: PromptTemplate,
    show_progress: bool = True,
) -> dict[str, Any] | None:
    """F1 vs k per model, closed-book F1 and refusal rate with the oracle removed; None when
    the run lacks chunks.jsonl / qa.jsonl or no test item has a known oracle chunk."""
    if not (run.chunks.is_file() and run.qa.is_file()):
        return None
    from ragtune.models import load_tokenizer

    chunks = list(read_jsonl(run.chunks, Chunk))
    qa = {q.id: q for q in read_jsonl(run.qa, QAItem)}
    tok_source = specs[-1].adapter if specs[-1].adapter else specs[0].base_model
    try:
        tokenizer = load_tokenizer(tok_source)
    except Exception:  # an adapter folder without a tokenizer: use the base model's
        tokenizer = load_tokenizer(specs[0].base_model)
    pairs = robustness_items(
        examples, qa, chunks, cfg.robustness_k, template, tokenizer, cfg.robustness_limit, cfg.seed, run.index
    )
    if not pairs:
        return None
    settings = [s for s, _ in pairs]
    items = [ex for _, ex in pairs]
    cache = PredictionCache(run.eval_cache if cfg.cache else None)
    result: dict[str, Any] = {
        "k": list(cfg.robustness_k),
        "n": settings.count("closed_book"),
        "closed_book": {},
        "no_oracle_refused": {},
        "answer_nll": {},
        "closed_book_nll": {},
    }
    groups: dict[str, list[int]] = {}
    for i, st in enumerate(settings):
        groups.setdefault(st, []).append(i)
    for spec in specs:
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=f"robustness {spec.name}", unit="item", leave=False)
        out = run_model(spec, items, template, cfg, cache, progress=bar.update if bar else None)
        if bar is not None:
            bar.close()
        result[spec.name] = [_f1(out, groups[f"k={k}"]) for k in cfg.robustness_k]
        result["answer_nll"][spec.name] = [_nll(out, groups[f"k={k}"]) for k in cfg.robustness_k]
        result["closed_book"][spec.name] = _f1(out, groups["closed_book"])
        result["closed_book_nll"][spec.name] = _nll(out, groups["closed_book"])
        refused = [out.scores[i].refused for i in groups["no_oracle"]]
        result["no_oracle_refused"][spec.name] = round(100.0 * sum(refused) / len(refused), 2)
    return result


def _f1(out: ModelOutput, idx: list[int]) -> float:
    return round(100.0 * sum(out.scores[i].f1 for i in idx) / len(idx), 2)


def _nll(out: ModelOutput, idx: list[int]) -> float | None:
    tokens = sum(out.n_tokens[i] for i in idx)
    return round(sum(out.nll[i] for i in idx) / tokens, 4) if tokens else None
