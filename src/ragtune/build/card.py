"""The dataset card (README.md): how the data was made and what it holds, in numbers."""

from __future__ import annotations

import json
from typing import Any

from ragtune.config import BuildConfig


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _lengths(name: str, d: dict[str, Any]) -> str:
    if not d:
        return f"| {name} | - | - | - | - | - |"
    return f"| {name} | {d['min']} | {d['mean']} | {d['p50']} | {d['p95']} | {d['max']} |"


_SPLITS = ("train", "validation", "test")

_ABOUT = (
    "Each example shows a question with retrieved passages. The passage that holds the answer "
    "(the oracle) is present with probability oracle_p among hard-negative distractors, in random "
    "order. Distractors are never the oracle, never overlap it and never contain the gold answer. "
    "Without the oracle, and for unanswerable questions, the target is the refusal. Splits are made "
    "by source document, and passages come only from documents of the example's own split."
)
_FILES = (
    "`train/`, `validation/`, `test/` (Hugging Face `load_from_disk`), `*.jsonl` (one `Example` per "
    "line: `prompt`, `completion`, `answers`, `passages`, `passage_texts`, `oracle_in_context`, "
    "`answerable`, token counts, `meta`), `ragtune_prompt.json` (the prompt template), "
    "`build_report.json` (the figures above), `exports/` (other trainers' formats, when asked). "
    "The end-of-answer token is not in `completion`; it is added when tokenising."
)


def dataset_card(
    stats: dict[str, Any],
    cfg: BuildConfig,
    template_style: str,
    tokenizer_name: str,
    example: dict[str, Any] | None = None,
) -> str:
    """README.md of a built dataset: Hub metadata, how it was made, its counts and token lengths,
    its files, and one training example when given."""
    parts = [
        _front_matter(stats["examples"]),
        "# RAG training set built by ragtune",
        _ABOUT,
        "## Recipe",
        _recipe(stats, cfg, template_style, tokenizer_name),
        "## Counts",
        _counts(stats),
        "## Token lengths",
        _length_table(stats),
        "## Files",
        _FILES,
    ]
    if example:
        shown = {k: example[k] for k in ("question", "completion", "oracle_in_context", "passages")}
        parts += [
            "## An example (train)",
            "```json\n" + json.dumps(shown, indent=1, ensure_ascii=False) + "\n```",
            "Prompt:",
            "```\n" + example["prompt"] + "\n```",
        ]
    parts.append(f"Built in {stats['seconds']} s ({stats['examples_per_s']} examples/s).")
    return "\n\n".join(parts) + "\n"


def _front_matter(examples: dict[str, int]) -> str:
    """The Hub's YAML header: one data file per non-empty split."""
    return "\n".join(
        [
            "---",
            "tags: [ragtune, rag, retrieval-augmented-generation, raft]",
            "configs:",
            "- config_name: default",
            "  data_files:",
            *(f"  - split: {s}\n    path: {s}.jsonl" for s in _SPLITS if examples.get(s)),
            "---",
        ]
    )


def _recipe(stats: dict[str, Any], cfg: BuildConfig, template_style: str, tokenizer_name: str) -> str:
    return _table(
        [
            ("oracle kept with probability (oracle_p)", cfg.oracle_p),
            ("distractors per example (k)", cfg.k_distractors),
            ("distractor mode", cfg.distractors),
            ("retriever", cfg.retriever + (f" ({cfg.dense_model})" if cfg.dense_model else "")),
            ("target unanswerable share", cfg.unanswerable_share),
            ("refusal examples showing their own chunk with the answer cut out (cut_oracle_p)", cfg.cut_oracle_p),
            ("refusal text", f"`{cfg.refusal}`"),
            ("split shares (train / validation / test), by document", " / ".join(str(x) for x in cfg.split)),
            ("token budget (prompt + target)", stats["max_length"]),
            ("chain-of-thought targets / citations", f"{cfg.cot} / {cfg.cite}"),
            ("prompt template", f"{template_style} (`ragtune_prompt.json`)"),
            ("tokenizer", tokenizer_name),
            ("seed", cfg.seed),
        ]
    )


def _counts(stats: dict[str, Any]) -> str:
    ex = stats["examples"]
    return _table(
        [
            ("examples (train / validation / test)", f"{ex['train']} / {ex['validation']} / {ex['test']}"),
            ("documents (train / validation / test)", " / ".join(str(stats["documents"][s]) for s in _SPLITS)),
            ("oracle in context, among answerable questions", f"{stats['oracle_share_answerable']:.1%}"),
            ("oracle-free examples (target: refusal), all kinds", f"{stats['refusal_share']:.1%}"),
            ("unanswerable questions", f"{stats['unanswerable_share']:.1%}"),
            ("examples by kind", ", ".join(f"{k}: {v}" for k, v in sorted(stats["by_kind"].items()))),
            ("hard / random distractors", f"{stats['hard_distractors']} / {stats['random_distractors']}"),
            ("refusal examples showing their own chunk, answer cut out", stats["answer_cut_examples"]),
            ("documents shared between splits", stats["documents_shared_between_splits"]),
            (
                "examples fitted to the budget (distractors dropped / passages shortened)",
                f"{stats['examples_fitted']} "
                f"({stats['distractors_dropped_for_length']} / {stats['passages_shortened']})",
            ),
            ("examples dropped: too long even when shortened", stats["dropped_too_long"]),
            ("QA items without a known oracle chunk (skipped)", stats["items_without_oracle_chunk"]),
        ]
    )


def _length_table(stats: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| tokens | min | mean | p50 | p95 | max |",
            "|---|---|---|---|---|---|",
            _lengths("prompt", stats["prompt_tokens"]),
            _lengths("target", stats["target_tokens"]),
            _lengths("prompt + target", stats["total_tokens"]),
        ]
    )
