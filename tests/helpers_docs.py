"""Small real documents for ingest / synth / build tests, written into a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

TOPICS = [
    (
        "Harbor Lights",
        "The lighthouse at Kestrel Point was built in 1887 by the engineer Mara Quill. "
        "Its lamp burns whale oil until 1921, when the keepers switched to kerosene. "
        "The tower stands 42 metres tall and is painted with red and white bands.",
    ),
    (
        "Glassworks",
        "The Velden glassworks produced blue bottles for the apothecary trade. "
        "Its founder, Otto Brandvik, opened the first furnace in the spring of 1764. "
        "Workers used potash from beech forests to lower the melting temperature.",
    ),
    (
        "Orchard Notes",
        "Quince trees need a sheltered spot and deep, moist soil. "
        "The variety named Vranja ripens in late October and keeps for three months. "
        "Gardeners prune them lightly in winter to open the centre of the crown.",
    ),
    (
        "Rail Timetable",
        "The night train to Sorrel Bay leaves the central station at 22:40. "
        "It stops at Millford, Hatherley and the ferry terminal before dawn. "
        "Sleeping cars were introduced on this line in 1958 by the Northern Company.",
    ),
    (
        "Beekeeping",
        "A strong colony of honey bees can hold fifty thousand workers in summer. "
        "The queen lays up to two thousand eggs a day during the main flow. "
        "Beekeepers add a super when the brood box is eight frames full.",
    ),
    (
        "Weather Station",
        "The station on Mount Orla records wind speed every ten minutes. "
        "Its highest gust, 187 kilometres per hour, was measured in February 1990. "
        "Volunteers replace the anemometer cups each autumn before the storms begin.",
    ),
]


def prose(topic: int, paragraphs: int = 3) -> str:
    """A few paragraphs on one topic, each a little different so chunks differ."""
    title, body = TOPICS[topic % len(TOPICS)]
    out = []
    for p in range(paragraphs):
        out.append(f"{body} This is note number {p + 1} about {title.lower()}.")
    return "\n\n".join(out)


def make_pdf(path: Path, pages: list[str]) -> Path:
    """A minimal valid PDF with one line of Helvetica text per page (written by hand)."""
    objects: list[bytes] = []
    n_pages = len(pages)
    page_ids = [3 + 2 * i for i in range(n_pages)]
    font_id = 3 + 2 * n_pages
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, text in enumerate(pages):
        safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 10 Tf 20 700 Td ({safe}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {page_ids[i] + 1} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


_NAMES = [
    "Mara Quill",
    "Otto Brandvik",
    "Ilse Varga",
    "Tomas Reed",
    "Nadia Okonkwo",
    "Pavel Horak",
    "Lena Strand",
    "Ravi Menon",
    "Greta Holm",
    "Jonas Pike",
    "Aiko Tanaka",
    "Bruno Salles",
]
_PLACES = [
    "Kestrel Point",
    "Velden",
    "Sorrel Bay",
    "Millford",
    "Hatherley",
    "Mount Orla",
    "Ashgrove",
    "Brindle Cove",
    "Carrow",
    "Dunmere",
    "Elsworth",
    "Fallowmere",
]
_THINGS = [
    "lighthouse",
    "glassworks",
    "orchard",
    "railway",
    "apiary",
    "weather station",
    "mill",
    "harbour",
    "library",
    "bridge",
    "observatory",
    "brewery",
]


def varied_paragraph(doc: int, p: int) -> str:
    """Three sentences with names, places, years and numbers that differ per document and paragraph."""
    import random

    rng = random.Random(doc * 1000 + p)
    name, place, thing = rng.choice(_NAMES), rng.choice(_PLACES), rng.choice(_THINGS)
    year, n = 1700 + rng.randrange(300), 10 + rng.randrange(900)
    code = f"{place.split()[0].lower()}_{thing.split()[0]}_{doc}{p}"
    return (
        f"The {thing} near {place} was founded in {year} by the surveyor {name}. "
        f"Records list {n} workers who kept the {thing} running through the long winters. "
        f"Its ledger is filed under the reference {code} in the county archive."
    )


def make_kb(root: Path, n_docs: int = 12, paragraphs: int = 3) -> Path:
    """A folder of markdown documents: a heading, varied paragraphs, a second section."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        title = TOPICS[i % len(TOPICS)][0]
        body = "\n\n".join(varied_paragraph(i, p) for p in range(paragraphs))
        (root / f"doc{i:02d}.md").write_text(
            f"# {title} {i}\n\n{body}\n\n## Details\n\n"
            f"Record {i} was filed by clerk number {100 + i} in the archive of {title}.\n",
            encoding="utf-8",
        )
    return root


def make_mixed_folder(root: Path) -> Path:
    """One file of every supported kind plus the bad files ingest must skip."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.md").write_text(f"# Harbor Lights\n\n{prose(0)}\n\n```python\nprint('code')\n```\n", encoding="utf-8")
    (root / "b.txt").write_text(prose(1), encoding="utf-8")
    (root / "c.rst").write_text(
        "Orchard Notes\n=============\n\n.. note::\n\n   Quince trees are hardy.\n\n"
        f"{prose(2, 2)}\n\nExample::\n\n    x = 1\n    print(x)\n\n.. code-block:: python\n\n"
        "   secret_code = 2\n\n+-----+-----+\n| a   | b   |\n+-----+-----+\n\nThe end of :func:`notes`.\n",
        encoding="utf-8",
    )
    (root / "d.html").write_text(
        "<html><head><title>Rail Timetable</title><script>var x=1;</script></head><body>"
        f"<h1>Rail Timetable</h1><p>{TOPICS[3][1]}</p><p>Second paragraph about trains.</p></body></html>",
        encoding="utf-8",
    )
    make_pdf(root / "e.pdf", [TOPICS[4][1], TOPICS[5][1]])
    (root / "f.jsonl").write_text(
        json.dumps({"id": "w1", "title": "Weather", "text": TOPICS[5][1]})
        + "\n"
        + json.dumps({"text": TOPICS[3][1]})
        + "\n",
        encoding="utf-8",
    )
    (root / "binary.txt").write_bytes(b"\x89PNG\x00\x00\x01\x02" * 20)
    (root / "empty.md").write_text("   \n\n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (root / "image.png").write_bytes(b"\x89PNG")
    return root
