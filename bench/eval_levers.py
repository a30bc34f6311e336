"""Eval (greedy generation) levers on a real model with an adapter, side by side in one process.

Variants alternate per round (A B C, then C B A, ...) over the same prompts (a ragtune
dataset's split, asked with its template), so changes in machine load hit them alike. A
variant is a '+'-joined list of:

    bN       batch size N (default 16); prompts sorted by length, left padding, as in eval
    t1       1 torch thread (else 2)
    merged   the LoRA merged into a copy of the base (merge_and_unload)
    scored   greedy_completions with_confidence (per-token log-probabilities, what the abstention rule needs)

Every variant's answers are compared with the first variant's.

    python bench/eval_levers.py --dataset RUN/dataset --adapter RUN/adapter --variants b16+t1,b1+t1 --n 16
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
from peft import PeftModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ragtune.evaluate import dataset_examples  # noqa: E402
from ragtune.generation import generate, greedy_completions  # noqa: E402
from ragtune.models import load_causal_lm, load_tokenizer  # noqa: E402
from ragtune.modelstore import resolve_model  # noqa: E402
from ragtune.prompts import PromptTemplate, prompt_ids  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="a ragtune dataset folder (RUN/dataset)")
    ap.add_argument("--adapter", required=True, help="a LoRA adapter folder (RUN/adapter)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--split", default="test")
    ap.add_argument("--variants", default="b16+t1,b1+t1")
    ap.add_argument("--n", type=int, default=16, help="prompts")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--profile", help="torch.profiler table of one batch of this variant")
    a = ap.parse_args()

    # Unmerged, the LoRA side path runs (ragtune's load_model merges; the "merged" variant is that).
    tok = load_tokenizer(a.adapter)
    base = load_causal_lm(resolve_model(a.model), tok, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, a.adapter).eval()
    template = PromptTemplate.load(a.dataset)
    ids = [prompt_ids(tok, ex.prompt, template) for ex in dataset_examples(Path(a.dataset), a.split)[: a.n]]
    merged = None

    def pick(variant: str):
        nonlocal merged
        if "merged" not in variant.split("+"):
            return model
        if merged is None:
            merged = copy.deepcopy(model).merge_and_unload().eval()
        return merged

    def run(variant: str) -> tuple[float, list[str]]:
        parts = variant.split("+")
        bs = next((int(p[1:]) for p in parts if p.startswith("b") and p[1:].isdigit()), 16)
        torch.set_num_threads(1 if "t1" in parts else 2)
        m = pick(variant)
        t0 = time.perf_counter()
        if "scored" in parts:
            out = [
                c.text
                for c in greedy_completions(
                    m, tok, ids, max_new_tokens=a.max_new_tokens, batch_size=bs, with_confidence=True
                )
            ]
        else:
            out = generate(m, tok, ids, max_new_tokens=a.max_new_tokens, batch_size=bs)
        return time.perf_counter() - t0, out

    variants = a.variants.split(",")
    print(f"{len(ids)} prompts, {min(map(len, ids))}-{max(map(len, ids))} tokens, load {os.getloadavg()}", flush=True)
    for v in variants:  # first calls outside the timing
        generate(pick(v), tok, ids[:2], max_new_tokens=2, batch_size=2)
    speeds: dict[str, list[float]] = {v: [] for v in variants}
    answers: dict[str, list[str]] = {}
    for r in range(a.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            dt, answers[v] = run(v)
            speeds[v].append(len(ids) / dt)
            print(f"round {r} {v}: {len(ids) / dt:.2f} items/s ({dt:.1f} s), load {os.getloadavg()[0]:.2f}", flush=True)
    base = variants[0]
    for v in variants:
        ratios = sorted(x / y for x, y in zip(speeds[v], speeds[base], strict=True))
        same = sum(x == y for x, y in zip(answers[v], answers[base], strict=True))
        print(
            f"{v:20s} mean {sum(speeds[v]) / len(speeds[v]):.2f} items/s, median ratio to {base} "
            f"{ratios[len(ratios) // 2]:.3f}, answers equal to {base}'s: {same}/{len(ids)}"
        )
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        m = pick(a.profile)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(m, tok, ids[:16], max_new_tokens=a.max_new_tokens, batch_size=16)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
