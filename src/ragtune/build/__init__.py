"""`ragtune build`: RAG training examples from QA items and the knowledge base's chunks.

Each example shows the oracle passage (with probability `oracle_p`) among `k_distractors`
hard negatives retrieved with the question, in random order; without the oracle, and for
unanswerable questions, the target is the refusal. Splits are made by document and
passages come only from documents of the example's own split, so no document's text
crosses splits. Every choice is deterministic with the seed.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.build.assembly import (
    Assembled,
    Plan,
    assemble,
    contains_answer,
    item_doc,
    overlaps,
    plan_item,
    split_documents,
)
from ragtune.build.budget import fit_passages
from ragtune.build.card import dataset_card
from ragtune.build.inspect import load_examples
from ragtune.build.targets import target_text
from ragtune.config import BuildConfig
from ragtune.errors import RagtuneError
from ragtune.prompts import Passage, PromptTemplate, end_of_answer, prompt_ids
from ragtune.records import Chunk, Example, QAItem, content_id, read_jsonl, to_dict, write_jsonl
from ragtune.runfolder import RunFolder

SPLITS = ("train", "validation", "test")


@dataclass
class BuildResult:
    splits: dict[str, list[Example]]
    template: PromptTemplate
    stats: dict[str, Any] = field(default_factory=dict)
    eos: str = ""  # the tokenizer's EOS text, for exports that take raw text


def default_max_length(tokenizer: Any) -> int:
    n = getattr(tokenizer, "model_max_length", None) or 2048
    return int(min(n, 2048))


def _check(cfg: BuildConfig) -> None:
    if not 0.0 <= cfg.oracle_p <= 1.0:
        raise RagtuneError("oracle_p must be between 0 and 1; fix the build config")
    if not 0.0 <= cfg.unanswerable_share < 1.0:
        raise RagtuneError("unanswerable_share must be in [0, 1); fix the build config")
    if cfg.k_distractors < 0:
        raise RagtuneError("k_distractors must be 0 or more; fix the build config")
    if len(cfg.split) != 3 or sum(cfg.split) <= 0 or min(cfg.split) < 0:
        raise RagtuneError("split must be three non-negative shares (train, validation, test)")
    from ragtune.build.exports import check_formats

    check_formats(list(cfg.formats))


def _balance_unanswerable(plans: list[Plan], share: float, seed: int) -> list[Plan]:
    """Reach the unanswerable share: keep a seeded subset of unanswerable items when there are
    too many, or turn answerable ones into unanswerable (their oracle removed) when too few."""

    def order(p: Plan) -> str:
        return content_id(str(seed), p.item.id)

    unans = [p for p in plans if not p.answerable]
    ans = [p for p in plans if p.answerable]
    if len(unans) > share * len(plans):  # drop some: the answerable ones stay
        keep = {p.item.id for p in sorted(unans, key=order)[: round(share * len(ans) / (1 - share))]}
        return [p for p in plans if p.answerable or p.item.id in keep]
    convert = {p.item.id for p in sorted(ans, key=order)[: round(share * len(plans)) - len(unans)]}
    out = []
    for p in plans:
        if p.item.id in convert:
            p = Plan(
                p.item, [], banned=p.oracles, hidden_answers=p.hidden_answers, answerable=False, kind="unanswerable"
            )
        out.append(p)
    return out


def assemble_examples(
    qa: Sequence[QAItem],
    chunks: Sequence[Chunk],
    cfg: BuildConfig,
    tokenizer: Any,
    retriever: Any = None,
) -> BuildResult:
    """Examples per split, and the figures the dataset card reports."""
    _check(cfg)
    t0 = time.perf_counter()
    plans, unknown = _plans(qa, chunks, cfg)
    imported = _imported_passages(plans, chunks)
    pool = [*chunks, *imported]
    if retriever is None or imported:  # a given retriever indexes the chunks only
        from ragtune.retrieval import build_retriever

        retriever = build_retriever(cfg.retriever, pool, cfg.dense_model) if cfg.distractors != "random" else None
    by_id = {c.id: c for c in pool}
    doc_of = {p.item.id: item_doc(p.item, by_id) for p in plans}
    split_of = _document_splits(doc_of, pool, cfg)
    template = PromptTemplate.for_tokenizer(tokenizer, refusal=cfg.refusal, question_first=cfg.question_first)
    template.extra["tokenizer"] = str(getattr(tokenizer, "name_or_path", "") or "")  # for `ragtune inspect`
    maker = _ExampleMaker(by_id, cfg, _Encoder(tokenizer, template), cfg.max_length or default_max_length(tokenizer))
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        members = [p for p in plans if split_of[doc_of[p.item.id]] == split]
        if members:
            split_pool = [c for c in pool if split_of.get(c.doc_id) == split]
            splits[split] = maker.split_examples(split, members, split_pool, retriever)
    stats = _stats(splits, maker.counters, cfg, maker.max_length, unknown, time.perf_counter() - t0, split_of)
    return BuildResult(splits, template, stats, eos=tokenizer.eos_token or "")


def _plans(qa: Sequence[QAItem], chunks: Sequence[Chunk], cfg: BuildConfig) -> tuple[list[Plan], int]:
    """A plan per QA item whose oracle is known, balanced to the unanswerable share; and how
    many items had no known oracle."""
    by_id = {c.id: c for c in chunks}
    plans, unknown = [], 0
    for item in qa:
        plan = plan_item(item, by_id)
        if plan is None:
            unknown += 1
        else:
            plans.append(plan)
    if not plans:
        raise RagtuneError(
            "no QA item has a known oracle chunk or its own contexts; run `ragtune synth` "
            "(or `ragtune import`) on the same run's chunks.jsonl"
        )
    return _balance_unanswerable(plans, cfg.unanswerable_share, cfg.seed), unknown


def _imported_passages(plans: list[Plan], chunks: Sequence[Chunk]) -> list[Chunk]:
    """Imported items' own passages that are not chunks of the knowledge base: they join the
    pool passages are drawn from."""
    ids, texts = {c.id for c in chunks}, {c.text for c in chunks}
    extra = {c.id: c for p in plans for c in p.oracles + p.banned if c.id not in ids and c.text not in texts}
    return list(extra.values())


def _document_splits(doc_of: dict[str, str], pool: list[Chunk], cfg: BuildConfig) -> dict[str, str]:
    """The split of every document: those with questions are shared out by their question
    counts, those without (passages only) apart from them."""
    split_of = split_documents(dict(Counter(doc_of.values())), cfg.split, cfg.seed)
    lone = {c.doc_id: 1 for c in pool if c.doc_id not in split_of}
    split_of.update(split_documents(lone, cfg.split, cfg.seed + 1) if lone else {})
    return split_of


def _rankings(retriever: Any, members: list[Plan], split_pool: list[Chunk], cfg: BuildConfig) -> list[list[str]]:
    """Retrieval rankings of each question within its split's chunks (empty for random mode)."""
    if retriever is None or cfg.distractors == "random" or cfg.k_distractors == 0:
        return [[] for _ in members]
    allowed = {c.id for c in split_pool}
    mask = np.fromiter((cid in allowed for cid in retriever.ids), dtype=bool, count=len(retriever.ids))
    depth = cfg.k_distractors * 3 + 10  # room for the ones the rules throw out
    hits = retriever.search_many([p.item.question for p in members], depth, mask)
    return [[cid for cid, _ in h] for h in hits]


class _Encoder:
    """Token counts of prompts and targets.

    Exact counts tokenise the whole rendered prompt (milliseconds for a long one), so fitting
    works on an estimate: the prompt without passages plus each passage's own count (cached),
    with a small margin; every final prompt is then counted exactly, in batches.
    """

    def __init__(self, tokenizer: Any, template: PromptTemplate) -> None:
        self.tok, self.template = tokenizer, template
        end = end_of_answer(tokenizer, template)
        n_end = len(tokenizer(end, add_special_tokens=False)["input_ids"]) if end else 0
        ends_eos = bool(end) and end.endswith(tokenizer.eos_token or "\0")
        self.n_end = n_end + (0 if ends_eos or tokenizer.eos_token_id is None else 1)
        self._passage: dict[tuple[str, str, str], int] = {}

    def prompt(self, question: str, passages: Sequence[Chunk]) -> str:
        shown = [Passage(title=p.title, text=p.text, id=p.id) for p in passages]
        return self.template.render(self.tok, question, shown)

    def n_prompt(self, prompt: str) -> int:
        return len(prompt_ids(self.tok, prompt, self.template))

    def n_prompts(self, prompts: Sequence[str]) -> list[int]:
        add = self.template.style == "plain"
        out: list[int] = []
        for i in range(0, len(prompts), 256):  # batches run in parallel in the Rust tokenizer
            enc = self.tok(list(prompts[i : i + 256]), add_special_tokens=add, verbose=False)["input_ids"]
            out.extend(len(x) for x in enc)
        return out

    def estimate(self, question: str, passages: Sequence[Chunk]) -> int:
        total = self.n_prompt(self.prompt(question, [])) + 2 * len(passages)  # margin for joins
        for p in passages:
            key = (p.id, p.title, p.text)
            if key not in self._passage:
                text = self.template.passage_format.format(n=1, title=p.title, text=p.text, id=p.id)
                self._passage[key] = len(self.tok(text, add_special_tokens=False, verbose=False)["input_ids"]) + 1
            total += self._passage[key]
        return total

    def n_target(self, completion: str) -> int:
        return len(self.tok(completion, add_special_tokens=False, verbose=False)["input_ids"]) + self.n_end


def _oracle_index(shown: Sequence[Chunk], oracle_ids: set[str]) -> int | None:
    return next((i for i, p in enumerate(shown) if p.id in oracle_ids), None)


@dataclass
class _ExampleMaker:
    """What every example of one build shares: the passages by id, the config, the token
    counter, the token budget, and the counters the dataset card reports."""

    by_id: dict[str, Chunk]
    cfg: BuildConfig
    enc: _Encoder
    max_length: int
    counters: Counter[str] = field(default_factory=Counter)

    def split_examples(self, split: str, members: list[Plan], split_pool: list[Chunk], retriever: Any) -> list[Example]:
        """The examples of one split's plans, their passages drawn from `split_pool` only."""
        ranked = _rankings(retriever, members, split_pool, self.cfg)
        made = [(plan, hits, self.example(plan, hits, split_pool)) for plan, hits in zip(members, ranked, strict=True)]
        made = [m for m in made if m[2] is not None]
        counts = self.enc.n_prompts([ex.prompt for _, _, ex in made])
        kept = []
        for (plan, hits, ex), n in zip(made, counts, strict=True):
            ex.n_prompt_tokens = n
            if n + ex.n_target_tokens > self.max_length:  # the estimate was off: fit again, counting exactly
                self.counters["refitted_exactly"] += 1
                ex = self.example(plan, hits, split_pool, exact=True)
            if ex is not None:
                ex.meta["split"] = split
                kept.append(ex)
        return kept

    def example(self, plan: Plan, ranked: list[str], pool: list[Chunk], exact: bool = False) -> Example | None:
        """`plan`'s example: passages assembled, fitted to the token budget, and the target they
        call for; None when it cannot fit. `exact` counts prompt tokens exactly, not estimated."""
        item, cfg, enc = plan.item, self.cfg, self.enc
        a = assemble(plan, ranked, pool, self.by_id, cfg, random.Random(f"{cfg.seed}:{item.id}"))
        gold = [x for x in (item.answers or [item.answer]) if x]
        answered = plan.answerable and a.oracle_in_context
        oracle_ids = {o.id for o in plan.oracles} if answered else set()

        def target(shown: Sequence[Chunk]) -> str:
            idx = _oracle_index(shown, oracle_ids)
            return target_text(
                gold[0] if answered else None,
                cfg.refusal,
                shown[idx].text if idx is not None else None,
                idx,
                item.evidence,
                cfg.cot,
                cfg.cite,
            )

        passages = self._fit(
            a, item.question, gold[0] if answered else "", oracle_ids, enc.n_target(target(a.passages)), exact
        )
        if passages is None:
            return None
        completion = target(passages)  # the quote comes from the passage as shown
        prompt = enc.prompt(item.question, passages)
        oracle_index = _oracle_index(passages, oracle_ids)
        return Example(
            id=content_id(item.id, str(cfg.seed), *(p.id for p in passages)),
            qa_id=item.id,
            doc_id=item_doc(item, self.by_id),
            question=item.question,
            prompt=prompt,
            completion=completion,
            answers=gold if answered else [],
            passages=[p.id for p in passages],
            passage_texts=[p.text for p in passages],
            oracle_in_context=oracle_index is not None,
            answerable=answered,
            n_prompt_tokens=enc.n_prompt(prompt) if exact else 0,  # counted in batches by the caller
            n_target_tokens=enc.n_target(completion),
            meta=_example_meta(plan, a, passages, gold, oracle_index, cfg),
        )

    def _fit(
        self, a: Assembled, question: str, answer: str, oracle_ids: set[str], n_target: int, exact: bool
    ) -> list[Chunk] | None:
        """The assembled passages within the budget the target leaves (distractors dropped, then
        passages shortened around the answer); None, counted, when even that does not fit."""
        enc = self.enc
        if exact:

            def count(ps: Sequence[Chunk]) -> int:
                return enc.n_prompt(enc.prompt(question, ps))
        else:

            def count(ps: Sequence[Chunk]) -> int:
                return enc.estimate(question, ps)

        keep = oracle_ids | ({a.answer_cut.id} if a.answer_cut else set())
        distractor_ids = [p.id for p in a.passages if p.id not in keep]
        fitted = fit_passages(a.passages, distractor_ids, answer, oracle_ids, count, self.max_length - n_target)
        if fitted.passages is None:
            self.counters["dropped_too_long"] += 1
            return None
        self.counters["distractors_dropped_for_length"] += fitted.distractors_dropped
        self.counters["passages_shortened"] += fitted.shortened
        self.counters["examples_fitted"] += bool(fitted.distractors_dropped or fitted.shortened)
        self.counters["hard_distractors"] += a.n_hard
        self.counters["random_distractors"] += a.n_random
        return fitted.passages


def _example_meta(
    plan: Plan, a: Assembled, passages: list[Chunk], gold: list[str], oracle_index: int | None, cfg: BuildConfig
) -> dict[str, Any]:
    """How an example was made, for `ragtune inspect` and the dataset card."""
    return {
        "kind": plan.kind,
        "question_answerable": plan.answerable,
        "question_answers": gold,
        "oracle_index": oracle_index,
        "passage_titles": [p.title for p in passages],
        "passage_docs": [p.doc_id for p in passages],
        "distractors": cfg.distractors,
        "n_hard": a.n_hard,
        "n_random": a.n_random,
        "answer_cut": a.answer_cut is not None and any(p.id == a.answer_cut.id for p in passages),
        "origin": plan.item.origin,
        "cot": cfg.cot,
        "cite": cfg.cite,
        "seed": cfg.seed,
    }


def _lengths(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    return {
        "min": v[0],
        "mean": round(statistics.fmean(v), 1),
        "p50": v[len(v) // 2],
        "p95": v[min(len(v) - 1, int(len(v) * 0.95))],
        "max": v[-1],
    }


def _stats(
    splits: dict[str, list[Example]],
    counters: Counter[str],
    cfg: BuildConfig,
    max_length: int,
    unknown: int,
    seconds: float,
    split_of: dict[str, str],
) -> dict[str, Any]:
    rows = [e for s in SPLITS for e in splits[s]]
    qa_answerable = [e for e in rows if e.meta["question_answerable"]]
    docs_per_split = {s: sorted({d for e in splits[s] for d in [e.doc_id, *e.meta["passage_docs"]]}) for s in SPLITS}
    shared = set()
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            shared |= set(docs_per_split[a]) & set(docs_per_split[b])
    return {
        "examples": {s: len(splits[s]) for s in SPLITS},
        "total": len(rows),
        "documents": {s: len({e.doc_id for e in splits[s]}) for s in SPLITS},
        "oracle_share_answerable": round(
            sum(e.oracle_in_context for e in qa_answerable) / max(len(qa_answerable), 1), 4
        ),
        "refusal_share": round(sum(not e.answerable for e in rows) / max(len(rows), 1), 4),
        "unanswerable_share": round(sum(not e.meta["question_answerable"] for e in rows) / max(len(rows), 1), 4),
        "by_kind": dict(Counter(e.meta["kind"] for e in rows)),
        "answer_cut_examples": sum(bool(e.meta.get("answer_cut")) for e in rows),
        "passages_per_example": _lengths([len(e.passages) for e in rows]),
        "prompt_tokens": _lengths([e.n_prompt_tokens for e in rows]),
        "target_tokens": _lengths([e.n_target_tokens for e in rows]),
        "total_tokens": _lengths([e.n_prompt_tokens + e.n_target_tokens for e in rows]),
        "max_length": max_length,
        "items_without_oracle_chunk": unknown,
        "documents_shared_between_splits": len(shared),
        **{
            k: counters.get(k, 0)
            for k in (
                "dropped_too_long",
                "examples_fitted",
                "distractors_dropped_for_length",
                "passages_shortened",
                "hard_distractors",
                "random_distractors",
                "refitted_exactly",
            )
        },
        "seconds": round(seconds, 2),
        "examples_per_s": round(len(rows) / max(seconds, 1e-9), 1),
    }


def to_dataset_dict(splits: dict[str, list[Example]]) -> Any:
    """A `datasets.DatasetDict` with the same columns in every split (empty splits included)."""
    from datasets import Dataset, DatasetDict

    rows = [to_dict(e) for s in SPLITS for e in splits[s]]
    full = Dataset.from_list(rows)
    out, start = {}, 0
    for s in SPLITS:
        n = len(splits[s])
        out[s] = full.select(range(start, start + n))
        start += n
    return DatasetDict(out)


def build(
    qa: Sequence[QAItem], chunks: Sequence[Chunk], cfg: BuildConfig, tokenizer: Any, retriever: Any = None
) -> Any:
    """The dataset as a `datasets.DatasetDict` (train / validation / test of `Example` rows)."""
    return to_dataset_dict(assemble_examples(qa, chunks, cfg, tokenizer, retriever).splits)


def build_to_run(run_dir: Path, cfg: BuildConfig, tokenizer: Any = None) -> BuildResult:
    """Read RUN/qa.jsonl and RUN/chunks.jsonl; write RUN/dataset (HF dataset on disk, one JSONL
    per split, the prompt template, build_report.json); record the stage."""
    from rich.console import Console

    from ragtune.models import load_tokenizer
    from ragtune.retrieval import index_for_run

    run = RunFolder(Path(run_dir))
    if not run.qa.is_file():
        raise RagtuneError(f"{run.qa} not found; run `ragtune synth --run {run.root}` or `ragtune import` first")
    run.ensure()
    qa = list(read_jsonl(run.qa, QAItem))
    chunks = list(read_jsonl(run.chunks, Chunk)) if run.chunks.is_file() else []
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        source = tokenizer or run.base_model
        if not tokenizer and not Path(source).is_dir():
            raise RagtuneError(
                f"no tokenizer given and {run.base_model} does not exist; pass --tokenizer (a model folder or hub id)"
            )
        tokenizer = load_tokenizer(source)
    retriever = None
    if chunks and cfg.distractors != "random":
        retriever = index_for_run(run.index, cfg.retriever, chunks, cfg.dense_model)
    result = assemble_examples(qa, chunks, cfg, tokenizer, retriever)
    write_dataset(result, run.dataset, cfg)
    if cfg.push_to_hub:  # only when asked: it publishes the data
        to_dataset_dict(result.splits).push_to_hub(cfg.push_to_hub, private=True)
    run.record_stage(
        "build",
        config=cfg,
        inputs=[run.qa, run.chunks],
        **{
            k: result.stats[k]
            for k in (
                "examples",
                "oracle_share_answerable",
                "unanswerable_share",
                "dropped_too_long",
                "documents_shared_between_splits",
                "seconds",
            )
        },
    )
    s = result.stats
    Console(stderr=True).print(
        f"build: {s['examples']} examples, oracle in context for {s['oracle_share_answerable']:.1%} of "
        f"answerable questions, {s['unanswerable_share']:.1%} unanswerable, {s['dropped_too_long']} dropped "
        f"as too long, in {s['seconds']} s -> {run.dataset}"
    )
    return result


def write_dataset(result: BuildResult, out_dir: Path, cfg: BuildConfig) -> Path:
    """Write into a temporary folder and swap it in, so a killed build leaves the old dataset."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    import datasets

    quiet = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        to_dataset_dict(result.splits).save_to_disk(str(tmp))
    finally:
        if quiet:
            datasets.enable_progress_bars()
    for s in SPLITS:
        write_jsonl(RunFolder.split_file(tmp, s), result.splits[s])
    result.template.save(tmp)
    (tmp / RunFolder.BUILD_REPORT).write_text(json.dumps(result.stats, indent=2), encoding="utf-8")
    first = next((to_dict(result.splits[s][0]) for s in SPLITS if result.splits[s]), None)
    card = dataset_card(
        result.stats, cfg, result.template.style, str(result.template.extra.get("tokenizer", "")), first
    )
    (tmp / "README.md").write_text(card, encoding="utf-8")
    if cfg.formats:
        from ragtune.build.exports import export_dataset

        export_dataset(result.splits, result.template, tmp, list(cfg.formats), result.eos)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def inspect_dataset(
    dataset: str | Path, n: int = 3, tokenizer: Any = None, split: str = "train", console: Any = None
) -> dict[str, Any]:
    """`ragtune inspect`: see build/inspect.py."""
    from ragtune.build.inspect import inspect_dataset as _inspect

    return _inspect(dataset, n=n, tokenizer=tokenizer, split=split, console=console)


__all__ = [
    "BuildResult",
    "assemble_examples",
    "build",
    "build_to_run",
    "contains_answer",
    "inspect_dataset",
    "load_examples",
    "overlaps",
    "to_dataset_dict",
    "write_dataset",
]
