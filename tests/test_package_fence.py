"""Research code (experiments/) stays out of the installed package."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ragtune"


def test_the_package_never_imports_the_experiments():
    imports = re.compile(r"^\s*(from|import)\s+(experiments|reader)\b|ragtune\.reader\b", re.M)
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if imports.search(p.read_text(encoding="utf-8"))]
    assert not offenders
    assert not (SRC / "reader.py").exists()


def test_the_package_tells_no_research_history():
    history = re.compile(r"\bround \d+\b", re.I)
    offenders = [
        f"{p.relative_to(SRC)}: {m.group(0)}"
        for p in SRC.rglob("*")
        if p.suffix in (".py", ".txt")
        for m in history.finditer(p.read_text(encoding="utf-8"))
    ]
    assert not offenders
