"""`ragtune export --gguf`: a tuned tiny Llama written as GGUF reads back through transformers'
GGUF loader with the same weights, the same greedy answers and the same tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from train_helpers import rag_rows

from ragtune.config import TrainConfig
from ragtune.prompts import PromptTemplate, prompt_ids

pytestmark = pytest.mark.slow

N_PROMPTS = 20
NEW_TOKENS = 12


def load_gguf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def greedy(model, prompts: list[list[int]], pad_id: int) -> list[list[int]]:
    """12 tokens per prompt, past EOS, so every position is compared."""
    return [model.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                           pad_token_id=pad_id)[0, len(p):].tolist() for p in prompts]


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, tokenizer, tmp_path_factory):
    """A LoRA adapter on the tiny Llama, merged in f32: the model every export is compared with."""
    from datasets import Dataset, DatasetDict

    from ragtune.models import load_model
    from ragtune.train import train

    rows = rag_rows(tokenizer, 24, seed=1)
    ds = DatasetDict({"train": Dataset.from_list(rows[:16]), "validation": Dataset.from_list(rows[16:])})
    adapter = tmp_path_factory.mktemp("gguf") / "adapter"
    train(ds, tiny_model_dir, TrainConfig(max_steps=8, batch_size=4, lr=1e-2, lora_dropout=0.0), adapter)
    model, tok = load_model(tiny_model_dir, adapter, precision="fp32", device="cpu")
    template = PromptTemplate.find(adapter, tiny_model_dir) or PromptTemplate.for_tokenizer(tok)
    prompts = [prompt_ids(tok, r["prompt"], template) for r in rag_rows(tok, N_PROMPTS, seed=3)]
    return {"adapter": adapter, "model": model.merge_and_unload().eval(), "tok": tok, "prompts": prompts,
            "template": template}


def test_f16_export_generates_the_merged_models_greedy_tokens(tuned, tmp_path):
    from ragtune.gguf_export import write_gguf_from_model

    path = write_gguf_from_model(tuned["model"], tuned["tok"], tmp_path / "tuned-f16.gguf", "f16")
    back = load_gguf_model(path)
    assert back.config.tie_word_embeddings and back.config.num_hidden_layers == tuned["model"].config.num_hidden_layers
    pad = tuned["tok"].pad_token_id
    assert greedy(back, tuned["prompts"], pad) == greedy(tuned["model"], tuned["prompts"], pad)


def test_q8_0_export_keeps_logits_within_tolerance_and_greedy_answers(tuned, tmp_path):
    from ragtune.gguf_export import write_gguf_from_model

    path = write_gguf_from_model(tuned["model"], tuned["tok"], tmp_path / "tuned-q8_0.gguf", "q8_0")
    back = load_gguf_model(path)
    pad = tuned["tok"].pad_token_id
    want = greedy(tuned["model"], tuned["prompts"], pad)
    got = greedy(back, tuned["prompts"], pad)
    assert sum(g == w for g, w in zip(got, want, strict=True)) >= N_PROMPTS - 1
    with torch.no_grad():  # per-token logits along the merged model's own greedy path
        for p, w in zip(tuned["prompts"], want, strict=True):
            x = torch.tensor([p + w])
            ref, q8 = tuned["model"](x).logits, back(x).logits
            assert (q8 - ref).abs().max() <= Q8_TOLERANCE
            assert (q8.log_softmax(-1) - ref.log_softmax(-1)).abs().max() <= Q8_TOLERANCE


# q8_0 stores each block of 32 weights as 8-bit steps of one f16 scale. On the tuned tiny Llama
# every logit and log-probability stays within 0.1 of the f32 merged model's (measured: 0.033).
Q8_TOLERANCE = 0.1


# ---------------------------------------------------------------- from folders, through the CLI
def ragtune_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m ragtune` on this checkout's sources, whatever copy is installed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "ragtune", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_cli_exports_the_adapter_as_gguf_and_a_modelfile(tuned, tmp_path):
    out = tmp_path / "ollama" / "tuned.gguf"
    p = ragtune_cli("export", "--adapter", str(tuned["adapter"]), "--gguf", str(out), "--ollama")
    assert p.returncode == 0, p.stderr
    modelfile = (out.parent / "Modelfile").read_text(encoding="utf-8")
    assert modelfile.startswith("FROM ./tuned.gguf\n") and tuned["template"].system in modelfile
    back = load_gguf_model(out)
    pad = tuned["tok"].pad_token_id
    assert greedy(back, tuned["prompts"][:5], pad) == greedy(tuned["model"], tuned["prompts"][:5], pad)


@pytest.mark.parametrize("args, message", [
    (["--gguf", "x.gguf"], "--adapter"),
    (["--adapter", "a", "--ollama", "--out", "o"], "--gguf"),
    (["--adapter", "/nonexistent", "--gguf", "x.gguf"], "adapter_config.json"),
    (["--adapter", "/nonexistent", "--gguf", "x.gguf", "--gguf-type", "q4_0"], "f16, bf16, q8_0"),
])
def test_bad_export_options_are_one_line_naming_the_fix(args, message):
    p = ragtune_cli("export", *args)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("[transformers]")]
    assert p.returncode == 2 and len(lines) == 1 and message in lines[0], p.stderr


def test_other_architectures_are_refused_naming_the_supported_ones(tmp_path):
    from transformers import GPT2Config

    from ragtune.errors import RagtuneError
    from ragtune.gguf_export import write_gguf

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(str(tmp_path / "gpt2"))
    with pytest.raises(RagtuneError, match=r"supports llama, qwen2 models .*not 'gpt2'"):
        write_gguf(tmp_path / "gpt2", tmp_path / "x.gguf")
