"""`ragtune export`: merge a LoRA adapter into a 16-bit base and save a standalone model."""

from __future__ import annotations

import shutil
from pathlib import Path

from ragtune.abstain import ABSTAIN_FILE
from ragtune.errors import RagtuneError
from ragtune.prompts import PROMPT_FILE


def export_merged(
    adapter: str | Path, out: str | Path, base_model: str | None = None, merge: bool = True, precision: str = "auto"
) -> Path:
    """Merge `adapter` into its base and save safetensors, tokenizer, generation config, the prompt
    template and the abstention rule to `out`. The merge is `models.load_model`'s, at the dtype
    eval runs (bf16 here, fp16 on GPUs without bf16), so the export holds the weights eval scored.
    With `merge=False` the base is saved with the adapter beside it in `out/adapter`."""
    from ragtune.adapter_check import check_adapter_fits
    from ragtune.models import base_model_of, load_causal_lm, load_model, load_tokenizer, pick_dtype

    adapter, out = Path(adapter), Path(out)
    if not (adapter / "adapter_config.json").is_file():
        raise RagtuneError(f"{adapter} holds no adapter_config.json; pass the folder `ragtune train` wrote")
    base = base_model or base_model_of(adapter)
    check_adapter_fits(adapter, base)
    if merge:
        model, tok = load_model(base, adapter, precision=precision)
    else:
        tok = load_tokenizer(adapter)
        model = load_causal_lm(base, tok, dtype=pick_dtype(precision))
    out.mkdir(parents=True, exist_ok=True)
    if not merge:
        shutil.copytree(adapter, out / "adapter", dirs_exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.save_pretrained(str(out))
    for name in (PROMPT_FILE, ABSTAIN_FILE):
        if (adapter / name).is_file():
            shutil.copyfile(adapter / name, out / name)
    return out
