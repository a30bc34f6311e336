"""The calibrated abstention rule: a confidence threshold chosen on validation rows, saved
beside the adapter, and applied by eval, ask and serve."""

from __future__ import annotations

import pytest

from ragtune.abstain import RefusalRule, Scores, answer_with_rule, best_thresholds, calibrate
from ragtune.prompts import Passage, PromptTemplate


def scores(confidence, wants, f1s, refused=None, support=None):
    n = len(confidence)
    return Scores(confidence, support or [None] * n, wants, f1s, refused or [False] * n)


def test_best_threshold_maximises_f1():
    # three refusal targets the model answered unsure of (-3, -2.5, -1.5), a sure right answer
    # (-0.1) and an unsure half-right one (-2.0, F1 0.2)
    confidence = [-3.0, -2.5, -1.5, -0.1, -2.0]
    wants = [True, True, True, False, False]
    f1s = [0.0, 0.0, 0.0, 1.0, 0.2]
    t, support, found = best_thresholds(scores(confidence, wants, f1s))
    assert -1.5 < t < -0.1 and support is None  # refuses every unsure answer, keeps the sure one
    assert found["f1_with_rule"] == 80.0 and found["f1_without_rule"] == 24.0
    assert found["refusal_targets_refused"] == 100.0 and found["answerable_refused"] == 50.0
    # refusing no answerable question: the unsure half-right answer must stay
    capped, _, capped_found = best_thresholds(scores(confidence, wants, f1s), max_answerable_refused=0.0)
    assert -2.5 < capped <= -2.0 and capped_found["answerable_refused"] == 0.0
    assert capped_found["f1_with_rule"] == 64.0


def test_support_is_chosen_where_it_separates_and_confidence_does_not():
    # the refusal targets' answers are as sure as the right ones, but the context predicts
    # their questions badly
    confidence = [-0.2, -0.3, -0.2, -0.3, -0.25]
    support = [-4.0, -3.5, -1.0, -1.2, -0.9]
    wants = [True, True, False, False, False]
    t, s, found = best_thresholds(scores(confidence, wants, [0, 0, 1, 1, 1], support=support))
    assert t == -1e9 and -3.5 < s < -1.2
    assert found["f1_with_rule"] == 100.0 and found["answerable_refused"] == 0.0
    # an item without a support score (no question span) is never refused on support
    t, s, found = best_thresholds(scores(confidence, wants, [0, 0, 1, 1, 1], support=[None, *support[1:]]))
    assert -3.5 < s < -1.2 and found["refusal_targets_refused"] == 50.0


def test_the_models_own_refusals_count_as_refused():
    t, _, found = best_thresholds(scores([-0.5, -0.2], [True, False], [0.0, 1.0], [True, False]))
    assert found["f1_without_rule"] == 100.0 and t < -0.2


def test_the_rule_replaces_unsure_or_unsupported_answers_only():
    rule = RefusalRule(threshold=-1.0)
    assert rule.apply("port 8080", -0.5, "Sorry.") == "port 8080"
    assert rule.apply("port 8080", -1.5, "Sorry.") == "Sorry."
    assert rule.apply("port 8080", -0.5, "Sorry.", support=-9.0) == "port 8080"  # no support threshold
    rule = RefusalRule(threshold=-1.0, support_threshold=-3.0)
    assert rule.apply("port 8080", -0.5, "Sorry.", support=-2.0) == "port 8080"
    assert rule.apply("port 8080", -0.5, "Sorry.", support=-4.0) == "Sorry."
    assert rule.apply("port 8080", -0.5, "Sorry.", support=None) == "port 8080"
    assert "-3.000" in rule.describe() and "-1.000" in rule.describe()
    assert RefusalRule(threshold=-1e9).describe() == "only where the model itself refuses"


def test_a_rule_saved_before_support_existed_still_loads(tmp_path):
    (tmp_path / "ragtune_abstain.json").write_text('{"threshold": -2.6, "calibration": {"examples": 62}}')
    assert RefusalRule.find(tmp_path) == RefusalRule(-2.6, {"examples": 62}, None)


@pytest.mark.slow
def test_answer_with_rule_on_a_real_model(tiny_model_dir, tmp_path):
    from ragtune.generation import generate, greedy_completions
    from ragtune.models import load_model
    from ragtune.prompts import prompt_ids

    model, tok = load_model(tiny_model_dir, precision="fp32")
    template = PromptTemplate.for_tokenizer(tok)
    questions = ("Which port?", "Who wrote it?")
    ids = [
        prompt_ids(tok, template.render(tok, q, [Passage("t", "The hub listens on port 8080.")]), template)
        for q in questions
    ]
    plain = generate(model, tok, ids, max_new_tokens=4)
    scored = greedy_completions(model, tok, ids, max_new_tokens=4, with_confidence=True)
    assert [c.text for c in scored] == plain and all(c.confidence < 0 for c in scored)
    assert answer_with_rule(model, tok, ids, None, template.refusal, max_new_tokens=4) == plain
    never = RefusalRule(threshold=-1e9)
    always = RefusalRule(threshold=0.0)
    assert answer_with_rule(model, tok, ids, never, template.refusal, max_new_tokens=4) == plain
    assert answer_with_rule(model, tok, ids, always, template.refusal, max_new_tokens=4) == [template.refusal] * 2
    # every question's log-probability is below 0: a support threshold of 0 refuses them all,
    # unless no question is given to find in the prompt
    unsupported = RefusalRule(threshold=-1e9, support_threshold=0.0)
    kw = {"max_new_tokens": 4}
    assert answer_with_rule(model, tok, ids, unsupported, template.refusal, questions, **kw) == [template.refusal] * 2
    assert answer_with_rule(model, tok, ids, unsupported, template.refusal, **kw) == plain
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
        {"prompt": template.render(tok, q, passages), "question": q, "completion": c, "answers": a}
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


@pytest.mark.slow
def test_support_is_the_questions_log_probability_given_the_context(tiny_model_dir):
    """Read from the batched prefill (left-padded rows of different lengths), the support score
    equals the mean log-probability of the question's tokens in a plain forward of each prompt."""
    import torch

    from ragtune.generation import greedy_completions
    from ragtune.models import load_model
    from ragtune.prompts import prompt_ids, question_span

    model, tok = load_model(tiny_model_dir, precision="fp32")
    template = PromptTemplate.for_tokenizer(tok)
    cases = [
        ("Which port does the hub listen on?", [Passage("hub", "The hub listens on port 8080.")]),
        ("Who?", [Passage("a", "The lamp is blue and the kettle is red."), Passage("b", "Tea is hot.")]),
    ]
    ids = [prompt_ids(tok, template.render(tok, q, p), template) for q, p in cases]
    spans = [question_span(tok, i, q) for i, (q, _) in zip(ids, cases, strict=True)]
    for i, (q, _), (a, b) in zip(ids, cases, spans, strict=True):
        assert tok.decode(i[a:b]).strip() == q
    done = greedy_completions(model, tok, ids, max_new_tokens=3, with_confidence=True, spans=spans)
    for i, (a, b), c in zip(ids, spans, done, strict=True):
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([i])).logits[0].float().log_softmax(-1)
        want = float(torch.stack([logp[k - 1, i[k]] for k in range(a, b)]).mean())
        assert c.support == pytest.approx(want, abs=1e-4)
    assert question_span(tok, ids[0], "not in this prompt") is None
