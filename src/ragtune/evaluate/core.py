"""Running models on evaluation items: greedy predictions (cached) and teacher-forced answer NLL.

Every model sees exactly the same items and the same prompt text; prompts are tokenised with
`prompts.prompt_ids`, the prefix the model was trained to continue, and generation is the
shared batched greedy path of `ragtune.generation`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ragtune.abstain import RefusalRule, answer_with_rule
from ragtune.config import EvalConfig
from ragtune.generation import stop_strings
from ragtune.metrics import ItemScore, aggregate, score_item
from ragtune.modelstore import local_folder
from ragtune.prompts import IGNORE_INDEX, PromptTemplate, encode_example, prompt_ids
from ragtune.records import Example, append_jsonl, content_id, read_jsonl


@dataclass
class ModelSpec:
    """One model to score: a base model, optionally with a PEFT adapter on top."""

    name: str
    base_model: str
    adapter: str | None = None


@dataclass
class ModelOutput:
    predictions: list[str]
    scores: list[ItemScore]
    nll: list[float]  # summed over each item's answer tokens
    n_tokens: list[int]
    seconds: float  # generation wall time of the items not found in the cache
    n_generated: int
    metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- prediction cache
def model_fingerprint(path: str | None) -> str:
    """Identity of a model folder or hub id: the content of its small JSON files plus the size
    and mtime of its weights, so retraining into the same folder invalidates cached predictions
    while a copied run folder (mtimes kept) still finds them."""
    if not path:
        return ""
    p = Path(path)
    if not p.exists():
        return str(path)  # a hub id
    parts = []
    for f in sorted(p.glob("*")):
        if not f.is_file():
            continue
        if f.suffix == ".json" and f.stat().st_size < 1_000_000:
            parts.append(f"{f.name}:{content_id(f.read_text(encoding='utf-8', errors='replace'))}")
        elif f.suffix in {".safetensors", ".bin", ".pt"}:
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return content_id(*parts)


class PredictionCache:
    """Predictions keyed by (model, adapter, prompt, decoding); appended durably as they come."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, str] = {}
        if path is not None and path.is_file():
            for row in read_jsonl(path, repair=True):  # a line cut by a kill is cut off
                self.entries[row["key"]] = row["prediction"]

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, prediction: str) -> None:
        self.entries[key] = prediction
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, {"key": key, "prediction": prediction})


def cache_key(spec: ModelSpec, prompt: str, cfg: EvalConfig, template: PromptTemplate, ruled: bool) -> str:
    # The adapter's fingerprint covers its rule file; `ruled` (the rule is applied) is part of
    # the key only where there is a rule, so a base model's answers serve both settings.
    # v2: adapters are merged into the weights before generating (answers may differ from v1's).
    return content_id(
        "eval-v2",
        model_fingerprint(spec.base_model),
        model_fingerprint(spec.adapter),
        prompt,
        str(cfg.max_new_tokens),
        cfg.precision,
        json.dumps(stop_strings(template)),
        "rule" if ruled else "",
    )


# ---------------------------------------------------------------- generation
def predict(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    items: Sequence[Example],
    spec: ModelSpec,
    cfg: EvalConfig,
    cache: PredictionCache,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], float, int]:
    """Greedy answers for every item; returns (predictions, generation seconds, generated count)."""
    rule = RefusalRule.find(spec.adapter, local_folder(spec.base_model)) if cfg.abstention_rule else None
    keys = [cache_key(spec, ex.prompt, cfg, template, rule is not None) for ex in items]
    out: list[str | None] = [cache.get(k) if cfg.cache else None for k in keys]
    todo = [i for i, p in enumerate(out) if p is None]
    if progress is not None and len(todo) < len(items):
        progress(len(items) - len(todo))
    ids = {i: prompt_ids(tokenizer, items[i].prompt, template) for i in todo}
    todo.sort(key=lambda i: len(ids[i]), reverse=True)  # batches of similar length
    t0 = time.perf_counter()
    for b in range(0, len(todo), cfg.batch_size):
        batch = todo[b : b + cfg.batch_size]
        texts = answer_with_rule(
            model,
            tokenizer,
            [ids[i] for i in batch],
            rule,
            template.refusal,
            questions=[items[i].question for i in batch],
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            stop_strings=stop_strings(template),
        )
        for i, text in zip(batch, texts, strict=True):
            out[i] = text
            cache.put(keys[i], text)  # finished work survives a kill
        if progress is not None:
            progress(len(batch))
    return [p or "" for p in out], time.perf_counter() - t0, len(todo)


# ---------------------------------------------------------------- answer NLL
@torch.no_grad()
def answer_nll(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    items: Sequence[Example],
    batch_size: int = 8,
    desc: str | None = None,
) -> tuple[list[float], list[int]]:
    """Teacher-forced negative log-likelihood of each reference completion (end token included),
    summed per item, with the number of answer tokens; labels exactly as in training. With
    `desc`, a progress bar (a pass over long prompts takes tens of seconds on a CPU)."""
    from tqdm.auto import tqdm

    enc = [encode_example(tokenizer, ex.prompt, ex.completion, template) for ex in items]
    nll, counts = [0.0] * len(items), [0] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(enc[i]["input_ids"]), reverse=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    bar = tqdm(total=len(items), desc=desc, unit="item", leave=False, disable=desc is None)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        bar.update(len(idx))
        width = max(len(enc[i]["input_ids"]) for i in idx)
        # Left padding puts every answer at the end, so only the last K logits are needed.
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(enc[i]["input_ids"])
            ids[r, width - n :] = torch.tensor(enc[i]["input_ids"])
            labels[r, width - n :] = torch.tensor(enc[i]["labels"])
            mask[r, width - n :] = 1
        keep = int((labels != IGNORE_INDEX).sum(dim=1).max()) + 1
        keep = min(keep, width)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=keep,
        ).logits.float()
        target = labels[:, width - keep + 1 :].to(device)
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(len(idx), -1)
        valid = target != IGNORE_INDEX
        for r, i in enumerate(idx):
            nll[i] = float(losses[r][valid[r]].sum())
            counts[i] = int(valid[r].sum())
    bar.close()
    return nll, counts


# ---------------------------------------------------------------- one model, all items
def run_model(
    spec: ModelSpec,
    items: Sequence[Example],
    template: PromptTemplate,
    cfg: EvalConfig,
    cache: PredictionCache,
    loaded: tuple[Any, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    with_nll: bool = True,
) -> ModelOutput:
    """Predictions, scores and answer NLL of one model on `items`."""
    from ragtune.models import load_model

    model, tokenizer = loaded or load_model(spec.base_model, spec.adapter, precision=cfg.precision)
    preds, seconds, n_gen = predict(model, tokenizer, template, items, spec, cfg, cache, progress)
    scores = [
        score_item(
            p,
            ex.answers if ex.answerable else [],
            cfg.refusal,
            context="\n\n".join(ex.passage_texts),
            passage_texts=ex.passage_texts,
        )
        for p, ex in zip(preds, items, strict=True)
    ]
    nll, counts = (
        answer_nll(
            model,
            tokenizer,
            template,
            items,
            cfg.batch_size,
            desc=f"{spec.name} answer NLL" if progress is not None else None,
        )
        if with_nll
        else ([], [])
    )
    out = ModelOutput(preds, scores, nll, counts, seconds, n_gen)
    metrics = aggregate(scores, [ex.answerable for ex in items])
    metrics["answer_nll"] = round(sum(nll) / sum(counts), 4) if counts and sum(counts) else None
    metrics["items_per_s"] = round(n_gen / seconds, 2) if n_gen and seconds > 0 else None
    metrics["n_cached"] = len(items) - n_gen
    out.metrics = metrics
    return out
