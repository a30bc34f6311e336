"""Optional LLM judge over an OpenAI-compatible endpoint (`ragtune.llm_client`, as the `openai` generator):
faithfulness (share of the answer's claims the context supports) and correctness against the
reference. Refusals are never judged (the abstention matrix scores them); each judgement is
repeated with seeds seed, seed+1, ... and reported as a mean with a 95% confidence interval;
the judge model, prompts, temperature and seed are recorded with the scores.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.config import EvalConfig, SynthConfig
from ragtune.records import content_id

FAITHFULNESS = string.Template(
    "You check whether an answer is supported by a context.\n\nContext:\n$context\n\n"
    "Question: $question\n\nAnswer: $answer\n\n"
    "Split the answer into its factual claims and decide for each whether the context supports it. "
    'Reply with JSON only: {"claims": <number of claims>, "supported": <number of supported claims>}'
)
CORRECTNESS = string.Template(
    "Question: $question\nReference answer(s): $reference\nCandidate answer: $answer\n\n"
    "Does the candidate answer give the same answer as a reference answer? "
    'Reply with JSON only: {"correct": true} or {"correct": false}'
)
# Two-sided 95% Student t quantiles by degrees of freedom (repeats - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass
class JudgeInput:
    model: str
    question: str
    context: str
    answers: list[str]  # [] for unanswerable
    answer: str  # the extracted answer
    refused: bool


def _json_object(text: str) -> dict[str, Any] | None:
    m = re.search(r"\{.*?\}", text, re.S)
    if not m:
        return None
    try:
        value = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_faithfulness(text: str) -> float | None:
    obj = _json_object(text)
    try:
        claims, supported = int(obj["claims"]), int(obj["supported"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    return None if claims <= 0 else min(max(supported / claims, 0.0), 1.0)


def parse_correctness(text: str) -> float | None:
    obj = _json_object(text)
    value = obj.get("correct") if obj else None
    return float(value) if isinstance(value, bool) else None


def interval(per_repeat: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t interval over repeat means (0 with one repeat)."""
    n = len(per_repeat)
    mean = sum(per_repeat) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_repeat) / (n - 1))
    return mean, T95.get(n - 1, 1.96) * sd / math.sqrt(n)


def _calls(inputs: Sequence[JudgeInput]) -> list[tuple[int, str, str]]:
    """(input index, metric, prompt) for every judgement to make; refusals get none."""
    calls = []
    for i, x in enumerate(inputs):
        if x.refused:
            continue
        calls.append(
            (i, "faithfulness", FAITHFULNESS.substitute(context=x.context, question=x.question, answer=x.answer))
        )
        if x.answers:  # an answered unanswerable question is already wrong by the abstention matrix
            calls.append(
                (
                    i,
                    "correctness",
                    CORRECTNESS.substitute(question=x.question, answer=x.answer, reference=" | ".join(x.answers)),
                )
            )
    return calls


async def _run_calls(prompts: list[tuple[str, int]], cfg: EvalConfig) -> list[str | None]:
    from ragtune.llm_client import CallFailed, OpenAIComplete, resolve_model

    scfg = SynthConfig(
        model=cfg.judge_model,
        base_url=cfg.judge_base_url,
        api_key_env=cfg.judge_api_key_env,
        concurrency=cfg.judge_concurrency,
        temperature=cfg.judge_temperature,
        max_tokens=128,
        response_format="json_object",
    )
    complete = OpenAIComplete(scfg, cfg.judge_model or await asyncio.to_thread(resolve_model, scfg))
    base_request = complete.request
    seeds: dict[int, int] = {}

    def with_seed(messages: list[dict[str, str]], json_mode: bool) -> dict[str, Any]:
        # The backend's request plus the repeat's seed (its own requests carry none).
        req = base_request(messages, json_mode)
        return {**req, "seed": seeds.get(id(messages), cfg.judge_seed)}

    complete.request = with_seed  # type: ignore[method-assign]

    async def one(prompt: str, seed: int) -> str | None:
        messages = [{"role": "user", "content": prompt}]
        seeds[id(messages)] = seed
        try:
            return (await complete(messages, True)).text
        except CallFailed:
            return None

    try:
        return await asyncio.gather(*(one(p, s) for p, s in prompts))
    finally:
        await complete.aclose()


def judge(inputs: Sequence[JudgeInput], cfg: EvalConfig) -> dict[str, Any]:
    """Judge every non-refused prediction `cfg.judge_repeats` times; per model, the mean
    faithfulness and correctness (percent) with 95% intervals over the repeats."""
    calls = _calls(inputs)
    repeats = max(1, cfg.judge_repeats)
    replies = asyncio.run(_run_calls([(p, cfg.judge_seed + r) for r in range(repeats) for _, _, p in calls], cfg))
    models = list(dict.fromkeys(x.model for x in inputs))
    # scores[model][metric][repeat] -> list of item scores
    scores: dict[str, dict[str, list[list[float]]]] = {
        m: {"faithfulness": [[] for _ in range(repeats)], "correctness": [[] for _ in range(repeats)]} for m in models
    }
    failures = dict.fromkeys(models, 0)
    for r in range(repeats):
        for (i, metric, _), reply in zip(calls, replies[r * len(calls) : (r + 1) * len(calls)], strict=True):
            value = (
                None
                if reply is None
                else (parse_faithfulness(reply) if metric == "faithfulness" else parse_correctness(reply))
            )
            if value is None:
                failures[inputs[i].model] += 1
            else:
                scores[inputs[i].model][metric][r].append(value)
    out: dict[str, Any] = {}
    for m in models:
        out[m] = {"parse_failures": failures[m], "refusals_skipped": sum(x.refused for x in inputs if x.model == m)}
        for metric, per_repeat in scores[m].items():
            means = [100.0 * sum(v) / len(v) for v in per_repeat if v]
            if means:
                mean, half = interval(means)
                out[m][metric] = {"mean": round(mean, 2), "ci95": round(half, 2), "n": len(per_repeat[0])}
    return {
        "model": cfg.judge_model,
        "base_url": cfg.judge_base_url,
        "temperature": cfg.judge_temperature,
        "seed": cfg.judge_seed,
        "repeats": repeats,
        "prompts": {"faithfulness": FAITHFULNESS.template, "correctness": CORRECTNESS.template},
        "prompts_id": content_id(FAITHFULNESS.template, CORRECTNESS.template),
        "calls": len(calls) * repeats,
        "models": out,
    }


def judge_rows(rows: Sequence[dict[str, Any]], contexts: Sequence[str], cfg: EvalConfig) -> dict[str, Any]:
    """The judge over `evaluate`'s per-item rows (every model's prediction of every item)."""
    inputs = [
        JudgeInput(
            model=name,
            question=row["question"],
            context=ctx,
            answers=row["answers"] if row["answerable"] else [],
            answer=pm["answer"],
            refused=pm["refused"],
        )
        for row, ctx in zip(rows, contexts, strict=True)
        for name, pm in row["models"].items()
    ]
    return judge(inputs, cfg)
