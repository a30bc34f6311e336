"""`ragtune export`: the merged 16-bit model generates what base + adapter generates."""

from __future__ import annotations

import pytest
import torch
from train_helpers import rag_dataset

from ragtune.config import TrainConfig
from ragtune.errors import RagtuneError
from ragtune.prompts import PromptTemplate, prompt_ids

pytestmark = pytest.mark.slow


def test_merged_model_generates_the_same_tokens_as_base_plus_adapter(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from ragtune.generation import generate
    from ragtune.models import load_model
    from ragtune.train import export_merged, train

    ds = rag_dataset(tokenizer, 16, 4)
    train(ds, tiny_model_dir, TrainConfig(max_steps=8, batch_size=4, lr=1e-2, lora_dropout=0.0), tmp_path / "adapter")
    out = export_merged(tmp_path / "adapter", tmp_path / "merged")
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "ragtune_prompt.json"):
        assert (out / name).is_file(), name
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert merged.dtype == torch.bfloat16  # a 16-bit base
    tuned, tok = load_model(tiny_model_dir, tmp_path / "adapter", precision="bf16")
    merged_m, _ = load_model(out, precision="bf16")
    base, _ = load_model(tiny_model_dir, precision="bf16")
    template = PromptTemplate.load(out)
    prompts = [prompt_ids(tok, r["prompt"], template) for r in ds["test"]]

    def greedy(model) -> list[list[int]]:  # 12 tokens each, past EOS, so every position is compared
        return [
            model.generate(
                torch.tensor([p]), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id
            )[0, len(p) :].tolist()
            for p in prompts
        ]

    want = greedy(tuned)
    assert greedy(merged_m) == want
    with torch.no_grad():  # the merge carried the adapter: merged logits sit by tuned, away from base
        x = torch.tensor([prompts[0]])
        lt, lm, lb = (m(x).logits.float() for m in (tuned, merged_m, base))
    assert (lm - lt).abs().max() * 4 < (lb - lt).abs().max()
    assert generate(merged_m, tok, prompts, max_new_tokens=12) == generate(tuned, tok, prompts, max_new_tokens=12)


def test_export_of_a_folder_without_adapter_names_the_fix(tmp_path):
    from ragtune.train import export_merged

    with pytest.raises(RagtuneError, match="adapter_config.json"):
        export_merged(tmp_path, tmp_path / "out")
