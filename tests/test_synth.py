from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers_docs import make_kb

from ragtune.config import IngestConfig, SynthConfig
from ragtune.errors import RagtuneError
from ragtune.ingest import ingest, ingest_to_run
from ragtune.records import Chunk, QAItem, read_jsonl
from ragtune.synth import synth_to_run, synthesize
from ragtune.synth.base import get_generator


@pytest.fixture
def chunks(tmp_path: Path) -> list[Chunk]:
    folder = make_kb(tmp_path / "kb", n_docs=12, paragraphs=2)
    return ingest(
        folder, IngestConfig(chunk_tokens=60, max_chunk_tokens=80, overlap_tokens=0, min_chunk_tokens=10)
    ).chunks


def test_answers_are_unique_spans_of_their_chunk(chunks: list[Chunk]) -> None:
    result = synthesize(chunks, SynthConfig(questions_per_chunk=2, unanswerable_share=0.0))
    by_id = {c.id: c for c in chunks}
    assert len(result.items) >= len(chunks) // 2
    for item in result.items:
        text = by_id[item.chunk_id].text
        assert item.answerable and item.answers == [item.answer]
        assert 1 <= len(item.answer.split()) <= 6
        assert len(re.findall(r"(?<!\w)" + re.escape(item.answer) + r"(?!\w)", text, flags=re.I)) == 1
        assert item.answer.lower() not in item.question.lower()  # the answer is not given away
        assert item.doc_id == by_id[item.chunk_id].doc_id
        assert text[item.meta["answer_start"] :].startswith(item.answer)


def test_questions_keep_the_words_around_the_answer(chunks: list[Chunk]) -> None:
    items = synthesize(chunks, SynthConfig(unanswerable_share=0.0)).items
    styles = {i.meta["style"] for i in items}
    assert styles == {"cloze", "wh"}
    for item in items:
        sentence = item.evidence[0]
        before, after = sentence.split(item.answer, 1)
        if item.meta["style"] == "cloze":
            assert item.question.startswith("Fill in the blank: ") and "____" in item.question
            assert item.question == f"Fill in the blank: {before}____{after}".strip()
        else:
            assert item.question.endswith("?")
            # the words right before the answer are in the question verbatim
            assert before[-15:].strip().lower() in item.question.lower()


def test_loose_questions_put_the_wh_word_first_and_keep_some_words_near_the_answer(chunks: list[Chunk]) -> None:
    cfg = SynthConfig(unanswerable_share=0.0, question_styles={"cloze": 0.2, "loose": 0.8})
    items = synthesize(chunks, cfg).items
    loose = [i for i in items if i.meta["style"] == "loose"]
    assert {i.meta["style"] for i in items} == {"cloze", "loose"} and len(loose) > len(items) / 2
    dropped = 0
    for item in loose:
        before, after = item.evidence[0].split(item.answer, 1)
        sentence = [w.strip(".,;:!?()'\"") for w in before.split() + after.split()]  # the answer left out
        words = item.question.removesuffix("?").split()
        assert words[0] in ("What", "How") and item.question.endswith("?")
        body = [w for w in words[1:] if w not in ("year", "many", "number")]
        at = _subsequence(body, sentence)  # the words keep their order in the sentence
        assert len(body) >= 2 and at, (item.question, sentence)
        assert at[0] >= len(sentence) - len(after.split()) - 10  # near the answer
        dropped += at[-1] - at[0] + 1 > len(body)
    assert dropped > len(loose) / 2  # most questions are not a piece of the sentence verbatim


def _subsequence(words: list[str], sentence: list[str]) -> list[int]:
    """Positions of `words` in `sentence` in order (leftmost), or [] when they are not in it."""
    at, i = [], 0
    for w in words:
        while i < len(sentence) and sentence[i] != w:
            i += 1
        if i == len(sentence):
            return []
        at.append(i)
        i += 1
    return at


def test_question_styles_are_checked() -> None:
    chunk = Chunk(id="q", doc_id="d", source="s", title="t", text="x", start=0, end=1)
    with pytest.raises(RagtuneError, match="question_styles.*cloze, wh, loose"):
        synthesize([chunk], SynthConfig(question_styles={"riddle": 1.0}))
    for shares in ({"cloze": 0.0}, {"cloze": 1.0, "wh": -0.5}):
        with pytest.raises(RagtuneError, match="question_styles"):
            synthesize([chunk], SynthConfig(question_styles=shares))


def test_apostrophes_do_not_make_quoted_spans() -> None:
    text = (
        "This module's import lock isn't held by another thread any more today. "
        "The option is set with the flag 'strict_mode' in the configuration file."
    )
    chunk = Chunk(id="q", doc_id="d", source="s", title="t", text=text, start=0, end=len(text))
    answers = {i.answer for i in synthesize([chunk], SynthConfig(questions_per_chunk=4, unanswerable_share=0.0)).items}
    assert "strict_mode" in answers  # a real quotation is still a candidate
    assert not any("'" in a or a.startswith("s ") for a in answers), answers


def test_unanswerable_items_hide_their_answer(chunks: list[Chunk]) -> None:
    items = synthesize(chunks, SynthConfig(unanswerable_share=0.5, seed=3)).items
    unans = [i for i in items if not i.answerable]
    assert 0.25 < len(unans) / len(items) < 0.75
    by_id = {c.id: c for c in chunks}
    for item in unans:
        assert item.answer == "" and item.answers == [] and item.kind == "unanswerable"
        assert item.chunk_id is None and item.meta["source_chunk"] in by_id
        assert item.meta["hidden_answer"] in by_id[item.meta["source_chunk"]].text


def test_deterministic_with_seed(chunks: list[Chunk]) -> None:
    a = synthesize(chunks, SynthConfig(seed=1)).items
    b = synthesize(chunks, SynthConfig(seed=1)).items
    c = synthesize(chunks, SynthConfig(seed=2)).items
    assert [i.id for i in a] == [i.id for i in b]
    assert [i.id for i in a] != [i.id for i in c]


def test_limit_and_rejections(chunks: list[Chunk]) -> None:
    short = Chunk(id="x", doc_id="d", source="s", title="t", text="Too short.", start=0, end=10)
    result = synthesize([short, *chunks], SynthConfig(limit=3))
    assert result.summary["chunks"] == 3
    assert result.rejections[0].chunk_id == "x" and "no usable sentence" in result.rejections[0].reason
    assert {i.chunk_id for i in result.items if i.chunk_id} <= {c.id for c in chunks[:2]}


def test_errors_are_one_line() -> None:
    with pytest.raises(RagtuneError, match="ingest"):
        synthesize([], SynthConfig())
    with pytest.raises(RagtuneError, match="unknown generator"):
        get_generator(SynthConfig(generator="nope"), [])


def test_synth_to_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(RagtuneError, match="not found"):
        synth_to_run(run, SynthConfig())
    ingest_to_run(make_kb(tmp_path / "kb", n_docs=3), run, IngestConfig())
    result = synth_to_run(run, SynthConfig())
    rows = list(read_jsonl(run / "qa.jsonl", QAItem))
    assert [r.id for r in rows] == [i.id for i in result.items]
    assert (run / "qa_rejected.jsonl").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["synth"]["items"] == len(rows)
