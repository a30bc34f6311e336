"""The optional LLM judge against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI, Request

from ragtune.config import EvalConfig
from ragtune.evaluate.judge import JudgeInput, interval, judge, parse_correctness, parse_faithfulness
from ragtune.metrics import normalize_answer
from ragtune.serve import serving


def judge_app(flaky: bool = False) -> FastAPI:
    """Faithful when the answer is in the context; correct when it equals a reference. With
    `flaky`, seed 1 judges every faithfulness call unsupported (a judge that varies by seed);
    one garbage reply tests the parser."""
    app = FastAPI()
    app.state.requests = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        app.state.requests.append(body)
        prompt = body["messages"][-1]["content"]
        if "Candidate answer:" in prompt:
            refs = re.search(r"Reference answer\(s\): (.*)\n", prompt).group(1).split(" | ")
            cand = re.search(r"Candidate answer: (.*)\n", prompt).group(1)
            correct = normalize_answer(cand) in map(normalize_answer, refs)
            text = '{"correct": true}' if correct else '{"correct": false}'
        else:
            context = prompt.split("Context:\n", 1)[1].split("\n\nQuestion:", 1)[0]
            answer = prompt.split("\n\nAnswer: ", 1)[1].split("\n\n", 1)[0]
            ok = int(answer in context) if not (flaky and body.get("seed") == 1) else 0
            text = "no idea" if answer == "garbage" else f'Sure: {{"claims": 1, "supported": {ok}}}'
        return {
            "id": "j",
            "object": "chat.completion",
            "created": 0,
            "model": "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }

    return app


INPUTS = [
    JudgeInput("base", "Who?", "Ada Moss painted it.", ["Ada Moss"], "Ada Moss", False),
    JudgeInput("base", "When?", "It opened in 1888.", ["1888"], "1999", False),
    JudgeInput("base", "What?", "Nothing here.", [], "Sorry. I cannot find the answer.", True),
    JudgeInput("tuned", "Who?", "Ada Moss painted it.", ["Ada Moss"], "Ada Moss", False),
    JudgeInput("tuned", "Where?", "A cellar vault.", [], "cellar vault", False),  # answered an unanswerable
    JudgeInput("tuned", "When?", "It opened in 1888.", ["1888"], "garbage", False),
]


def test_parsers_and_interval():
    assert parse_faithfulness('x {"claims": 4, "supported": 3} y') == 0.75
    assert parse_faithfulness('{"claims": 0, "supported": 0}') is None
    assert parse_faithfulness("no json") is None
    assert parse_correctness('{"correct": false}') == 0.0 and parse_correctness('{"correct": "yes"}') is None
    assert interval([50.0]) == (50.0, 0.0)
    mean, half = interval([40.0, 60.0])
    assert mean == 50.0 and half == pytest.approx(12.706 * 10 * 2**0.5 / 2**0.5)


def test_judge_scores_never_see_refusals_and_record_settings():
    app = judge_app()
    with serving(app) as url:
        cfg = EvalConfig(judge=True, judge_base_url=f"{url}/v1", judge_model="judge", judge_repeats=2, judge_seed=7)
        out = judge(INPUTS, cfg)
    prompts = [r["messages"][-1]["content"] for r in app.state.requests]
    assert not any("Sorry. I cannot find" in p for p in prompts)  # the refusal was never sent
    # base: 2 faithfulness + 2 correctness; tuned: 3 faithfulness + 2 correctness; times 2 repeats
    assert out["calls"] == len(prompts) == 18
    assert sorted({r["seed"] for r in app.state.requests}) == [7, 8]
    assert all(r["temperature"] == 0.0 and r["model"] == "judge" for r in app.state.requests)
    base, tuned = out["models"]["base"], out["models"]["tuned"]
    assert base["faithfulness"] == {"mean": 50.0, "ci95": 0.0, "n": 2}  # "1999" is not in its context
    assert base["correctness"]["mean"] == 50.0 and base["refusals_skipped"] == 1
    assert tuned["faithfulness"]["mean"] == 100.0 and tuned["faithfulness"]["n"] == 2  # garbage failed to parse
    assert tuned["correctness"]["mean"] == 50.0 and tuned["parse_failures"] == 2
    assert out["seed"] == 7 and out["repeats"] == 2 and "faithfulness" in out["prompts"]


def test_judge_interval_widens_when_repeats_disagree():
    with serving(judge_app(flaky=True)) as url:
        cfg = EvalConfig(judge=True, judge_base_url=f"{url}/v1", judge_model="judge", judge_repeats=2)
        out = judge(INPUTS[:2], cfg)
    f = out["models"]["base"]["faithfulness"]
    assert f["mean"] == 25.0 and f["ci95"] > 100  # 50 then 0: two repeats, t = 12.7


def test_judge_rows_and_report_section(tmp_path):
    """evaluate's per-item rows feed the judge; the report shows its table and settings."""
    from ragtune.evaluate.judge import judge_rows
    from ragtune.evaluate.report import report_markdown

    rows = [
        {
            "question": "Who?",
            "answers": ["Ada Moss"],
            "answerable": True,
            "models": {
                "base": {"prediction": "Ada Moss", "answer": "Ada Moss", "refused": False, "f1": 1.0, "em": 1},
                "tuned": {"prediction": "", "answer": "", "refused": True, "f1": 0.0, "em": 0},
            },
        }
    ]
    with serving(judge_app()) as url:
        cfg = EvalConfig(judge=True, judge_base_url=f"{url}/v1", judge_model="judge", judge_repeats=1)
        j = judge_rows(rows, ["Ada Moss painted it."], cfg)
    assert j["models"]["base"]["faithfulness"]["mean"] == 100.0 and j["models"]["tuned"]["refusals_skipped"] == 1
    agg = {
        "n": 1,
        "em": 0,
        "f1": 0,
        "has_ans": {"n": 1},
        "no_ans": {"n": 0},
        "abstention": {"answerable": {"answered": 1, "refused": 0}, "unanswerable": {"answered": 0, "refused": 0}},
    }
    metrics = {"n": 1, "dataset": "x", "models": {"base": agg, "tuned": agg}, "judge": j}
    md = report_markdown(metrics, rows)
    assert "## LLM judge" in md and "100.0 ± 0.0" in md and "temperature 0.0" in md
