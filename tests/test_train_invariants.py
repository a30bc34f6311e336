"""Correctness invariants of the training engine (issue 6). Each test fails if its property
breaks: labels fixed at preprocessing, batch loss = mean of per-example losses whatever the
padding / grouping / packing, batch x accumulation equivalence, seeded reproducibility,
resume = uninterrupted, and the template saved with the adapter = the one trained with."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch
from train_helpers import rag_dataset

from ragtune.config import TrainConfig
from ragtune.errors import RagtuneError
from ragtune.prompts import PromptTemplate

pytestmark = pytest.mark.slow
EXACT = dict(precision="fp32", lora_dropout=0.0, lr=3e-3, warmup_ratio=0.0, lr_scheduler="constant")


def adapter_tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def assert_same_adapter(a, b, atol: float = 0.0) -> None:
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=atol, rtol=0), (k, (ta[k] - tb[k]).abs().max())


def losses(path) -> list[float]:
    return [json.loads(line)["loss"] for line in (path / "training_log.jsonl").read_text().splitlines()]


def test_batch_loss_is_the_mean_of_per_example_losses(tiny_model_dir, tokenizer):
    from ragtune.train.data import collate, encode_rows
    from ragtune.train.engine import load_for_training
    from ragtune.train.loss import AnswerLoss

    model, tok, _ = load_for_training(str(tiny_model_dir), TrainConfig(precision="fp32"), torch.device("cpu"))
    enc = encode_rows(rag_dataset(tokenizer, 7, 1)["train"], tok, PromptTemplate.for_tokenizer(tok), None)
    assert len(set(enc.lengths)) > 3  # uneven lengths: padding and packing really happen
    fn = AnswerLoss(model).eval()
    idx = list(range(7))
    with torch.no_grad():
        alone = torch.cat([fn(collate(enc, [j], tok.pad_token_id, False))[1] for j in idx])
        padded = fn(collate(enc, idx, tok.pad_token_id, False))
        packed_batch = collate(enc, idx, tok.pad_token_id, True, row_tokens=sum(enc.lengths) // 2)
        packed = fn(packed_batch)
        # the reference: the model's own causal-LM loss on one example, mean over its answer tokens
        ref = model(input_ids=torch.tensor([enc.input_ids[0]]), labels=torch.tensor([enc.labels[0]])).loss
    assert packed_batch["input_ids"].shape[0] < 7  # several examples share a row
    assert torch.allclose(alone[0], ref, atol=1e-5)
    order = packed_batch["example_index"]  # packing reorders examples (first-fit decreasing)
    assert torch.allclose(padded[1], alone, atol=1e-4)
    assert torch.allclose(packed[1], alone[order], atol=1e-4)
    assert torch.allclose(padded[0] / 7, alone.mean(), atol=1e-5)
    assert torch.allclose(packed[0] / 7, alone.mean(), atol=1e-5)


def test_token_average_is_the_causal_lm_loss_over_the_step(tiny_model_dir, tokenizer):
    """`loss_average: token`, scaled by 1 / the step's trained tokens, gives transformers' own
    causal-LM loss of the padded batch (mean over every answer token), whatever the micro-batches."""
    from ragtune.train.data import collate, encode_rows
    from ragtune.train.engine import load_for_training
    from ragtune.train.loss import AnswerLoss

    model, tok, _ = load_for_training(str(tiny_model_dir), TrainConfig(precision="fp32"), torch.device("cpu"))
    enc = encode_rows(rag_dataset(tokenizer, 5, 1)["train"], tok, PromptTemplate.for_tokenizer(tok), None)
    fn = AnswerLoss(model, average="token").eval()
    idx = list(range(5))
    n = enc.trained_tokens(idx)
    width = max(enc.lengths)
    ids = torch.tensor([row + [tok.pad_token_id] * (width - len(row)) for row in enc.input_ids])
    labels = torch.tensor([row + [-100] * (width - len(row)) for row in enc.labels])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in enc.input_ids])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        whole = fn(collate(enc, idx, tok.pad_token_id, False), 1 / n)[0]
        pieces = sum(fn(collate(enc, part, tok.pad_token_id, False), 1 / n)[0] for part in ([0, 1], [2], [3, 4]))
        by_example = AnswerLoss(model).eval()(collate(enc, idx, tok.pad_token_id, False), 1 / 5)[0]
    assert torch.allclose(whole, ref, atol=1e-5) and torch.allclose(pieces, ref, atol=1e-5)
    assert not torch.allclose(by_example, ref, atol=1e-3)  # the two averages really differ here


def test_lora_inputs_stay_in_the_compute_dtype_with_the_same_loss_and_gradients(tiny_model_dir, tokenizer):
    """Under bf16 autocast, PEFT's cast of each LoRA input to fp32 is undone by the matmul's own
    cast: training turns it off, so backward keeps fewer bytes, and the loss and every gradient
    stay bit-identical. In fp32 there is nothing to turn off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ragtune.train.data import collate, encode_rows
    from ragtune.train.engine import load_for_training, no_lora_input_cast
    from ragtune.train.loss import AnswerLoss
    from ragtune.training_core import autocast

    cpu = torch.device("cpu")
    model, tok, compute = load_for_training(str(tiny_model_dir), TrainConfig(precision="bf16"), cpu)
    enc = encode_rows(rag_dataset(tokenizer, 4, 1)["train"], tok, PromptTemplate.for_tokenizer(tok), None)
    batch = collate(enc, [0, 1, 2, 3], tok.pad_token_id, False)
    fn = AnswerLoss(model).eval()  # no dropout: the two passes see the same activations
    trained = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # LoRA B starts at zero: give the A matrices gradients too
        for p in trained:
            p.normal_(0, 0.02)

    def step(cast_off: bool) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        saved: dict[int, int] = {}  # storage -> bytes, each tensor kept for backward counted once

        def keep(t: torch.Tensor) -> torch.Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        model.zero_grad(set_to_none=True)
        off = no_lora_input_cast(model, compute) if cast_off else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), off, autocast(cpu, compute):
            loss = fn(batch)[0]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trained], sum(saved.values())

    cast_loss, cast_grads, cast_bytes = step(cast_off=False)
    loss, grads, kept_bytes = step(cast_off=True)
    assert torch.equal(loss, cast_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, cast_grads, strict=True))
    assert kept_bytes < 0.9 * cast_bytes
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(m.cast_input_dtype_enabled for m in layers)  # restored on the way out
    with no_lora_input_cast(model, torch.float32):
        assert all(m.cast_input_dtype_enabled for m in layers)


def test_batch_size_times_accumulation_gives_the_same_update(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.train import train

    ds = rag_dataset(tokenizer, 24, 4)
    for bs, acc in [(8, 1), (4, 2), (2, 4)]:
        train(
            ds,
            tiny_model_dir,
            TrainConfig(max_steps=3, batch_size=bs, grad_accum=acc, micro_batch_tokens=None, **EXACT),
            tmp_path / f"{bs}x{acc}",
        )
    # a token budget under every row's length: each row is a micro-batch of its own
    train(
        ds, tiny_model_dir, TrainConfig(max_steps=3, batch_size=8, micro_batch_tokens=1, **EXACT), tmp_path / "capped"
    )
    assert losses(tmp_path / "8x1") == pytest.approx(losses(tmp_path / "4x2"), abs=1e-4)
    assert losses(tmp_path / "8x1") == pytest.approx(losses(tmp_path / "capped"), abs=1e-4)
    assert_same_adapter(tmp_path / "8x1", tmp_path / "capped", atol=1e-4)
    # Adam turns float-order noise in tiny gradients (LoRA B starts at zero) into up to ~1% of
    # a step (2.7e-5 measured at lr 3e-3); a loss scaled per micro-batch is 8e-3 off above.
    assert_same_adapter(tmp_path / "8x1", tmp_path / "4x2", atol=1e-4)
    assert_same_adapter(tmp_path / "8x1", tmp_path / "2x4", atol=1e-4)


def test_packing_gives_the_same_update_as_padding(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.train import train

    ds = rag_dataset(tokenizer, 16, 4)
    for packing in (False, True):
        train(
            ds,
            tiny_model_dir,
            TrainConfig(max_steps=2, batch_size=8, packing=packing, **EXACT),
            tmp_path / str(packing),
        )
    assert_same_adapter(tmp_path / "False", tmp_path / "True", atol=1e-5)


def test_a_fixed_seed_reproduces_the_adapter(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.train import train

    ds = rag_dataset(tokenizer, 16, 4)
    cfg = dict(max_steps=3, batch_size=4, lora_dropout=0.1)
    train(ds, tiny_model_dir, TrainConfig(seed=1, **cfg), tmp_path / "a")
    train(ds, tiny_model_dir, TrainConfig(seed=1, **cfg), tmp_path / "b")
    train(ds, tiny_model_dir, TrainConfig(seed=2, **cfg), tmp_path / "c")
    assert_same_adapter(tmp_path / "a", tmp_path / "b")
    with pytest.raises(AssertionError):
        assert_same_adapter(tmp_path / "a", tmp_path / "c", atol=1e-6)


def test_resume_gives_the_same_final_loss_as_uninterrupted(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.train import train

    ds = rag_dataset(tokenizer, 24, 4)
    cfg = dict(max_steps=6, batch_size=4, lr=3e-3, lora_dropout=0.1, save_steps=100)  # dropout: RNG must resume too
    full = train(ds, tiny_model_dir, TrainConfig(**cfg), tmp_path / "full")
    cut = train(ds, tiny_model_dir, TrainConfig(max_minutes=1e-9, **cfg), tmp_path / "cut")
    assert cut.stop_reason == "max_minutes" and cut.steps == 1
    assert (tmp_path / "cut" / "checkpoints" / "last" / "trainer_state.pt").is_file()
    resumed = train(ds, tiny_model_dir, TrainConfig(resume=True, **cfg), tmp_path / "cut")
    assert resumed.steps == 6
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert resumed.eval_loss == pytest.approx(full.eval_loss, abs=1e-6)
    assert_same_adapter(tmp_path / "full", tmp_path / "cut", atol=1e-7)


CHAT = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def test_the_chat_template_saved_with_the_adapter_is_the_one_trained_with(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.models import load_tokenizer
    from ragtune.prompts import encode_example
    from ragtune.train import train

    base = tmp_path / "chat_base"
    shutil.copytree(tiny_model_dir, base)
    tok = load_tokenizer(base)
    tok.chat_template = CHAT
    tok.save_pretrained(str(base))
    template = PromptTemplate.for_tokenizer(tok)
    assert template.style == "chat"
    ds = rag_dataset(tok, 8, 2)
    train(ds, base, TrainConfig(max_steps=1, batch_size=4), tmp_path / "adapter", template=template)
    saved_tok = load_tokenizer(tmp_path / "adapter")
    saved = PromptTemplate.load(tmp_path / "adapter")
    assert saved_tok.chat_template == CHAT and saved == template
    row = ds["train"][0]
    assert encode_example(saved_tok, row["prompt"], row["completion"], saved) == encode_example(
        tok, row["prompt"], row["completion"], template
    )
    # a dataset rendered with a chat template cannot silently train a base without it
    with pytest.raises(RagtuneError, match="chat template"):
        train(ds, tiny_model_dir, TrainConfig(max_steps=1), tmp_path / "x", template=template)


def test_max_minutes_stops_and_saves(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.train import train

    res = train(rag_dataset(tokenizer, 16, 4), tiny_model_dir, TrainConfig(max_minutes=1e-9, batch_size=4), tmp_path)
    assert res.stop_reason == "max_minutes" and res.steps == 1
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_eval_checkpoints_and_early_stopping(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.train import train

    ds = rag_dataset(tokenizer, 16, 4)
    res = train(
        ds,
        tiny_model_dir,
        TrainConfig(max_steps=12, batch_size=4, lr=0.5, eval_steps=1, save_steps=2, early_stopping_patience=2),
        tmp_path,
    )
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert all("eval_loss" in r for r in log)
    assert res.stop_reason == "early_stopping" and res.steps < 12  # lr 0.5 diverges
    best = json.loads(json.dumps(min(r["eval_loss"] for r in log)))
    assert res.best_eval_loss == pytest.approx(min(best, res.eval_loss))
    assert (tmp_path / "checkpoints" / "best" / "adapter_config.json").is_file()
    assert (tmp_path / "checkpoints" / "last" / "trainer_state.pt").is_file()


def test_full_fine_tuning_and_dora_run(tiny_model_dir, tokenizer, tmp_path):
    from ragtune.train import train

    ds = rag_dataset(tokenizer, 8, 2)
    full = train(ds, tiny_model_dir, TrainConfig(method="full", max_steps=2, batch_size=4), tmp_path / "full")
    assert full.trainable_params == full.total_params and (tmp_path / "full" / "config.json").is_file()
    dora = train(
        ds,
        tiny_model_dir,
        TrainConfig(
            max_steps=2,
            batch_size=4,
            use_dora=True,
            use_rslora=True,
            target_modules=["q_proj", "v_proj"],
            gradient_checkpointing=True,
        ),
        tmp_path / "dora",
    )
    cfg = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    assert cfg["use_dora"] and cfg["use_rslora"] and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    assert dora.trainable_params < full.trainable_params
    with pytest.raises(RagtuneError, match="target modules"):
        train(ds, tiny_model_dir, TrainConfig(max_steps=1, target_modules=["nope"]), tmp_path / "bad")


def test_trackers_only_when_asked_and_named_when_missing(tiny_model_dir, tokenizer, tmp_path):
    import importlib.util

    from ragtune.train import train

    ds = rag_dataset(tokenizer, 8, 2)
    train(ds, tiny_model_dir, TrainConfig(max_steps=1, batch_size=4), tmp_path / "plain")
    assert not (tmp_path / "plain" / "tensorboard").exists()
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(RagtuneError, match="pip install tensorboard"):
            train(ds, tiny_model_dir, TrainConfig(max_steps=1, batch_size=4, report_to="tensorboard"), tmp_path / "tb")
    else:
        train(ds, tiny_model_dir, TrainConfig(max_steps=1, batch_size=4, report_to="tensorboard"), tmp_path / "tb")
        assert (tmp_path / "tb" / "tensorboard").is_dir()


def test_a_rerun_resumes_by_default_and_restart_starts_over(tiny_model_dir, tokenizer, tmp_path, capsys):
    from ragtune.train import train
    from ragtune.train.engine import STATE_FILE

    ds = rag_dataset(tokenizer, 16, 4)
    cfg = dict(max_steps=4, batch_size=4, lr=3e-3, lora_dropout=0.1, save_steps=100)
    train(ds, tiny_model_dir, TrainConfig(**cfg), tmp_path / "full")
    train(ds, tiny_model_dir, TrainConfig(max_minutes=1e-9, **cfg), tmp_path / "cut")
    ckpts = tmp_path / "cut" / "checkpoints"
    # a kill between save_checkpoint's two renames leaves only last.old: still resumed
    (ckpts / "last").rename(ckpts / "last.old")
    with open(tmp_path / "cut" / "training_log.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a row torn by the kill
    resumed = train(ds, tiny_model_dir, TrainConfig(**cfg), tmp_path / "cut")  # same command, no flag
    assert resumed.steps == 4 and "resuming from" in capsys.readouterr().err
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert (tmp_path / "cut" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "full" / "adapter_model.safetensors"
    ).read_bytes()
    assert not list((tmp_path / "cut").glob(".save-*"))

    # other settings: the checkpoint is not resumed
    train(ds, tiny_model_dir, TrainConfig(max_minutes=1e-9, **cfg), tmp_path / "cut")
    again = train(ds, tiny_model_dir, TrainConfig(**{**cfg, "lr": 1e-3}), tmp_path / "cut")
    assert again.steps == 4 and "other settings" in capsys.readouterr().err
    train(ds, tiny_model_dir, TrainConfig(max_minutes=1e-9, **cfg), tmp_path / "cut")
    assert (ckpts / "last" / STATE_FILE).is_file()
    train(ds, tiny_model_dir, TrainConfig(resume=False, **cfg), tmp_path / "cut")
    assert "resuming" not in capsys.readouterr().err
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_a_checkpoint_holding_a_pickled_callable_is_refused(tiny_model_dir, tokenizer, tmp_path):
    import os

    from ragtune.train import train
    from ragtune.train.engine import STATE_FILE

    ds = rag_dataset(tokenizer, 16, 4)
    cfg = dict(max_steps=3, batch_size=4, save_steps=100)
    train(ds, tiny_model_dir, TrainConfig(max_minutes=1e-9, **cfg), tmp_path)
    state_file = tmp_path / "checkpoints" / "last" / STATE_FILE
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "hook": os.system}, state_file)  # would run on load with weights_only=False
    with pytest.raises(RagtuneError, match=r"not a plain trainer state.*refusing to load it"):
        train(ds, tiny_model_dir, TrainConfig(**cfg), tmp_path)
