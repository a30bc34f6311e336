"""Model FLOPs utilisation of `ragtune train` on a 20M+ parameter model, against the CPU's
bf16 matmul throughput measured in the same run (before and after; the best is the peak).

FLOPs counted per real (non-pad) token: 6 x body parameters (forward + both backward
matmuls; full fine-tuning), + 12 x layers x hidden x sequence length for attention scores
and values, + 6 x LM-head parameters only for trained tokens (the engine skips the head
elsewhere). Embedding lookups are not matmuls and are not counted. Padding is not counted.

    OMP_NUM_THREADS=1 python bench/mfu.py --model-dir /tmp/ragtune_bench/model --dataset /tmp/ragtune_bench/dataset
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def matmul_peak(n: int, seconds: float) -> float:
    """GFLOP/s of an n x n bf16 matmul, best of repeated timings."""
    import torch

    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    best, t_end = 0.0, time.perf_counter() + seconds
    torch.mm(a, b)
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    import torch
    from datasets import DatasetDict, load_from_disk
    from transformers import LlamaConfig, LlamaForCausalLM

    from ragtune.config import TrainConfig
    from ragtune.models import load_tokenizer
    from ragtune.prompts import PromptTemplate
    from ragtune.train import train
    from ragtune.train.data import encode_rows, plan_steps

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="tokenizer folder (work/model of train_vs_trl.py)")
    p.add_argument("--dataset", required=True, help="DatasetDict with prompt / completion rows")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--method", default="full", choices=["full", "lora"])
    p.add_argument("--packing", action="store_true")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    p.add_argument("--work", default="/tmp/ragtune_mfu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tok = load_tokenizer(args.model_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    work = Path(args.work)
    model.save_pretrained(str(work / "model"))
    tok.save_pretrained(str(work / "model"))
    n_params = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    body = n_params - model.get_input_embeddings().weight.numel()  # tied: the head is the embedding
    print(
        f"model: {n_params / 1e6:.1f} M parameters ({body / 1e6:.1f} M in the layers), "
        f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    peak0 = matmul_peak(2048, 5.0)
    rows = load_from_disk(args.dataset)["train"]
    template = PromptTemplate.for_tokenizer(tok)
    tcfg = TrainConfig(
        method=args.method,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=1e-4,
        packing=args.packing,
        seed=0,
        precision="bf16",
    )
    need = args.steps * args.batch_size
    ds = DatasetDict({"train": rows.select(range(min(len(rows), need)))})
    res = train(ds, work / "model", tcfg, work / "out", template=template)
    peak1 = matmul_peak(2048, 5.0)
    peak = max(peak0, peak1)

    enc = encode_rows(ds["train"], tok, template, None)
    steps = plan_steps(enc.lengths, args.batch_size, 0, 0, True)[: args.steps]
    seen = [j for s in steps for j in s]
    tokens = sum(enc.lengths[j] for j in seen)
    answer = sum(sum(t != -100 for t in enc.labels[j][1:]) for j in seen)
    attn = sum(12 * args.layers * args.hidden * enc.lengths[j] ** 2 for j in seen)
    mult = 6 if args.method == "full" else 4  # LoRA: no weight gradients of the frozen base
    flops = 6 * body * tokens + attn + 6 * head * answer
    achieved = flops / res.seconds / 1e9
    print(f"bf16 matmul peak (2048^3): {peak0:.0f} GFLOP/s before, {peak1:.0f} after", flush=True)
    print(
        f"train ({args.method}, {res.steps} steps, {tokens} real tokens, {answer} trained): {res.seconds:.1f} s, "
        f"{res.tokens_per_s:.0f} tokens/s",
        flush=True,
    )
    print(f"model FLOPs (6N convention): {achieved:.0f} GFLOP/s = MFU {100 * achieved / peak:.1f}% of the bf16 peak")
    if mult != 6:
        real = (mult * body * tokens + attn + 6 * head * answer) / res.seconds / 1e9
        print(f"  (LoRA does ~4N per token: {real:.0f} GFLOP/s = {100 * real / peak:.1f}% counting work done)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
