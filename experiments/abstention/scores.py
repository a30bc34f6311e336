"""Candidate abstention scores of a tuned model, and how well each tells refusal targets from
answerable questions (AUC), on a run's dataset split or on a SQuAD 2.0 file.

Scores per item:
- conf: the greedy answer's mean log-probability per token (the first rule `train` calibrated);
- support: the question's mean log-probability given the system text and the context (the
  score the rule reads now, `ragtune.abstain`);
- closed: the same without the context ("(none)" in its place);
- pmi: support - closed, how much the context raises the question's probability;
- null: the refusal's mean log-probability per token, teacher-forced after the prompt;
- margin: conf - null, the best answer's score over the refusal's (the SQuAD 2.0 practice of
  comparing the null answer's score with the best span's; low margin: refuse).
Then a sweep of every threshold on each score: the best SQuAD-v2 F1, and whether any threshold
reaches HasAns F1 >= 30 with NoAns refusals >= 50%. Last, `combined`: a logistic regression
over all six scores, fitted by 10-fold cross-validation on the very items it is scored on (their
own labels, so an upper bound on what any rule over these scores could do, not a rule).
`--scores` re-reads a saved `--out` file instead of running the model.

    python experiments/abstention/scores.py --run runs/quickstart --split test --out test.json
    python experiments/abstention/scores.py --run runs/squad-sample \
        --squad ../shared/data/squad2-sample/dev-sample-v2.0.json --out squad.json
    python experiments/abstention/scores.py --scores squad.json
"""

from __future__ import annotations

import argparse
import json

import torch

from ragtune.abstain import question_spans
from ragtune.ask import load_for_inference
from ragtune.generation import greedy_completions, span_logprobs
from ragtune.metrics import f1, gold_answers, is_refusal
from ragtune.prompts import prompt_ids


def rows_of(args: argparse.Namespace, tok, tpl) -> list[dict]:
    if args.squad:
        from ragtune.evaluate import qa_examples
        from ragtune.qa_formats import import_file

        return [
            {"prompt": e.prompt, "question": e.question, "completion": e.completion, "answers": e.answers}
            for e in qa_examples(import_file(args.squad), tok, tpl)
        ]
    from datasets import load_from_disk

    return list(load_from_disk(f"{args.run}/dataset")[args.split])


@torch.no_grad()
def support_of(model, ids: list[int], span: tuple[int, int]) -> float:
    states = model.get_decoder()(input_ids=torch.tensor([ids]))[0]
    return span_logprobs(model, states, torch.tensor([ids]), [span])[0]


def without_context(prompt: str) -> str:
    start = prompt.index("Context:\n") + len("Context:\n")
    return prompt[:start] + "(none)" + prompt[prompt.rindex("\n\nQuestion:") :]


def pairwise_auc(pos: list[float], neg: list[float]) -> float:
    """The chance that a positive scores above a negative (ties count half)."""
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def auc(rows: list[dict], key: str) -> float:
    """How well a low `key` picks out the refusal targets."""
    return pairwise_auc([-r[key] for r in rows if r["want"]], [-r[key] for r in rows if not r["want"]])


def sweep(rows: list[dict], key: str) -> dict:
    ans = [r for r in rows if not r["want"]]
    no = [r for r in rows if r["want"]]
    best, feasible = None, 0
    for t in [*sorted({r[key] for r in rows}), float("inf")]:
        refuses = [r["refused"] or r[key] < t for r in rows]
        pairs = list(zip(rows, refuses, strict=True))
        has_f1 = 100 * sum(0 if x else r["f1"] for r, x in pairs if not r["want"]) / len(ans)
        no_ok = 100 * sum(x for r, x in pairs if r["want"]) / len(no)
        total = (has_f1 * len(ans) + no_ok * len(no)) / len(rows)
        feasible += has_f1 >= 30 and no_ok >= 50
        if best is None or total > best["f1"]:
            refused = 100 * sum(x for r, x in pairs if not r["want"]) / len(ans)
            best = {"f1": round(total, 1), "threshold": round(t, 3), "hasans_f1": round(has_f1, 1),
                    "noans_refused": round(no_ok, 1), "hasans_refused": round(refused, 1)}  # fmt: skip
    return {"best": best, "thresholds_meeting_both_bars": feasible}


SCORES = ("support", "conf", "closed", "pmi", "null", "margin")


def logistic_fit(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Weights (last: bias) of an L2-regularised logistic regression of y on x."""
    w = torch.zeros(x.shape[1] + 1, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ w[:-1] + w[-1], y)
        value = value + 1e-3 * w[:-1].square().sum()
        value.backward()
        return value

    opt.step(loss)
    return w.detach()


def combined(rows: list[dict], folds: int = 10) -> list[float]:
    """Out-of-fold scores of a logistic regression over SCORES (low: a refusal target)."""
    x = torch.tensor([[r[k] for k in SCORES] for r in rows], dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-9)
    y = torch.tensor([float(r["want"]) for r in rows], dtype=torch.float64)
    out = torch.zeros(len(rows), dtype=torch.float64)
    for k in range(folds):
        test = torch.arange(len(rows)) % folds == k
        w = logistic_fit(x[~test], y[~test])
        out[test] = -(x[test] @ w[:-1] + w[-1])
    return out.tolist()


def report(rows: list[dict]) -> None:
    print(f"{len(rows)} items, {sum(r['want'] for r in rows)} refusal targets")
    for r, c in zip(rows, combined(rows), strict=True):
        r["combined"] = c
    for key in (*SCORES, "combined"):
        print(f"{key:8s} AUC {auc(rows, key):.3f}  {json.dumps(sweep(rows, key))}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run folder with adapter/ (and dataset/ without --squad)")
    p.add_argument("--split", default="validation")
    p.add_argument("--squad", help="score this SQuAD 2.0 file's questions, each with its own paragraph")
    p.add_argument("--out", help="per-item scores, JSON")
    p.add_argument("--scores", help="report on this saved --out file instead of running the model")
    args = p.parse_args()
    if args.scores:
        with open(args.scores) as f:
            return report(json.load(f))
    if not (args.run and args.out):
        p.error("--run and --out are needed unless --scores names a saved file")
    model, tok, tpl, _ = load_for_inference(f"{args.run}/adapter")
    data = rows_of(args, tok, tpl)
    ids = [prompt_ids(tok, r["prompt"], tpl) for r in data]
    spans = question_spans(tok, ids, [r["question"] for r in data])
    done = greedy_completions(model, tok, ids, max_new_tokens=24, batch_size=8, with_confidence=True, spans=spans)
    refusal = tok(tpl.refusal, add_special_tokens=False)["input_ids"]
    rows = []
    for r, c in zip(data, done, strict=True):
        bare = prompt_ids(tok, without_context(r["prompt"]), tpl)
        closed = support_of(model, bare, question_spans(tok, [bare], [r["question"]])[0])
        null = support_of(model, ids[len(rows)] + refusal, (len(ids[len(rows)]), len(ids[len(rows)]) + len(refusal)))
        rows.append({
            "want": r["completion"].strip().startswith(tpl.refusal), "text": c.text, "conf": c.confidence,
            "support": c.support, "closed": closed, "pmi": c.support - closed,
            "null": null, "margin": c.confidence - null,
            "refused": is_refusal(c.text, tpl.refusal),
            "f1": max(f1(c.text, g) for g in gold_answers(r["answers"]) or [""]),
        })  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(rows, f)
    report(rows)


if __name__ == "__main__":
    main()
