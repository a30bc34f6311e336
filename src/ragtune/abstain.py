"""A calibrated decision to abstain, saved beside the adapter.

Under greedy decoding a small model says whichever target it saw more often, so it rarely
refuses even after training on refusals; but when the passage it needs is missing, it is less
sure of the answer it writes. SQuAD 2.0 systems answer "no answer" below a score threshold tuned
on the development set; here the score is the answer's mean log-probability per token. `train`
picks the threshold that maximises SQuAD-v2 F1 on the validation split (refusing at most a set
share of the questions whose answer is there) and saves it; eval, ask and serve replace an
answer below it with the refusal. (Measured on the quickstart: this score separates refusal
targets from answers with AUC 0.86 on the validation split, the refusal's first-token margin 0.64.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.metrics import f1, gold_answers, is_refusal
from ragtune.prompts import PromptTemplate, prompt_ids

ABSTAIN_FILE = "ragtune_abstain.json"


@dataclass
class RefusalRule:
    """Answer with the refusal when the model's answer has a mean log-probability per token
    below `threshold`."""

    threshold: float
    calibration: dict[str, Any] = field(default_factory=dict)  # what it was chosen on, and the scores

    def apply(self, text: str, confidence: float, refusal: str) -> str:
        return refusal if confidence < self.threshold else text

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


def answer_with_rule(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    rule: RefusalRule | None,
    refusal: str,
    **kw: Any,
) -> list[str]:
    """Greedy answers, each replaced by the refusal where `rule` says the model is unsure."""
    from ragtune.generation import generate, generate_scored

    if rule is None:
        return generate(model, tokenizer, prompts, **kw)
    texts, confidence = generate_scored(model, tokenizer, prompts, **kw)
    return [rule.apply(t, c, refusal) for t, c in zip(texts, confidence, strict=True)]


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
    answers) refusing at most `max_answerable_refused` of the rows whose target is an answer;
    None when the rows do not hold both answers and refusals to choose between."""
    from tqdm.auto import tqdm

    from ragtune.generation import generate_scored

    wants_refusal = [c.strip().startswith(template.refusal) for c in rows["completion"]]
    if all(wants_refusal) or not any(wants_refusal):
        return None
    ids = [prompt_ids(tokenizer, p, template) for p in rows["prompt"]]
    was_training = model.training
    model.eval()
    with tqdm(total=len(ids), desc="abstention calibration", unit="example", leave=False, file=sys.stderr) as bar:
        texts, confidence = generate_scored(
            model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=bar.update
        )
    model.train(was_training)
    refused = [is_refusal(t, template.refusal) for t in texts]
    answer_f1 = [max(f1(t, g) for g in gold_answers(a) or [""]) for t, a in zip(texts, rows["answers"], strict=True)]
    threshold, scores = best_threshold(confidence, wants_refusal, answer_f1, refused, max_answerable_refused)
    return RefusalRule(threshold=threshold, calibration={"examples": len(texts), **scores})


def best_threshold(
    confidence: Sequence[float],
    wants_refusal: Sequence[bool],
    answer_f1: Sequence[float],
    refused: Sequence[bool],
    max_answerable_refused: float = 1.0,
) -> tuple[float, dict[str, float]]:
    """The threshold t (refuse an answer whose confidence is below t) with the highest F1 over
    the items among those that refuse at most `max_answerable_refused` of the items whose answer
    is in the context (the model's own refusals count too), with F1 and refusal shares."""
    items = list(zip(confidence, wants_refusal, answer_f1, refused, strict=True))

    def refuses(item: tuple, t: float) -> bool:
        return item[3] or item[0] < t

    def score(item: tuple, t: float) -> float:  # SQuAD v2: a refusal is right only where one is wanted
        wanted = item[1]
        if refuses(item, t):
            return 1.0 if wanted else 0.0
        return 0.0 if wanted else item[2]

    def total(t: float) -> float:
        return sum(score(it, t) for it in items)

    answerable = [it for it in items if not it[1]]

    def answerable_refused(t: float) -> float:
        return sum(refuses(it, t) for it in answerable) / max(1, len(answerable))

    cuts = sorted({c for c, _, _, r in items if not r})
    candidates = [-float("inf")] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:], strict=False)]
    best = max(
        candidates,
        key=lambda t: (-round(max(0.0, answerable_refused(t) - max_answerable_refused), 9), round(total(t), 9), -t),
    )
    n = len(items)
    return round(best, 4) if best != -float("inf") else -1e9, {
        "f1_without_rule": round(100 * total(-float("inf")) / n, 2),
        "f1_with_rule": round(100 * total(best) / n, 2),
        "refused": round(100 * sum(refuses(it, best) for it in items) / n, 2),
        "answerable_refused": round(100 * answerable_refused(best), 2),
        "refusal_targets_refused": round(
            100 * sum(refuses(it, best) for it in items if it[1]) / max(1, n - len(answerable)), 2
        ),
    }
