"""SQuAD v2 scoring against hand-computed cases, refusals, and the RAG extras."""

from __future__ import annotations

import pytest

from ragtune import metrics as m
from ragtune.config import REFUSAL


def test_normalisation_follows_the_official_order():
    assert m.normalize_answer("The  Cat, sat!") == "cat sat"
    assert m.normalize_answer("an apple a day") == "apple day"
    assert m.normalize_answer("Theatre") == "theatre"  # articles only as whole words
    assert m.normalize_answer("  U.S.A. ") == "usa"
    assert m.normalize_answer("the") == ""


@pytest.mark.parametrize(
    ("pred", "gold", "em", "f1"),
    [
        ("the Eiffel Tower", "Eiffel tower.", 1, 1.0),
        ("in the year 1990", "1990", 0, 0.5),  # p = 1/3, r = 1
        ("Denver Broncos", "the Broncos", 0, 2 / 3),  # p = 1/2, r = 1
        ("red red blue", "red blue blue", 0, 2 / 3),  # multiset overlap 2
        ("cat", "dog", 0, 0.0),
        ("", "", 1, 1.0),  # unanswerable, no answer given
        ("Paris", "", 0, 0.0),  # unanswerable, an answer given
        ("", "Paris", 0, 0.0),  # answerable, nothing given
        ("the", "", 1, 1.0),  # normalises to empty
    ],
)
def test_exact_match_and_f1_by_hand(pred, gold, em, f1):
    assert m.exact_match(pred, gold) == em
    assert m.f1(pred, gold) == pytest.approx(f1)


def test_max_over_references_and_empty_references():
    assert m.max_over(m.f1, "the Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert m.max_over(m.f1, "Denver", ["Denver Broncos", "Broncos"]) == pytest.approx(2 / 3)
    # References that normalise to nothing leave the question unanswerable.
    assert m.gold_answers(["the", "  "]) == [""]
    assert m.max_over(m.exact_match, "", ["the"]) == 1
    assert m.max_over(m.exact_match, "", []) == 1


def test_refusal_detection():
    assert m.is_refusal(REFUSAL)
    assert m.is_refusal("sorry. i cannot find the answer based on the context")
    assert m.is_refusal("The context does not contain the answer to this question.")
    assert m.is_refusal("I don't know.")
    # paraphrases holding articles match after the same normalisation as the text
    assert m.is_refusal("Sorry, I could not find the answer in these passages.")
    assert m.is_refusal("Sorry. I cannot find the answer based on the answer based on the")
    assert m.is_refusal("")
    assert m.is_refusal("Nope", refusal="nope")
    assert not m.is_refusal("No")
    assert not m.is_refusal("Paris is the capital of France.")


def test_refusal_scores_as_empty_answer():
    unans = m.score_item(REFUSAL, [])
    assert (unans.em, unans.f1, unans.refused, unans.answer) == (1, 1.0, True, "")
    ans = m.score_item(REFUSAL, ["Paris"])
    assert (ans.em, ans.f1, ans.refused) == (0, 0.0, True)
    wrong = m.score_item("Paris", [])
    assert (wrong.em, wrong.f1, wrong.refused) == (0, 0.0, False)


def test_squad_v2_file_scores_by_hand():
    data = [
        {
            "paragraphs": [
                {
                    "context": "c",
                    "qas": [
                        {"id": "q1", "question": "?", "answers": [{"text": "Denver Broncos"}, {"text": "Broncos"}]},
                        {"id": "q2", "question": "?", "answers": [{"text": "1990"}]},
                        {"id": "q3", "question": "?", "answers": [], "is_impossible": True},
                        {"id": "q4", "question": "?", "answers": [], "is_impossible": True},
                    ],
                }
            ]
        }
    ]
    preds = {"q1": "the broncos", "q2": "in the year 1990", "q3": "", "q4": "something"}
    s = m.squad_v2_scores(data, preds)
    # exact: 1, 0, 1, 0; f1: 1, 0.5, 1, 0
    assert s["exact"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(62.5)
    assert (s["HasAns_exact"], s["HasAns_f1"], s["HasAns_total"]) == (50.0, 75.0, 2)
    assert (s["NoAns_exact"], s["NoAns_f1"], s["NoAns_total"]) == (50.0, 50.0, 2)
    # A missing prediction is the empty answer; a refusal counts as empty only when asked.
    s2 = m.squad_v2_scores(data, {"q1": "Broncos", "q2": "1990", "q3": REFUSAL}, refusal=REFUSAL)
    assert s2["exact"] == 100.0 and s2["NoAns_exact"] == 100.0
    s3 = m.squad_v2_scores(data, {"q1": "Broncos", "q2": "1990", "q3": REFUSAL})
    assert s3["exact"] == 75.0


def test_aggregate_split_and_abstention_matrix():
    items = [("Paris", ["Paris"], True), (REFUSAL, ["Rome"], True), ("", [], False), ("Oslo", [], False)]
    scores = [m.score_item(p, a) for p, a, _ in items]
    agg = m.aggregate(scores, [ok for *_, ok in items])
    assert agg["n"] == 4 and agg["em"] == 50.0 and agg["f1"] == 50.0
    assert agg["has_ans"] == {"n": 2, "em": 50.0, "f1": 50.0, "refused": 50.0, "empty": 0.0}
    assert agg["no_ans"] == {"n": 2, "em": 50.0, "refused": 50.0, "empty": 50.0}
    assert agg["abstention"] == {
        "answerable": {"answered": 1, "refused": 1},
        "unanswerable": {"answered": 1, "refused": 1},
    }


def test_extras():
    assert m.extract_final_answer("reasoning ##begin_quote##x##end_quote## <ANSWER>: Paris") == "Paris"
    assert m.extract_final_answer("just Paris") == "just Paris"
    assert m.contains_match("It is Paris, France.", "paris") == 1
    assert m.contains_match("Parisian", "paris") == 0
    assert m.rouge_l("w x y z", "w y z q") == pytest.approx(0.75)  # LCS 3 of 4 and 4
    assert m.rouge_l("cat sat mat", "mat cat") == pytest.approx(0.4)  # LCS 1; p 1/3, r 1/2
    ctx = "The tower was  finished in 1889 by Eiffel's company."
    assert m.quote_validity('It says "finished in 1889" and "built in 1900".', ctx) == 0.5
    assert m.quote_validity("##begin_quote##The tower was finished##end_quote##", ctx) == 1.0
    assert m.quote_validity("no quotes", ctx) is None
    passages = ["Paris is in France.", "Berlin is in Germany."]
    assert m.citation_precision("Paris [1] and [2]", passages, ["Paris"]) == 0.5
    assert m.citation_precision("Paris [3]", passages, ["Paris"]) == 0.0
    assert m.citation_precision("Paris", passages, ["Paris"]) is None
    cot = m.score_item(
        "##begin_quote##Paris is in France.##end_quote## <ANSWER>: Paris", ["Paris"], context=passages[0]
    )
    assert (cot.em, cot.quote_validity) == (1, 1.0)


@pytest.mark.shared
def test_squad2_sample_gold_and_empty_predictions(shared_data):
    import json

    data = json.loads((shared_data / "squad2-sample" / "dev-sample-v2.0.json").read_text())["data"]
    qas = [qa for a in data for p in a["paragraphs"] for qa in p["qas"]]
    gold = {qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "") for qa in qas}
    s = m.squad_v2_scores(data, gold)
    assert (s["exact"], s["f1"], s["HasAns_total"], s["NoAns_total"]) == (100.0, 100.0, 132, 102)
    empty = m.squad_v2_scores(data, {})
    # All-empty predictions: every unanswerable right, every answerable wrong.
    assert empty["exact"] == pytest.approx(100 * 102 / 234)
    assert empty["HasAns_exact"] == 0.0 and empty["NoAns_exact"] == 100.0
