"""Each row filter with real accepted and rejected examples."""

from __future__ import annotations

from ragtune.records import Chunk, QAItem, content_id
from ragtune.synth.filters import Deduper, RoundTrip, RowFilters, grounding_score, unverified_quotes
from ragtune.synth.llm import parse_answer, parse_questions

LISTS = (
    "Lists are mutable sequences, typically used to store collections of homogeneous items.\n"
    "The list.sort() method sorts the list in place, using only < comparisons between items."
)
TUPLES = "Tuples are immutable sequences, typically used to store collections of heterogeneous data."
DICTS = (
    "A dictionary maps hashable keys to arbitrary objects. Dictionaries preserve insertion order "
    "since Python 3.7; the popitem() method removes the last inserted pair."
)
SOCKETS = "The socket module provides access to the BSD socket interface for network communication."


def chunk(text: str, title: str) -> Chunk:
    return Chunk(
        id=content_id(title, text),
        doc_id=content_id(title),
        source=f"{title}.rst",
        title=title,
        text=text,
        start=0,
        end=len(text),
    )


CORPUS = [chunk(LISTS, "lists"), chunk(TUPLES, "tuples"), chunk(DICTS, "dicts"), chunk(SOCKETS, "socket")]


def item(question: str, answer: str, c: Chunk, evidence=(), answerable=True) -> QAItem:
    return QAItem(
        id=content_id(question),
        question=question,
        answer=answer,
        chunk_id=c.id,
        answerable=answerable,
        evidence=list(evidence),
    )


def test_quote_verification_accepts_verbatim_modulo_whitespace_and_rejects_paraphrase():
    assert unverified_quotes(["The list.sort() method sorts the list   in place"], LISTS) == []
    assert unverified_quotes(["sequences,\n  typically used"], LISTS) == []
    bad = ["The sort method sorts lists in place"]  # a paraphrase, not a quote
    assert unverified_quotes(bad, LISTS) == bad
    assert unverified_quotes([""], LISTS) == [""]


def test_quote_verification_through_the_cot_parser():
    reply = (
        "The context says ##begin_quote##Lists are mutable sequences##end_quote## and "
        "##begin_quote##lists can be frozen##end_quote##.\n<ANSWER>: mutable sequences"
    )
    answer, quotes = parse_answer(reply, "cot")
    assert answer == "mutable sequences"
    assert unverified_quotes(quotes, LISTS) == ["lists can be frozen"]
    f = RowFilters(CORPUS, {"roundtrip": False, "dedupe": False})
    assert f.check(item("What are lists?", answer, CORPUS[0], quotes)) == "quote_not_in_source"
    assert f.check(item("What are lists?", answer, CORPUS[0], quotes[:1])) is None


def test_grounding_accepts_supported_answers_and_rejects_invented_ones():
    assert grounding_score("mutable sequences", LISTS) == 1.0
    assert grounding_score("It sorts the list in place.", LISTS) == 1.0
    assert grounding_score("Lists are implemented as linked red-black trees in CPython", LISTS) < 0.5
    f = RowFilters(CORPUS, {"roundtrip": False, "dedupe": False}, grounding_threshold=0.5)
    assert f.check(item("How does sort work?", "in place, using < comparisons", CORPUS[0])) is None
    assert (
        f.check(item("How does sort work?", "with a parallel radix algorithm on GPUs", CORPUS[0]))
        == "answer_not_grounded"
    )
    # an unanswerable row has no answer to ground
    assert f.check(item("Can lists be hashed?", "", CORPUS[0], answerable=False)) is None


def test_roundtrip_accepts_specific_questions_and_rejects_vague_or_off_topic_ones():
    rt = RoundTrip(CORPUS, k=1)
    assert rt.passes("Which method removes the last inserted pair from a dictionary?", [CORPUS[2].id])
    assert rt.passes("Does list.sort() sort in place?", [CORPUS[0].id])
    assert not rt.passes("What does it do?", [CORPUS[0].id])  # vague: retrieves nothing
    assert not rt.passes("How do I open a network socket?", [CORPUS[0].id])  # retrieves another chunk
    f = RowFilters(CORPUS, {"dedupe": False}, roundtrip_k=1)
    assert f.check(item("What is the BSD socket interface module?", "The socket module", CORPUS[3])) is None
    assert f.check(item("What is it for?", "network communication", CORPUS[3])) == "roundtrip_failed"


def test_dedupe_catches_exact_and_near_duplicates_but_keeps_different_questions():
    d = Deduper(threshold=0.6)
    assert not d.seen("How does list.sort() compare items when sorting a list in place?")
    assert d.seen("how does list.sort() compare items when sorting a list in place")  # normalised exact
    assert d.seen("How does list.sort() compare the items when sorting a list in place?")  # near
    assert not d.seen("Which method removes the last inserted pair from a dictionary?")
    f = RowFilters(CORPUS, {"roundtrip": False})
    assert f.check(item("Are tuples immutable sequences?", "yes, immutable", CORPUS[1])) is None
    assert f.check(item("Are tuples immutable sequences ?", "immutable", CORPUS[1])) == "duplicate_question"


def test_filters_switch_off_by_name():
    f = RowFilters(CORPUS, {"roundtrip": False, "dedupe": False, "grounding": False, "quotes": False})
    bad = item("What is it for?", "made-up nonsense entirely", CORPUS[0], ["not in the chunk"])
    assert f.check(bad) is None and f.check(bad) is None


def test_question_parser_handles_json_fences_numbering_and_preambles():
    assert parse_questions('{"questions": ["What are lists?", "Why are tuples immutable?"]}', 5)[0] == [
        "What are lists?",
        "Why are tuples immutable?",
    ]
    fenced = 'Sure!\n```json\n{"questions": [{"question": "What does popitem() remove?"}]}\n```'
    assert parse_questions(fenced, 5)[0] == ["What does popitem() remove?"]
    reply = (
        "Here are 3 questions:\n1. What are lists used for?\n2) Why is sort stable?\n"
        "- **How are items compared?**\nThese cover the passage well.\nQ4: Which method sorts in place?"
    )
    questions, rejected = parse_questions(reply, 3)
    assert questions == ["What are lists used for?", "Why is sort stable?", "How are items compared?"]
    assert rejected == ["Here are 3 questions:", "These cover the passage well."]
    assert parse_questions("I cannot help with that.", 2) == ([], ["I cannot help with that."])
    # other languages: the Spanish and Japanese question marks count
    assert parse_questions("1. ¿Qué es una lista mutable?\n2. リストとは何ですか？", 2)[0] == [
        "¿Qué es una lista mutable?",
        "リストとは何ですか？",
    ]


def test_answer_parser_plain_and_cot():
    assert parse_answer("Answer: mutable sequences", "plain") == ("mutable sequences", [])
    assert parse_answer("   ", "plain") == (None, [])
    assert parse_answer("reasoning without the tag", "cot") == (None, [])
    assert parse_answer("x ##begin_quote## a b ##end_quote## y\n<ANSWER>: a b", "cot") == ("a b", ["a b"])
