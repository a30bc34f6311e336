"""`ragtune eval` with the real tiny model: same prompts, answer NLL, cache, outputs, report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from evalkit import make_run

from ragtune.config import EvalConfig
from ragtune.errors import RagtuneError
from ragtune.evaluate import answer_nll, evaluate_run, format_table
from ragtune.evaluate.core import ModelSpec, PredictionCache, predict
from ragtune.models import load_model
from ragtune.prompts import PromptTemplate, encode_example, prompt_ids

pytestmark = pytest.mark.slow
CFG = dict(max_new_tokens=6, batch_size=4, robustness_k=[0, 2], precision="fp32")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir, tokenizer):
    return make_run(tmp_path_factory.mktemp("evalrun"), tiny_model_dir, tokenizer)


@pytest.fixture(scope="module")
def first_metrics(run_dir):
    return evaluate_run(run_dir, EvalConfig(**CFG), show=False)


def test_eval_run_writes_metrics_report_and_predictions(run_dir, first_metrics):
    m = first_metrics
    assert set(m["models"]) == {"base", "tuned"} and m["n"] == 8
    for name in ("base", "tuned"):
        mm = m["models"][name]
        assert mm["has_ans"]["n"] == 6 and mm["no_ans"]["n"] == 2
        assert 0 <= mm["em"] <= 100 and 0 <= mm["f1"] <= 100
        assert math.isfinite(mm["answer_nll"]) and mm["answer_nll"] > 0
        assert mm["items_per_s"] > 0
        assert sum(mm["abstention"]["answerable"].values()) == 6
    # The random adapter changes the model, so the two likelihoods differ.
    assert m["models"]["base"]["answer_nll"] != m["models"]["tuned"]["answer_nll"]
    out = run_dir / "eval"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["models"]["tuned"]["f1"] == m["models"]["tuned"]["f1"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and set(rows[0]["models"]) == {"base", "tuned"}
    report = (out / "report.md").read_text()
    assert "| EM |" in report and "answer NLL" in report and "5 worst examples" in report
    assert "Robustness" in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # scores, abstention, robustness
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["eval"]["n"] == 8


def test_robustness_curve_points(first_metrics):
    rob = first_metrics["robustness"]
    assert rob["k"] == [0, 2] and rob["n"] == 6
    for name in ("base", "tuned"):
        assert len(rob[name]) == 2
        assert 0 <= rob["closed_book"][name] <= 100 and 0 <= rob["no_oracle_refused"][name] <= 100


def test_predictions_are_batched_greedy_on_the_dataset_prompts(run_dir, tiny_model_dir, first_metrics):
    """The stored base prediction equals one-at-a-time model.generate on the same prompt ids."""
    model, tok = load_model(tiny_model_dir, precision="fp32")
    template = PromptTemplate.load(run_dir / "dataset")
    rows = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    from datasets import load_from_disk

    test = load_from_disk(str(run_dir / "dataset"))["test"]
    for row, ex in list(zip(rows, test, strict=True))[:3]:
        ids = torch.tensor([prompt_ids(tok, ex["prompt"], template)])
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        text = tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).split("\n### ")[0].strip()
        assert row["models"]["base"]["prediction"] == text


def test_answer_nll_equals_unbatched_loss(run_dir, tiny_model_dir):
    """Left-padded batches with logits_to_keep give the same per-token NLL as one sequence at a time."""
    from datasets import load_from_disk

    from ragtune.records import Example, from_dict

    model, tok = load_model(tiny_model_dir, precision="fp32")
    template = PromptTemplate.load(run_dir / "dataset")
    items = [from_dict(Example, r) for r in load_from_disk(str(run_dir / "dataset"))["test"]]
    nll, counts = answer_nll(model, tok, template, items, batch_size=4)
    for ex, total, n in zip(items, nll, counts, strict=True):
        enc = encode_example(tok, ex.prompt, ex.completion, template)
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([enc["input_ids"]]), labels=torch.tensor([enc["labels"]])).loss
        assert n == sum(1 for x in enc["labels"] if x != -100)
        assert total / n == pytest.approx(float(loss), rel=1e-4)


def test_second_eval_reuses_cached_predictions(run_dir, first_metrics):
    again = evaluate_run(run_dir, EvalConfig(**CFG, robustness=False), show=False)
    for name in ("base", "tuned"):
        assert again["models"][name]["n_cached"] == 8
        assert again["models"][name]["f1"] == first_metrics["models"][name]["f1"]


def test_cache_key_changes_with_decoding(run_dir, tiny_model_dir, tmp_path):
    model, tok = load_model(tiny_model_dir, precision="fp32")
    template = PromptTemplate.load(run_dir / "dataset")
    from datasets import load_from_disk

    from ragtune.records import Example, from_dict

    items = [from_dict(Example, r) for r in load_from_disk(str(run_dir / "dataset"))["test"]][:2]
    spec = ModelSpec("base", str(tiny_model_dir))
    cache = PredictionCache(tmp_path / "c.jsonl")
    _, _, n1 = predict(model, tok, template, items, spec, EvalConfig(**CFG), cache)
    _, _, n2 = predict(model, tok, template, items, spec, EvalConfig(**CFG), PredictionCache(tmp_path / "c.jsonl"))
    _, _, n3 = predict(model, tok, template, items, spec, EvalConfig(**{**CFG, "max_new_tokens": 3}), cache)
    assert (n1, n2, n3) == (2, 0, 2)


def test_format_table(first_metrics):
    text = format_table(first_metrics)
    for label in ("EM", "F1", "HasAns refused %", "NoAns refused %", "answer NLL / token", "base", "tuned"):
        assert label in text


def test_missing_inputs_are_one_line_errors(tmp_path, tiny_model_dir):
    with pytest.raises(RagtuneError, match="no dataset split"):
        evaluate_run(tmp_path, EvalConfig(), base_model=str(tiny_model_dir), show=False)
    with pytest.raises(RagtuneError, match="no base model"):
        evaluate_run(tmp_path, EvalConfig(), show=False)
    with pytest.raises(RagtuneError, match="holds no adapter or model"):
        evaluate_run(tmp_path, EvalConfig(), base_model=str(tiny_model_dir), adapters=[tmp_path], show=False)


def test_eval_on_imported_squad_qa(tmp_path, run_dir, tiny_model_dir):
    """`ragtune eval --qa`: prompts rendered from each item's own context with the adapter's template."""
    from test_importers import SQUAD

    f = tmp_path / "dev.json"
    f.write_text(json.dumps(SQUAD))
    m = evaluate_run(tmp_path / "qarun", EvalConfig(**CFG), adapters=[run_dir / "adapter"], qa=f, show=False)
    assert m["n"] == 2 and m["dataset"] == str(f) and "robustness" not in m
    assert m["models"]["tuned"]["has_ans"]["n"] == 1 and m["models"]["tuned"]["no_ans"]["n"] == 1
    rows = [json.loads(line) for line in (tmp_path / "qarun" / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["answers"] == ["10th and 11th centuries", "in the 10th and 11th centuries"]


def test_model_names_for_several_adapters(tmp_path):
    from ragtune.evaluate import model_specs

    a, b, c = tmp_path / "r1" / "adapter", tmp_path / "r2" / "adapter", tmp_path / "lora-dora"
    assert [s.name for s in model_specs("m", [a])] == ["base", "tuned"]
    specs = model_specs("m", [a, b, c])
    assert [s.name for s in specs] == ["base", "adapter", "adapter-2", "lora-dora"]
    assert all(s.base_model == "m" for s in specs) and specs[2].adapter == str(b)


def test_robustness_items_settings(tiny_model_dir, tokenizer):
    """Closed book has no passage, oracle + k has k + 1 with the oracle, oracle removed lacks it."""
    from evalkit import QUESTIONS, make_chunks

    from ragtune.evaluate.robustness import robustness_items
    from ragtune.records import Example, QAItem, content_id

    chunks = make_chunks()
    template = PromptTemplate.for_tokenizer(tokenizer)
    qa, exs = {}, []
    for q, a, ci in QUESTIONS:
        qa[content_id(q)] = QAItem(id=content_id(q), question=q, answer=a, answers=[a], chunk_id=chunks[ci].id)
        exs.append(
            Example(id=content_id(q), qa_id=content_id(q), doc_id="", question=q, prompt="", completion=a, answers=[a])
        )
    pairs = robustness_items(exs, qa, chunks, [0, 2, 4], template, tokenizer, limit=3)
    assert [s for s, _ in pairs[:5]] == ["closed_book", "k=0", "k=2", "k=4", "no_oracle"] and len(pairs) == 15
    for setting, ex in pairs:
        oracle = qa[ex.qa_id].chunk_id
        if setting == "closed_book":
            assert ex.passages == [] and "### Context:" in ex.prompt
        elif setting == "no_oracle":
            assert oracle not in ex.passages and len(ex.passages) == 4 and not ex.answerable
            assert ex.completion == template.refusal and ex.answers == []
        else:
            k = int(setting[2:])
            assert oracle in ex.passages and len(ex.passages) == k + 1 and len(set(ex.passages)) == k + 1
            assert ex.question in ex.prompt and chunks[0].text in ex.prompt or ex.qa_id != exs[0].qa_id
