"""The calibrated abstention rule: a confidence threshold chosen on validation rows, saved
beside the adapter, and applied by eval, ask and serve."""

from __future__ import annotations

import pytest

from ragtune.abstain import RefusalRule, answer_with_rule, best_threshold, calibrate
from ragtune.prompts import Passage, PromptTemplate


def test_best_threshold_maximises_f1():
    # three refusal targets the model answered unsure of (-3, -2.5, -1.5), a sure right answer
    # (-0.1) and an unsure half-right one (-2.0, F1 0.2)
    confidence = [-3.0, -2.5, -1.5, -0.1, -2.0]
    wants = [True, True, True, False, False]
    f1s = [0.0, 0.0, 0.0, 1.0, 0.2]
    t, scores = best_threshold(confidence, wants, f1s, [False] * 5)
    assert -1.5 < t < -0.1  # refuses every unsure answer, keeps the sure one
    assert scores["f1_with_rule"] == 80.0 and scores["f1_without_rule"] == 24.0
    assert scores["refusal_targets_refused"] == 100.0 and scores["answerable_refused"] == 50.0
    # refusing no answerable question: the unsure half-right answer must stay
    capped, capped_scores = best_threshold(confidence, wants, f1s, [False] * 5, max_answerable_refused=0.0)
    assert -2.5 < capped <= -2.0 and capped_scores["answerable_refused"] == 0.0
    assert capped_scores["f1_with_rule"] == 64.0


def test_the_models_own_refusals_count_as_refused():
    t, scores = best_threshold([-0.5, -0.2], [True, False], [0.0, 1.0], [True, False])
    assert scores["f1_without_rule"] == 100.0 and t < -0.2


def test_the_rule_replaces_unsure_answers_only():
    rule = RefusalRule(threshold=-1.0)
    assert rule.apply("port 8080", -0.5, "Sorry.") == "port 8080"
    assert rule.apply("port 8080", -1.5, "Sorry.") == "Sorry."


@pytest.mark.slow
def test_answer_with_rule_on_a_real_model(tiny_model_dir, tmp_path):
    from ragtune.generation import generate, generate_scored
    from ragtune.models import load_model
    from ragtune.prompts import prompt_ids

    model, tok = load_model(tiny_model_dir, precision="fp32")
    template = PromptTemplate.for_tokenizer(tok)
    ids = [
        prompt_ids(tok, template.render(tok, q, [Passage("t", "The hub listens on port 8080.")]), template)
        for q in ("Which port?", "Who wrote it?")
    ]
    plain = generate(model, tok, ids, max_new_tokens=4)
    texts, confidence = generate_scored(model, tok, ids, max_new_tokens=4)
    assert texts == plain and all(c < 0 for c in confidence)
    assert answer_with_rule(model, tok, ids, None, template.refusal, max_new_tokens=4) == plain
    never = RefusalRule(threshold=-1e9)
    always = RefusalRule(threshold=0.0)
    assert answer_with_rule(model, tok, ids, never, template.refusal, max_new_tokens=4) == plain
    assert answer_with_rule(model, tok, ids, always, template.refusal, max_new_tokens=4) == [template.refusal] * 2
    always.save(tmp_path)
    assert RefusalRule.find(tmp_path) == always and RefusalRule.find(tmp_path / "none") is None


@pytest.mark.slow
def test_calibrate_on_rows_with_answers_and_refusals(tiny_model_dir):
    from datasets import Dataset

    from ragtune.models import load_model

    model, tok = load_model(tiny_model_dir, precision="fp32")
    template = PromptTemplate.for_tokenizer(tok)
    passages = [Passage("hub", "The hub listens on port 8080."), Passage("lamp", "The lamp is blue.")]
    rows = [
        {"prompt": template.render(tok, q, passages), "completion": c, "answers": a}
        for q, c, a in [
            ("Which port?", "8080", ["8080"]),
            ("Which colour?", "blue", ["blue"]),
            ("Who made it?", template.refusal, []),
        ]
    ]
    rule = calibrate(model, tok, template, Dataset.from_list(rows), max_new_tokens=4)
    assert rule is not None and rule.calibration["examples"] == 3
    assert rule.calibration["f1_with_rule"] >= rule.calibration["f1_without_rule"]
    assert calibrate(model, tok, template, Dataset.from_list(rows[:2])) is None  # nothing to choose between
