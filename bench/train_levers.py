"""Training levers on a real model, side by side in one process.

Variants alternate per round (A B C, then C B A, ...) over the same optimizer steps of a
ragtune dataset, so changes in machine load hit them alike. A variant is a '+'-joined list of:

    t1         1 torch thread (else 2)
    math       SDPA limited to the math backend (else PyTorch's choice: flash on CPU)
    mbtN       micro_batch_tokens N (0: no cap; default 2048)
    rcompile   torch.compile of each decoder layer (regional, dynamic shapes)
    nocast     PEFT's cast of LoRA inputs to the adapter's fp32 turned off (exact under autocast;
               what `train` does since 2026-12-07, while this loop's baseline keeps the cast)
    trimmb     freed heap pages handed back to the OS after every micro-batch (malloc_trim)
    trimstep   the same once per optimizer step
    trimslack  training_core.HeapTrimmer after every micro-batch (what `ragtune train` does on
               CPU: a trim once RSS grew 1 GiB past the working set read after the last trim)

The optimizer is SGD at lr 0, so every variant trains the same weights.

    python bench/train_levers.py --dataset RUN/dataset --variants t1,t1+rcompile --steps 1 --rounds 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ragtune.config import TrainConfig  # noqa: E402
from ragtune.prompts import PromptTemplate  # noqa: E402
from ragtune.train.data import cap_tokens, collate, encode_rows, plan_steps  # noqa: E402
from ragtune.train.engine import load_for_training  # noqa: E402
from ragtune.train.loss import AnswerLoss, causal_lm  # noqa: E402
from ragtune.training_core import _MALLOC_TRIM, HeapTrimmer, autocast  # noqa: E402


def main() -> None:
    from datasets import load_from_disk
    from peft.tuners.tuners_utils import BaseTunerLayer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="a ragtune dataset folder (RUN/dataset)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--variants", default="t1,t1+rcompile")
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps per variant per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of one step of the last variant")
    a = ap.parse_args()

    cfg = TrainConfig(batch_size=a.batch_size)
    model, tok, compute = load_for_training(a.model, cfg, torch.device("cpu"))
    enc = encode_rows(load_from_disk(a.dataset)["train"], tok, PromptTemplate.load(a.dataset), None)
    plan = plan_steps(enc.lengths, a.batch_size, 0, 0, True)
    loss_fn = AnswerLoss(model)
    params = [p for p in loss_fn.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    decoder = causal_lm(model).model
    eager_layers, compiled_layers = decoder.layers, None
    lora_layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    slack_trim = HeapTrimmer()

    def run(variant: str, steps: list[int]) -> tuple[float, float, int]:
        nonlocal compiled_layers
        parts = variant.split("+")
        torch.set_num_threads(1 if "t1" in parts else 2)
        cap = next((int(p[3:]) or None for p in parts if p.startswith("mbt")), 2048)
        if "rcompile" in parts and compiled_layers is None:
            compiled_layers = torch.nn.ModuleList([torch.compile(x, dynamic=True) for x in eager_layers])
        decoder.layers = compiled_layers if "rcompile" in parts else eager_layers
        for m in lora_layers:
            m.cast_input_dtype_enabled = "nocast" not in parts
        backend = contextlib.nullcontext()
        if "math" in parts:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            backend = sdpa_kernel([SDPBackend.MATH])
        tokens, pads, t0 = 0, 0, time.perf_counter()
        for s in steps:
            for idx in cap_tokens(plan[s], enc.lengths, cap):
                batch = collate(enc, idx, tok.pad_token_id, False)
                pads += batch["input_ids"].numel() - int(batch["n_tokens"])
                with backend, autocast(torch.device("cpu"), compute):
                    loss, _ = loss_fn(batch, 1.0 / len(plan[s]))
                loss.backward()
                tokens += int(batch["n_tokens"])
                if "trimmb" in parts:
                    _MALLOC_TRIM(0)
                if "trimslack" in parts:
                    slack_trim()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if "trimstep" in parts:
                _MALLOC_TRIM(0)
        dt = time.perf_counter() - t0
        return tokens / dt, dt, pads

    variants = a.variants.split(",")
    print(f"load {os.getloadavg()}", flush=True)
    for v in variants:  # first calls (and compilation) outside the timing
        t0 = time.perf_counter()
        run(v, [0])
        print(f"warm-up {v}: {time.perf_counter() - t0:.1f} s", flush=True)
    speeds: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(a.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            tps, dt, pads = run(v, list(range(1 + r * a.steps, 1 + (r + 1) * a.steps)))
            speeds[v].append(tps)
            print(
                f"round {r} {v}: {tps:.0f} tokens/s ({dt:.1f} s, {pads} pad tokens), load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    base = variants[0]
    for v in variants:  # per-round ratios: each against the baseline of the same round
        ratios = sorted(x / y for x, y in zip(speeds[v], speeds[base], strict=True))
        each = ", ".join(f"{x:.2f}" for x in ratios)
        print(
            f"{v:24s} mean {sum(speeds[v]) / len(speeds[v]):6.0f} tokens/s, "
            f"median ratio to {base} {ratios[len(ratios) // 2]:.3f} (rounds, sorted: {each})"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(variants[-1], [1])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
