"""`ragtune export`: merge a LoRA adapter into a 16-bit base and save a standalone model."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ragtune.errors import RagtuneError
from ragtune.prompts import PROMPT_FILE


def export_merged(adapter: str | Path, out: str | Path, base_model: str | None = None, merge: bool = True,
                  dtype: torch.dtype | None = None) -> Path:
    """Merge `adapter` into its base (de-quantised, 16-bit: bf16, or fp16 on GPUs without bf16)
    and save safetensors, tokenizer, generation config and the prompt template to `out`.
    With `merge=False` the 16-bit base is saved with the adapter beside it in `out/adapter`."""
    from peft import PeftModel

    from ragtune.adapter_check import check_adapter_fits
    from ragtune.models import base_model_of, load_causal_lm, load_tokenizer

    adapter, out = Path(adapter), Path(out)
    if not (adapter / "adapter_config.json").is_file():
        raise RagtuneError(f"{adapter} holds no adapter_config.json; pass the folder `ragtune train` wrote")
    base = base_model or base_model_of(adapter)
    check_adapter_fits(adapter, base)
    if dtype is None:
        gpu_fp16 = torch.cuda.is_available() and not torch.cuda.is_bf16_supported()
        dtype = torch.float16 if gpu_fp16 else torch.bfloat16
    tok = load_tokenizer(adapter)
    model = load_causal_lm(base, tok, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    if merge:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    else:
        shutil.copytree(adapter, out / "adapter", dirs_exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.save_pretrained(str(out))
    if (adapter / PROMPT_FILE).is_file():
        shutil.copyfile(adapter / PROMPT_FILE, out / PROMPT_FILE)
    return out
