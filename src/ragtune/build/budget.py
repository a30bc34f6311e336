"""Token budget: the rendered prompt plus the target must fit the model's context length.

When an example is too long, distractors go first (least relevant first), then every passage
is cut down: the oracle to a window around the answer, the others from their end. The
question and the answer are never cut; an example that still does not fit is dropped and
counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ragtune.records import Chunk


@dataclass
class Fitted:
    passages: list[Chunk] | None  # None: the example cannot fit and is dropped
    distractors_dropped: int = 0
    shortened: int = 0  # passages cut down


def _window(text: str, answer: str, n_chars: int) -> str:
    """About n_chars of text centred on the answer's first occurrence, cut at word boundaries
    and never through the answer."""
    if n_chars >= len(text):
        return text
    pos = text.lower().find(answer.lower()) if answer else -1
    if pos < 0:
        start, end, keep_from, keep_to = 0, n_chars, 0, 1
    else:
        n = max(n_chars, len(answer))
        start = max(0, min(pos - (n - len(answer)) // 2, len(text) - n))
        end, keep_from, keep_to = start + n, pos, pos + len(answer)
    if start > 0:
        nxt = text.find(" ", start)
        if 0 <= nxt < keep_from:
            start = nxt + 1
    if end < len(text):
        prv = text.rfind(" ", start, end)
        if prv >= keep_to:
            end = prv
    return text[start:end].strip()


def fit_passages(
    passages: Sequence[Chunk],
    distractors_by_rank: Sequence[str],
    answer: str,
    oracle_ids: set[str],
    n_tokens: Callable[[Sequence[Chunk]], int],
    budget: int,
) -> Fitted:
    """Passages whose prompt (`n_tokens`) fits `budget` tokens, following the rules above."""
    shown = list(passages)
    if n_tokens(shown) <= budget:
        return Fitted(shown)
    dropped = 0
    for cid in reversed(distractors_by_rank):
        if len(shown) <= 1 or not any(p.id == cid for p in shown):
            continue
        shown = [p for p in shown if p.id != cid]
        dropped += 1
        if n_tokens(shown) <= budget:
            return Fitted(shown, dropped)
    # shorten every remaining passage by the same fraction, found by bisection
    lo, hi, best = 0.0, 1.0, None
    for _ in range(12):
        mid = (lo + hi) / 2
        trial = _shrink(shown, mid, answer, oracle_ids)
        if n_tokens(trial) <= budget:
            best, lo = trial, mid
        else:
            hi = mid
    if best is None:
        trial = _shrink(shown, 0.0, answer, oracle_ids)
        if n_tokens(trial) > budget:
            return Fitted(None, dropped)
        best = trial
    return Fitted(best, dropped, sum(a.text != b.text for a, b in zip(shown, best, strict=True)))


def _shrink(passages: Sequence[Chunk], keep: float, answer: str, oracle_ids: set[str]) -> list[Chunk]:
    out = []
    for p in passages:
        n = int(len(p.text) * keep)
        if p.id in oracle_ids:
            text = _window(p.text, answer, n)
        else:
            text = re.sub(r"\s*\S*$", "", p.text[:n]) if n < len(p.text) else p.text
        out.append(replace(p, text=text))
    return out
