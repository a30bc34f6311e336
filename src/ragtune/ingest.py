"""Ingest: read a folder of documents, normalise them, and cut them into token-sized chunks.

Every format becomes a list of blocks (paragraphs and headings); a document's normalised
text is its blocks joined by blank lines, so chunk offsets index that text exactly. Chunks
are measured in the target tokenizer's tokens and prefer to end at block boundaries, then
at sentence ends, then at word starts; they never exceed `max_chunk_tokens`.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.config import IngestConfig
from ragtune.errors import RagtuneError
from ragtune.records import Chunk, content_id, write_jsonl
from ragtune.runfolder import RunFolder


@dataclass
class Document:
    source: str  # path relative to the docs folder (plus "#line" for JSONL rows)
    doc_id: str
    title: str
    blocks: list[str]
    headings: set[int] = field(default_factory=set)  # indexes of heading blocks
    block_pages: list[int | None] = field(default_factory=list)  # PDF page of each block

    @property
    def text(self) -> str:
        return "\n\n".join(self.blocks)


@dataclass
class Skipped:
    source: str
    reason: str


@dataclass
class IngestResult:
    chunks: list[Chunk]
    report: dict[str, Any]


class _BadFile(Exception):
    """A file that is skipped with this reason."""


# ------------------------------------------------------------------ normalising text
_WS = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, whitespace collapsed."""
    return [p for p in (_clean(x) for x in re.split(r"\n\s*\n", text)) if p]


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise _BadFile("binary (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _BadFile(f"undecodable (not UTF-8 at byte {e.start})") from None


# ------------------------------------------------------------------ reStructuredText
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`*#+<>:._])\1{2,}\s*$")
# directives whose signature line reads as a heading of the description
_RST_SIGNATURE = {
    "abstractmethod",
    "attribute",
    "c:function",
    "c:macro",
    "c:member",
    "c:type",
    "c:var",
    "class",
    "classmethod",
    "cmdoption",
    "coroutinefunction",
    "coroutinemethod",
    "data",
    "decorator",
    "decoratormethod",
    "describe",
    "envvar",
    "exception",
    "function",
    "method",
    "opcode",
    "option",
    "pdbcommand",
    "staticmethod",
}
# directives whose indented body is prose worth keeping: those, and these
_RST_KEEP = _RST_SIGNATURE | {
    "admonition",
    "attention",
    "availability",
    "awaitablefunction",
    "awaitablemethod",
    "caution",
    "danger",
    "deprecated",
    "glossary",
    "hint",
    "impl-detail",
    "important",
    "module",
    "note",
    "rubric",
    "seealso",
    "sidebar",
    "tip",
    "topic",
    "versionadded",
    "versionchanged",
    "warning",
}
_RST_DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:-]+)::\s*(.*)$")
_ROLE = re.compile(r":[\w:+-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_{1,2}")
_RST_TABLE_RULE = re.compile(r"^=+(\s+=+)+\s*$")  # a simple table's "=== ===" rule
_RST_VERSION_NOTES = {"versionadded", "versionchanged", "deprecated"}


def _rst_roles(text: str) -> str:
    return re.sub(r"``([^`]+)``", r"\1", _ROLE.sub(lambda m: m.group(1).lstrip("~!"), text))


def _rst_inline(text: str) -> str:
    def role(m: re.Match) -> str:
        inner = m.group(1)
        inner = re.sub(r"\s*<[^>]*>$", "", inner)  # :ref:`title <label>` -> title
        return inner.lstrip("~!")

    text = _ROLE.sub(role, text)
    text = _LINK.sub(r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\|([\w-]+)\|_{0,2}", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"(?<!\w)\*([^*\s][^*]*)\*", r"\1", text)
    return text


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _skip_indented(lines: list[str], i: int, base: int) -> int:
    """Index after the block of lines indented deeper than `base` (blank lines included)."""
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
        i += 1
    return i


def rst_blocks(text: str) -> tuple[list[str], set[int]]:
    """Prose blocks and heading indexes of a reStructuredText source.

    Comments, substitutions, code and literal blocks, tables, toctrees and doctests are
    dropped; descriptions of functions and classes keep their signature line and body.
    """
    reader = _RstReader(text.expandtabs(4).splitlines())
    i = 0
    while i < len(reader.lines):
        i = reader.read(i)
    reader.flush()
    return reader.blocks, reader.headings


class _RstReader:
    """`rst_blocks`' state: the blocks so far, which of them are headings, and the paragraph
    being gathered. `read` takes the construct that starts at a line and returns the line after it."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.blocks: list[str] = []
        self.headings: set[int] = set()
        self.para: list[str] = []

    def flush(self) -> None:
        """The paragraph gathered so far becomes a block."""
        if not self.para:
            return
        joined = _clean(_rst_inline(" ".join(self.para)))
        if joined.endswith("::"):  # "Example::" introduces a literal block
            joined = joined[:-2].rstrip()
            joined = joined + ":" if joined and joined[-1].isalnum() else joined
        if joined and not joined.startswith(">>>"):
            self.blocks.append(joined)
        self.para.clear()

    def heading(self, text: str) -> None:
        self.headings.add(len(self.blocks))
        self.blocks.append(text)

    def read(self, i: int) -> int:
        line = self.lines[i]
        stripped = line.strip()
        nxt = self.lines[i + 1].strip() if i + 1 < len(self.lines) else ""
        if not stripped:
            self.flush()
            return i + 1
        if _RST_UNDERLINE.match(stripped) and not self.para:  # overline of a title, or a transition
            return i + 1
        if _RST_UNDERLINE.match(nxt) and len(nxt) >= len(stripped) and not self.para:
            self.heading(_clean(_rst_inline(stripped)))
            return i + 2
        if stripped.startswith(("+-", "+=", "|")) or _RST_TABLE_RULE.match(stripped):
            self.flush()  # grid / simple table rows
            return i + 1
        directive = _RST_DIRECTIVE.match(line)
        if directive:
            self.flush()
            return self.directive(i, directive.group(1).lower(), directive.group(2).strip())
        if stripped.startswith(".."):  # comment, target or substitution definition
            self.flush()
            return _skip_indented(self.lines, i + 1, _indent(line))
        if stripped.startswith(">>>"):  # a doctest block runs to the next blank line
            self.flush()
            while i < len(self.lines) and self.lines[i].strip():
                i += 1
            return i
        return self.paragraph_line(i)

    def directive(self, i: int, name: str, arg: str) -> int:
        """Descriptions (`.. function:: sig`) and notes are kept; other directives are skipped
        with their indented body."""
        base = _indent(self.lines[i])
        if name not in _RST_KEEP:
            return _skip_indented(self.lines, i + 1, base)
        if name in _RST_SIGNATURE and arg:
            self.heading(_clean(_rst_roles(arg)))  # no emphasis rule: *args stays
        elif arg and name not in _RST_VERSION_NOTES:
            self.para.append(arg)
        i += 1
        while (
            i < len(self.lines)
            and self.lines[i].strip()
            and _indent(self.lines[i]) > base
            and (self.lines[i].strip().startswith(":") or name in _RST_SIGNATURE)
        ):
            i += 1  # directive options (:noindex:) and further signature lines
        return i

    def paragraph_line(self, i: int) -> int:
        """A line of prose; one ending in "::" closes its paragraph, and the literal block
        indented under it is skipped."""
        line = self.lines[i]
        stripped = line.strip()
        self.para.append(stripped)
        if stripped.endswith("::"):
            self.flush()
            j = i + 1
            while j < len(self.lines) and not self.lines[j].strip():
                j += 1
            if j < len(self.lines) and _indent(self.lines[j]) > _indent(line):
                return _skip_indented(self.lines, j, _indent(line))
        return i + 1


# ------------------------------------------------------------------ Markdown
def markdown_blocks(text: str) -> tuple[list[str], set[int]]:
    """Prose blocks of Markdown: headings kept as their own blocks, fenced code dropped."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    text = re.sub(r"^---\n.*?\n---\n", "", text, flags=re.S)  # front matter
    blocks: list[str] = []
    headings: set[int] = set()
    for para in re.split(r"\n\s*\n", text):
        lines = []
        for line in para.splitlines():
            if re.match(r"^\s{0,3}#{1,6}\s", line):
                if lines:
                    blocks.append(_md_inline(" ".join(lines)))
                    lines = []
                headings.add(len(blocks))
                blocks.append(_md_inline(line.lstrip().lstrip("#")))
            elif re.match(r"^\s*(\|.*\||[-=*_]{3,})\s*$", line):
                continue  # table rows and rules
            else:
                lines.append(line)
        if lines:
            blocks.append(_md_inline(" ".join(lines)))
    return _drop_empty(blocks, headings)


def _md_inline(text: str) -> str:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"^\s*([-*+]|\d+\.)\s+", "", text)
    return _clean(text)


def _drop_empty(blocks: list[str], headings: set[int]) -> tuple[list[str], set[int]]:
    kept, heads = [], set()
    for i, b in enumerate(blocks):
        if b:
            if i in headings:
                heads.add(len(kept))
            kept.append(b)
    return kept, heads


# ------------------------------------------------------------------ HTML, PDF, plain
_HTML_BLOCKS = [
    "p",
    "div",
    "li",
    "td",
    "th",
    "br",
    "tr",
    "section",
    "article",
    "blockquote",
    "dd",
    "dt",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "title",
    "table",
    "ul",
    "ol",
]


def html_blocks(text: str) -> tuple[list[str], set[int], str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    title = _clean(soup.title.get_text()) if soup.title else ""
    for tag in soup(["script", "style", "nav", "header", "footer", "noscript", "pre", "code", "title"]):
        if tag.name == "code" and tag.find_parent("pre") is None:
            tag.unwrap()  # inline code stays as text
        else:
            tag.decompose()
    heads: list[str] = []
    for tag in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
        heads.append(_clean(tag.get_text(" ")))
        tag.insert_before("\n\n\u2063H\u2063")
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    blocks, headings = [], set()
    for para in _paragraphs(soup.get_text()):
        if para.startswith("\u2063H\u2063"):
            para = para[3:].strip()
            if not para:
                continue
            headings.add(len(blocks))
        blocks.append(para)
    title = title or (blocks[min(headings)] if headings else "")
    return blocks, headings, title


def pdf_pages(path: Path) -> list[str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        return [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise _BadFile(f"unreadable PDF ({type(e).__name__})") from None


def _pdf_page_blocks(page_text: str) -> list[str]:
    # pypdf ends most lines with a newline; join hyphenated line breaks, keep blank-line paragraphs
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", page_text)
    return _paragraphs(text)


# ------------------------------------------------------------------ loading a folder
def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".rst.txt") or name.endswith(".rst"):
        return "rst"
    return {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".pdf": "pdf", ".jsonl": "jsonl"}.get(
        path.suffix.lower(), "txt"
    )


def _title_from(blocks: list[str], headings: set[int], fallback: str) -> str:
    return blocks[min(headings)] if headings else fallback


def read_file(path: Path, source: str) -> list[Document]:
    """The documents in one file (JSONL files hold one per line). Raises _BadFile."""
    kind = _kind(path)
    stem = path.name.split(".")[0]
    if kind == "pdf":
        docs_blocks, pages = [], []
        for n, page in enumerate(pdf_pages(path), start=1):
            for b in _pdf_page_blocks(page):
                docs_blocks.append(b)
                pages.append(n)
        doc = Document(source, content_id(source), stem, docs_blocks, set(), pages)
        return [doc] if docs_blocks else []
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _BadFile(f"unreadable ({e.strerror or type(e).__name__})") from None
    text = _decode(data)
    if kind == "jsonl":
        return _jsonl_documents(text, source)
    if kind == "rst":
        blocks, headings = rst_blocks(text)
        title = _title_from(blocks, headings, stem)
    elif kind == "md":
        blocks, headings = markdown_blocks(text)
        title = _title_from(blocks, headings, stem)
    elif kind == "html":
        blocks, headings, title = html_blocks(text)
        title = title or stem
    else:
        blocks, headings, title = _paragraphs(text), set(), stem
    return [Document(source, content_id(source), title, blocks, headings)] if blocks else []


def _jsonl_documents(text: str, source: str) -> list[Document]:
    docs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise _BadFile(f"line {n} is not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise _BadFile(f"line {n} has no string 'text' field")
        key = str(row.get("id", n))
        blocks = _paragraphs(row["text"])
        if blocks:
            src = f"{source}#{key}"
            docs.append(Document(src, content_id(src), str(row.get("title") or key), blocks))
    return docs


def load_documents(docs_dir: Path, cfg: IngestConfig) -> tuple[list[Document], list[Skipped]]:
    """Every readable document under `docs_dir`, and the files skipped with their reason."""
    docs_dir = Path(docs_dir)
    if not docs_dir.is_dir():
        raise RagtuneError(f"documents folder {docs_dir} not found; pass a folder of documents")
    exts = {e.lower() for e in cfg.extensions}
    files = sorted(p for p in docs_dir.rglob("*") if p.is_file() and not _hidden(p, docs_dir))
    if not files:
        raise RagtuneError(f"documents folder {docs_dir} is empty; put .txt/.md/.rst/.html/.pdf/.jsonl files in it")
    docs: list[Document] = []
    skipped: list[Skipped] = []
    for path in files:
        source = path.relative_to(docs_dir).as_posix()
        if path.suffix.lower() not in exts:
            skipped.append(Skipped(source, f"unsupported extension '{path.suffix or '(none)'}'"))
            continue
        try:
            found = read_file(path, source)
        except _BadFile as e:
            skipped.append(Skipped(source, str(e)))
            continue
        if not found:
            skipped.append(Skipped(source, "empty (no text after normalising)"))
        docs.extend(found)
    return docs, skipped


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


# ------------------------------------------------------------------ token counting
_APPROX = re.compile(r"\w{1,4}|[^\w\s]")
APPROX_NOTE = "approximate: one token per 4 word characters or punctuation mark"


def token_spans_fn(tokenizer: Any | None) -> Callable[[str], list[tuple[int, int]]]:
    """A function giving the (start, end) character span of every token of a text.

    With no tokenizer, each run of up to 4 word characters and each punctuation mark counts as
    one token: close to byte-level BPE counts on English prose, and never fewer.
    """
    if tokenizer is None:
        return lambda text: [m.span() for m in _APPROX.finditer(text)]

    def spans(text: str) -> list[tuple[int, int]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(o) for o in enc["offset_mapping"]]

    return spans


def count_fn(tokenizer: Any | None) -> Callable[[str], int]:
    if tokenizer is None:
        return lambda text: len(_APPROX.findall(text))
    return lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


# ------------------------------------------------------------------ chunking
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+")


@dataclass
class _Layout:
    """A document's text with its token positions and preferred cut points."""

    text: str
    tok_starts: list[int]
    tok_ends: list[int]
    block_starts: list[int]  # where blocks start, except right after a heading (keep it with its body)
    sentence_starts: list[int]  # where sentences (and blocks) start

    def count(self, s: int, e: int) -> int:
        """Tokens lying inside text[s:e]."""
        return bisect.bisect_right(self.tok_ends, e) - bisect.bisect_left(self.tok_starts, s)

    def pos_after_tokens(self, s: int, n: int) -> int:
        """The char position after the n-th token starting at or after s."""
        i = bisect.bisect_left(self.tok_starts, s) + n - 1
        return self.tok_ends[min(i, len(self.tok_ends) - 1)] if self.tok_ends else len(self.text)


def _layout(doc: Document, spans: Callable[[str], list[tuple[int, int]]]) -> _Layout:
    text = doc.text
    block_starts, sentence_starts, pos = [], [], 0
    for i, b in enumerate(doc.blocks):
        if i - 1 not in doc.headings:
            block_starts.append(pos)
        sentence_starts.append(pos)
        sentence_starts.extend(pos + m.end() for m in _SENTENCE_END.finditer(b))
        pos += len(b) + 2
    toks = [(s, e) for s, e in spans(text) if e > s]
    return _Layout(text, [s for s, _ in toks], [e for _, e in toks], block_starts, sentence_starts)


def _best_cut(cands: Sequence[int], lay: _Layout, s: int, lo: int, target: int, hi: int) -> int | None:
    """The candidate cut closest below the target size (else the smallest above it, up to hi)."""
    i0 = bisect.bisect_right(cands, s)
    best_under, best_over = None, None
    for c in cands[i0:]:
        n = lay.count(s, c)
        if n > hi:
            break
        if n < lo:
            continue
        if n <= target:
            best_under = c
        elif best_over is None:
            best_over = c
    return best_under if best_under is not None else best_over


def _word_start(text: str, pos: int, floor: int) -> int:
    """Move pos back to the start of the word it falls in (not before floor)."""
    while pos > floor and not text[pos - 1].isspace():
        pos -= 1
    return pos if pos > floor else floor


def chunk_spans(lay: _Layout, cfg: IngestConfig) -> list[tuple[int, int]]:
    """Character spans of the chunks of one document (before whitespace trimming)."""
    n_text = len(lay.text)
    target, hi = cfg.chunk_tokens, cfg.max_chunk_tokens
    lo = min(cfg.min_chunk_tokens, target)
    out: list[tuple[int, int]] = []
    s = 0
    while s < n_text:
        rest = lay.count(s, n_text)
        if rest <= target or (rest <= hi and rest - target < lo):
            out.append((s, n_text))
            break
        end = _best_cut(lay.block_starts, lay, s, lo, target, hi) or _best_cut(
            lay.sentence_starts, lay, s, lo, target, hi
        )
        if end is None:
            end = _word_start(lay.text, lay.pos_after_tokens(s, target), s)
            if end <= s:
                end = lay.pos_after_tokens(s, target)
        out.append((s, end))
        s = _overlap_start(lay, s, end, cfg.overlap_tokens)
    return out


def _overlap_start(lay: _Layout, s: int, end: int, overlap: int) -> int:
    """Where the next chunk starts: a sentence start within `overlap` tokens before `end`,
    else a word start about `overlap` tokens back; always after `s` so chunking advances."""
    if overlap <= 0:
        return end
    i = bisect.bisect_left(lay.sentence_starts, s + 1)
    for c in lay.sentence_starts[i:]:
        if c >= end:
            break
        if lay.count(c, end) <= overlap:
            return c
    j = bisect.bisect_left(lay.tok_starts, end) - overlap
    pos = lay.tok_starts[max(j, 0)] if lay.tok_starts else end
    pos = _word_start(lay.text, pos, s)
    return pos if s < pos < end else end


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def chunk_document(
    doc: Document,
    cfg: IngestConfig,
    spans: Callable[[str], list[tuple[int, int]]],
    count: Callable[[str], int],
) -> list[Chunk]:
    lay = _layout(doc, spans)
    chunks = []
    heads = sorted(doc.headings)
    for s, e in chunk_spans(lay, cfg):
        s, e = _trim(lay.text, s, e)
        if e <= s:
            continue
        text = lay.text[s:e]
        n = count(text)
        while n > cfg.max_chunk_tokens:  # a re-tokenised slice can count a token or two more
            keep = max(1, lay.count(s, e) - (n - cfg.max_chunk_tokens) - 1)
            cut = _word_start(lay.text, lay.pos_after_tokens(s, keep), s)
            e = cut if s < cut < e else e - 1
            s, e = _trim(lay.text, s, e)
            text = lay.text[s:e]
            n = count(text)
        block = bisect.bisect_right(lay.block_starts, s) - 1
        chunks.append(
            Chunk(
                id=content_id(doc.source, text),
                doc_id=doc.doc_id,
                source=doc.source,
                title=_section_title(doc, heads, block),
                text=text,
                start=s,
                end=e,
                page=doc.block_pages[block] if doc.block_pages else None,
                n_tokens=n,
            )
        )
    return chunks


def _section_title(doc: Document, heads: list[int], block: int) -> str:
    """The document title, plus the heading the chunk falls under when it differs."""
    i = bisect.bisect_right(heads, block) - 1
    section = doc.blocks[heads[i]] if i >= 0 else ""
    return f"{doc.title} > {section}" if section and section != doc.title else doc.title


def _check(cfg: IngestConfig) -> None:
    if not 0 < cfg.chunk_tokens <= cfg.max_chunk_tokens:
        raise RagtuneError("chunk_tokens must be positive and at most max_chunk_tokens; fix the ingest config")
    if not 0 <= cfg.overlap_tokens < cfg.chunk_tokens:
        raise RagtuneError("overlap_tokens must be at least 0 and below chunk_tokens; fix the ingest config")


# ------------------------------------------------------------------ entry points
def ingest(docs_dir: Path, cfg: IngestConfig, tokenizer: Any | None = None) -> IngestResult:
    """Chunks of every readable document under `docs_dir`, and a report of what was read."""
    _check(cfg)
    t0 = time.perf_counter()
    if tokenizer is None and cfg.tokenizer:
        from ragtune.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    docs, skipped = load_documents(Path(docs_dir), cfg)
    if not docs:
        reasons = ", ".join(f"{n} {r}" for r, n in Counter(_reason_kind(s.reason) for s in skipped).items())
        raise RagtuneError(
            f"no readable documents in {docs_dir} (skipped: {reasons}); add .txt/.md/.rst/.html/.pdf/.jsonl files"
        )
    spans, count = token_spans_fn(tokenizer), count_fn(tokenizer)
    chunks: list[Chunk] = []
    seen: set[str] = set()
    duplicates = 0
    for doc in docs:
        for c in chunk_document(doc, cfg, spans, count):
            if c.id in seen:  # the same text twice in one source
                duplicates += 1
                continue
            seen.add(c.id)
            chunks.append(c)
    sizes = sorted(c.n_tokens for c in chunks)
    report = {
        "docs_dir": str(docs_dir),
        "tokenizer": cfg.tokenizer or (getattr(tokenizer, "name_or_path", None) if tokenizer else APPROX_NOTE),
        "files_read": len({d.source.split("#")[0] for d in docs}),
        "documents": len(docs),
        "chunks": len(chunks),
        "duplicate_chunks_dropped": duplicates,
        "files_skipped": len(skipped),
        "skipped_by_reason": dict(Counter(_reason_kind(s.reason) for s in skipped)),
        "skipped": [{"source": s.source, "reason": s.reason} for s in skipped],
        "chunk_tokens": {
            "min": sizes[0] if sizes else 0,
            "median": sizes[len(sizes) // 2] if sizes else 0,
            "max": sizes[-1] if sizes else 0,
            "total": sum(sizes),
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return IngestResult(chunks, report)


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0].split(" '")[0]


def ingest_to_run(docs_dir: Path, run_dir: Path, cfg: IngestConfig) -> IngestResult:
    """Ingest into RUN/chunks.jsonl and RUN/ingest_report.json; record the stage."""
    from rich.console import Console

    run = RunFolder(Path(run_dir)).ensure()
    result = ingest(Path(docs_dir), cfg)
    write_jsonl(run.chunks, result.chunks)
    run.ingest_report.write_text(json.dumps(result.report, indent=2), encoding="utf-8")
    run.record_stage(
        "ingest",
        config=cfg,
        chunks=len(result.chunks),
        documents=result.report["documents"],
        files_skipped=result.report["files_skipped"],
        seconds=result.report["seconds"],
    )
    r = result.report
    msg = (
        f"ingest: {r['documents']} documents from {r['files_read']} files -> {r['chunks']} chunks "
        f"(median {r['chunk_tokens']['median']} tokens) in {r['seconds']} s"
    )
    if r["files_skipped"]:
        msg += f"; skipped {r['files_skipped']} files: {r['skipped_by_reason']}"
    Console(stderr=True).print(msg)
    return result
