"""Write a SQuAD v2 file's paragraphs as a knowledge base (one JSONL document per paragraph).

The questions stay out: a model tuned on synthetic questions about these paragraphs is then
scored on the human ones with `ragtune eval --qa`. See bench/squad_sample.sh.

    python bench/squad_kb.py ../shared/data/squad2-sample/dev-sample-v2.0.json runs/squad-kb
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(squad: str, out: str) -> None:
    data = json.loads(Path(squad).read_text(encoding="utf-8"))["data"]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"{a['title']}-{i}", "title": a["title"].replace("_", " "), "text": p["context"]}
        for a in data
        for i, p in enumerate(a["paragraphs"])
    ]
    (folder / "paragraphs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} paragraphs from {len(data)} articles -> {folder / 'paragraphs.jsonl'}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/squad_kb.py SQUAD_V2.json OUT_DIR")
    main(sys.argv[1], sys.argv[2])
