from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers_docs import make_kb

from ragtune.build import assemble_examples, build, build_to_run, contains_answer, overlaps
from ragtune.build.assembly import cut_answer, plan_item
from ragtune.build.budget import _window
from ragtune.config import REFUSAL, BuildConfig, IngestConfig, SynthConfig
from ragtune.errors import RagtuneError
from ragtune.ingest import ingest, ingest_to_run
from ragtune.prompts import PromptTemplate, prompt_ids
from ragtune.records import Chunk, Example, QAItem, read_jsonl
from ragtune.synth import synth_to_run, synthesize

SMALL = IngestConfig(chunk_tokens=60, max_chunk_tokens=80, overlap_tokens=12, min_chunk_tokens=10)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> tuple[list[Chunk], list[QAItem]]:
    folder = make_kb(tmp_path_factory.mktemp("kb"), n_docs=18, paragraphs=3)
    chunks = ingest(folder, SMALL, tokenizer=tokenizer).chunks
    qa = synthesize(chunks, SynthConfig(questions_per_chunk=3, unanswerable_share=0.15)).items
    return chunks, qa


def _holds(text: str, answer: str) -> bool:
    """The answer as a whole word or phrase, case ignored (an independent check of the rule)."""
    return re.search(r"(?<!\w)" + re.escape(answer) + r"(?!\w)", text, flags=re.I) is not None


def _check_rules(examples: list[Example], chunks: list[Chunk], qa: list[QAItem]) -> None:
    by_id = {c.id: c for c in chunks}
    items = {q.id: q for q in qa}
    for ex in examples:
        item = items[ex.qa_id]
        shown = [by_id[p] for p in ex.passages]
        assert ex.passage_texts == [c.text for c in shown]
        if item.answerable:
            oracle = by_id[item.chunk_id]
            assert ex.oracle_in_context == (oracle.id in ex.passages)
            distractors = [c for c in shown if c.id != oracle.id]
            assert not any(overlaps(c, oracle) for c in distractors)
            assert not any(_holds(c.text, item.answer) for c in distractors)
            if ex.oracle_in_context:
                assert ex.completion == item.answer and ex.answers == [item.answer] and ex.answerable
                assert ex.meta["oracle_index"] == ex.passages.index(oracle.id)
            else:
                assert ex.completion == REFUSAL and not ex.answerable and ex.answers == []
        else:
            assert ex.completion == REFUSAL and not ex.oracle_in_context
            assert item.meta["source_chunk"] not in ex.passages
            assert not any(contains_answer(c.text, item.meta["hidden_answer"]) for c in shown)
        assert ex.question in ex.prompt


def test_context_rules_hold(corpus, tokenizer) -> None:
    chunks, qa = corpus
    result = assemble_examples(qa, chunks, BuildConfig(k_distractors=3, oracle_p=0.7), tokenizer)
    rows = [e for s in result.splits.values() for e in s]
    assert len(rows) > 50
    _check_rules(rows, chunks, qa)
    assert all(tokenizer.eos_token not in e.completion for e in rows)
    assert result.stats["documents_shared_between_splits"] == 0
    assert all(len(e.passages) == 4 for e in rows)  # k + 1 passages whatever the target
    assert result.stats["hard_distractors"] > result.stats["random_distractors"]


def test_cut_answer_removes_the_sentences_holding_the_answer() -> None:
    text = "Ada joined in 1990. She led the Orion team! The team shipped Lyra in 2001. It ran on Vega."
    chunk = Chunk(id="c1", doc_id="d", source="d.md", title="T", text=text, start=0, end=len(text))
    cut = cut_answer(chunk, ["Lyra"])
    assert cut is not None and cut.id != chunk.id and cut.doc_id == "d"
    assert cut.text == "Ada joined in 1990. She led the Orion team! It ran on Vega."
    assert cut_answer(chunk, ["Pluto"]) is None  # no sentence holds it: nothing to cut
    assert cut_answer(chunk, ["1990", "Orion", "Lyra", "Vega"]) is None  # nothing would be left
    assert cut_answer(chunk, ["team shipped Lyra in 2001. It ran"]) is None  # spans sentences


def _cut_of(item: QAItem, by_id: dict[str, Chunk]) -> Chunk | None:
    plan = plan_item(item, by_id)
    return cut_answer((plan.oracles if plan.answerable else plan.banned)[0], plan.hidden_answers)


def test_refusal_examples_can_show_their_own_chunk_without_the_answer(corpus, tokenizer) -> None:
    chunks, qa = corpus
    by_id, items = {c.id: c for c in chunks}, {q.id: q for q in qa}
    cfg = BuildConfig(k_distractors=3, oracle_p=0.5, cut_oracle_p=1.0)
    rows = [e for s in assemble_examples(qa, chunks, cfg, tokenizer).splits.values() for e in s]
    cut_rows = [e for e in rows if e.meta["answer_cut"]]
    cuttable = [e for e in rows if not e.answerable and _cut_of(items[e.qa_id], by_id) is not None]
    assert len(cut_rows) > 10 and {e.id for e in cut_rows} == {e.id for e in cuttable}  # at p = 1, every one
    for ex in cut_rows:
        item = items[ex.qa_id]
        source = by_id[item.chunk_id if item.answerable else item.meta["source_chunk"]]
        hidden = [item.answer] if item.answerable else [item.meta["hidden_answer"]]
        (cut,) = [t for pid, t in zip(ex.passages, ex.passage_texts, strict=True) if pid not in by_id]
        source_sentences = re.split(r"(?<=[.!?])\s+", source.text)
        assert set(re.split(r"(?<=[.!?])\s+", cut)) < set(source_sentences)  # whole sentences, some gone
        assert ex.completion == REFUSAL and not ex.oracle_in_context and source.id not in ex.passages
        assert not any(contains_answer(t, a) for t in ex.passage_texts for a in hidden)
        assert len(ex.passages) == 4  # the cut chunk takes a distractor's place
    answered = [e for e in rows if e.answerable]
    assert answered and not any(e.meta["answer_cut"] for e in answered)
    plain = assemble_examples(qa, chunks, BuildConfig(k_distractors=3, oracle_p=0.5), tokenizer)
    assert plain.stats["answer_cut_examples"] == 0 and not any(
        e.meta["answer_cut"] for s in plain.splits.values() for e in s
    )


def test_splits_never_share_a_document(corpus, tokenizer) -> None:
    chunks, qa = corpus
    by_id = {c.id: c for c in chunks}
    result = assemble_examples(qa, chunks, BuildConfig(), tokenizer)
    docs = {}
    for split, rows in result.splits.items():
        assert rows, f"split {split} is empty"
        docs[split] = {e.doc_id for e in rows} | {by_id[p].doc_id for e in rows for p in e.passages}
    assert not docs["train"] & docs["validation"]
    assert not docs["train"] & docs["test"]
    assert not docs["validation"] & docs["test"]


def test_oracle_share_and_unanswerable_share(corpus, tokenizer) -> None:
    chunks, qa = corpus
    for p in (0.0, 1.0):
        res = assemble_examples(qa, chunks, BuildConfig(oracle_p=p, unanswerable_share=0.1), tokenizer)
        assert res.stats["oracle_share_answerable"] == p
    res = assemble_examples(qa, chunks, BuildConfig(oracle_p=0.5, unanswerable_share=0.3), tokenizer)
    assert 0.3 < res.stats["oracle_share_answerable"] < 0.7
    assert abs(res.stats["unanswerable_share"] - 0.3) < 0.03  # answerable items were converted
    converted = [
        e for s in res.splits.values() for e in s if e.meta["kind"] == "unanswerable" and e.meta["question_answers"]
    ]
    assert converted and all(
        not any(contains_answer(t, e.meta["question_answers"][0]) for t in e.passage_texts) for e in converted
    )


def test_deterministic_with_seed(corpus, tokenizer) -> None:
    chunks, qa = corpus
    ids = lambda r: [e.id for s in r.splits.values() for e in s]  # noqa: E731
    a = assemble_examples(qa, chunks, BuildConfig(seed=5), tokenizer)
    b = assemble_examples(qa, chunks, BuildConfig(seed=5), tokenizer)
    c = assemble_examples(qa, chunks, BuildConfig(seed=6), tokenizer)
    assert ids(a) == ids(b) and ids(a) != ids(c)


@pytest.mark.parametrize("mode", ["random", "mixed"])
def test_random_and_mixed_distractors(corpus, tokenizer, mode) -> None:
    chunks, qa = corpus
    res = assemble_examples(qa, chunks, BuildConfig(distractors=mode, k_distractors=2), tokenizer)
    rows = [e for s in res.splits.values() for e in s]
    _check_rules(rows, chunks, qa)
    assert res.stats["random_distractors"] > 0
    assert (res.stats["hard_distractors"] > 0) == (mode == "mixed")


def test_token_budget_shortens_and_counts(corpus, tokenizer) -> None:
    chunks, qa = corpus
    full = assemble_examples(qa, chunks, BuildConfig(k_distractors=4), tokenizer)
    longest = max(e.n_prompt_tokens + e.n_target_tokens for s in full.splits.values() for e in s)
    limit = 200
    assert longest > limit  # the limit really bites
    res = assemble_examples(qa, chunks, BuildConfig(k_distractors=4, max_length=limit), tokenizer)
    rows = [e for s in res.splits.values() for e in s]
    items = {q.id: q for q in qa}
    for e in rows:
        n = len(prompt_ids(tokenizer, e.prompt, PromptTemplate.for_tokenizer(tokenizer)))
        assert n == e.n_prompt_tokens and n + e.n_target_tokens <= limit
        assert e.question == items[e.qa_id].question and e.question in e.prompt  # question intact
        if e.oracle_in_context:
            assert e.completion == items[e.qa_id].answer  # answer intact, and still in its passage
            assert e.completion in e.passage_texts[e.meta["oracle_index"]]
    assert res.stats["distractors_dropped_for_length"] > 0 and res.stats["passages_shortened"] > 0
    assert res.stats["examples_fitted"] > 0 and len(rows) > 20
    # an example that cannot fit even with shortened passages is dropped, and counted
    assert res.stats["dropped_too_long"] + res.stats["total"] == full.stats["total"]
    none = assemble_examples(qa, chunks, BuildConfig(max_length=100), tokenizer)  # below the template
    assert none.stats["total"] == 0 and none.stats["dropped_too_long"] == full.stats["total"]


def test_window_keeps_the_answer() -> None:
    text = " ".join(f"word{i}" for i in range(200)) + " the ANSWER here " + " ".join(f"w{i}" for i in range(200))
    piece = _window(text, "ANSWER here", 60)
    assert "ANSWER here" in piece and len(piece) <= 70 and not piece.startswith(" ")
    assert _window("short", "short", 100) == "short"


def test_chat_template_prompts(corpus, tiny_model_dir) -> None:
    from ragtune.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    chunks, qa = corpus
    dd = build(qa[:30], chunks, BuildConfig(), tok)
    row = next(r for s in dd.values() for r in s)
    assert row["prompt"].startswith("<|system|>") and row["prompt"].endswith("<|assistant|>\n")


def test_question_first_asks_the_question_before_the_context_too(corpus, tiny_model_dir) -> None:
    from ragtune.models import load_tokenizer

    chunks, qa = corpus

    def questions_asked(cfg: BuildConfig) -> set[int]:
        dd = build(qa[:20], chunks, cfg, load_tokenizer(tiny_model_dir))
        return {r["prompt"].count("### Question:") for s in dd.values() for r in s}

    assert questions_asked(BuildConfig()) == {1}
    assert questions_asked(BuildConfig(question_first=True)) == {2}


def test_imported_items_with_their_own_contexts(tokenizer) -> None:
    ctx = [f"Passage {i}: the river Ouse{i} floods in month {i} of the year, says record {i * 7}." for i in range(12)]
    qa = [
        QAItem(
            id=f"q{i}",
            question=f"When does the river Ouse{i} flood?",
            answer=f"month {i}",
            answers=[f"month {i}"],
            contexts=[ctx[i]],
            doc_id=f"d{i}",
            origin="import",
        )
        for i in range(12)
    ]
    res = assemble_examples(qa, [], BuildConfig(k_distractors=2, split=(0.5, 0.25, 0.25)), tokenizer)
    rows = [e for s in res.splits.values() for e in s]
    assert len(rows) == 12 and res.stats["documents_shared_between_splits"] == 0
    for e in rows:
        i = int(e.qa_id[1:])
        assert (ctx[i] in e.passage_texts) == e.oracle_in_context
        assert sum(f"month {i} " in t for t in e.passage_texts) == int(e.oracle_in_context)


def test_build_to_run_writes_dataset(tmp_path: Path, tiny_model_dir: Path) -> None:
    from datasets import load_dataset, load_from_disk

    run = tmp_path / "run"
    ingest_to_run(make_kb(tmp_path / "kb", n_docs=9), run, SMALL.model_copy(update={"tokenizer": str(tiny_model_dir)}))
    synth_to_run(run, SynthConfig())
    with pytest.raises(RagtuneError, match="--tokenizer"):
        build_to_run(run, BuildConfig())
    build_to_run(run, BuildConfig(), tokenizer=str(tiny_model_dir))
    out = run / "dataset"
    dd = load_from_disk(str(out))
    assert set(dd) == {"train", "validation", "test"}
    assert {"prompt", "completion", "passages", "oracle_in_context", "n_prompt_tokens"} <= set(dd["train"].column_names)
    rows = list(read_jsonl(out / "train.jsonl", Example))
    assert [r.id for r in rows] == dd["train"]["id"]
    assert (
        load_dataset(
            "json", data_files=str(out / "test.jsonl"), split="train", cache_dir=str(out / "hf_cache")
        ).num_rows
        == dd["test"].num_rows
    )
    assert PromptTemplate.load(out).style == "plain"
    assert (run / "index" / "bm25" / "ragtune_index.json").is_file()
    report = json.loads((out / "build_report.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["build"]["examples"] == report["examples"]
    build_to_run(run, BuildConfig(seed=1), tokenizer=str(tiny_model_dir))  # rebuild replaces the old one
    assert not (run / "dataset.tmp").exists()


def test_bad_config_is_error(corpus, tokenizer) -> None:
    chunks, qa = corpus
    from ragtune.config import validated

    with pytest.raises(RagtuneError, match="--oracle-p"):  # the config model checks ranges
        assemble_examples(qa, chunks, validated(BuildConfig, "build", oracle_p=1.5), tokenizer)
    with pytest.raises(RagtuneError, match="no QA item"):
        assemble_examples(
            [QAItem(id="x", question="q", answer="a", chunk_id="missing")], chunks, BuildConfig(), tokenizer
        )
