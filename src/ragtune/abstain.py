"""A calibrated decision to abstain, saved beside the adapter.

Under greedy decoding a small model says whichever target it saw more often, so it rarely
refuses even after training on refusals. SQuAD 2.0 systems answer this with a threshold on
the "no answer" score against the best answer's, tuned on the development set. Here the
score is the margin of the refusal's first token at the first generated position (its logit
minus the best other token's): `train` measures it on the validation split with the tuned
model and picks the bias that maximises SQuAD-v2 F1 there; eval, ask and serve add that bias
to the refusal's first token at the first step, and the model completes whichever answer wins.
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
MAX_BIAS = 30.0


@dataclass
class RefusalRule:
    """Add `bias` to the logit of `token_id` (the refusal's first token) at the first step."""

    token_id: int
    bias: float
    calibration: dict[str, Any] = field(default_factory=dict)  # what it was chosen on, and the scores

    def logit_bias(self) -> dict[int, float] | None:
        return {self.token_id: self.bias} if self.bias else None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / ABSTAIN_FILE
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path | None) -> RefusalRule | None:
        path = Path(directory) / ABSTAIN_FILE if directory else None
        if path is None or not path.is_file():
            return None
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def refusal_token(tokenizer: Any, template: PromptTemplate) -> int:
    """The refusal's first token as training encodes a completion (on its own, no specials)."""
    return tokenizer(template.refusal, add_special_tokens=False)["input_ids"][0]


def logit_bias_of(adapter: str | Path | None) -> dict[int, float] | None:
    rule = RefusalRule.load(adapter)
    return rule.logit_bias() if rule else None


def calibrate(
    model: Any, tokenizer: Any, template: PromptTemplate, rows: Any, max_new_tokens: int = 32,
    batch_size: int = 16, max_answerable_refused: float = 1.0,
) -> RefusalRule | None:
    """The rule that maximises SQuAD-v2 F1 on `rows` (dataset rows with prompt, completion,
    answers) refusing at most `max_answerable_refused` of the rows whose target is an answer;
    None when the rows do not hold both answers and refusals to choose between."""
    from tqdm.auto import tqdm

    from ragtune.generation import generate_scored

    wants_refusal = [c.strip().startswith(template.refusal) for c in rows["completion"]]
    if all(wants_refusal) or not any(wants_refusal):
        return None
    token = refusal_token(tokenizer, template)
    ids = [prompt_ids(tokenizer, p, template) for p in rows["prompt"]]
    was_training = model.training
    model.eval()
    with tqdm(total=len(ids), desc="abstention calibration", unit="example", leave=False, file=sys.stderr) as bar:
        texts, margins = generate_scored(model, tokenizer, ids, max_new_tokens, batch_size, progress=bar.update,
                                         gap_token=token)
    model.train(was_training)
    answer_f1 = [0.0 if is_refusal(t, template.refusal) else max(f1(t, g) for g in gold_answers(a) or [""])
                 for t, a in zip(texts, rows["answers"], strict=True)]
    bias, scores = best_bias(margins, wants_refusal, answer_f1, [is_refusal(t, template.refusal) for t in texts],
                             max_answerable_refused)
    return RefusalRule(token_id=token, bias=bias, calibration={"examples": len(texts), **scores})


def best_bias(
    margins: Sequence[float], wants_refusal: Sequence[bool], answer_f1: Sequence[float], refused: Sequence[bool],
    max_answerable_refused: float = 1.0,
) -> tuple[float, dict[str, float]]:
    """The bias b (refuse when margin + b > 0) with the highest F1 over the items among those
    that refuse at most `max_answerable_refused` of the items whose answer is in the context,
    and the F1 with no bias and with b. An answerable item that greedy decoding refused has no
    answer to score, so it counts with the mean F1 of the answered ones."""
    answered = [s for s, want, r in zip(answer_f1, wants_refusal, refused, strict=True) if not want and not r]
    fallback = sum(answered) / len(answered) if answered else 0.0
    gain = [s if not r else fallback for s, r in zip(answer_f1, refused, strict=True)]

    def total(b: float) -> float:
        return sum((1.0 if want else 0.0) if m + b > 0 else (0.0 if want else g)
                   for m, want, g in zip(margins, wants_refusal, gain, strict=True))

    cuts = sorted({-m for m in margins if abs(m) < MAX_BIAS})
    candidates = [0.0] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:], strict=False)] + \
                 [c - 0.5 for c in cuts[:1]] + [c + 0.5 for c in cuts[-1:]]
    answerable = [m for m, want in zip(margins, wants_refusal, strict=True) if not want]

    def over_limit(b: float) -> float:  # the share of answerable items refused beyond the limit
        return max(0.0, sum(m + b > 0 for m in answerable) / max(1, len(answerable)) - max_answerable_refused)

    best = max(candidates, key=lambda b: (-round(over_limit(b), 9), round(total(b), 9), -abs(b)))
    n = len(margins)
    return round(best, 4), {"f1_unbiased": round(100 * total(0.0) / n, 2),
                            "f1_calibrated": round(100 * total(best) / n, 2),
                            "refused_calibrated": round(100 * sum(m + best > 0 for m in margins) / n, 2),
                            "answerable_refused": round(100 * sum(m + best > 0 for m in answerable)
                                                        / max(1, len(answerable)), 2)}
