"""The before/after table (terminal and Markdown), report.md, predictions.jsonl, metrics.json."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# (label, getter, decimals, lower is better)
ROWS: list[tuple[str, Callable[[dict], Any], int, bool]] = [
    ("EM", lambda m: m.get("em"), 1, False),
    ("F1", lambda m: m.get("f1"), 1, False),
    ("HasAns EM", lambda m: m["has_ans"].get("em"), 1, False),
    ("HasAns F1", lambda m: m["has_ans"].get("f1"), 1, False),
    ("HasAns refused %", lambda m: m["has_ans"].get("refused"), 1, True),
    ("HasAns empty output %", lambda m: m["has_ans"].get("empty"), 1, True),
    ("NoAns EM (correct refusals)", lambda m: m["no_ans"].get("em"), 1, False),
    ("NoAns refused %", lambda m: m["no_ans"].get("refused"), 1, False),
    ("contains-match", lambda m: m.get("contains"), 1, False),
    ("ROUGE-L", lambda m: m.get("rouge_l"), 1, False),
    ("answer NLL / token", lambda m: m.get("answer_nll"), 3, True),
    ("items / s", lambda m: m.get("items_per_s"), 1, False),
]


def _fmt(v: Any, decimals: int) -> str:
    return "-" if v is None else f"{v:.{decimals}f}"


def table_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the before/after table: one column per model, then the change of
    each tuned model against the first (base) column."""
    names = list(metrics["models"])
    header = ["metric", *names] + [f"Δ {n}" for n in names[1:]]
    rows = []
    for label, get, dec, _ in ROWS:
        vals = [get(metrics["models"][n]) for n in names]
        if all(v is None for v in vals):
            continue
        deltas = ["-" if v is None or vals[0] is None else f"{v - vals[0]:+.{dec}f}" for v in vals[1:]]
        rows.append([label, *(_fmt(v, dec) for v in vals), *deltas])
    n = [str(metrics["models"][x].get("n", "")) for x in names]
    rows.append(
        [
            "n (HasAns / NoAns)",
            *(
                f"{v} ({metrics['models'][x]['has_ans']['n']} / {metrics['models'][x]['no_ans']['n']})"
                for v, x in zip(n, names, strict=True)
            ),
            *([""] * (len(names) - 1)),
        ]
    )
    return header, rows


def comparison_table(metrics: dict[str, Any]) -> Any:
    """A rich Table of the before/after comparison, for the terminal."""
    from rich.table import Table

    header, rows = table_rows(metrics)
    table = Table(title=f"ragtune eval: {metrics.get('dataset', '')}", show_lines=False)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    return table


def format_table(metrics: dict[str, Any], width: int = 100) -> str:
    """The before/after table as plain text (what `ragtune eval` and `ragtune run` print)."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(comparison_table(metrics))
    return buf.getvalue()


def print_table(metrics: dict[str, Any]) -> None:
    from rich.console import Console

    Console().print(comparison_table(metrics))


def markdown_table(metrics: dict[str, Any]) -> str:
    header, rows = table_rows(metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def abstention_markdown(metrics: dict[str, Any]) -> str:
    lines = [
        "| model | answerable: answered | answerable: refused | unanswerable: answered | unanswerable: refused |",
        "|---|---|---|---|---|",
    ]
    for name, m in metrics["models"].items():
        a = m["abstention"]
        lines.append(
            f"| {name} | {a['answerable']['answered']} | {a['answerable']['refused']} | "
            f"{a['unanswerable']['answered']} | {a['unanswerable']['refused']} |"
        )
    return "\n".join(lines)


ROBUSTNESS_NOTE = (
    "answerable questions with a known oracle chunk; distractors are the top BM25 chunks "
    "that do not hold a gold answer."
)


def robustness_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rob = metrics.get("robustness") or {}
    names = [n for n in metrics["models"] if n in rob]
    nll = rob.get("answer_nll", {})
    header = ["context", *(h for n in names for h in (f"{n} F1", f"{n} answer NLL"))]
    rows = []
    if "closed_book" in rob:
        rows.append(
            [
                "closed book",
                *(
                    v
                    for n in names
                    for v in (_fmt(rob["closed_book"].get(n), 1), _fmt(rob.get("closed_book_nll", {}).get(n), 3))
                ),
            ]
        )
    for j, k in enumerate(rob.get("k", [])):
        label = "oracle only" if k == 0 else f"oracle + {k} distractors"
        rows.append(
            [
                label,
                *(v for n in names for v in (_fmt(rob[n][j], 1), _fmt((nll.get(n) or [None] * len(rob["k"]))[j], 3))),
            ]
        )
    if "no_oracle_refused" in rob:
        rows.append(
            ["oracle removed: refused %", *(v for n in names for v in (_fmt(rob["no_oracle_refused"].get(n), 1), ""))]
        )
    return header, rows


def robustness_markdown(metrics: dict[str, Any]) -> str:
    rob = metrics.get("robustness")
    if not rob:
        return ""
    header, rows = robustness_rows(metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append(f"\n{rob.get('n', '')} {ROBUSTNESS_NOTE}")
    return "\n".join(lines)


def lower_is_better(label: str) -> bool:
    return any(lower for lab, _, _, lower in ROWS if lab == label)


def shown_prediction(text: str) -> str:
    return text if text.strip() else "(empty)"


def best_and_worst(rows: Sequence[dict[str, Any]], names: Sequence[str], n: int = 5) -> tuple[list, list]:
    """Items where the last model gained most / lost most against the first (F1, then NLL)."""
    if not rows:
        return [], []
    first, last = names[0], names[-1]

    def gain(r: dict[str, Any]) -> tuple[float, float]:
        a, b = r["models"][first], r["models"][last]
        dn = (a.get("nll") or 0.0) - (b.get("nll") or 0.0)
        if first == last:
            return (b["f1"], -(b.get("nll") or 0.0))
        return (b["f1"] - a["f1"], dn)

    ranked = sorted(rows, key=gain, reverse=True)
    return ranked[:n], ranked[::-1][:n]


def _cell(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def examples_markdown(items: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    lines = ["| question | gold | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in items:
        gold = " / ".join(r["answers"]) if r["answerable"] else "(unanswerable)"
        preds = [
            f"{_cell(shown_prediction(r['models'][n]['prediction']), 80)} (F1 {r['models'][n]['f1']:.2f})"
            for n in names
        ]
        lines.append(f"| {_cell(r['question'])} | {_cell(gold, 60)} | " + " | ".join(preds) + " |")
    return "\n".join(lines)


def report_markdown(metrics: dict[str, Any], rows: Sequence[dict[str, Any]], images: Sequence[str] = ()) -> str:
    names = list(metrics["models"])
    best, worst = best_and_worst(rows, names)
    parts = [
        "# ragtune evaluation report",
        "",
        f"Items: {metrics['n']} from `{metrics.get('dataset', '')}`. Same items and prompts for every "
        "model, greedy decoding. EM / F1 in percent under SQuAD v2 rules (a refusal is the empty "
        "answer: right on unanswerable questions, wrong on answerable ones). Answer NLL: mean "
        "negative log-likelihood per token of the reference completions, teacher-forced.",
        "",
        "## Before / after",
        "",
        markdown_table(metrics),
        "",
        "## Abstention (confusion matrix)",
        "",
        abstention_markdown(metrics),
        "",
    ]
    rob = robustness_markdown(metrics)
    if rob:
        parts += ["## Robustness to distractors", "", rob, ""]
    for img in images:
        parts += [f"![{Path(img).stem}]({Path(img).name})", ""]
    extra = [(n, m) for n, m in metrics["models"].items() if m.get("n_quoted") or m.get("n_cited")]
    if extra:
        parts += [
            "## Quotes and citations",
            "",
            "| model | quote validity % (n) | citation precision % (n) |",
            "|---|---|---|",
        ]
        parts += [
            f"| {n} | {_fmt(m.get('quote_validity'), 1)} ({m['n_quoted']}) | "
            f"{_fmt(m.get('citation_precision'), 1)} ({m['n_cited']}) |"
            for n, m in extra
        ]
        parts.append("")
    if metrics.get("judge"):
        header, jrows = judge_rows_table(metrics)
        parts += ["## LLM judge", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(r) + " |" for r in jrows]
        parts += ["", judge_note(metrics), ""]
    parts += [
        "## 5 best examples",
        "",
        examples_markdown(best, names),
        "",
        "## 5 worst examples",
        "",
        examples_markdown(worst, names),
        "",
    ]
    return "\n".join(parts)


def judge_rows_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    j = metrics["judge"]
    header = [
        "model",
        "faithfulness % (95% CI)",
        "correctness % (95% CI)",
        "judged",
        "refusals skipped",
        "parse failures",
    ]
    rows = []
    for name, m in j["models"].items():
        cells = [name]
        for metric in ("faithfulness", "correctness"):
            v = m.get(metric)
            cells.append(f"{v['mean']:.1f} ± {v['ci95']:.1f}" if v else "-")
        n = (m.get("faithfulness") or {}).get("n", 0)
        cells += [str(n), str(m["refusals_skipped"]), str(m["parse_failures"])]
        rows.append(cells)
    return header, rows


def judge_note(metrics: dict[str, Any]) -> str:
    j = metrics["judge"]
    return (
        f"Judge `{j['model']}` at {j['base_url'] or 'the OpenAI API'}, temperature {j['temperature']}, "
        f"seeds {j['seed']}..{j['seed'] + j['repeats'] - 1} ({j['repeats']} repeats), prompts "
        f"`{j['prompts_id']}` (in metrics.json). Refusals are not judged."
    )


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
