"""One `reader` recipe experiment on the python-docs corpus: build, time, probe.

    nice python bench/reader_experiment.py OUT_DIR [--set key=value ...]

Values are parsed as JSON where possible (numbers, dicts). Prints and writes OUT_DIR/result.json.
Until `ragtune.ingest.load_documents` lands, reads the .rst.txt files directly.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve()
DOCS = Path(os.environ.get("RAGTUNE_DOCS") or next(
    (p / "shared" / "data" / "python-docs" for p in _HERE.parents if (p / "shared" / "data").is_dir()),
    _HERE.parents[1].parent / "shared" / "data" / "python-docs"))


def load_texts(root: Path) -> list[str]:
    try:
        from ragtune.ingest import load_documents  # type: ignore[attr-defined]

        return [d.text for d in load_documents(root)]
    except ImportError:
        pass
    texts = []
    for f in sorted(root.rglob("*.txt")):
        t = f.read_text(encoding="utf-8", errors="replace")
        t = re.sub(r"^\.\. .*$", "", t, flags=re.M)  # directives
        t = re.sub(r":[a-z:]+:`~?([^`<]*?)(?: <[^>]*>)?`", r"\1", t)  # roles
        t = re.sub(r"^[=\-~^*#]{3,}\s*$", "", t, flags=re.M)  # underlines
        texts.append(t)
    return texts


def main() -> None:
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
    from ragtune.config import TinyModelConfig
    from ragtune.models import make_tiny_model
    from ragtune.reader import print_probe

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    texts = load_texts(DOCS)
    cfg = TinyModelConfig(recipe="reader", **overrides)
    info = make_tiny_model(texts, out, cfg)
    info["total_seconds"] = round(time.perf_counter() - t0, 1)
    info["load_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    info["overrides"] = overrides
    (out / "result.json").write_text(json.dumps(info, indent=2))
    print(json.dumps({k: v for k, v in info.items() if k not in ("log", "config")}, indent=1))
    for row in info["log"][::4]:
        print(row)
    print_probe(info["probe"])


if __name__ == "__main__":
    main()
