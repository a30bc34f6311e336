"""`ragtune import`: every supported format from real files, row validation with positions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune.errors import RagtuneError
from ragtune.importers import import_to_run
from ragtune.qa_formats import detect_format, import_file
from ragtune.records import QAItem, read_jsonl

SQUAD = {
    "version": "v2.0",
    "data": [
        {
            "title": "Normans",
            "paragraphs": [
                {
                    "context": "The Normans were the people who in the 10th and 11th centuries gave their name to "
                    "Normandy.",
                    "qas": [
                        {
                            "id": "a1",
                            "question": "When did the Normans name Normandy?",
                            "is_impossible": False,
                            "answers": [
                                {"text": "10th and 11th centuries", "answer_start": 37},
                                {"text": "in the 10th and 11th centuries", "answer_start": 34},
                                {"text": "10th and 11th centuries", "answer_start": 37},
                            ],
                        },
                        {
                            "id": "u1",
                            "question": "Who gave their name to France?",
                            "is_impossible": True,
                            "answers": [],
                            "plausible_answers": [{"text": "Normans", "answer_start": 4}],
                        },
                    ],
                }
            ],
        }
    ],
}


def test_squad_v2(tmp_path):
    f = tmp_path / "dev.json"
    f.write_text(json.dumps(SQUAD))
    assert detect_format(f) == "squad"
    a, u = import_file(f)
    assert (a.id, a.answerable, a.answer) == ("a1", True, "10th and 11th centuries")
    assert a.answers == ["10th and 11th centuries", "in the 10th and 11th centuries"]  # unique, in order
    assert a.contexts == [SQUAD["data"][0]["paragraphs"][0]["context"]] and a.meta["title"] == "Normans"
    assert (u.answerable, u.answer, u.answers, u.kind) == (False, "", [], "unanswerable")
    assert u.meta["plausible_answers"] == ["Normans"]


def test_plain_jsonl_validates_rows_with_line_numbers(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps({"question": "Q1?", "answers": ["A1", "a one"], "contexts": ["c1", "c2"]}),
                json.dumps({"question": "Q2?", "answer": "A2", "context": "c"}),
                json.dumps({"answer": "no question"}),
                "{not json",
                "",
                json.dumps({"question": "Q3?", "contexts": ["c"], "answerable": False}),
                json.dumps({"question": "Q4?", "contexts": ["c"]}),  # no answer: unanswerable
                json.dumps({"question": "Q5?", "contexts": ["c"], "answerable": True}),
            ]
        )
        + "\n"
    )
    with pytest.raises(RagtuneError) as e:
        import_file(f)
    msg = str(e.value)
    assert "3 invalid row(s)" in msg and "line 3: missing 'question'" in msg
    assert "line 4: not valid JSON" in msg and "line 8: answerable row without an answer" in msg
    assert "\n" not in msg
    rejected: list[dict] = []
    items = import_file(f, skip_invalid=True, rejected=rejected)
    assert [q.question for q in items] == ["Q1?", "Q2?", "Q3?", "Q4?"]
    assert items[0].answers == ["A1", "a one"] and items[0].contexts == ["c1", "c2"]
    assert items[1].contexts == ["c"] and [q.answerable for q in items] == [True, True, False, False]
    assert [r["where"] for r in rejected] == ["line 3", "line 4", "line 8"]


def test_csv(tmp_path):
    f = tmp_path / "qa.csv"
    f.write_text(
        "id,question,answer,contexts,answerable\n"
        'x1,Who?,Ada,"[""Ada wrote it."", ""Other.""]",yes\n'
        'x2,What?,,"Nothing here.",no\n'
        'x3,,Ada,"c",yes\n'
        'x4,Why?,Because,"c",maybe\n'
    )
    with pytest.raises(RagtuneError, match=r"line 4: missing 'question'.*line 5: 'answerable' must be true or false"):
        import_file(f)
    items = import_file(f, skip_invalid=True)
    assert [q.id for q in items] == ["x1", "x2"]
    assert items[0].contexts == ["Ada wrote it.", "Other."] and items[0].answer == "Ada"
    assert items[1].answerable is False and items[1].contexts == ["Nothing here."]
    bad = tmp_path / "bad.csv"
    bad.write_text("query,reply\nq,a\n")
    with pytest.raises(RagtuneError, match="'question' column"):
        import_file(bad)


def test_hotpot_records(tmp_path):
    rec = {
        "_id": "h1",
        "question": "Which band did the singer of Song X found?",
        "answer": "The Birds",
        "type": "bridge",
        "level": "hard",
        "supporting_facts": [["Song X", 1], ["The Birds", 0]],
        "context": [
            ["Song X", ["Song X is a song.", " It was sung by Ann Lee."]],
            ["The Birds", ["The Birds is a band founded by Ann Lee.", " They play rock."]],
            ["Noise", ["Unrelated text."]],
        ],
    }
    f = tmp_path / "hotpot.json"
    f.write_text(json.dumps([rec]))
    assert detect_format(f) == "hotpot"
    (q,) = import_file(f)
    assert q.id == "h1" and q.kind == "multi_hop" and q.answer == "The Birds"
    assert q.contexts[0] == "Song X is a song. It was sung by Ann Lee." and len(q.contexts) == 3
    assert q.evidence == ["It was sung by Ann Lee.", "The Birds is a band founded by Ann Lee."]
    assert q.meta["supporting_titles"] == ["Song X", "The Birds"]


def test_raft_rows(tmp_path):
    row = {
        "id": "seed_task_0",
        "type": "general",
        "question": "What colour is the lighthouse?",
        "context": {
            "title": [["placeholder_title", "placeholder_title"]],
            "sentences": [["The lighthouse is red.", "The mill is old."]],
        },
        "oracle_context": "The lighthouse is red.",
        "cot_answer": "The context says ##begin_quote##The lighthouse is red.##end_quote## <ANSWER>: red",
        "instruction": "<DOCUMENT>...</DOCUMENT>",
    }
    f = tmp_path / "raft.jsonl"
    f.write_text(json.dumps(row) + "\n")
    assert detect_format(f) == "raft"
    (q,) = import_file(f)
    assert q.answer == "red" and q.contexts == ["The lighthouse is red.", "The mill is old."]
    assert q.evidence == ["The lighthouse is red."] and q.meta["oracle_in_context"] is True


def test_import_to_run_merges_and_replaces_by_id(tmp_path):
    run = tmp_path / "run"
    f = tmp_path / "dev.json"
    f.write_text(json.dumps(SQUAD))
    counts = import_to_run(f, run)
    assert counts == {"imported": 2, "answerable": 1, "unanswerable": 1, "rejected": 0, "qa_total": 2}
    g = tmp_path / "more.jsonl"
    g.write_text(
        json.dumps({"id": "a1", "question": "Replaced?", "answer": "x", "context": "x"})
        + "\n"
        + json.dumps({"id": "n1", "question": "New?", "answer": "y", "context": "y"})
        + "\n"
    )
    import_to_run(g, run)
    rows = {q.id: q for q in read_jsonl(run / "qa.jsonl", QAItem)}
    assert set(rows) == {"u1", "a1", "n1"} and rows["a1"].question == "Replaced?"
    assert json.loads((run / "manifest.json").read_text())["stages"]["import"]["imported"] == 2


def _env_with_this_checkout() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")  # this checkout, not an installed copy
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_cli_reports_bad_rows_in_one_line(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"answer": "x"}) + "\n")
    p = subprocess.run(
        [sys.executable, "-m", "ragtune", "import", str(f), "--run", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env_with_this_checkout(),
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "line 1: missing 'question'" in p.stderr


@pytest.mark.shared
def test_squad2_sample(shared_data):
    items = import_file(shared_data / "squad2-sample" / "dev-sample-v2.0.json")
    assert len(items) == 234
    assert sum(q.answerable for q in items) == 132 and sum(not q.answerable for q in items) == 102
    assert all(q.contexts and q.question for q in items)


def test_prediction_file_scores_match_the_official_algorithm(tmp_path):
    """Scoring through import + score_prediction_file equals the SQuAD v2 algorithm by hand."""
    from ragtune.evaluate import score_prediction_file

    f = tmp_path / "dev.json"
    f.write_text(json.dumps(SQUAD))
    preds = tmp_path / "preds.json"
    # a1: "in the 10th century" vs best reference "in the 10th and 11th centuries":
    # normalised "in 10th century" vs "in 10th and 11th centuries": overlap 2, p 2/3, r 2/5 -> F1 0.5
    preds.write_text(json.dumps({"a1": "in the 10th century", "u1": ""}))
    s = score_prediction_file(f, preds)
    assert s["exact"] == 50.0 and s["f1"] == pytest.approx(75.0)
    assert (s["HasAns_exact"], s["NoAns_exact"], s["NoAns_f1"]) == (0.0, 100.0, 100.0)
    assert s["HasAns_f1"] == pytest.approx(50.0)
    assert score_prediction_file(f, {"a1": "10th and 11th centuries"})["exact"] == 100.0  # missing u1 = ""


def test_cli_scores_a_prediction_file(tmp_path):
    f = tmp_path / "dev.json"
    f.write_text(json.dumps(SQUAD))
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"a1": "the 10th and 11th centuries", "u1": "Normans"}))
    p = subprocess.run(
        [sys.executable, "-m", "ragtune", "eval", "--qa", str(f), "--predictions", str(preds)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env_with_this_checkout(),
    )
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert (s["exact"], s["HasAns_exact"], s["NoAns_exact"], s["total"]) == (50.0, 100.0, 0.0, 2)


@pytest.mark.shared
def test_squad2_sample_prediction_files(shared_data):
    from ragtune.evaluate import score_prediction_file
    from ragtune.metrics import squad_v2_scores

    path = shared_data / "squad2-sample" / "dev-sample-v2.0.json"
    data = json.loads(path.read_text())["data"]
    qas = [qa for a in data for p in a["paragraphs"] for qa in p["qas"]]
    unans = [qa["id"] for qa in qas if not qa["answers"]]
    # Every answerable question answered with its gold; half the unanswerable ones answered wrongly.
    preds = {qa["id"]: qa["answers"][0]["text"] for qa in qas if qa["answers"]}
    preds.update({i: "a made-up answer" for i in unans[::2]})
    s = score_prediction_file(path, preds)
    wrong = len(unans[::2])  # 51
    assert s["total"] == 234 and s["HasAns_total"] == 132 and s["NoAns_total"] == 102
    assert s["exact"] == pytest.approx(100 * (234 - wrong) / 234) and s["f1"] == pytest.approx(s["exact"])
    assert s["HasAns_exact"] == 100.0 and s["NoAns_exact"] == pytest.approx(100 * (102 - wrong) / 102)
    # The import path and the direct SQuAD-JSON path agree on a messier file too.
    messy = {qa["id"]: (qa["answers"][-1]["text"].split()[0] if qa["answers"] else "") for qa in qas}
    a, b = score_prediction_file(path, messy), squad_v2_scores(data, messy)
    for key in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"):
        assert a[key] == pytest.approx(b[key])
