"""PNG plots of the report (matplotlib, headless): scores, abstention matrix, robustness curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scores(metrics: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    names = list(metrics["models"])
    labels = ["EM", "F1", "HasAns F1", "NoAns EM", "HasAns refused %"]
    getters = [
        lambda m: m["em"],
        lambda m: m["f1"],
        lambda m: m["has_ans"]["f1"],
        lambda m: m["no_ans"]["em"],
        lambda m: m["has_ans"]["refused"],
    ]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        vals = [g(metrics["models"][name]) or 0.0 for g in getters]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, vals, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=9)
    ax.set_ylabel("percent")
    ax.set_ylim(0, 105)
    ax.set_title("Scores (SQuAD v2 rules)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_abstention(metrics: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    names = list(metrics["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.2), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        a = metrics["models"][name]["abstention"]
        grid = [
            [a["answerable"]["answered"], a["answerable"]["refused"]],
            [a["unanswerable"]["answered"], a["unanswerable"]["refused"]],
        ]
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, max(max(r) for r in grid)))
        for r in range(2):
            for c in range(2):
                # Right cells: answerable answered, unanswerable refused.
                good = (r, c) in {(0, 0), (1, 1)}
                ax.text(
                    c,
                    r,
                    str(grid[r][c]),
                    ha="center",
                    va="center",
                    fontsize=14,
                    color="black",
                    fontweight="bold" if good else "normal",
                )
        ax.set_xticks([0, 1], ["answered", "refused"])
        ax.set_yticks([0, 1], ["answerable", "unanswerable"])
        ax.set_title(name)
    fig.suptitle("Abstention matrix (bold: correct behaviour)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_robustness(metrics: dict[str, Any], path: Path) -> Path | None:
    rob = metrics.get("robustness")
    if not rob:
        return None
    plt = _pyplot()
    names = [n for n in metrics["models"] if n in rob]
    fig, (ax, ax_nll, ax2) = plt.subplots(1, 3, figsize=(12, 3.8), dpi=110, gridspec_kw={"width_ratios": [3, 3, 1.4]})
    top = 0.0
    for j, name in enumerate(names):
        color = f"C{j}"
        ax.plot(rob["k"], rob[name], marker="o", color=color, label=f"{name}: oracle + k")
        cb = rob.get("closed_book", {}).get(name)
        if cb is not None:
            ax.axhline(cb, color=color, linestyle=":", label=f"{name}: closed book")
        top = max([top, cb or 0.0, *rob[name]])
        nll = rob.get("answer_nll", {}).get(name)
        if nll and all(v is not None for v in nll):
            ax_nll.plot(rob["k"], nll, marker="o", color=color, label=f"{name}: oracle + k")
            cbn = rob.get("closed_book_nll", {}).get(name)
            if cbn is not None:
                ax_nll.axhline(cbn, color=color, linestyle=":", label=f"{name}: closed book")
    for a, ylabel, title in (
        (ax, "F1 (answerable questions)", "F1 vs distractors"),
        (ax_nll, "answer NLL / token (lower is better)", "answer NLL vs distractors"),
    ):
        a.set_xlabel("distractor passages k (oracle present)")
        a.set_ylabel(ylabel, fontsize=9)
        a.set_xticks(rob["k"])
        a.set_title(f"{title} (n = {rob.get('n', '?')})", fontsize=10)
        a.legend(fontsize=7)
    ax.set_ylim(0, max(10.0, top * 1.15))
    refused = [rob.get("no_oracle_refused", {}).get(n) or 0.0 for n in names]
    bars = ax2.bar(names, refused, color=[f"C{j}" for j in range(len(names))])
    ax2.bar_label(bars, fmt="%.1f", fontsize=8)
    ax2.set_ylim(0, 105)
    ax2.set_title("oracle removed:\nrefused % (higher is right)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(out: Path, metrics: dict[str, Any]) -> list[str]:
    """Write the report's PNGs into `out` (removing a stale one); returns their file names."""
    paths = [plot_scores(metrics, out / "scores.png"), plot_abstention(metrics, out / "abstention.png")]
    rob = plot_robustness(metrics, out / "robustness.png")
    if rob is None:
        (out / "robustness.png").unlink(missing_ok=True)
    return [p.name for p in [*paths, rob] if p is not None]
