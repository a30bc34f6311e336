"""The calibrated abstention rule: the bias chosen on validation rows, saved beside the adapter,
and applied at the first generated token by eval, ask and serve."""

from __future__ import annotations

import pytest

from ragtune.abstain import RefusalRule, best_bias, calibrate, refusal_token
from ragtune.prompts import Passage, PromptTemplate


def test_best_bias_maximises_f1_and_prefers_no_bias_on_ties():
    # two unanswerable items with margins -2 and -1.5, two answerable with margins -6 and -0.5
    margins = [-2.0, -1.5, -6.0, -0.5]
    wants = [True, True, False, False]
    f1s = [0.0, 0.0, 1.0, 0.2]
    bias, scores = best_bias(margins, wants, f1s, [False] * 4)
    assert 2.0 < bias < 6.0  # refuses the first two and the weak answer, keeps the good one
    assert scores["f1_calibrated"] == 75.0 and scores["f1_unbiased"] == 30.0
    assert best_bias([-3.0, -4.0], [False, False], [1.0, 1.0], [False, False])[0] == 0.0
    # with no answerable question to be refused, the weak answer (margin -0.5) must stay
    capped, capped_scores = best_bias(margins, wants, f1s, [False] * 4, max_answerable_refused=0.0)
    assert capped <= 0.5 and capped_scores["answerable_refused"] == 0.0


def test_an_answerable_item_greedy_refused_counts_with_the_mean_answered_f1():
    # the answerable item at margin +1 was refused by greedy decoding: worth 0.8 if answered
    bias, _ = best_bias([1.0, -3.0, -1.0], [False, False, True], [0.0, 0.8, 0.0], [True, False, False])
    assert 1.0 < bias < 3.0  # refusing the third (worth 1) beats answering the first (worth 0.8)


@pytest.mark.slow
def test_a_bias_on_the_refusals_first_token_makes_the_model_refuse(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.generation import generate
    from ragtune.models import load_model
    from ragtune.prompts import prompt_ids

    model, tok = load_model(tiny_model_dir, precision="fp32")
    template = PromptTemplate.for_tokenizer(tok)
    ids = [prompt_ids(tok, template.render(tok, q, [Passage("t", "The hub listens on port 8080.")]), template)
           for q in ("Which port?", "Who wrote it?")]
    token = refusal_token(tok, template)
    plain = generate(model, tok, ids, max_new_tokens=4)
    forced = generate(model, tok, ids, max_new_tokens=4, first_token_bias={token: 1e4})
    first = tok.decode([token]).strip()
    assert all(a.startswith(first) for a in forced) and forced != plain
    rule = RefusalRule(token_id=token, bias=2.5, calibration={"examples": 2})
    rule.save(tmp_path)
    assert RefusalRule.load(tmp_path) == rule and RefusalRule.load(tmp_path / "none") is None


@pytest.mark.slow
def test_calibrate_measures_margins_on_rows_with_answers_and_refusals(tiny_model_dir, tokenizer):
    from datasets import Dataset

    from ragtune.models import load_model

    model, tok = load_model(tiny_model_dir, precision="fp32")
    template = PromptTemplate.for_tokenizer(tok)
    passages = [Passage("hub", "The hub listens on port 8080."), Passage("lamp", "The lamp is blue.")]
    rows = [{"prompt": template.render(tok, q, passages), "completion": c, "answers": a}
            for q, c, a in [("Which port?", "8080", ["8080"]), ("Which colour?", "blue", ["blue"]),
                            ("Who made it?", template.refusal, [])]]
    rule = calibrate(model, tok, template, Dataset.from_list(rows), max_new_tokens=4)
    assert rule is not None and rule.token_id == refusal_token(tok, template)
    assert rule.calibration["examples"] == 3
    assert rule.calibration["f1_calibrated"] >= rule.calibration["f1_unbiased"]
    assert calibrate(model, tok, template, Dataset.from_list(rows[:2])) is None  # nothing to choose between
