"""Peak RSS per optimizer step of `ragtune.train.train`, read by a 0.25 s sampler beside it.

Before `training_core.HeapTrimmer` landed it showed glibc keeping freed activations: LoRA on
SmolLM2-135M at the quickstart's settings grew from 3.3 to 5.3 GB RSS over 16 steps (1 thread),
and held at 3.9 GB with a `malloc_trim` after every micro-batch. Training now runs with the
trimmer, so this shows its effect.

    python experiments/memory/rss_per_step.py --dataset RUN/dataset --steps 16 --out /tmp/rss
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
