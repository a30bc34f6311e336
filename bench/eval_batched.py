"""Batched evaluation vs one question at a time with `model.generate`: speed and identical outputs.

Both sides use the same model, the same prompts (real SQuAD v2 questions and paragraphs
rendered with ragtune's prompt template) and greedy decoding, on this CPU, in one process:

    python bench/eval_batched.py                       # builds a small Llama on the spot
    python bench/eval_batched.py --model DIR --n 64    # any local causal LM
    python bench/eval_batched.py --model smollm2-135m-instruct --dataset RUN/dataset \
        --adapter RUN/adapter --precision bf16 --batch-size 16 --max-new-tokens 24 --rows-scale 1

With --dataset the prompts are that dataset's --split rows, asked with its template (what `ragtune
eval` does); --rows-scale K asks K x --n of them (repeating the split when it is shorter), for
scaling points. The run also times prefill-only passes over the same prompts (one forward per
batch, last position's logits only), batched as eval batches them and one prompt at a time (no
padding, so the causal kernel): no generation beats the faster of the two, the prefill limit,
and both sides' items/s are given as a share of it.

The batched side is the eval stage's own path (`ragtune.evaluate.core.predict`: prompts
sorted by length, left padding, KV cache, per-row stop), with the prediction cache off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ragtune.config import EvalConfig, TinyModelConfig  # noqa: E402
from ragtune.evaluate import dataset_examples, qa_examples  # noqa: E402
from ragtune.evaluate.core import ModelSpec, PredictionCache, predict  # noqa: E402
from ragtune.generation import stop_strings, stop_token_ids  # noqa: E402
from ragtune.models import load_model, make_tiny_model  # noqa: E402
from ragtune.prompts import PromptTemplate, prompt_ids  # noqa: E402
from ragtune.qa_formats import import_file  # noqa: E402

DEFAULT_QA = ROOT.parent / "shared" / "data" / "squad2-sample" / "dev-sample-v2.0.json"


def build_model(qa_texts: list[str], out: Path, steps: int) -> Path:
    cfg = TinyModelConfig(
        vocab_size=2048,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        intermediate_size=768,
        seq_len=256,
        batch_size=16,
        max_steps=steps,
        minutes=5.0,
    )
    info = make_tiny_model(qa_texts, out, cfg)
    print(f"built a {info['parameters'] / 1e6:.1f} M-parameter Llama in {info['seconds']} s ({steps} steps)")
    return out


def cut(tok, ids: list[int], eos: list[int], stops: tuple[str, ...]) -> str:
    """An answer as the eval stage keeps it: up to the first stop id, then the first stop string."""
    ids = next((ids[:j] for j, t in enumerate(ids) if t in eos), ids)
    text = tok.decode(ids, skip_special_tokens=True)
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


def one_at_a_time(model, tok, ids: list[list[int]], max_new_tokens: int, stops: tuple[str, ...]) -> list[str]:
    """The plain way: one `model.generate` call per question, no padding."""
    eos = stop_token_ids(tok, model)
    out = []
    for p in ids:
        x = torch.tensor([p])
        with torch.no_grad():
            gen = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
        out.append(cut(tok, gen[0, x.shape[1] :].tolist(), eos, stops))
    return out


@torch.no_grad()
def prefill_only(model, tok, ids: list[list[int]], batch_size: int) -> float:
    """Seconds for one forward over every prompt, batched as `predict` batches them (sorted
    longest first, left padding), keeping the last position's logits only."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.perf_counter()
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(ids[i]) for i in idx)
        x = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, width - len(ids[i]) :] = torch.tensor(ids[i])
            mask[r, width - len(ids[i]) :] = 1
        model(input_ids=x.to(device), attention_mask=mask.to(device), logits_to_keep=1, use_cache=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        help="model folder; built there (4 M-parameter Llama on the QA text) when missing; default: a temporary one",
    )
    ap.add_argument("--qa", default=str(DEFAULT_QA), help="QA file (SQuAD v2 JSON, JSONL, CSV)")
    ap.add_argument("--n", type=int, default=64, help="questions")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--precision", default="fp32", help="fp32 (exact comparison) or bf16")
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--dataset", help="a ragtune dataset folder (RUN/dataset): ask its --split rows instead of --qa")
    ap.add_argument("--split", default="test")
    ap.add_argument("--adapter", help="a LoRA adapter folder (RUN/adapter) on top of --model")
    ap.add_argument("--rows-scale", type=float, default=1.0, help="ask rows-scale x n prompts")
    args = ap.parse_args()

    n = round(args.n * args.rows_scale)
    qa = import_file(args.qa)[:n] if not args.dataset else []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model or Path(tmp) / "model")
        if args.model and not model_dir.is_dir():
            from ragtune.modelstore import resolve_model

            model_dir = Path(resolve_model(args.model))
        if not (model_dir / "config.json").is_file():
            build_model([c for q in import_file(args.qa) for c in q.contexts], model_dir, args.pretrain_steps)
        model, tok = load_model(model_dir, args.adapter, precision=args.precision)
        if args.dataset:
            template = PromptTemplate.load(args.dataset)
            split = dataset_examples(Path(args.dataset), args.split)
            items = [split[i % len(split)] for i in range(n)]
        else:
            template = PromptTemplate.for_tokenizer(tok)
            items = qa_examples(qa, tok, template)
        ids = [prompt_ids(tok, ex.prompt, template) for ex in items]
        lengths = sorted(len(i) for i in ids)
        print(
            f"{len(items)} prompts, {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}), "
            f"max_new_tokens {args.max_new_tokens}, {args.precision}, torch threads {torch.get_num_threads()}"
        )

        # Warm up both paths once so neither pays first-call costs inside the timing.
        one_at_a_time(model, tok, ids[:1], 2, stop_strings(template))
        cfg = EvalConfig(
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            cache=False,
            precision=args.precision,
            abstention_rule=False,
        )  # plain greedy on both sides
        spec = ModelSpec("bench", str(model_dir), args.adapter)
        predict(
            model, tok, template, items[:2], spec, cfg.model_copy(update={"max_new_tokens": 2}), PredictionCache(None)
        )

        t0 = time.perf_counter()
        single = one_at_a_time(model, tok, ids, args.max_new_tokens, stop_strings(template))
        t_single = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched, _, _ = predict(model, tok, template, items, spec, cfg, PredictionCache(None))
        t_batched = time.perf_counter() - t0
        t_prefill_batched = prefill_only(model, tok, ids, args.batch_size)
        t_prefill_single = prefill_only(model, tok, ids, 1)  # no padding: the causal kernel
        t_prefill = min(t_prefill_batched, t_prefill_single)

    same = sum(a == b for a, b in zip(single, batched, strict=True))
    result = {
        "n": len(items),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "precision": args.precision,
        "one_at_a_time_s": round(t_single, 2),
        "batched_s": round(t_batched, 2),
        "one_at_a_time_items_per_s": round(len(items) / t_single, 2),
        "batched_items_per_s": round(len(items) / t_batched, 2),
        "speedup": round(t_single / t_batched, 2),
        "identical_outputs": same,
        "prefill_only_batched_s": round(t_prefill_batched, 2),
        "prefill_only_one_at_a_time_s": round(t_prefill_single, 2),
        "prefill_limit_items_per_s": round(len(items) / t_prefill, 2),
        "one_at_a_time_share_of_prefill_limit": round(t_prefill / t_single, 3),
        "batched_share_of_prefill_limit": round(t_prefill / t_batched, 3),
        "prompt_tokens": sum(lengths),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    for a, b in zip(single, batched, strict=True):
        if a != b:
            print(f"differs:\n  single : {a!r}\n  batched: {b!r}")
            break
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if same != len(items):
        raise SystemExit(f"{len(items) - same} of {len(items)} outputs differ between batched and one at a time")


if __name__ == "__main__":
    main()
