"""Batched evaluation vs one question at a time with `model.generate`: speed and identical outputs.

Both sides use the same model, the same prompts (real SQuAD v2 questions and paragraphs
rendered with ragtune's prompt template) and greedy decoding, on this CPU, in one process:

    python bench/eval_batched.py                       # builds a small Llama on the spot
    python bench/eval_batched.py --model DIR --n 64    # any local causal LM

The batched side is the eval stage's own path (`ragtune.evaluate.core.predict`: prompts
sorted by length, left padding, KV cache, per-row stop), with the prediction cache off.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ragtune.config import EvalConfig, TinyModelConfig  # noqa: E402
from ragtune.evaluate import qa_examples  # noqa: E402
from ragtune.evaluate.core import ModelSpec, PredictionCache, predict  # noqa: E402
from ragtune.generation import stop_strings, stop_token_ids  # noqa: E402
from ragtune.models import load_model, make_tiny_model  # noqa: E402
from ragtune.prompts import PromptTemplate, prompt_ids  # noqa: E402
from ragtune.qa_formats import import_file  # noqa: E402

DEFAULT_QA = ROOT.parent / "shared" / "data" / "squad2-sample" / "dev-sample-v2.0.json"


def build_model(qa_texts: list[str], out: Path, steps: int) -> Path:
    cfg = TinyModelConfig(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=768,
                          seq_len=256, batch_size=16, max_steps=steps, minutes=5.0)
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
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
        out.append(cut(tok, gen[0, x.shape[1]:].tolist(), eos, stops))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder; built there (4 M-parameter Llama on the QA text) when "
                    "missing; default: a temporary one")
    ap.add_argument("--qa", default=str(DEFAULT_QA), help="QA file (SQuAD v2 JSON, JSONL, CSV)")
    ap.add_argument("--n", type=int, default=64, help="questions")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--precision", default="fp32", help="fp32 (exact comparison) or bf16")
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    qa = import_file(args.qa)[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model or Path(tmp) / "model")
        if not (model_dir / "config.json").is_file():
            build_model([c for q in import_file(args.qa) for c in q.contexts], model_dir, args.pretrain_steps)
        model, tok = load_model(model_dir, precision=args.precision)
        template = PromptTemplate.for_tokenizer(tok)
        items = qa_examples(qa, tok, template)
        ids = [prompt_ids(tok, ex.prompt, template) for ex in items]
        lengths = sorted(len(i) for i in ids)
        print(f"{len(items)} prompts, {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}), "
              f"max_new_tokens {args.max_new_tokens}, {args.precision}, torch threads {torch.get_num_threads()}")

        # Warm up both paths once so neither pays first-call costs inside the timing.
        one_at_a_time(model, tok, ids[:1], 2, stop_strings(template))
        cfg = EvalConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, cache=False,
                         precision=args.precision)
        spec = ModelSpec("bench", str(model_dir))
        predict(model, tok, template, items[:2], spec, cfg.model_copy(update={"max_new_tokens": 2}),
                PredictionCache(None))

        t0 = time.perf_counter()
        single = one_at_a_time(model, tok, ids, args.max_new_tokens, stop_strings(template))
        t_single = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched, _, _ = predict(model, tok, template, items, spec, cfg, PredictionCache(None))
        t_batched = time.perf_counter() - t0

    same = sum(a == b for a, b in zip(single, batched, strict=True))
    result = {
        "n": len(items), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "precision": args.precision,
        "one_at_a_time_s": round(t_single, 2), "batched_s": round(t_batched, 2),
        "one_at_a_time_items_per_s": round(len(items) / t_single, 2),
        "batched_items_per_s": round(len(items) / t_batched, 2),
        "speedup": round(t_single / t_batched, 2), "identical_outputs": same,
    }
    print(json.dumps(result, indent=2))
    for a, b in zip(single, batched, strict=True):
        if a != b:
            print(f"differs:\n  single : {a!r}\n  batched: {b!r}")
            break
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
