"""One `reader` recipe experiment on the python-docs corpus: build, time, probe.

    nice python experiments/reader/reader_experiment.py OUT_DIR [--set key=value ...]
    python experiments/reader/reader_experiment.py --first-token MODEL_DIR   # where the passage is found
    python experiments/reader/reader_experiment.py --find MODEL_DIR   # the find task's first answer ids, by level;
        # and on scatter rows
    python experiments/reader/reader_experiment.py --answer-tokens MODEL_DIR RUN/dataset/test.jsonl
        # on a build's answerable items: first / every answer token / end / whole answer right
    python experiments/reader/reader_experiment.py --copy-errors MODEL_DIR   # where the probe's 128-id copies
        # go wrong: the copy's second id (after one matched id) or later

Values are parsed as JSON where possible (numbers, dicts). Prints and writes OUT_DIR/result.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve()
DOCS = Path(
    os.environ.get("RAGTUNE_DOCS")
    or next(
        (p / "shared" / "data" / "python-docs" for p in _HERE.parents if (p / "shared" / "data").is_dir()),
        _HERE.parents[2].parent / "shared" / "data" / "python-docs",
    )
)


def load_texts(root: Path) -> list[str]:
    """The documents as `ragtune tiny-model` reads them (ingest's loader)."""
    from ragtune.pipeline import corpus_texts

    return corpus_texts(root)


def heldout_cloze_em(model_dir: Path, texts: list[str], n: int = 100) -> dict:
    """Greedy answers to RAG-shaped cloze questions (oracle + 2 distractors) built from
    documents the model never saw: a direct check that it answers from its context. A
    third of the items have the oracle swapped out; their right answer is the refusal."""
    import random

    import torch
    from reader import Corpus, ReaderConfig, Tasks, reader_config

    from ragtune.config import REFUSAL
    from ragtune.generation import generate
    from ragtune.models import load_model
    from ragtune.prompts import PromptTemplate

    model, tok = load_model(model_dir, precision="fp32")
    saved = PromptTemplate.find(model_dir)  # how the reader's rag rows asked
    cfg = reader_config(ReaderConfig(refusal_share=1 / 3, question_first=saved is not None and saved.question_first))
    tasks = Tasks(tok, Corpus(texts), torch.zeros(10, dtype=torch.long), cfg)
    rng = random.Random(123)
    prompts, answers = [], []
    while len(prompts) < n:
        ids, mask = tasks.rag(rng, 0)
        if tok.decode(ids).count("### Context:") != 1:
            continue
        cut = mask.index(1)
        prompts.append(ids[:cut])
        answers.append(tok.decode(ids[cut:-1]).strip())
    outs = [o.strip() for o in generate(model, tok, prompts, max_new_tokens=40, batch_size=16)]
    has = [i for i, a in enumerate(answers) if a != REFUSAL]
    no = [i for i, a in enumerate(answers) if a == REFUSAL]
    share = lambda idx, ok: round(sum(ok(i) for i in idx) / max(len(idx), 1), 3)  # noqa: E731
    return {
        "cloze_em": share(range(n), lambda i: outs[i] == answers[i]),
        "answerable_em": share(has, lambda i: outs[i] == answers[i]),
        "answerable_refused": share(has, lambda i: outs[i] == REFUSAL),
        "missing_refused": share(no, lambda i: outs[i] == REFUSAL),
        "n": n,
        "n_answerable": len(has),
        "examples": list(zip(outs[:6], answers[:6], strict=True)),
    }


def first_token_acc(model_dir: Path, texts: list[str], n: int = 100) -> dict:
    """Teacher-forced accuracy on held-out rag and locate questions, split into the first
    answer token (where the passage has to be found) and the other answer tokens (copying on)."""
    import random

    import torch
    from reader import Corpus, ReaderConfig, Tasks, reader_config

    from ragtune.models import load_model

    model, tok = load_model(model_dir, precision="fp32")
    out, corpus = {}, Corpus(texts)
    # rag_near: distractors from the oracle's document, which share its words as BM25's do
    for name, task, near in (("rag", "rag", 0.0), ("rag_near", "rag", 1.0), ("locate", "locate", 0.0)):
        cfg = reader_config(ReaderConfig(locate_follow_ups=0, same_doc_distractors=near))
        tasks = Tasks(tok, corpus, torch.zeros(10, dtype=torch.long), cfg)
        rng, first, rest = random.Random(5), [], []
        for _ in range(n):
            ids, mask = getattr(tasks, task)(rng, 0)
            with torch.no_grad():
                pred = model(input_ids=torch.tensor([ids])).logits[0, :-1].argmax(-1).tolist()
            for i in range(1, len(ids)):
                if mask[i]:
                    (rest if mask[i - 1] else first).append(pred[i - 1] == ids[i])
        out[name] = {"first_token": round(sum(first) / len(first), 3), "other_tokens": round(sum(rest) / len(rest), 3)}
    return out


def find_acc(model_dir: Path, n_rows: int = 24) -> dict:
    """Share of first answer ids right on fresh find rows (random ids, so no corpus is needed)
    at every level up to 10: whether the find circuit survived the phases after its own; and
    on `scatter` rows (a sentence matched on a bag of ids)."""
    import random

    import torch
    from reader import ReaderConfig, Tasks, batch_of, masked_loss, reader_config

    from ragtune.models import load_model
    from ragtune.prompts import PromptTemplate

    model, tok = load_model(model_dir, precision="fp32")
    saved = PromptTemplate.find(model_dir)
    cfg = reader_config(ReaderConfig(question_first=bool(saved and saved.question_first)))
    tasks = Tasks(tok, None, torch.zeros(10, dtype=torch.long), cfg)
    info = json.loads((model_dir / "ragtune_tiny_model.json").read_text())
    out: dict = {"find_level_reached": info.get("phases", {}).get("find", {}).get("level")}
    for level in range(11):
        rng = random.Random(level)
        rows = [tasks.row("find", rng, cfg.late_seq_len, level) for _ in range(n_rows)]
        ids, mask = batch_of(rows, next(model.parameters()).device)
        with torch.no_grad():
            _, hits = masked_loss(model(input_ids=ids).logits, ids, mask, first_only=True)
        out[level] = round(hits.item(), 3)
    rng = random.Random(99)
    rows = [tasks.row("scatter", rng, cfg.late_seq_len, 0) for _ in range(n_rows)]
    ids, mask = batch_of(rows, next(model.parameters()).device)
    with torch.no_grad():  # matching a sentence on a bag of ids (round 11)
        _, hits = masked_loss(model(input_ids=ids).logits, ids, mask, first_only=True)
    out["scatter"] = round(hits.item(), 3)
    return out


def copy_errors(model_dir: Path, n: int = 128, rows: int = 96) -> dict:
    """The probe's rows at `n` ids (`<s> x_1..x_n x_1..x_n`, distinct random ids): the share
    of rows whose second copy goes wrong, teacher-forced, at x_2 (predicted after x_1 alone
    matched, the previous id x_n not) and later; and the probe's greedy share. One wrong id
    derails a greedy copy, so every row wrong anywhere costs the greedy share (round 12)."""
    import torch
    from reader import greedy_continuation, repeated_spans

    from ragtune.models import load_model

    model, tok = load_model(model_dir, precision="fp32")
    pool = torch.tensor([i for i in range(len(tok)) if i not in set(tok.all_special_ids)])
    ids = repeated_spans(pool, n, rows, tok.bos_token_id, torch.Generator().manual_seed(1))
    with torch.no_grad():
        wrong = (model(input_ids=ids).logits[:, :-1].argmax(-1) != ids[:, 1:])[:, n + 1 : 2 * n]
        greedy = greedy_continuation(model, ids[:, : n + 2], n - 1) == ids[:, n + 2 :]
    return {
        "rows": rows,
        "wrong_at_x2": round(wrong[:, 0].float().mean().item(), 3),
        "wrong_later": round(wrong[:, 1:].any(1).float().mean().item(), 3),
        "next_token_acc": round(1 - wrong.float().mean().item(), 4),
        "greedy_acc": round(greedy.float().mean().item(), 4),
    }


def answer_token_acc(model_dir: Path, dataset_jsonl: Path) -> dict:
    """Teacher-forced, on the answerable items of a build: is the first answer token right,
    every token, the end-of-answer token, all of them; overall and by prompt length."""
    from collections import defaultdict

    import torch

    from ragtune.models import load_model

    model, tok = load_model(model_dir, precision="fp32")
    rows = [json.loads(line) for line in dataset_jsonl.read_text().splitlines() if line.strip()]
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for row in (r for r in rows if r["answerable"]):
        prompt = [tok.bos_token_id, *tok(row["prompt"], add_special_tokens=False)["input_ids"]]
        answer = [*tok(row["completion"], add_special_tokens=False)["input_ids"], tok.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
        pred = logits.argmax(-1).tolist()
        body, end = pred[:-1] == answer[:-1], pred[-1] == answer[-1]
        for key in ("all", f"prompt {len(prompt) // 100 * 100}+ tokens"):
            c = counts[key]
            c[0] += 1
            c[1] += pred[0] == answer[0]
            c[2] += body
            c[3] += end
            c[4] += body and end
    names = ("first_token", "every_token", "end_token", "whole")
    return {
        k: {"n": c[0], **{n: round(x / c[0], 3) for n, x in zip(names, c[1:], strict=True)}}
        for k, c in sorted(counts.items())
    }


def main() -> None:
    if sys.argv[1] == "--answer-tokens":
        print(json.dumps(answer_token_acc(Path(sys.argv[2]), Path(sys.argv[3])), indent=1))
        return
    if sys.argv[1] == "--copy-errors":
        print(json.dumps(copy_errors(Path(sys.argv[2]))))
        return
    if sys.argv[1] == "--find":
        print(json.dumps(find_acc(Path(sys.argv[2]))))
        return
    if sys.argv[1] == "--first-token":
        heldout = [t for i, t in enumerate(load_texts(DOCS)) if not i % 10]
        print(json.dumps(first_token_acc(Path(sys.argv[2]), heldout[:30]), indent=1))
        return
    out = Path(sys.argv[1])
    overrides = {}
    for kv in sys.argv[2:]:
        if kv == "--set":
            continue
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    from reader import ReaderConfig, make_reader_model, print_probe

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    all_texts = load_texts(DOCS)
    texts = [t for i, t in enumerate(all_texts) if i % 10]  # every 10th document held out
    heldout = [t for i, t in enumerate(all_texts) if not i % 10]
    cfg = ReaderConfig(**overrides)
    info = make_reader_model(texts, out, cfg)
    info["total_seconds"] = round(time.perf_counter() - t0, 1)
    info["load_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    info["overrides"] = overrides
    info["heldout"] = heldout_cloze_em(out, heldout)
    (out / "result.json").write_text(json.dumps(info, indent=2))
    print(json.dumps({k: v for k, v in info.items() if k not in ("log", "config", "probe")}, indent=1))
    for row in info["log"][::4]:
        print(row)
    print_probe(info["probe"])


if __name__ == "__main__":
    main()
