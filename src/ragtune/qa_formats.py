"""Human-annotated QA files read into `QAItem`s: what `ragtune import` adds to a run (so it mixes
with synthetic data in `build`) and what `ragtune eval --qa` scores.

Formats: SQuAD v2 JSON (answerable and unanswerable, paragraph kept as the context),
HotpotQA-style records (question, answer, titled paragraphs, supporting facts), plain JSONL
or JSON (question, contexts, answers), CSV with the same columns, and RAFT's output rows
(question, context titles / sentences, oracle_context, cot_answer). Every row is validated;
problems are reported with their line (or JSON position) in one line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.metrics import extract_final_answer, quoted_spans
from ragtune.records import QAItem, content_id, read_text_file

FORMATS = ("squad", "hotpot", "jsonl", "csv", "raft")
TRUE = {"1", "true", "yes", "y", "t"}
FALSE = {"0", "false", "no", "n", "f", ""}


class RowError(Exception):
    """One invalid row; collected and reported together with its position."""


Row = tuple[str, Any]  # (position such as "line 4" or "data[0].paragraphs[2].qas[1]", raw row)


# ---------------------------------------------------------------- reading raw rows
def _json_rows(path: Path) -> Iterator[Row]:
    # Bad JSON is a row error here (--skip-invalid can skip it); a bad encoding fails the file.
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"line {n}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"line {n}", RowError(f"not valid JSON ({e.msg})")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise RagtuneError(f"{path}: not valid JSON at line {e.lineno} ({e.msg}); fix the file") from None


def _csv_rows(path: Path) -> Iterator[Row]:
    with io.StringIO(read_text_file(path), newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "question" not in [h.strip().lower() for h in reader.fieldnames]:
            raise RagtuneError(f"{path}: the CSV header needs a 'question' column (and answer, context)")
        for row in reader:
            yield f"line {reader.line_num}", {k.strip().lower(): v for k, v in row.items() if k}


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        data = _load_json(path)
        if isinstance(data, dict) and "data" in data:
            return "squad"
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        return _record_format(first)
    if suffix == ".jsonl":
        for _, row in _json_rows(path):
            if isinstance(row, dict):
                return _record_format(row)
        return "jsonl"
    raise RagtuneError(f"{path}: unknown QA file type '{suffix}'; use .json (SQuAD v2, HotpotQA, RAFT), .jsonl or .csv")


def _record_format(row: dict[str, Any]) -> str:
    if "cot_answer" in row or "oracle_context" in row:
        return "raft"
    ctx = row.get("context")
    if "supporting_facts" in row or (isinstance(ctx, list) and ctx and isinstance(ctx[0], list)):
        return "hotpot"
    return "jsonl"


# ---------------------------------------------------------------- per-format rows -> QAItems
def _text(value: Any, name: str, required: bool = True) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(f"missing '{name}'")
        return ""
    if not isinstance(value, (str, int, float)):
        raise RowError(f"'{name}' must be text, got {type(value).__name__}")
    return str(value).strip()


def _text_list(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):  # a JSON list inside a CSV cell
            try:
                value = json.loads(s)
            except json.JSONDecodeError:
                raise RowError(f"'{name}' looks like a JSON list but does not parse") from None
        else:
            return [s]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise RowError(f"'{name}' must be a text or a list of texts")
    return [str(v).strip() for v in value if str(v).strip()]


def _flag(value: Any, name: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in TRUE:
        return True
    if s in FALSE:
        return False
    raise RowError(f"'{name}' must be true or false, got {value!r}")


def plain_item(row: Any, origin: str) -> QAItem:
    """JSONL / JSON / CSV row: question, answer(s), context(s), optional id / answerable / title."""
    if not isinstance(row, dict):
        raise RowError("expected an object with 'question', 'answers' and 'contexts'")
    question = _text(row.get("question"), "question")
    answers = _text_list(row.get("answers"), "answers") or _text_list(row.get("answer"), "answer")
    contexts = _text_list(row.get("contexts"), "contexts") or _text_list(row.get("context"), "context")
    answerable = _flag(row.get("answerable"), "answerable")
    if answerable is None:
        impossible = _flag(row.get("is_impossible"), "is_impossible")
        answerable = bool(answers) if impossible is None else not impossible
    if answerable and not answers:
        raise RowError("answerable row without an answer; add 'answer' or set answerable false")
    if not answerable:
        answers = []
    meta = {"title": str(row["title"])} if row.get("title") else {}
    return _item(row.get("id"), question, answers, contexts, answerable, origin, meta)


def _item(
    qid: Any,
    question: str,
    answers: list[str],
    contexts: list[str],
    answerable: bool,
    origin: str,
    meta: dict[str, Any],
    evidence: list[str] | None = None,
) -> QAItem:
    answers = list(dict.fromkeys(answers))  # unique, in order
    ident = str(qid) if qid not in (None, "") else content_id(question, "\x1f".join(answers), *contexts)
    return QAItem(
        id=ident,
        question=question,
        answer=answers[0] if answers else "",
        answers=answers,
        contexts=contexts,
        answerable=answerable,
        kind="human" if answerable else "unanswerable",
        origin=origin,
        evidence=evidence or [],
        meta={k: v for k, v in meta.items() if v is not None},  # fields a format lacks stay out
        doc_id=content_id(meta.get("title") or contexts[0]) if contexts else None,
    )


def squad_rows(data: Any, path: Path) -> Iterator[Row]:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise RagtuneError(f"{path}: expected SQuAD JSON with a top-level 'data' list")
    for a, article in enumerate(data["data"]):
        title = article.get("title", "") if isinstance(article, dict) else ""
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            yield f"data[{a}]", RowError("missing 'paragraphs' list")
            continue
        for p, para in enumerate(paragraphs):
            qas = para.get("qas") if isinstance(para, dict) else None
            if not isinstance(qas, list):
                yield f"data[{a}].paragraphs[{p}]", RowError("missing 'qas' list")
                continue
            for q, qa in enumerate(qas):
                yield f"data[{a}].paragraphs[{p}].qas[{q}]", (title, para.get("context"), qa)


def squad_item(row: Any, origin: str) -> QAItem:
    title, context, qa = row
    if not isinstance(qa, dict):
        raise RowError("a question entry must be an object")
    question = _text(qa.get("question"), "question")
    context = _text(context, "context")
    answers_raw = qa.get("answers") or []
    if not isinstance(answers_raw, list) or not all(isinstance(x, dict) and "text" in x for x in answers_raw):
        raise RowError("'answers' must be a list of {text, answer_start}")
    answers = [str(x["text"]).strip() for x in answers_raw if str(x["text"]).strip()]
    impossible = bool(qa.get("is_impossible", not answers))
    if not impossible and not answers:
        raise RowError("answerable question without answers")
    meta: dict[str, Any] = {"title": title}
    if impossible and qa.get("plausible_answers"):
        meta["plausible_answers"] = [x.get("text", "") for x in qa["plausible_answers"] if isinstance(x, dict)]
    return _item(qa.get("id"), question, [] if impossible else answers, [context], not impossible, origin, meta)


def hotpot_item(row: Any, origin: str) -> QAItem:
    """HotpotQA: context = [[title, [sentences]]...], supporting_facts = [[title, sentence_id]...]."""
    if not isinstance(row, dict):
        raise RowError("expected an object")
    question = _text(row.get("question"), "question")
    answer = _text(row.get("answer"), "answer")
    ctx = row.get("context")
    if not isinstance(ctx, list) or not all(isinstance(c, list) and len(c) == 2 for c in ctx):
        raise RowError("'context' must be a list of [title, sentences] pairs")
    titles = [str(t) for t, _ in ctx]
    contexts = ["".join(s) if isinstance(s, list) else str(s) for _, s in ctx]
    support = row.get("supporting_facts") or []
    sup_titles = list(dict.fromkeys(str(f[0]) for f in support if isinstance(f, list) and f))
    evidence = []
    for f in support:
        if isinstance(f, list) and len(f) == 2 and str(f[0]) in titles:
            sents = ctx[titles.index(str(f[0]))][1]
            if isinstance(sents, list) and isinstance(f[1], int) and 0 <= f[1] < len(sents):
                evidence.append(str(sents[f[1]]).strip())
    meta = {"titles": titles, "supporting_titles": sup_titles, "type": row.get("type"), "level": row.get("level")}
    item = _item(row.get("_id", row.get("id")), question, [answer], contexts, True, origin, meta, evidence)
    item.kind = "multi_hop"
    return item


def raft_item(row: Any, origin: str) -> QAItem:
    """RAFT rows: context {title: [[...]], sentences: [[...]]}, oracle_context, cot_answer."""
    if not isinstance(row, dict):
        raise RowError("expected an object")
    question = _text(row.get("question"), "question")
    cot = _text(row.get("cot_answer", row.get("answer")), "cot_answer")
    ctx = row.get("context") or {}
    sentences = ctx.get("sentences") if isinstance(ctx, dict) else ctx
    if isinstance(sentences, list) and sentences and isinstance(sentences[0], list):
        sentences = sentences[0]  # RAFT nests one list per row
    contexts = _text_list(sentences, "context.sentences")
    oracle = _text(row.get("oracle_context"), "oracle_context", required=False)
    answer = extract_final_answer(cot)
    meta = {"cot_answer": cot, "oracle_in_context": bool(oracle) and oracle in contexts, "type": row.get("type")}
    return _item(row.get("id"), question, [answer], contexts, True, origin, meta, quoted_spans(cot))


def _records(path: Path, fmt: str) -> tuple[Iterable[Row], Callable[[Any, str], QAItem]]:
    if fmt == "squad":
        return squad_rows(_load_json(path), path), squad_item
    if fmt == "csv":
        return _csv_rows(path), plain_item
    make = {"hotpot": hotpot_item, "raft": raft_item, "jsonl": plain_item}[fmt]
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        if not isinstance(data, list):
            raise RagtuneError(f"{path}: expected a JSON list of records")
        return ((f"record {i}", r) for i, r in enumerate(data)), make
    return _json_rows(path), make


# ---------------------------------------------------------------- entry point
def import_file(
    path: str | Path, fmt: str | None = None, skip_invalid: bool = False, rejected: list[dict] | None = None
) -> list[QAItem]:
    """Read a QA file into QAItems. Invalid rows raise one RagtuneError naming their positions,
    or with `skip_invalid` are left out (and listed in `rejected`)."""
    path = Path(path)
    if not path.is_file():
        raise RagtuneError(f"QA file {path} not found; pass the path of a .json, .jsonl or .csv file")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise RagtuneError(f"unknown QA format '{fmt}'; use one of {', '.join(FORMATS)}")
    rows, make = _records(path, fmt)
    origin = f"import:{fmt}:{path.name}"
    items, errors, seen = [], [], set()
    for where, raw in rows:
        try:
            if isinstance(raw, RowError):
                raise raw
            item = make(raw, origin)
            if item.id in seen:
                raise RowError(f"duplicate id '{item.id}'")
            seen.add(item.id)
            items.append(item)
        except RowError as e:
            errors.append((where, str(e)))
            if rejected is not None:
                rejected.append({"source": str(path), "where": where, "reason": str(e)})
    if errors and not skip_invalid:
        shown = "; ".join(f"{w}: {r}" for w, r in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise RagtuneError(f"{path}: {len(errors)} invalid row(s): {shown}{more}; fix them or pass --skip-invalid")
    if not items:
        raise RagtuneError(f"{path}: no QA rows found; check the file holds questions in a supported format")
    return items
