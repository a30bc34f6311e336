"""The `reader` tiny-model recipe (a small Llama that copies from its context) and the
induction probe `ragtune probe`.

A tiny model pretrained on plain text for minutes never forms induction heads, so it cannot
copy an answer out of a passage. The recipe here forms them first, with the loss only on the
second copies of repeated random spans (the decisive lever, docs/reader-model.md), then
keeps them while it learns the corpus and tasks shaped like RAG prompts:

- phase 1 (copy): rows of `<s> span span <s> span span ...` of random tokens. Spans start
  at up to 16 tokens in 128-token rows (cheap steps, many copies per step: the induction
  phase change came after ~400 steps) and widen to `max_span` only while the training
  copies are exact (`widen_acc`); a share stays short. The phase ends when the longest spans
  are copied (`copy_switch_acc`) or at `copy_phase_max` of the budget.
- phase 2 (mix): per row one task drawn from `task_mix`: copy, key-value lookup, "find the
  sentence and continue it", RAG-shaped cloze (`### Context:` / `### Question:` /
  `### Answer:` + a span of the oracle passage), and plain text; at `late_seq_len`.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from ragtune.config import REFUSAL, TinyModelConfig
from ragtune.errors import RagtuneError
from ragtune.models import pick_device, pick_dtype, tiny_llama, train_tokenizer
from ragtune.prompts import Passage, PromptTemplate

# Measured on 2 CPU cores (docs/reader-model.md): small vocabulary and FFN, two layers.
READER_DEFAULTS: dict[str, Any] = {
    "vocab_size": 512, "hidden_size": 128, "num_layers": 2, "num_heads": 4,
    "intermediate_size": 256, "seq_len": 336, "batch_size": 16, "lr": 3e-3, "minutes": 15.0,
}
# Untested preset for a GPU: same recipe, bigger model and batches.
READER_GPU_DEFAULTS: dict[str, Any] = {
    **READER_DEFAULTS, "vocab_size": 2048, "hidden_size": 512, "num_layers": 4, "num_heads": 8,
    "intermediate_size": 1024, "batch_size": 64, "lr": 1e-3, "minutes": 15.0,
}
TASKS = ("copy", "lookup", "continue", "rag", "text")
console = Console(stderr=True)
CHECKPOINT_EVERY_S = 120.0


def reader_config(cfg: TinyModelConfig) -> TinyModelConfig:
    """`cfg` with every field the user did not set explicitly replaced by the reader default."""
    gpu = cfg.scale == "gpu" or (cfg.scale == "auto" and torch.cuda.is_available())
    defaults = READER_GPU_DEFAULTS if gpu else READER_DEFAULTS
    unset = {k: v for k, v in defaults.items() if k not in cfg.model_fields_set}
    out = cfg.model_copy(update=unset)
    bad = [t for t in out.task_mix if t not in TASKS]
    if bad or not any(v > 0 for v in out.task_mix.values()):
        raise RagtuneError(f"task_mix needs positive weights for some of {', '.join(TASKS)}; got {out.task_mix}")
    if out.max_span * 2 + 1 > out.seq_len:
        raise RagtuneError(f"max_span {out.max_span} needs seq_len >= {out.max_span * 2 + 1}")
    return out


# ---------------------------------------------------------------- corpus
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(])")


class Corpus:
    """Paragraphs, their sentences and a title per document, for the text-based tasks."""

    def __init__(self, texts: Sequence[str]):
        self.paragraphs: list[tuple[str, str, list[str]]] = []  # (title, text, sentences)
        for text in texts:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            title = lines[0][:60] if lines else ""
            for para in re.split(r"\n\s*\n", text):
                para = " ".join(para.split())
                n_words = len(para.split())
                if 12 <= n_words <= 160:
                    self.paragraphs.append((title, para, [s for s in _SENT.split(para) if s]))
        if len(self.paragraphs) < 3:
            raise RagtuneError("the corpus for the reader recipe needs at least 3 paragraphs of "
                               "12-160 words; point --corpus at more documents")

    def pick(self, rng: random.Random, max_words: int = 160) -> tuple[str, str, list[str]]:
        for _ in range(20):
            p = rng.choice(self.paragraphs)
            if len(p[1].split()) <= max_words:
                return p
        return p


# ---------------------------------------------------------------- tasks
class Tasks:
    """Each task returns (ids, target_mask): target_mask[i] = 1 where token i is trained."""

    def __init__(self, tokenizer: Any, corpus: Corpus, stream: torch.Tensor, cfg: TinyModelConfig):
        self.tok, self.corpus, self.stream, self.cfg = tokenizer, corpus, stream, cfg
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.lo = len(tokenizer.all_special_ids)  # random tokens avoid special ids
        self.vocab = len(tokenizer)
        self.template = PromptTemplate(style="plain", refusal=REFUSAL)
        self.eq = self.enc(" =")
        self.semi = self.enc(";")

    def enc(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def rand(self, rng: random.Random, n: int) -> list[int]:
        return [rng.randrange(self.lo, self.vocab) for _ in range(n)]

    def span_len(self, rng: random.Random, max_len: int) -> int:
        if rng.random() < self.cfg.short_span_share:
            return rng.randint(2, 12)
        return rng.randint(4, max(4, max_len))

    def copy(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        span = self.rand(rng, self.span_len(rng, max_len))
        # The first token of the second copy is unpredictable (the span's end is unknown).
        return [self.bos, *span, *span], [0] * (len(span) + 2) + [1] * (len(span) - 1)

    def lookup(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        pairs = [(self.rand(rng, 2), self.rand(rng, rng.randint(1, 3))) for _ in range(rng.randint(2, 12))]
        ids, mask = [self.bos], [0]
        for k, v in pairs:
            piece = k + self.eq + v + self.semi
            ids += piece
            mask += [0] * len(piece)
        k, v = rng.choice(pairs)
        ids += k + self.eq + v
        mask += [0] * (len(k) + len(self.eq)) + [1] * len(v)
        return ids, mask

    def cont(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        title, text, sents = self.corpus.pick(rng)
        sent = rng.choice(sents).split()
        k = min(len(sent) - 1, rng.randint(3, 6))
        if k < 1:
            return self.text(rng, max_len)
        prompt = self.enc(f"{text}\n\n{' '.join(sent[:k])}")
        target = self.enc(" " + " ".join(sent[k : k + 20]))
        return [self.bos, *prompt, *target], [0] * (len(prompt) + 1) + [1] * len(target)

    def rag(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        """A cloze question on a sentence of the oracle passage among two distractors."""
        # Short passages, so three of them, the instruction and the answer fit late_seq_len.
        oracle = self.corpus.pick(rng, max_words=45)
        sent = rng.choice(oracle[2]).split()
        if len(sent) < 5:
            return self.cont(rng, max_len)
        n = rng.randint(1, min(4, len(sent) - 3))
        start = rng.randint(1, len(sent) - n)
        answer = " ".join(sent[start : start + n]).strip(".,;:()")
        before, after = " ".join(sent[:start]), " ".join(sent[start + n :])
        if rng.random() < 0.5:  # the two question styles of the extractive synth generator
            question = f"Fill in the blank: {before} ____ {after}".strip()
        else:
            question = re.sub(r"[.!:;]+$", "", f"{before} what {after}".strip()) + "?"
        passages = [oracle] + [self.corpus.pick(rng, max_words=45) for _ in range(2)]
        rng.shuffle(passages)
        prompt = self.template.render(None, question, [Passage(t, x) for t, x, _ in passages])
        p_ids = [self.bos, *self.enc(prompt)]
        a_ids = [*self.enc(answer), self.eos]
        return p_ids + a_ids, [0] * len(p_ids) + [1] * len(a_ids)

    def text(self, rng: random.Random, max_len: int) -> tuple[list[int], list[int]]:
        n = self.cfg.late_seq_len
        s = rng.randrange(0, max(1, len(self.stream) - n - 1))
        ids = self.stream[s : s + n].tolist()
        return ids, [0] + [1] * (len(ids) - 1)

    def row(self, task: str, rng: random.Random, seq_len: int, max_span: int) -> tuple[list[int], list[int]]:
        """Examples of one task packed into `seq_len` tokens; an example that would be cut
        keeps its prompt and loses its targets, so no target is ever truncated."""
        make = {"copy": self.copy, "lookup": self.lookup, "continue": self.cont,
                "rag": self.rag, "text": self.text}[task]
        ids: list[int] = []
        mask: list[int] = []
        while len(ids) < seq_len:
            i, m = make(rng, max_span)
            room = seq_len - len(ids)
            if len(i) > room and task != "text":
                m = [0] * len(m)
            ids += i[:room]
            mask += m[:room]
        return ids, mask


def batch_of(rows: list[tuple[list[int], list[int]]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([r[1] for r in rows], dtype=torch.float32, device=device)
    return ids, mask


def masked_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token loss over target tokens, and per-token argmax hits (for the switch)."""
    logits, target, m = logits[:, :-1].float(), ids[:, 1:], mask[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none")
    loss = (ce * m.reshape(-1)).sum() / m.sum().clamp(min=1)
    hits = ((logits.argmax(-1) == target).float() * m).sum() / m.sum().clamp(min=1)
    return loss, hits


# ---------------------------------------------------------------- training
def make_reader_model(texts: Sequence[str], out_dir: str | Path, cfg: TinyModelConfig) -> dict:
    """Train a tokenizer on `texts`, build a small Llama, run the copy curriculum; save."""
    if not texts:
        raise RagtuneError("the corpus for tiny-model holds no text; point --corpus at documents")
    cfg = reader_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tokenizer = train_tokenizer(texts, cfg.vocab_size, out)
    corpus = Corpus(texts)
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    stream = torch.tensor([i for ids in encoded for i in [*ids, tokenizer.eos_token_id]], dtype=torch.long)
    model = tiny_llama(cfg, tokenizer)
    prep_s = time.perf_counter() - t_start
    stats = train_reader(model, tokenizer, Tasks(tokenizer, corpus, stream, cfg), cfg, out)
    probe = probe_model(model, tokenizer=tokenizer, show=False)
    info = {
        "recipe": "reader",
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": cfg.model_dump(),
        "prep_seconds": round(prep_s, 1),
        "corpus_tokens": len(stream),
        **stats,
        "probe": probe,
    }
    save(model, tokenizer, out, info)
    return info


def save(model: Any, tokenizer: Any, out: Path, info: dict) -> None:
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "ragtune_tiny_model.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


def train_reader(model: Any, tokenizer: Any, tasks: Tasks, cfg: TinyModelConfig, out: Path) -> dict:
    """The two-phase loop within `cfg.minutes`; checkpoints to `out` so a kill loses little."""
    device = pick_device()
    model.to(device).train()
    step_fn = torch.compile(model) if cfg.compile else model
    dtype = pick_dtype("auto", device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(cfg.seed)
    names = [t for t in TASKS if cfg.task_mix.get(t, 0) > 0]
    weights = [cfg.task_mix[t] for t in names]
    late_batch = max(1, cfg.batch_size * cfg.seq_len // cfg.late_seq_len)
    budget = cfg.minutes * 60
    t0 = last_save = time.perf_counter()
    step, switch_step, switch_s, acc_avg, tokens = 0, None, None, 0.0, 0
    max_span = min(16, cfg.max_span)
    log: list[dict] = []
    task_loss: dict[str, list[float]] = {t: [] for t in names}
    while (elapsed := time.perf_counter() - t0) < budget and (cfg.max_steps is None or step < cfg.max_steps):
        frac = elapsed / budget
        if switch_step is None:
            # Self-paced: spans start at 16 tokens in short rows (cheap steps, many copies
            # per step) and widen only while the training copies are exact, so a busy CPU
            # never widens them before the heads have formed.
            if acc_avg >= cfg.widen_acc and step % 5 == 0:
                max_span = min(cfg.max_span, max_span + 4)
            row_len = min(cfg.seq_len, max(128, 2 * max_span + 2))
            rows = [tasks.row("copy", rng, row_len, max_span) for _ in range(cfg.batch_size)]
            task = "copy"
        else:
            task = rng.choices(names, weights)[0]
            rows = [tasks.row(task, rng, cfg.late_seq_len, max_span) for _ in range(late_batch)]
        ids, mask = batch_of(rows, device)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        if switch_s is not None:  # linear decay to 10% over the mixed phase sharpens the copies
            lr *= 1.0 - 0.9 * min(1.0, (elapsed - switch_s) / max(budget - switch_s, 1e-9))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, hits = masked_loss(step_fn(input_ids=ids).logits, ids, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += ids.numel()
        step += 1
        if switch_step is None:
            acc_avg = 0.9 * acc_avg + 0.1 * hits.item()
            done = max_span >= cfg.max_span and acc_avg >= cfg.copy_switch_acc
            if done or frac >= cfg.copy_phase_max:
                switch_step, switch_s = step, round(time.perf_counter() - t0, 1)
                console.print(f"reader: copy phase done at step {step} ({switch_s:.0f} s): training copies "
                              f"{acc_avg:.0%} exact, spans up to {max_span} tokens; mixing in the corpus tasks")
        else:
            task_loss[task].append(loss.item())
        if step % 50 == 0:
            if step % 500 == 0:
                console.print(f"reader: step {step}, {elapsed:.0f}/{budget:.0f} s, {task} loss {loss.item():.3f}")
            log.append({"step": step, "s": round(elapsed, 1), "task": task, "loss": round(float(loss), 3),
                        "acc": round(float(hits), 3), "max_span": max_span})
        if time.perf_counter() - last_save > CHECKPOINT_EVERY_S:
            model.save_pretrained(str(out))
            last_save = time.perf_counter()
    seconds = time.perf_counter() - t0
    model.eval()
    return {
        "steps": step,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / max(seconds, 1e-9)),
        "copy_phase_steps": switch_step or step,
        "copy_max_span": max_span,
        "copy_phase_seconds": switch_s or round(seconds, 1),
        "copy_train_acc": round(acc_avg, 3),
        "mix_task_loss": {t: round(sum(v[-20:]) / len(v[-20:]), 3) for t, v in task_loss.items() if v},
        "log": log,
    }


# ---------------------------------------------------------------- probe
@torch.no_grad()
def probe_model(
    model: Any,
    lengths: Sequence[int] = (8, 32, 128),
    tokenizer: Any = None,
    rows: int = 16,
    seed: int = 0,
    show: bool = True,
) -> dict:
    """Induction probe on `<s> x_1..x_L x_1..x_L`, x: L distinct random non-special ids
    (distinct, so that a perfect copier is never sent astray by a repeated token).

    Per length L, over positions 2..L of each copy (the first token of a copy cannot be
    predicted): `first_loss` / `second_loss` are the mean next-token losses on the first and
    second copy; `ratio` = second / first (about 1: no copying); `next_token_acc` is the
    teacher-forced argmax accuracy on the second copy; `greedy_acc` the share of tokens of a
    free-running greedy continuation (given the first copy and x_1) equal to x_2..x_L.
    `model` is a model folder / hub id or a loaded causal LM (then pass `tokenizer` too, or
    special ids are taken to be the first four).
    """
    if isinstance(model, (str, Path)):
        from ragtune.models import load_model

        model, tokenizer = load_model(model)
    if any(n < 2 for n in lengths):
        raise RagtuneError("probe lengths must be at least 2 tokens; e.g. --lengths 8,32,128")
    model.eval()
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    special = set(tokenizer.all_special_ids) if tokenizer is not None else set(range(4))
    bos = tokenizer.bos_token_id if tokenizer is not None and tokenizer.bos_token_id is not None else 0
    pool = torch.tensor([i for i in range(vocab) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    results: dict[str, dict[str, float]] = {}
    for n in lengths:
        if n > len(pool):
            raise RagtuneError(f"probe length {n} exceeds the {len(pool)} usable token ids")
        span = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:n]] for _ in range(rows)])
        ids = torch.cat([torch.full((rows, 1), bos), span, span], dim=1).to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = ids[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        first = ce[:, 1:n]  # predicting x_2..x_L of copy 1
        second = ce[:, n + 1 : 2 * n]  # predicting x_2..x_L of copy 2
        hits = (logits.argmax(-1) == target)[:, n + 1 : 2 * n].float()
        greedy = greedy_continuation(model, ids[:, : n + 2], n - 1)
        results[str(n)] = {
            "first_loss": round(float(first.mean()), 4),
            "second_loss": round(float(second.mean()), 4),
            "ratio": round(float(second.mean() / first.mean()), 4),
            "next_token_acc": round(float(hits.mean()), 4),
            "greedy_acc": round(float((greedy == ids[:, n + 2 :]).float().mean()), 4),
        }
    if show:
        print_probe(results)
    return results


def greedy_continuation(model: Any, prefix: torch.Tensor, n_new: int) -> torch.Tensor:
    """`n_new` argmax tokens after `prefix`, with a KV cache; no stopping at EOS."""
    if n_new <= 0:
        return prefix[:, :0]
    # transformers 5 names the KV cache `cache`; older versions and other models `past_key_values`.
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=prefix, use_cache=True)
    nxt, new = out.logits[:, -1].argmax(-1, keepdim=True), []
    for _ in range(n_new):
        new.append(nxt)
        if len(new) == n_new:
            break
        out = model(input_ids=nxt, use_cache=True, **{key: getattr(out, key)})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return torch.cat(new, dim=1)


def print_probe(results: dict[str, dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Induction probe: repeated random spans")
    for col in ("span", "1st-copy loss", "2nd-copy loss", "ratio", "next-token acc", "greedy acc"):
        table.add_column(col, justify="right")
    for n, r in results.items():
        table.add_row(n, f"{r['first_loss']:.3f}", f"{r['second_loss']:.3f}", f"{r['ratio']:.3f}",
                      f"{r['next_token_acc']:.1%}", f"{r['greedy_acc']:.1%}")
    Console().print(table)


def copies(results: dict[str, dict[str, float]], lengths: Sequence[int] = (32, 128)) -> bool:
    """The issue's bar: second-copy loss below a quarter of the first, greedy >= 80%."""
    return all(
        results[str(n)]["ratio"] < 0.25 and results[str(n)]["greedy_acc"] >= 0.8
        for n in lengths if str(n) in results
    ) and not math.isnan(sum(r["ratio"] for r in results.values()))
