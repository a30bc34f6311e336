"""ragtune train vs TRL's SFTTrainer on the same model, RAG data, LoRA settings and steps.

Not a test: a measurement. Builds (once, cached in --work) a tiny Llama pretrained on the
python-docs corpus and >= 2,000 RAG examples from its chunks (oracle passage among 1-4 random
distractors, long contexts, short cloze answers), then runs ragtune and TRL alternately, each
in a fresh process (so peak RSS is per run), and prints real (non-pad) tokens/s, answer
tokens/s, peak memory and the final validation loss of both, scored by one shared evaluator.

    OMP_NUM_THREADS=1 python bench/train_vs_trl.py --rounds 2

With --model (a named model such as smollm2-135m-instruct, or a folder) and --dataset (a
ragtune dataset folder, e.g. RUN/dataset) it runs on that model instead: both trainers get the
same token ids and labels (ragtune's encoding; TRL takes them as a prepared dataset with a
labels column, so its loss is completion-only by construction), the first
--steps x --rows-scale x --batch-size training rows, one epoch. The driver also measures the
bf16 matmul peak (2048^3) before and after the runs and prints MFU from the FLOPs count in
`useful_flops` (work done on real tokens, the same for both trainers).

    python bench/train_vs_trl.py --model smollm2-135m-instruct --dataset RUN/dataset \
        --threads 2 --steps 8 --rows-scale 1 --lora-dropout 0 --trl-weights bf16 --val-eval 62
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


WARMUP = 0.05  # both trainers' warmup, a share of the steps


# ---------------------------------------------------------------- data
def prepare(args: argparse.Namespace) -> None:
    from datasets import Dataset, DatasetDict

    from ragtune.config import IngestConfig, TinyModelConfig
    from ragtune.ingest import ingest
    from ragtune.models import load_tokenizer, make_tiny_model
    from ragtune.prompts import Passage, PromptTemplate

    work = Path(args.work)
    if (work / "dataset" / "dataset_dict.json").is_file():
        return
    t0 = time.perf_counter()
    chunks = ingest(
        Path(args.docs), IngestConfig(chunk_tokens=160, min_chunk_tokens=40, max_chunk_tokens=256, overlap_tokens=0)
    ).chunks
    print(f"ingest: {len(chunks)} chunks in {time.perf_counter() - t0:.0f} s", flush=True)
    if not (work / "model" / "config.json").is_file():
        info = make_tiny_model(
            [c.text for c in chunks], work / "model", TinyModelConfig(vocab_size=4096, minutes=args.pretrain_minutes)
        )
        print(f"tiny model: {info}", flush=True)
    tok = load_tokenizer(work / "model")
    template = PromptTemplate.for_tokenizer(tok)
    rng = random.Random(0)
    docs = sorted({c.doc_id for c in chunks})
    rng.shuffle(docs)
    val_docs = set(docs[: len(docs) // 10])
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    order = list(range(len(chunks)))
    rng.shuffle(order)
    for i in order:
        c = chunks[i]
        split = "validation" if c.doc_id in val_docs else "train"
        want = args.examples if split == "train" else args.val
        if len(rows[split]) >= want:
            continue
        sents = [s for s in re.split(r"(?<=[.!?])\s+", c.text) if 8 <= len(s.split()) <= 40]
        if not sents:
            continue
        words = rng.choice(sents).split()
        n = rng.randint(1, 4)
        at = rng.randrange(0, len(words) - n)
        answer = " ".join(words[at : at + n])
        question = "Fill in the blank: " + " ".join(words[:at] + ["____"] + words[at + n :])
        passages = [Passage(c.title, c.text)] + [
            Passage(d.title, d.text) for d in rng.sample(chunks, rng.randint(1, 4))
        ]
        rng.shuffle(passages)
        rows[split].append({"prompt": template.render(tok, question, passages), "completion": answer})
        if all(len(rows[s]) >= (args.examples if s == "train" else args.val) for s in rows):
            break
    ds = DatasetDict({s: Dataset.from_list(r) for s, r in rows.items()})
    ds.save_to_disk(str(work / "dataset"))
    template.save(work / "dataset")
    print(f"dataset: {len(ds['train'])} train / {len(ds['validation'])} validation rows", flush=True)


def lora_config(args: argparse.Namespace):
    from peft import LoraConfig

    return LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=args.lora_dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )


def n_rows(args: argparse.Namespace) -> int | None:
    if args.model:
        return round(args.steps * args.rows_scale) * args.batch_size
    return args.train_examples


def subset(rows, args: argparse.Namespace):
    n = n_rows(args)
    return rows.select(range(min(len(rows), n))) if n else rows


def encoded_rows(args: argparse.Namespace):
    """The training rows as ragtune encodes them (ids, labels): what both trainers get with --model."""
    from datasets import load_from_disk

    from ragtune.models import load_tokenizer
    from ragtune.prompts import PromptTemplate
    from ragtune.train.data import encode_rows

    tok = load_tokenizer(model_dir(args))
    rows = subset(load_from_disk(str(data_dir(args)))["train"], args)
    return encode_rows(rows, tok, PromptTemplate.load(data_dir(args)), None)


def useful_flops(args: argparse.Namespace) -> tuple[float, int]:
    """FLOPs of one epoch over the rows, counting work on real tokens only (no padding, no
    recomputation), and the real token count. Per row of length L with A trained tokens:
      (4 N + 6 N_lora) L   frozen linear layers: forward 2N, backward to the inputs 2N (no weight
                           gradient); LoRA's own matrices: forward, input and weight gradients
      + 6 layers H d L^2   causal attention: QK^T and AV over the lower triangle are L^2 H d
                           each in the forward; the backward is twice the forward
      + 4 D V A            the (tied, frozen) LM head on trained positions only, forward + input grad
    N = the linear weights in the decoder layers, H d = heads x head_dim, D = hidden, V = vocabulary."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir(args)))
    d, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, inter), (d, inter), (inter, d)]
    n_body = layers * sum(a * b for a, b in shapes)
    n_lora = layers * sum(16 * (a + b) for a, b in shapes)  # r 16 on every linear layer
    enc = encoded_rows(args)
    flops = 0.0
    for ids, labels in zip(enc.input_ids, enc.labels, strict=True):
        n, a = len(ids), sum(t != -100 for t in labels[1:])
        flops += (4 * n_body + 6 * n_lora) * n + 6 * layers * q * n * n + 4 * d * cfg.vocab_size * a
    return flops * args.epochs, int(sum(enc.lengths) * args.epochs)


# ---------------------------------------------------------------- shared evaluator
def validation_loss(model_dir: Path, data_dir: Path, adapter: Path | None, val_n: int) -> dict[str, float]:
    """Both runs' adapters scored the same way: fp32, answer tokens only, ragtune's labels."""
    import torch
    from datasets import load_from_disk

    from ragtune.models import load_model
    from ragtune.prompts import PromptTemplate
    from ragtune.train.data import encode_rows
    from ragtune.train.engine import evaluate_loss
    from ragtune.train.loss import AnswerLoss

    model, tok = load_model(model_dir, adapter, precision="fp32")
    val = load_from_disk(str(data_dir))["validation"]
    enc = encode_rows(val.select(range(min(len(val), val_n))), tok, PromptTemplate.load(data_dir), None)
    per_example, per_token = evaluate_loss(
        AnswerLoss(model), enc, 16, tok.pad_token_id, torch.device("cpu"), torch.float32
    )
    return {"val_loss_token": round(per_token, 4), "val_loss_example": round(per_example, 4)}


def model_dir(args: argparse.Namespace) -> Path:
    if not args.model:
        return Path(args.work) / "model"
    from ragtune.modelstore import resolve_model

    return Path(resolve_model(args.model))


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.dataset) if args.dataset else Path(args.work) / "dataset"


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------- workers (one per process)
def worker_ragtune(args: argparse.Namespace, out: Path) -> dict:
    from datasets import DatasetDict, load_from_disk

    from ragtune.config import TrainConfig
    from ragtune.prompts import PromptTemplate
    from ragtune.train import train

    ds = load_from_disk(str(data_dir(args)))
    ds = DatasetDict({"train": subset(ds["train"], args)})  # validation: scored afterwards, shared evaluator
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=args.lora_dropout,
        warmup_ratio=WARMUP,
        packing=args.packing,
        seed=0,
        calibrate_abstention=False,
        loss_average=args.ragtune_loss,
        group_by_length=not args.no_length_grouping,
    )
    t0 = time.perf_counter()
    res = train(ds, model_dir(args), cfg, out, template=PromptTemplate.load(data_dir(args)))
    total = time.perf_counter() - t0
    return {
        "train_s": res.seconds,
        "total_s": round(total, 1),
        "tokens": res.tokens,
        "answer_tokens": res.answer_tokens,
        "steps": res.steps,
        "final_train_loss": res.train_loss,
    }


def worker_trl(args: argparse.Namespace, out: Path) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from ragtune.models import load_tokenizer

    if args.model:  # the very ids and labels ragtune trains on (TRL keeps a labels column as is)
        from datasets import Dataset

        enc = encoded_rows(args)
        ds = Dataset.from_dict({"input_ids": enc.input_ids, "labels": enc.labels})
        if args.same_steps:  # ragtune's steps, in ragtune's order, batched in sequence below
            ds = ds.select([i for step in ragtune_steps(enc.lengths, args) for i in step])
    else:
        ds = subset(load_from_disk(str(data_dir(args)))["train"], args).select_columns(["prompt", "completion"])
    t0 = time.perf_counter()
    tok = load_tokenizer(model_dir(args))
    dtype = torch.bfloat16 if args.trl_weights == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir(args)), dtype=dtype)
    cfg = SFTConfig(
        output_dir=str(out),
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP,  # a float below 1: a share of the steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        completion_only_loss=True,
        packing=False,
        padding_free=False,
        max_length=None,
        gradient_checkpointing=False,  # its default (True) is ~20% slower and memory is ample here
        bf16=True,
        use_cpu=True,
        dataloader_num_workers=0,
        logging_steps=25,
        save_strategy="no",
        report_to=[],
        seed=0,
        dataset_num_proc=1,
    )
    aligned = args.same_steps or args.same_schedule
    trainer_cls = aligned_trainer(SFTTrainer, args.same_steps) if aligned else SFTTrainer
    trainer = trainer_cls(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora_config(args))
    prepared = trainer.train_dataset
    tokens = sum(len(x) for x in prepared["input_ids"])
    answer_tokens = sum(sum(t != -100 for t in lab) for lab in prepared["labels"])
    t1 = time.perf_counter()
    out_train = trainer.train()
    t2 = time.perf_counter()
    trainer.model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    steps = out_train.global_step
    return {
        "train_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 1),
        "tokens": tokens * args.epochs,
        "answer_tokens": answer_tokens * args.epochs,
        "steps": steps,
        "final_train_loss": out_train.training_loss,
    }


def ragtune_steps(lengths: list[int], args: argparse.Namespace) -> list[list[int]]:
    """The rows of each optimizer step as `ragtune train` plans its first epoch (seed 0,
    length-grouped unless --no-length-grouping)."""
    from ragtune.config import TrainConfig
    from ragtune.train.data import plan_steps

    group = TrainConfig().group_by_length and not args.no_length_grouping
    steps = plan_steps(lengths, args.batch_size, 0, 0, group)
    if any(len(s) != args.batch_size for s in steps):
        raise SystemExit(f"--same-steps needs a row count divisible by --batch-size {args.batch_size}")
    return steps


def aligned_trainer(base: type, in_order: bool) -> type:
    """SFTTrainer with ragtune's LR schedule (warmup from lr/warmup at step 0, where HF's starts
    at 0, then the same cosine), and with `in_order` taking the rows in the order given
    (ragtune's steps, one after another) instead of shuffling them. Everything else (loss,
    optimizer, clipping, padding, precision) stays TRL's."""
    import torch

    from ragtune.training_core import lr_schedule

    class AlignedTrainer(base):
        def _get_train_sampler(self, train_dataset=None):
            if not in_order:
                return super()._get_train_sampler(train_dataset)
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                warmup = math.ceil(WARMUP * num_training_steps)
                schedule = lr_schedule("cosine", warmup, num_training_steps)
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, schedule)
            return self.lr_scheduler

    return AlignedTrainer


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    fn = worker_ragtune if args.worker == "ragtune" else worker_trl
    if args.worker == "base":  # the base model's validation loss, for scale
        print("RESULT " + json.dumps(validation_loss(model_dir(args), data_dir(args), None, args.val_eval)), flush=True)
        return
    res = fn(args, out)
    res["peak_rss_mb"] = peak_rss_mb()  # training peak, before the evaluator loads anything
    res.update(validation_loss(model_dir(args), data_dir(args), out, args.val_eval))
    res["tokens_per_s"] = round(res["tokens"] / res["train_s"], 1)
    res["answer_tokens_per_s"] = round(res["answer_tokens"] / res["train_s"], 2)
    print("RESULT " + json.dumps(res), flush=True)


# ---------------------------------------------------------------- driver
def run_worker(args: argparse.Namespace, kind: str, out: Path) -> dict:
    passed = {k: v for k, v in vars(args).items() if k not in ("worker", "out", "rounds", "base_loss")}
    cmd = [sys.executable, __file__, "--worker", kind, "--out", str(out)]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in passed.items() if v is not None and not isinstance(v, bool)]
    cmd += [f"--{k.replace('_', '-')}" for k, v in passed.items() if v is True]  # store_true flags
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": str(ROOT / "src"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(line[-1][7:])
    res["load_before"] = round(load, 2)
    res["load_after"] = round(os.getloadavg()[0], 2)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    near = (ROOT.parent / "shared", ROOT.parents[1] / "shared")
    shared = next((d for d in near if d.is_dir()), near[0])
    p.add_argument("--docs", default=str(shared / "data" / "python-docs"), help="../shared/data/python-docs")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ragtune_train_bench"))
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--train-examples", type=int, default=None, help="train on the first N rows only (slow CPUs)")
    p.add_argument("--val-eval", type=int, default=200, help="validation rows scored")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--pretrain-minutes", type=float, default=1.0)
    p.add_argument("--packing", action="store_true", help="ragtune packs rows (block-diagonal mask)")
    p.add_argument(
        "--trl-weights",
        choices=["fp32", "bf16"],
        default="fp32",
        help="dtype of TRL's frozen base weights (bf16 autocast either way)",
    )
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument(
        "--model",
        help="a named model (smollm2-135m-instruct) or a model folder, instead of the "
        "tiny one built in --work; needs --dataset",
    )
    p.add_argument("--dataset", help="a ragtune dataset folder (RUN/dataset) for --model")
    p.add_argument("--steps", type=int, default=8, help="with --model: optimizer steps at --rows-scale 1")
    p.add_argument(
        "--rows-scale",
        type=float,
        default=1.0,
        help="with --model: train on steps x rows-scale x batch-size rows (scaling points)",
    )
    p.add_argument("--base-loss", action="store_true", help="also score the base model (no adapter)")
    p.add_argument(
        "--ragtune-loss",
        choices=["example", "token"],
        default="example",
        help="ragtune's train.loss_average; token is TRL's (mean over every answer token of a step)",
    )
    p.add_argument(
        "--same-steps",
        action="store_true",
        help="with --model: TRL trains on ragtune's steps in ragtune's order with ragtune's LR schedule "
        "(warmup starting at lr/warmup, not 0), so the two differ only in how they compute a step",
    )
    p.add_argument(
        "--same-schedule",
        action="store_true",
        help="TRL uses ragtune's LR schedule but keeps its own shuffled batches",
    )
    p.add_argument(
        "--no-length-grouping",
        action="store_true",
        help="ragtune plans its steps without length grouping (random rows in each step, as TRL's "
        "sampler draws them); with --same-steps TRL gets those steps: the same padding work for both",
    )
    p.add_argument("--worker", choices=["ragtune", "trl", "base"])
    p.add_argument("--out")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.model and not args.dataset:
        raise SystemExit("--model needs --dataset (a ragtune dataset folder, e.g. RUN/dataset)")
    if args.model:
        args.epochs = 1.0
    else:
        prepare(args)
    import torch
    from mfu import matmul_peak

    torch.set_num_threads(args.threads)
    peaks = [matmul_peak(2048, 5.0)]
    print(
        f"bf16 matmul peak (2048^3, {args.threads} threads): {peaks[0]:.0f} GFLOP/s, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict[str, list[dict]] = {"ragtune": [], "trl": []}
    for r in range(args.rounds):
        for kind in ("ragtune", "trl") if r % 2 == 0 else ("trl", "ragtune"):
            res = run_worker(args, kind, Path(args.work) / "runs" / f"{kind}-{r}")
            results[kind].append(res)
            print(f"round {r} {kind}: {json.dumps(res)}", flush=True)
            peaks.append(matmul_peak(2048, 5.0))
            print(f"bf16 matmul peak: {peaks[-1]:.0f} GFLOP/s, load {os.getloadavg()[0]:.2f}", flush=True)
    if args.base_loss:
        print(f"base model: {json.dumps(run_worker(args, 'base', Path(args.work) / 'runs' / 'base'))}", flush=True)
    flops, tokens = useful_flops(args) if args.model else (0.0, 0)
    for kind in results:
        for res in results[kind]:
            res["gflop_s"] = round(flops / res["train_s"] / 1e9, 1)
            res["mfu_pct"] = round(100 * res["gflop_s"] / max(peaks), 1)
    report(results)
    print(
        f"bf16 matmul peak over the run: best {max(peaks):.0f}, worst {min(peaks):.0f} GFLOP/s ({args.threads} threads)"
    )
    if args.model:
        print(
            f"useful FLOPs (see useful_flops): {flops / 1e12:.2f} TFLOP over {tokens} real tokens "
            f"= {flops / max(tokens, 1) / 1e6:.0f} MFLOP per token"
        )


def report(results: dict[str, list[dict]]) -> None:
    def med(kind: str, key: str) -> float:
        vals = sorted(x[key] for x in results[kind])
        return vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2

    keys = [
        "tokens_per_s",
        "answer_tokens_per_s",
        "train_s",
        "total_s",
        "peak_rss_mb",
        "val_loss_token",
        "val_loss_example",
        "final_train_loss",
        "gflop_s",
        "mfu_pct",
    ]
    print(f"\n{'metric (median over rounds)':32s} {'ragtune':>12s} {'trl':>12s} {'ragtune/trl':>12s}")
    for k in keys:
        a, b = med("ragtune", k), med("trl", k)
        print(f"{k:32s} {a:12.3f} {b:12.3f} {a / b:12.3f}")


if __name__ == "__main__":
    main()
