"""Peak RSS per optimizer step of `ragtune.train.train`, read by a 0.25 s sampler beside it.

    python experiments/memory/rss_per_step.py --dataset RUN/dataset --steps 16 --out /tmp/rss

Memory levers, measured in pairs (two runs at once, 1 thread each, the quickstart's dataset,
batch 8, SmolLM2-135M LoRA r16; 2026-12-07 04:42-05:40 UTC). Compare within a pair only:

| pair | variant | tokens/s | peak RSS (MB) |
|---|---|---|---|
| 1, 16 steps | no trim | 177.2 | 5,161 |
| | no trim, `THP_MEM_ALLOC_ENABLE=1` (torch's huge-page allocations) | 179.0 | 5,085 |
| 2, 16 steps | no trim, `MALLOC_MMAP_THRESHOLD_=2097152` | 164.3 | 4,673 |
| | the same with `THP_MEM_ALLOC_ENABLE=1` | 157.4 | 4,480 |
| 3, stopped at step 8-9 | no trim | 160.1 | 4,480 at step 9 |
| | no trim, `--micro-batch-tokens 1024` | 146.2 | 3,050 at step 8 |
| 4, 16 steps | no trim | 178.2 | 5,229 |
| | no trim, `--keep-grads` | 179.4 | 5,317 |
| 5, 16 steps | no trim, `--input-cast` (PEFT's cast, before 2026-12-07) | 205.3 | 5,243 |
| | no trim, LoRA inputs left in bf16 (now what `train` does) | 209.9 | 4,458 |
| 6, 40 steps | no trim | 175.2 | 5,776 |
| | the first trimmer policy (slack from the trimmed RSS), 2 GiB | 165.4 | 4,393 |
| 7, stopped at step 23 | no trim | 194.2 | 4,954 at step 23 |
| | `HeapTrimmer` now (1 GiB over the working set after a trim) | 190.4 | 4,591 at step 23 |

Handing memory back to the OS costs throughput on this VM whichever way (mmap'd tensors,
trims): each returned page is faulted in again. What pays is keeping less: PEFT's fp32 copy of
every LoRA input was kept for backward (pair 5: -785 MB, same losses). The first trimmer policy
measured its slack from the RSS just after a trim, which the next micro-batch alone exceeds, so
it trimmed after nearly every micro-batch (pair 6: RSS swinging 3.3-4.4 GB step by step); it
now waits for growth past the working set (pair 7: 0.98x untrimmed).
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from pathlib import Path

import torch
from datasets import DatasetDict, load_from_disk

import ragtune.train
from ragtune import training_core
from ragtune.config import TrainConfig
from ragtune.modelstore import resolve_model
from ragtune.prompts import PromptTemplate
from ragtune.training_core import resident_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="a ragtune dataset folder (RUN/dataset)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="where the adapter and training log go")
    p.add_argument("--micro-batch-tokens", type=int, default=TrainConfig().micro_batch_tokens)
    p.add_argument("--trim-slack-gib", type=float, help="the trimmer's slack (default: HeapTrimmer's)")
    p.add_argument("--no-trim", action="store_true", help="switch training_core.HeapTrimmer off")
    p.add_argument("--keep-grads", action="store_true", help="zero the gradients in place between steps")
    p.add_argument("--input-cast", action="store_true", help="PEFT casts LoRA inputs to fp32 (before 2026-12-07)")
    a = p.parse_args()
    if a.input_cast:
        ragtune.train.no_lora_input_cast = lambda model, compute: contextlib.nullcontext()
    if a.keep_grads:  # gradients allocated once, not re-allocated amid each step's activations
        zero_grad = torch.optim.Optimizer.zero_grad
        torch.optim.Optimizer.zero_grad = lambda self, set_to_none=True: zero_grad(self, set_to_none=False)
    if a.trim_slack_gib:
        training_core.HeapTrimmer.__init__.__defaults__ = (int(a.trim_slack_gib * (1 << 30)),)
    if a.no_trim:
        training_core._MALLOC_TRIM = None
    torch.set_num_threads(a.threads)
    out, peaks = Path(a.out), {}
    log = out / "training_log.jsonl"

    def sample() -> None:  # the peak RSS seen while each step ran, keyed by steps logged so far
        while True:
            done = sum(1 for _ in log.open()) if log.exists() else 0
            peaks[done] = max(peaks.get(done, 0), (resident_bytes() or 0) >> 20)
            time.sleep(0.25)

    threading.Thread(target=sample, daemon=True).start()
    data = load_from_disk(a.dataset)
    cfg = TrainConfig(
        lr=5e-4,
        batch_size=8,
        max_steps=a.steps,
        seed=0,
        calibrate_abstention=False,
        micro_batch_tokens=a.micro_batch_tokens,
    )
    res = ragtune.train.train(DatasetDict({"train": data["train"]}), resolve_model(a.model), cfg, out,
                template=PromptTemplate.load(a.dataset))  # fmt: skip
    print("step: peak RSS MB  " + " ".join(f"{n}:{mb}" for n, mb in sorted(peaks.items())))
    print(f"peak {max(peaks.values())} MB, {res.tokens / res.seconds:.1f} tokens/s")


if __name__ == "__main__":
    main()
