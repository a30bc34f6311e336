"""report.html: one self-contained file (plots inlined as base64 PNG, no external assets)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.evaluate.report import (
    ROBUSTNESS_NOTE,
    best_and_worst,
    judge_note,
    judge_rows_table,
    lower_is_better,
    robustness_rows,
    shown_prediction,
    table_rows,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f2f4f7;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.up{color:#0a7d32} td.down{color:#b3261e}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.ex td{max-width:330px;word-wrap:break-word} .muted{color:#666;font-size:13px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "", numeric: bool = False) -> str:
    """An HTML table; with `numeric`, right-aligned numbers and changes coloured good / bad."""
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        cells = []
        for j, c in enumerate(r):
            kind = ""
            if numeric and j:
                kind = "num"
                if header[j].startswith("Δ") and c[:1] in "+-" and c.strip("+-0.") != "":
                    better = c.startswith("+") != lower_is_better(r[0])
                    kind += " up" if better else " down"
            cells.append(f'<td class="{kind}">{_e(c)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _examples(items: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    header = ["question", "gold", *names]
    rows = []
    for r in items:
        gold = " / ".join(r["answers"]) if r["answerable"] else "(unanswerable)"
        rows.append(
            [
                r["question"],
                gold,
                *(
                    f"{shown_prediction(r['models'][n]['prediction'])}  [F1 {r['models'][n]['f1']:.2f}"
                    + (f", NLL {r['models'][n]['nll']:.2f}]" if r["models"][n].get("nll") is not None else "]")
                    for n in names
                ),
            ]
        )
    return _table(header, rows, "ex")


def _abstention(metrics: dict[str, Any]) -> str:
    header = ["model", "answerable: answered", "answerable: refused", "unanswerable: answered", "unanswerable: refused"]
    rows = [
        [
            name,
            str(m["abstention"]["answerable"]["answered"]),
            str(m["abstention"]["answerable"]["refused"]),
            str(m["abstention"]["unanswerable"]["answered"]),
            str(m["abstention"]["unanswerable"]["refused"]),
        ]
        for name, m in metrics["models"].items()
    ]
    return _table(header, rows, numeric=True)


def write_html(path: Path, metrics: dict[str, Any], rows: Sequence[dict[str, Any]], images: Sequence[Path]) -> Path:
    names = list(metrics["models"])
    header, trows = table_rows(metrics)
    best, worst = best_and_worst(rows, names)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ragtune evaluation</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>ragtune evaluation report</h1>",
        f"<p class='muted'>{metrics['n']} items from <code>{_e(metrics.get('dataset', ''))}</code>; "
        "same items and prompts for every model; greedy decoding. EM / F1 in percent under SQuAD v2 "
        "rules (a refusal is the empty answer). Answer NLL: mean negative log-likelihood per token of "
        "the reference completions.</p>",
        "<h2>Before / after</h2>",
        _table(header, trows, numeric=True),
        "<p class='muted'>Δ: change against the first column; green is better, red is worse.</p>",
    ]
    for img in images:
        title = {"scores": "Scores", "abstention": "Abstention matrix", "robustness": "Robustness to distractors"}.get(
            Path(img).stem, Path(img).stem
        )
        parts += [f"<h2>{_e(title)}</h2>", _img(img)]
        if Path(img).stem == "robustness":
            rh, rr = robustness_rows(metrics)
            parts += [
                _table(rh, rr, numeric=True),
                f"<p class='muted'>{metrics['robustness'].get('n', '')} {_e(ROBUSTNESS_NOTE)}</p>",
            ]
        if Path(img).stem == "abstention":
            parts.append(_abstention(metrics))
    if metrics.get("judge"):
        jh, jr = judge_rows_table(metrics)
        parts += ["<h2>LLM judge</h2>", _table(jh, jr, numeric=True), f"<p class='muted'>{_e(judge_note(metrics))}</p>"]
    parts += [
        "<h2>5 best examples</h2>",
        _examples(best, names),
        "<h2>5 worst examples</h2>",
        _examples(worst, names),
        "</body></html>",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
