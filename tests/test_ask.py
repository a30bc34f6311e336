"""`ragtune ask` with the real tiny model, a real LoRA adapter and BM25 over real chunks."""

from __future__ import annotations

import pytest
import torch
from evalkit import make_chunks, make_run

from ragtune.ask import ask, retrieved_passages
from ragtune.errors import RagtuneError
from ragtune.models import load_model
from ragtune.prompts import Passage, PromptTemplate, prompt_ids


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir, tokenizer):
    return make_run(tmp_path_factory.mktemp("askrun"), tiny_model_dir, tokenizer)


def test_retrieval_puts_the_relevant_chunk_first():
    chunks = make_chunks()
    top = retrieved_passages(chunks, "Who painted the harbor lighthouse red?", 3)
    assert 1 <= len(top) <= 3 and top[0].title == "Harbor"
    assert retrieved_passages(chunks, "How many arches has the stone bridge?", 1)[0].title == "Bridge"


@pytest.mark.slow
def test_ask_from_context_file_is_the_adapters_greedy_answer(run_dir, tiny_model_dir, tmp_path):
    ctx = tmp_path / "lighthouse.txt"
    ctx.write_text("The harbor lighthouse was painted red in 1921 by the keeper Ada Moss.\n")
    q = "Who painted the harbor lighthouse?"
    answer = ask(q, adapter=run_dir / "adapter", context=ctx, max_new_tokens=8, precision="fp32")
    assert isinstance(answer, str)
    # The same prompt through the adapter's template and plain model.generate gives the same text.
    model, tok = load_model(tiny_model_dir, run_dir / "adapter", precision="fp32")
    template = PromptTemplate.load(run_dir / "adapter")
    ids = torch.tensor(
        [prompt_ids(tok, template.render(tok, q, [Passage("lighthouse", ctx.read_text().strip())]), template)]
    )
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    expected = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n### ")[0].strip()
    assert answer == expected


@pytest.mark.slow
def test_ask_from_a_run_folder_knowledge_base(run_dir):
    options = {"adapter": run_dir / "adapter", "docs": run_dir, "k": 2, "max_new_tokens": 6, "precision": "fp32"}
    a = ask("What does the Saturday market sell?", **options)
    b = ask("What does the Saturday market sell?", **options)
    assert isinstance(a, str) and a == b  # greedy: deterministic


def test_ask_input_errors(tmp_path, tiny_model_dir):
    (tmp_path / "x.txt").write_text("some context")
    with pytest.raises(RagtuneError, match="exactly one of"):
        ask("q?", base_model=str(tiny_model_dir))
    with pytest.raises(RagtuneError, match="not found"):
        ask("q?", base_model=str(tiny_model_dir), context=tmp_path / "missing.txt")
    with pytest.raises(RagtuneError, match="holds no adapter or model"):
        ask("q?", adapter=tmp_path, context=tmp_path / "x.txt")
    with pytest.raises(RagtuneError, match="question is empty"):
        ask("  ", base_model=str(tiny_model_dir), context=tmp_path / "x.txt")


def test_a_bare_base_model_is_asked_with_the_template_saved_beside_it(tmp_path, tiny_model_dir):
    import shutil

    from ragtune.ask import load_for_inference

    assert not load_for_inference(base_model=str(tiny_model_dir))[2].question_first
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    PromptTemplate(question_first=True).save(base)
    assert load_for_inference(base_model=str(base))[2].question_first


def test_base_model_of_an_adapter(tmp_path):
    import json

    from ragtune.models import base_model_of as base_of_adapter

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "ragtune_train.json").write_text(json.dumps({"base_model": "runs/elsewhere/base_model"}))
    assert base_of_adapter(run / "adapter") == "runs/elsewhere/base_model"  # taken as a hub id
    (run / "base_model").mkdir()
    (run / "base_model" / "config.json").write_text("{}")
    assert base_of_adapter(run / "adapter") == str(run / "base_model")  # the run's own, seen from here
    (run / "adapter" / "ragtune_train.json").write_text(json.dumps({"base_model": str(tmp_path)}))
    assert base_of_adapter(run / "adapter") == str(tmp_path)
