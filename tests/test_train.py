"""The train stage: labels, loss going down, adapter save / load / generate, run folder."""

from __future__ import annotations

import json

import pytest
from train_helpers import rag_dataset

from ragtune.config import TrainConfig
from ragtune.errors import RagtuneError
from ragtune.prompts import IGNORE_INDEX, PromptTemplate, prompt_ids

FAST = dict(batch_size=4, lr=3e-3, lora_dropout=0.0, warmup_ratio=0.0, lr_scheduler="constant")


def test_labels_mask_exactly_the_prompt_and_keep_eos(tokenizer):
    from ragtune.train.data import collate, encode_rows

    ds = rag_dataset(tokenizer, n_train=12, n_val=2)
    template = PromptTemplate.for_tokenizer(tokenizer)
    enc = encode_rows(ds["train"], tokenizer, template, None)
    assert len(enc) == 12
    for row, ids, labels in zip(ds["train"], enc.input_ids, enc.labels, strict=True):
        n_prompt = len(prompt_ids(tokenizer, row["prompt"], template))
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]
        assert labels[-1] == tokenizer.eos_token_id
        answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        assert labels[n_prompt:-1] == answer
    # the collator only gathers what preprocessing decided: every trained token, nothing else
    batch = collate(enc, [0, 1, 2], tokenizer.pad_token_id, packing=False)
    want = [t for j in (0, 1, 2) for t in enc.labels[j][1:] if t != IGNORE_INDEX]
    assert batch["target_ids"].tolist() == want
    flat = batch["input_ids"].flatten()
    assert (flat[batch["target_pos"] + 1] == batch["target_ids"]).all()  # position t-1 predicts t


def test_too_long_rows_are_dropped_not_cut(tokenizer):
    from ragtune.train.data import encode_rows

    ds = rag_dataset(tokenizer, n_train=12, n_val=2)
    template = PromptTemplate.for_tokenizer(tokenizer)
    full = encode_rows(ds["train"], tokenizer, template, None)
    cap = sorted(full.lengths)[6]
    enc = encode_rows(ds["train"], tokenizer, template, cap)
    assert enc.dropped_too_long == sum(n > cap for n in full.lengths) > 0
    assert all(n <= cap for n in enc.lengths)


def test_rows_from_another_template_are_refused(tokenizer):
    from ragtune.train.data import encode_rows

    other = PromptTemplate(instruction="Reply in French. {refusal}")
    ds = rag_dataset(tokenizer, n_train=4, n_val=2, template=other)
    with pytest.raises(RagtuneError, match="template"):
        encode_rows(ds["train"], tokenizer, PromptTemplate.for_tokenizer(tokenizer), None)


def test_rows_that_ask_the_question_twice_are_accepted(tokenizer):
    from ragtune.train.data import encode_rows

    first = PromptTemplate.for_tokenizer(tokenizer, question_first=True)
    ds = rag_dataset(tokenizer, n_train=4, n_val=2, template=first)
    assert all(row["prompt"].count("### Question:") == 2 for row in ds["train"])
    assert len(encode_rows(ds["train"], tokenizer, first, None).lengths) == 4


def test_qlora_without_gpu_is_a_clear_error(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.models import cuda_available
    from ragtune.train import train

    if cuda_available():
        pytest.skip("a GPU is present; qlora is allowed")
    with pytest.raises(RagtuneError, match="CUDA GPU"):
        train(rag_dataset(tokenizer, 4, 2), tiny_model_dir, TrainConfig(method="qlora"), tmp_path)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tokenizer, tmp_path_factory):
    from ragtune.train import train

    out = tmp_path_factory.mktemp("adapter")
    ds = rag_dataset(tokenizer)
    ds["validation"] = ds["train"].select(range(16))  # loss on rows it trains on: 20 steps must fit them
    res = train(ds, tiny_model_dir, TrainConfig(max_steps=20, eval_steps=20, **FAST), out)
    return out, res


@pytest.mark.slow
def test_twenty_steps_lower_the_loss(trained):
    out, res = trained
    assert res.steps == 20 and res.stop_reason == "max_steps"
    assert res.eval_loss < res.initial_eval_loss - 0.15
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 21))
    assert sum(r["loss"] for r in log[-5:]) / 5 < sum(r["loss"] for r in log[:5]) / 5


@pytest.mark.slow
def test_saved_adapter_loads_and_generates(trained, tiny_model_dir, tokenizer):
    import torch

    from ragtune.generation import generate
    from ragtune.models import load_model

    out, _ = trained
    for name in ("adapter_config.json", "ragtune_prompt.json", "ragtune_train.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "ragtune_train.json").read_text())["base_model"] == str(tiny_model_dir)
    tuned, tok = load_model(tiny_model_dir, out)
    base, _ = load_model(tiny_model_dir)
    row = rag_dataset(tokenizer, 2, 2)["test"][0]
    template = PromptTemplate.load(out)
    ids = prompt_ids(tok, row["prompt"], template)
    with torch.no_grad():
        a = tuned(torch.tensor([ids])).logits[0, -1]
        b = base(torch.tensor([ids])).logits[0, -1]
    assert not torch.allclose(a, b, atol=1e-3)  # the adapter is really applied
    text = generate(tuned, tok, [ids], max_new_tokens=8)
    assert isinstance(text[0], str)


@pytest.mark.slow
def test_train_to_run_writes_the_adapter_folder(tiny_model_dir, tokenizer, tmp_path):
    import shutil

    from ragtune.runfolder import RunFolder
    from ragtune.train import train_to_run

    run = RunFolder(tmp_path / "run")
    rag_dataset(tokenizer, 16, 4).save_to_disk(str(run.dataset))
    PromptTemplate.for_tokenizer(tokenizer).save(run.dataset)
    shutil.copytree(tiny_model_dir, run.base_model)
    res = train_to_run(run.root, TrainConfig(max_steps=3, **FAST))
    assert res.steps == 3
    for name in ("adapter_config.json", "ragtune_prompt.json", "training_log.jsonl", "ragtune_train.json"):
        assert (run.adapter / name).is_file(), name
    assert (run.adapter / "ragtune_prompt.json").read_text() == (run.dataset / "ragtune_prompt.json").read_text()
    stage = json.loads(run.manifest.read_text())["stages"]["train"]
    assert stage["steps"] == 3 and stage["config"]["max_steps"] == 3


def test_train_to_run_without_dataset_names_the_fix(tmp_path):
    from ragtune.train import train_to_run

    with pytest.raises(RagtuneError, match="ragtune build"):
        train_to_run(tmp_path, TrainConfig())


def test_missing_columns_are_a_clear_error(tiny_model_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    from ragtune.train import train

    with pytest.raises(RagtuneError, match="prompt"):
        train(DatasetDict({"train": Dataset.from_list([{"text": "x"}])}), tiny_model_dir, TrainConfig(), tmp_path)


def test_cli_train_help_and_bad_method(tmp_path):
    from typer.testing import CliRunner

    from ragtune.cli import app

    r = CliRunner().invoke(app, ["train", "--help"])
    assert r.exit_code == 0 and "adapter" in r.output
    r = CliRunner().invoke(app, ["train", "--run", str(tmp_path), "--method", "bogus"])
    assert r.exit_code != 0
    assert isinstance(r.exception, (RagtuneError, SystemExit))


@pytest.mark.slow
def test_accelerate_settings_left_by_another_library_do_not_leak(tiny_model_dir, tokenizer, tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ragtune.train import train

    Accelerator(mixed_precision="bf16", cpu=True)  # what an HF / TRL Trainer run earlier leaves behind
    res = train(
        rag_dataset(tokenizer, 8, 2), tiny_model_dir, TrainConfig(max_steps=1, batch_size=4, precision="fp32"), tmp_path
    )
    assert res.steps == 1 and res.dtype == "float32"
    assert not AcceleratorState._shared_state  # and ragtune leaves none behind


def test_micro_batches_are_cut_to_the_token_budget():
    from ragtune.train.data import cap_tokens

    lengths = [100, 90, 50, 40, 30, 300]
    pieces = cap_tokens([0, 1, 2, 3, 4, 5], lengths, 200)
    assert sorted(j for p in pieces for j in p) == [0, 1, 2, 3, 4, 5]  # nothing lost or repeated
    assert pieces[0] == [5]  # longer than the budget: alone
    assert all(len(p) * max(lengths[j] for j in p) <= 200 for p in pieces[1:])
    assert cap_tokens([2, 0], lengths, None) == [[2, 0]]
