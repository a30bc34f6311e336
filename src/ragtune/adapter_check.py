"""Does an adapter fit the base model it is about to be loaded on?

An adapter trained on another base fails late and badly: a base of other dimensions gives a
100-line size-mismatch traceback inside PEFT, and a base of the same shape but another
vocabulary loads fine and answers in nonsense. `check_adapter_fits` compares, from the files
alone (no weights are loaded), the adapter's tensor shapes with the base's layer widths and the
tokenizer saved with the adapter with the base's, and raises one line naming the difference.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.modelstore import resolve_model

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def check_adapter_fits(adapter: str | Path, base: str | Path) -> None:
    """Raise a RagtuneError when the PEFT adapter in `adapter` was not trained on `base`'s shape
    or vocabulary. Full fine-tuned model folders and bases whose config cannot be read pass."""
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        return
    from ragtune.models import TRAIN_INFO  # here, not at the top: this module loads without torch

    fix = f"pass the --base-model it was trained on ({_recorded_base(adapter) or f'see its {TRAIN_INFO}'})"
    base = resolve_model(base)  # a named model or GGUF file: its converted folder
    config = _base_config(base)
    weights = adapter / "adapter_model.safetensors"
    if config is not None and weights.is_file():
        problem = _shape_problem(safetensors_shapes(weights), config)
        if problem:
            raise RagtuneError(f"adapter {adapter} does not fit base model {base}: {problem}; {fix}")
    if (adapter / "tokenizer_config.json").is_file():
        problem = _vocab_problem(adapter, base)
        if problem:
            raise RagtuneError(f"adapter {adapter} was trained with another vocabulary than {base} ({problem}); {fix}")


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header (8-byte length, then JSON), without the data."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _recorded_base(adapter: Path) -> str | None:
    from ragtune.models import TRAIN_INFO

    for name, key in ((TRAIN_INFO, "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        try:
            value = json.loads((adapter / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value:
            return value
    return None


def _base_config(base: str | Path) -> dict[str, Any] | None:
    local = Path(base) / "config.json"
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8"))
    try:  # a hub id: only what is cached or reachable; otherwise loading reports it
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(base)).to_dict()
    except Exception:  # noqa: BLE001 - no config, no check; load_model gives the real error
        return None


def _shape_problem(shapes: dict[str, list[int]], config: dict[str, Any]) -> str | None:
    cfg = config.get("text_config") or config
    hidden = cfg.get("hidden_size")
    heads = cfg.get("num_attention_heads")
    if not hidden or not heads:
        return None
    head_dim = cfg.get("head_dim") or hidden // heads
    widths = {
        hidden,
        cfg.get("intermediate_size"),
        heads * head_dim,
        (cfg.get("num_key_value_heads") or heads) * head_dim,
        cfg.get("vocab_size"),
    }
    layers = cfg.get("num_hidden_layers")
    for key, shape in sorted(shapes.items()):
        layer = _LAYER.search(key)
        if layer and layers and int(layer[1]) >= layers:
            return f"its tensor {key} is for layer {layer[1]}, the base has {layers} layers"
        if len(shape) != 2:
            continue
        width = shape[1] if ".lora_A." in key else shape[0] if ".lora_B." in key else None
        if width is not None and width not in widths:
            return f"its tensor {key} has shape {shape}, the base's layers are {sorted(w for w in widths if w)} wide"
    return None


def _vocab_problem(adapter: Path, base: str | Path) -> str | None:
    from ragtune.models import load_tokenizer

    mine = load_tokenizer(adapter).get_vocab()
    theirs = load_tokenizer(base).get_vocab()
    differ = sum(1 for tok, i in theirs.items() if mine.get(tok) != i)
    if differ:
        return f"{differ} of the base's {len(theirs)} tokens differ; the adapter's tokenizer has {len(mine)}"
    return None
