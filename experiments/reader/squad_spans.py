"""Does a reader rank the right span of a SQuAD context above the others, even where its
greedy answer is wrong? Every span of 1..MAX_WORDS words of the context is scored by
log p(span + end of answer | prompt), the answer a decoder restricted to context spans
would give (constrained MAP). Prints that answer's F1 on the answerable items and where
the gold answer ranks among the candidates: a rank share near 0.5 is a model that does
not tell the answer apart from the rest of the context.

    python experiments/reader/squad_spans.py MODEL [ADAPTER|-] [MAX_WORDS] [LIMIT]
    python experiments/reader/squad_spans.py READER RUN/adapter 5   # a reader and its LoRA from `ragtune train`
"""

from __future__ import annotations

import copy
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

SQUAD = Path(
    os.environ.get("RAGTUNE_SQUAD")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "squad2-sample" / "dev-sample-v2.0.json"
)
_WORD = re.compile(r"\S+")


def candidates(context: str, max_words: int) -> list[str]:
    """Every run of 1..max_words words of the context, outer punctuation stripped."""
    words = _WORD.findall(context)
    spans = {
        " ".join(words[i : i + n]).strip(".,;:()\"'")
        for n in range(1, max_words + 1)
        for i in range(len(words) - n + 1)
    }
    return sorted(spans - {""})


@torch.no_grad()
def span_scores(model: torch.nn.Module, prompt: list[int], answers: list[list[int]], batch: int = 64) -> list[float]:
    """log p(answer ids | prompt) for each answer, the prompt's cache computed once."""
    from reader import kv_cache_arg

    key = kv_cache_arg(model)
    out = model(torch.tensor([prompt]), use_cache=True)
    first = out.logits[0, -1].log_softmax(-1)
    scores = []
    for b in range(0, len(answers), batch):
        chunk = answers[b : b + batch]
        width = max(map(len, chunk))
        cache = copy.deepcopy(getattr(out, key))
        cache.batch_repeat_interleave(len(chunk))
        ids = torch.tensor([a + [0] * (width - len(a)) for a in chunk])
        logp = model(ids, **{key: cache}).logits.log_softmax(-1)
        for j, a in enumerate(chunk):
            rest = logp[j, torch.arange(len(a) - 1), torch.tensor(a[1:], dtype=torch.long)].sum().item()
            scores.append(first[a[0]].item() + rest)
    return scores


def main() -> None:
    from transformers import AutoModelForCausalLM

    from ragtune.evaluate import load_template, qa_examples
    from ragtune.importers import import_file
    from ragtune.metrics import f1, normalize_answer
    from ragtune.models import load_tokenizer
    from ragtune.prompts import encode_example, prompt_ids

    base = sys.argv[1]
    adapter = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    max_words = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    tok = load_tokenizer(adapter or base)
    template = load_template([Path(p) for p in (adapter, base) if p], base, "")
    items = [e for e in qa_examples(import_file(SQUAD), tok, template) if e.answerable][:limit]
    t0, f1s, ranks = time.perf_counter(), [], []
    for ex in items:
        spans = candidates(ex.passage_texts[0], max_words)
        prompt = prompt_ids(tok, ex.prompt, template)
        answers = [encode_example(tok, ex.prompt, s, template)["input_ids"][len(prompt) :] for s in spans]
        scores = span_scores(model, prompt, answers)
        order = sorted(range(len(spans)), key=lambda i: -scores[i])
        f1s.append(max(f1(spans[order[0]], g) for g in ex.answers))
        gold = {normalize_answer(g) for g in ex.answers}
        rank = next((r for r, i in enumerate(order) if normalize_answer(spans[i]) in gold), None)
        if rank is not None:
            ranks.append((rank, len(spans)))
    print(f"{len(items)} answerable items, {time.perf_counter() - t0:.0f} s; spans of 1-{max_words} words")
    print(f"F1 of the best-scored span: {100 * statistics.mean(f1s):.1f}")
    print(
        f"gold among the spans for {len(ranks)}: median rank share {statistics.median(r / n for r, n in ranks):.3f}; "
        f"top 1 {sum(r == 0 for r, _ in ranks)}, top 5 {sum(r < 5 for r, _ in ranks)}, "
        f"top 20 {sum(r < 20 for r, _ in ranks)}"
    )


if __name__ == "__main__":
    main()
