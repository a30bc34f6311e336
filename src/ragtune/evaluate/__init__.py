"""`ragtune eval`: the base model and each tuned adapter on the same items with the same prompts.

`evaluate` scores models on a list of `Example`s; `evaluate_run` finds the items (the run's
held-out split, or an imported QA file rendered with the run's prompt template), the base
model and the adapters, and writes RUN/eval/: metrics.json, predictions.jsonl, report.md,
report.html and the plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.adapter_check import check_adapter_fits
from ragtune.config import REFUSAL, EvalConfig
from ragtune.errors import RagtuneError
from ragtune.evaluate.core import ModelOutput, ModelSpec, PredictionCache, answer_nll, predict, run_model
from ragtune.evaluate.report import comparison_table, format_table, markdown_table, print_table
from ragtune.models import is_tuned_dir
from ragtune.modelstore import local_folder
from ragtune.prompts import Passage, PromptTemplate
from ragtune.records import Example, QAItem, from_dict, read_text_file, write_jsonl
from ragtune.runfolder import RunFolder

__all__ = [
    "EvalResult",
    "ModelSpec",
    "ModelOutput",
    "PredictionCache",
    "answer_nll",
    "comparison_table",
    "evaluate",
    "evaluate_run",
    "format_table",
    "markdown_table",
    "predict",
    "print_table",
    "qa_examples",
    "model_specs",
    "resolve_base_model",
    "score_prediction_file",
]


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # the metrics.json content
    rows: list[dict[str, Any]]  # one per item, every model's prediction and scores
    outputs: dict[str, ModelOutput]


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", leave=False, dynamic_ncols=True)


def evaluate(
    items: Sequence[Example],
    models: Sequence[ModelSpec],
    cfg: EvalConfig,
    template: PromptTemplate,
    cache_path: Path | None = None,
    dataset: str = "",
    show_progress: bool = True,
) -> EvalResult:
    """Greedy predictions, SQuAD v2 scores and answer NLL of every model on the same items."""
    if not items:
        raise RagtuneError("no evaluation items; check the split name or the QA file")
    if not models:
        raise RagtuneError("no model to evaluate; pass --base-model and/or --adapter")
    cache = PredictionCache(cache_path if cfg.cache else None)
    outputs: dict[str, ModelOutput] = {}
    for spec in models:
        bar = _progress_bar(len(items), spec.name) if show_progress else None
        try:
            outputs[spec.name] = run_model(spec, items, template, cfg, cache, progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
    metrics = {"dataset": dataset, "n": len(items), "models": {name: out.metrics for name, out in outputs.items()}}
    return EvalResult(metrics, item_rows(items, outputs), outputs)


def item_rows(items: Sequence[Example], outputs: dict[str, ModelOutput]) -> list[dict[str, Any]]:
    rows = []
    for i, ex in enumerate(items):
        per_model = {}
        for name, out in outputs.items():
            s = out.scores[i]
            tokens = out.n_tokens[i] if out.n_tokens else 0
            per_model[name] = {
                "prediction": out.predictions[i],
                "answer": s.answer,
                "refused": s.refused,
                "em": s.em,
                "f1": round(s.f1, 4),
                "contains": s.contains,
                "rouge_l": round(s.rouge_l, 4),
                "quote_validity": s.quote_validity,
                "citation_precision": s.citation_precision,
                "nll": round(out.nll[i] / tokens, 4) if tokens else None,
            }
        rows.append(
            {
                "id": ex.id,
                "qa_id": ex.qa_id,
                "question": ex.question,
                "answers": ex.answers,
                "answerable": ex.answerable,
                "oracle_in_context": ex.oracle_in_context,
                "passages": ex.passages,
                "models": per_model,
            }
        )
    return rows


# ---------------------------------------------------------------- finding items and models
def tuned_and_base(
    run: RunFolder, adapters: Sequence[str | Path] | None, base_model: str | None
) -> tuple[list[Path], str]:
    """The adapters to score (RUN/adapter by default) and the base they go on, each checked to fit."""
    adapter_dirs = [Path(a) for a in adapters] if adapters else ([run.adapter] if is_tuned_dir(run.adapter) else [])
    for a in adapter_dirs:
        if not is_tuned_dir(a):
            raise RagtuneError(f"'{a}' holds no adapter or model; pass a folder `ragtune train` wrote")
    base = resolve_base_model(run, base_model, adapter_dirs)
    for a in adapter_dirs:
        check_adapter_fits(a, base)
    return adapter_dirs, base


def resolve_base_model(run: RunFolder, base_model: str | None, adapters: Sequence[Path]) -> str:
    """--base-model, else the first adapter's recorded base, else RUN/base_model."""
    from ragtune.models import base_model_of

    if base_model:
        return str(base_model)
    if adapters:
        return base_model_of(adapters[0])
    if (run.base_model / "config.json").is_file():
        return str(run.base_model)
    raise RagtuneError(f"no base model found for {run.root}; pass --base-model (a model folder or hub id)")


def model_specs(base: str, adapters: Sequence[Path]) -> list[ModelSpec]:
    specs = [ModelSpec("base", base)]
    if len(adapters) == 1:
        return [*specs, ModelSpec("tuned", base, str(adapters[0]))]
    seen: set[str] = {"base"}
    for a in adapters:
        name, j = Path(a).name or "tuned", 2
        while name in seen:
            name, j = f"{Path(a).name}-{j}", j + 1
        seen.add(name)
        specs.append(ModelSpec(name, base, str(a)))
    return specs


def dataset_examples(dataset_dir: Path, split: str) -> list[Example]:
    """Rows of one split of a `ragtune build` dataset (HF dataset on disk, else SPLIT.jsonl)."""
    from ragtune.records import read_jsonl

    if (dataset_dir / RunFolder.DATASET_DICT).is_file():
        from datasets import load_from_disk

        dd = load_from_disk(str(dataset_dir))
        if split not in dd:
            raise RagtuneError(f"{dataset_dir} has no split '{split}' (has {', '.join(dd)}); pass --split")
        return [from_dict(Example, row) for row in dd[split]]
    jsonl = RunFolder.split_file(dataset_dir, split)
    if jsonl.is_file():
        return list(read_jsonl(jsonl, Example))
    raise RagtuneError(f"no dataset split '{split}' in {dataset_dir}; run `ragtune build` first or pass --qa FILE")


def qa_examples(qa: Sequence[QAItem], tokenizer: Any, template: PromptTemplate) -> list[Example]:
    """Imported QA rendered as prompts from each item's own contexts with the model's template."""
    out = []
    for q in qa:
        title = str(q.meta.get("title", "")) if q.meta else ""
        passages = [Passage(title=title or f"Passage {j + 1}", text=c) for j, c in enumerate(q.contexts)]
        answers = [a for a in (q.answers or [q.answer]) if a] if q.answerable else []
        out.append(
            Example(
                id=q.id,
                qa_id=q.id,
                doc_id=q.doc_id or "",
                question=q.question,
                prompt=template.render(tokenizer, q.question, passages),
                completion=answers[0] if answers else template.refusal,
                answers=answers,
                passages=[],
                passage_texts=list(q.contexts),
                oracle_in_context=q.answerable,
                answerable=q.answerable and bool(answers),
                meta={"origin": q.origin},
            )
        )
    return out


def load_template(candidates: Sequence[Path | None], tokenizer_source: str, refusal: str) -> PromptTemplate:
    found = PromptTemplate.find(*candidates)
    if found is not None:
        return found
    from ragtune.models import load_tokenizer

    return PromptTemplate.for_tokenizer(load_tokenizer(tokenizer_source), refusal=refusal)


def score_prediction_file(
    qa: str | Path, predictions: str | Path | dict[str, str], refusal: str | None = None
) -> dict[str, Any]:
    """Score a prediction file ({question id: answer text}, the official SQuAD v2 input) against
    a QA file, exactly as the official SQuAD v2 script does: overall, HasAns_* and NoAns_*.
    With `refusal`, refusal sentences first count as the empty answer."""
    from ragtune.metrics import exact_match, f1, max_over, scored_answer
    from ragtune.qa_formats import import_file

    if isinstance(predictions, dict):
        preds = predictions
    else:
        try:
            preds = json.loads(read_text_file(predictions))
        except (OSError, json.JSONDecodeError) as e:
            raise RagtuneError(
                f"cannot read predictions {predictions} ({type(e).__name__}); pass a JSON "
                "object mapping question id to answer text"
            ) from None
        if not isinstance(preds, dict):
            raise RagtuneError(f"{predictions}: expected a JSON object mapping question id to answer text")
    items = import_file(qa)
    exact, f1s, has = {}, {}, {}
    for q in items:
        pred = str(preds.get(q.id, ""))
        if refusal is not None:
            pred = scored_answer(pred, refusal)
        golds = q.answers if q.answerable else []
        exact[q.id], f1s[q.id], has[q.id] = max_over(exact_match, pred, golds), max_over(f1, pred, golds), bool(golds)

    def block(ids: list[str]) -> dict[str, float]:
        return {
            "exact": 100.0 * sum(exact[i] for i in ids) / len(ids),
            "f1": 100.0 * sum(f1s[i] for i in ids) / len(ids),
            "total": len(ids),
        }

    out = block(list(exact))
    for prefix, ids in (("HasAns", [i for i in exact if has[i]]), ("NoAns", [i for i in exact if not has[i]])):
        if ids:
            out.update({f"{prefix}_{k}": v for k, v in block(ids).items()})
    out["missing_predictions"] = sum(1 for i in exact if i not in preds)
    return out


# ---------------------------------------------------------------- the stage
def evaluate_run(
    run_dir: str | Path,
    cfg: EvalConfig,
    base_model: str | None = None,
    adapters: Sequence[str | Path] | None = None,
    qa: str | Path | None = None,
    out_dir: str | Path | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Score base and tuned models on the run's held-out split (or `qa`) and write RUN/eval/.

    Returns the metrics.json content; `format_table(metrics)` is the before/after table.
    `show` turns the progress bars on."""
    run = RunFolder(Path(run_dir))
    out = RunFolder(Path(out_dir) if out_dir else run.eval).ensure().root  # unwritable: fails before any work
    t0 = time.perf_counter()
    adapter_dirs, base = tuned_and_base(run, adapters, base_model)
    specs = model_specs(base, adapter_dirs)
    tok_source = (
        str(adapter_dirs[0]) if adapter_dirs and (adapter_dirs[0] / "tokenizer_config.json").is_file() else base
    )
    # Templates are looked for with the adapters, then beside the base's weights (an export's).
    model_dirs = [*adapter_dirs, local_folder(base)]
    items, template, source = eval_items(run, cfg, qa, model_dirs, tok_source)
    if cfg.limit:
        items = items[: cfg.limit]
    if cfg.refusal == REFUSAL and template.refusal != REFUSAL:
        # The dataset was built with its own refusal sentence: detect that one.
        cfg = cfg.model_copy(update={"refusal": template.refusal})
    result = evaluate(items, specs, cfg, template, cache_path=run.eval_cache, dataset=source, show_progress=show)
    metrics = result.metrics
    metrics["models_evaluated"] = {s.name: {"base_model": s.base_model, "adapter": s.adapter} for s in specs}
    if cfg.judge:
        from ragtune.evaluate.judge import judge_rows

        metrics["judge"] = judge_rows(result.rows, ["\n\n".join(ex.passage_texts) for ex in items], cfg)
    if cfg.robustness and qa is None:
        from ragtune.evaluate.robustness import robustness_for_run

        rob = robustness_for_run(run, items, specs, cfg, template, show_progress=show)
        if rob:
            metrics["robustness"] = rob
    write_outputs(out, metrics, result.rows, cfg)
    inputs = (
        [Path(qa)]
        if qa is not None
        else [run.dataset / RunFolder.DATASET_DICT, RunFolder.split_file(run.dataset, cfg.split)]
    )
    inputs += [a / "adapter_model.safetensors" for a in adapter_dirs]
    run.record_stage(
        "eval",
        config=cfg,
        inputs=inputs,
        seconds=round(time.perf_counter() - t0, 1),
        n=metrics["n"],
        models=list(metrics["models"]),
        dataset=source,
    )
    return metrics


def eval_items(
    run: RunFolder,
    cfg: EvalConfig,
    qa: str | Path | None,
    model_dirs: Sequence[Path | None],
    tok_source: str,
) -> tuple[list[Example], PromptTemplate, str]:
    """The items to score, the template they are asked with, and a name for their source.
    `model_dirs`: adapter and model folders that may hold a saved template, in order."""
    if qa is not None:
        from ragtune.models import load_tokenizer
        from ragtune.qa_formats import import_file

        template = load_template([*model_dirs, run.dataset], tok_source, cfg.refusal)
        return qa_examples(import_file(qa), load_tokenizer(tok_source), template), template, str(qa)
    # Items keep the prompt text the build rendered; the dataset's template says how to tokenise it.
    items = dataset_examples(run.dataset, cfg.split)
    return items, load_template([run.dataset, *model_dirs], tok_source, cfg.refusal), f"{run.dataset}:{cfg.split}"


def write_outputs(out: Path, metrics: dict[str, Any], rows: list[dict[str, Any]], cfg: EvalConfig) -> None:
    from ragtune.evaluate.report import report_markdown, write_json

    images: list[str] = []
    try:
        from ragtune.evaluate.plots import write_plots

        images = write_plots(out, metrics)
    except ImportError:  # matplotlib missing: the numbers still get written
        images = []
    write_json(out / RunFolder.METRICS, metrics)
    write_jsonl(out / RunFolder.PREDICTIONS, rows)
    (out / RunFolder.REPORT_MD).write_text(report_markdown(metrics, rows, images), encoding="utf-8")
    if cfg.html:
        from ragtune.evaluate.html import write_html

        write_html(out / RunFolder.REPORT_HTML, metrics, rows, [out / i for i in images])
