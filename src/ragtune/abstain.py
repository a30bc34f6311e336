"""A calibrated decision to abstain, saved beside the adapter.

Under greedy decoding a small model says whichever target it saw more often, so it rarely
refuses even after training on refusals. Two scores tell when it should:
- support: the mean log-probability of the question's own tokens given the system text and the
  context, read from the prefill that generation runs anyway. When the passages hold what the
  question is about, the model predicts its words far better (the question-likelihood score
  that UPR, Sachan et al. 2022, uses to rerank passages);
- confidence: the answer's mean log-probability per token; unsure answers are often wrong.
SQuAD 2.0 systems answer "no answer" below a score threshold tuned on the development set;
`train` picks a threshold for each score that together maximise SQuAD-v2 F1 on the validation
split (refusing at most a set share of the questions whose answer is there) and saves them;
eval, ask and serve replace an answer below either with the refusal.

Measured on the quickstart (SmolLM2-135M, 40 LoRA steps), AUC of each score for telling refusal
targets from answerable questions: support 1.00 on validation and 0.997 on the held-out test,
confidence 0.82 and 0.68. On SQuAD 2.0's human questions, whose unanswerable ones were written
against the very paragraph they are asked with, support reaches 0.65 and confidence 0.55.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.metrics import f1, gold_answers, is_refusal
from ragtune.prompts import PromptTemplate, prompt_ids, question_span

ABSTAIN_FILE = "ragtune_abstain.json"


@dataclass
class RefusalRule:
    """Answer with the refusal when the answer's mean log-probability per token is below
    `threshold`, or the question's mean log-probability given the context is below
    `support_threshold` (None: not used, as in rules saved before it existed)."""

    threshold: float
    calibration: dict[str, Any] = field(default_factory=dict)  # what it was chosen on, and the scores
    support_threshold: float | None = None

    def refuses(self, confidence: float, support: float | None = None) -> bool:
        unsupported = self.support_threshold is not None and support is not None and support < self.support_threshold
        return confidence < self.threshold or unsupported

    def describe(self) -> str:
        """When it refuses, in words (for logs)."""
        parts = []
        if self.support_threshold is not None:
            parts.append(f"when the question's mean log-prob given the context is below {self.support_threshold:.3f}")
        if self.threshold > -1e9:
            parts.append(f"when the answer's mean log-prob per token is below {self.threshold:.3f}")
        return " or ".join(parts) or "only where the model itself refuses"

    def apply(self, text: str, confidence: float, refusal: str, support: float | None = None) -> str:
        return refusal if self.refuses(confidence, support) else text

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / ABSTAIN_FILE
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return path

    @classmethod
    def find(cls, *folders: str | Path | None) -> RefusalRule | None:
        """The rule in the first of `folders` that has one (an adapter before its base: a merged
        or GGUF export carries its rule beside the weights), else None."""
        for folder in folders:
            path = Path(folder) / ABSTAIN_FILE if folder else None
            if path is not None and path.is_file():
                return cls(**json.loads(path.read_text(encoding="utf-8")))
        return None


def question_spans(
    tokenizer: Any, prompts: Sequence[list[int]], questions: Sequence[str]
) -> list[tuple[int, int] | None]:
    """Each prompt's question tokens, which the rule's support score reads."""
    return [question_span(tokenizer, ids, q) for ids, q in zip(prompts, questions, strict=True)]


def answer_with_rule(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    rule: RefusalRule | None,
    refusal: str,
    questions: Sequence[str] | None = None,
    **kw: Any,
) -> list[str]:
    """Greedy answers, each replaced by the refusal where `rule` says to abstain (`questions`, one
    per prompt, give the support score; without them only the answer's confidence counts)."""
    from ragtune.generation import greedy_completions

    if rule is None:
        return [c.text for c in greedy_completions(model, tokenizer, prompts, **kw)]
    scored = questions is not None and rule.support_threshold is not None
    spans = question_spans(tokenizer, prompts, questions) if scored else None  # type: ignore[arg-type]
    done = greedy_completions(model, tokenizer, prompts, with_confidence=True, spans=spans, **kw)
    return [rule.apply(c.text, float(c.confidence), refusal, c.support) for c in done]


def calibrate(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    rows: Any,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    max_answerable_refused: float = 1.0,
) -> RefusalRule | None:
    """The rule that maximises SQuAD-v2 F1 on `rows` (dataset rows with prompt, completion,
    answers, and question for the support score) refusing at most `max_answerable_refused` of
    the rows whose target is an answer; None when the rows do not hold both answers and refusals
    to choose between."""
    from tqdm.auto import tqdm

    from ragtune.generation import greedy_completions

    wants_refusal = [c.strip().startswith(template.refusal) for c in rows["completion"]]
    if all(wants_refusal) or not any(wants_refusal):
        return None
    ids = [prompt_ids(tokenizer, p, template) for p in rows["prompt"]]
    spans = question_spans(tokenizer, ids, rows["question"]) if "question" in rows.column_names else None
    was_training = model.training
    model.eval()
    with tqdm(total=len(ids), desc="abstention calibration", unit="example", leave=False, file=sys.stderr) as bar:
        done = greedy_completions(
            model,
            tokenizer,
            ids,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=bar.update,
            with_confidence=True,
            spans=spans,
        )
    model.train(was_training)
    texts = [c.text for c in done]
    refused = [is_refusal(t, template.refusal) for t in texts]
    answer_f1 = [max(f1(t, g) for g in gold_answers(a) or [""]) for t, a in zip(texts, rows["answers"], strict=True)]
    scores = Scores([float(c.confidence) for c in done], [c.support for c in done], wants_refusal, answer_f1, refused)
    threshold, support_threshold, summary = best_thresholds(scores, max_answerable_refused)
    return RefusalRule(threshold, {"examples": len(texts), **summary}, support_threshold)


@dataclass
class Scores:
    """Per validation item: the two scores, whether a refusal is the target, the answer's F1,
    and whether the model refused by itself."""

    confidence: Sequence[float]
    support: Sequence[float | None]
    wants_refusal: Sequence[bool]
    answer_f1: Sequence[float]
    refused: Sequence[bool]


def _cuts(values: np.ndarray, limit: int = 64) -> np.ndarray:
    """Candidate thresholds: -inf (refuse none) and the midpoints between the distinct finite
    values, thinned to `limit` by quantile on large sets."""
    v = np.unique(values[np.isfinite(values)])
    mids = (v[1:] + v[:-1]) / 2
    if len(mids) > limit:
        mids = np.unique(np.quantile(mids, np.linspace(0, 1, limit)))
    return np.concatenate([[-np.inf], mids])


def best_thresholds(
    scores: Scores, max_answerable_refused: float = 1.0
) -> tuple[float, float | None, dict[str, float]]:
    """The thresholds (confidence, support) with the highest SQuAD-v2 F1 over the items among
    those that refuse at most `max_answerable_refused` of the items whose answer is in the
    context (the model's own refusals count too); ties go to fewer refusals, then to lower
    thresholds. Returns them (support None when refusing on it does not help) and the F1 and
    refusal shares they give."""
    conf = np.asarray(scores.confidence, dtype=float)
    sup = np.asarray([np.inf if s is None else s for s in scores.support], dtype=float)
    wants = np.asarray(scores.wants_refusal, dtype=bool)
    f1s = np.asarray(scores.answer_f1, dtype=float)
    own = np.asarray(scores.refused, dtype=bool)
    tc, ts = _cuts(conf[~own]), _cuts(sup[~own])
    refuse = own | (conf[None, None, :] < tc[:, None, None]) | (sup[None, None, :] < ts[None, :, None])
    item = np.where(refuse, wants, np.where(wants, 0.0, f1s))  # SQuAD v2: a refusal is right only where wanted
    total = item.sum(-1).round(9)
    n_answerable = max(1, int((~wants).sum()))
    answerable_refused = (refuse & ~wants).sum(-1) / n_answerable
    excess = np.maximum(0.0, answerable_refused - max_answerable_refused).round(9)
    i_c, i_s = np.meshgrid(np.arange(len(tc)), np.arange(len(ts)), indexing="ij")
    order = np.lexsort((i_s.ravel(), i_c.ravel(), refuse.sum(-1).ravel(), -total.ravel(), excess.ravel()))
    c, s = np.unravel_index(order[0], total.shape)
    n = len(wants)
    chosen = refuse[c, s]
    return (
        round(float(tc[c]), 4) if np.isfinite(tc[c]) else -1e9,
        round(float(ts[s]), 4) if np.isfinite(ts[s]) else None,
        {
            "f1_without_rule": round(100 * float(np.where(own, wants, np.where(wants, 0.0, f1s)).sum()) / n, 2),
            "f1_with_rule": round(100 * float(total[c, s]) / n, 2),
            "refused": round(100 * float(chosen.mean()), 2),
            "answerable_refused": round(100 * float(answerable_refused[c, s]), 2),
            "refusal_targets_refused": round(100 * float(chosen[wants].sum()) / max(1, int(wants.sum())), 2),
        },
    )
