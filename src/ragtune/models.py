"""Loading base models and adapters, choosing device and dtype, and `ragtune tiny-model`.

`load_model` takes any local Hugging Face causal-LM folder or hub id. `make_tiny_model`
builds the offline default: a byte-level BPE tokenizer trained on the corpus and a small
Llama pretrained on it for a few minutes with a plain PyTorch loop around the shared
optimizer step of `training_core` (the HF Trainer's per-step overhead dominates at this size).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ragtune.config import TinyModelConfig
from ragtune.errors import RagtuneError
from ragtune.training_core import OptimizerStep, lr_schedule

# Words of the prompt template go into the tokenizer's training text, so the headings the
# model sees in every example are a few tokens each rather than many byte pieces.
TEMPLATE_TEXT = (
    "### Instruction:\n### Context:\n### Question:\n### Answer:\n"
    "Answer the question using only the passages in the context. Give a short answer "
    "copied from the passages. If the passages do not contain the answer, reply exactly: "
    "Sorry. I cannot find the answer based on the context.\n"
)
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


# ---------------------------------------------------------------- hardware
def cuda_available() -> bool:
    return torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 autocast is several times faster than fp32 matmul."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if cuda_available() else "cpu")


def pick_dtype(precision: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """bf16 where the hardware runs it natively, else fp32; fp16 never on CPU."""
    device = device or pick_device()
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        if device.type != "cuda":
            raise RagtuneError("fp16 needs a GPU; use precision 'bf16' or 'fp32' on CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def require_gpu(feature: str, requirement: str) -> None:
    """GPU-only options fail early with one clear line instead of deep inside a library."""
    if not cuda_available():
        raise RagtuneError(f"{feature} needs {requirement}; no CUDA GPU is visible here")


# ---------------------------------------------------------------- loading
TRAIN_INFO = "ragtune_train.json"  # written by `ragtune train` beside the adapter


def is_tuned_dir(path: str | Path) -> bool:
    """A folder `ragtune train` wrote: a PEFT adapter, or a fully fine-tuned model."""
    p = Path(path)
    return (p / "adapter_config.json").is_file() or ((p / "config.json").is_file() and (p / TRAIN_INFO).is_file())


def base_model_of(adapter: str | Path) -> str:
    """The base model an adapter was trained on (ragtune_train.json, else PEFT's record).

    A recorded relative path that does not resolve from here falls back to the run's
    `base_model/` beside the adapter, so a run folder can be moved or copied.
    """
    recorded = []
    for name, key in ((TRAIN_INFO, "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        f = Path(adapter) / name
        try:
            value = json.loads(f.read_text(encoding="utf-8")).get(key) if f.is_file() else None
        except json.JSONDecodeError:
            value = None
        if isinstance(value, str) and value:
            recorded.append(value)
    from ragtune.modelstore import is_named_or_gguf

    for value in recorded:
        if Path(value).exists() or is_named_or_gguf(value):
            return value
    sibling = Path(adapter).parent / "base_model"
    if (sibling / "config.json").is_file():
        return str(sibling)
    if recorded:
        return recorded[0]  # a hub id
    raise RagtuneError(f"cannot tell the base model of '{adapter}'; pass --base-model")


def load_tokenizer(name_or_path: str | Path) -> Any:
    from transformers import AutoTokenizer

    from ragtune.modelstore import resolve_model

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    except (OSError, ValueError) as e:
        raise RagtuneError(
            f"cannot load a tokenizer from '{name_or_path}' ({type(e).__name__}); pass a local "
            "model folder, a hub id reachable from here, or build one with `ragtune tiny-model`"
        ) from None
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # A pad distinct from EOS keeps the EOS label trainable and generation stoppable;
        # a new token makes the model's embeddings grow by one (see load_model).
        if tok.unk_token is not None and tok.unk_token_id != tok.eos_token_id:
            tok.pad_token = tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def load_causal_lm(name_or_path: str | Path, tokenizer: Any, **kwargs: Any) -> Any:
    """The causal LM behind a folder, hub id, GGUF file or named model, its embeddings grown to
    the tokenizer when `load_tokenizer` added a pad token."""
    from transformers import AutoModelForCausalLM

    from ragtune.modelstore import resolve_model

    source = resolve_model(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise RagtuneError(
            f"cannot load a causal LM from '{name_or_path}' ({type(e).__name__}); pass a local model "
            "folder, a .gguf file, a named model (`ragtune models`) or a hub id"
        ) from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def load_model(
    name_or_path: str | Path,
    adapter: str | Path | None = None,
    precision: str = "auto",
    device: str | None = None,
) -> tuple[Any, Any]:
    """A causal LM (with an optional PEFT adapter merged into it) and its tokenizer, ready for
    inference.

    `adapter` is what `ragtune train` wrote: a PEFT adapter folder, or, after full
    fine-tuning, a whole model folder, which then replaces the base. The adapter is merged into
    the weights at the inference dtype: generation skips the LoRA side path, and every export
    writes exactly the weights that eval, ask and serve use.
    """
    dev = pick_device(device)
    if adapter and (Path(adapter) / "config.json").is_file() and not (Path(adapter) / "adapter_config.json").is_file():
        name_or_path, adapter = adapter, None  # a fully fine-tuned model
    tok = load_tokenizer(adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else name_or_path)
    model = load_causal_lm(name_or_path, tok, dtype=pick_dtype(precision, dev))
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise RagtuneError(
                f"'{adapter}' holds neither an adapter nor a model; pass the folder `ragtune train` wrote (RUN/adapter)"
            )
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.to(dev).eval()
    return model, tok


# ---------------------------------------------------------------- tiny model
def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # A space before every text, as before a word mid-sentence: an answer encoded on its own
    # then has the ids its words have in a passage, so copying a span is token-exact.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_with_template(texts), trainer=trainer)
    bos = tokenizer.token_to_id(SPECIAL_TOKENS["bos_token"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    fast.model_max_length = 2048
    fast.save_pretrained(str(out_dir))
    return fast


def _with_template(texts: Iterable[str]) -> Iterable[str]:
    yield TEMPLATE_TEXT * 20
    yield from texts


def tiny_llama(cfg: TinyModelConfig, tokenizer: Any) -> Any:
    """A small Llama of `cfg`'s shape for `tokenizer`, seeded with `cfg.seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=max(2048, cfg.seq_len),
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def make_tiny_model(texts: Sequence[str], out_dir: str | Path, cfg: TinyModelConfig) -> dict:
    """Train a tokenizer on `texts`, build a small Llama and pretrain it; save to `out_dir`."""
    if not texts:
        raise RagtuneError("the corpus for tiny-model holds no text; point --corpus at documents")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, cfg.vocab_size, out)
    model = tiny_llama(cfg, tokenizer)
    stats = pretrain_causal_lm(model, tokenizer, texts, cfg)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    info = {"parameters": sum(p.numel() for p in model.parameters()), **stats}
    (out / "ragtune_tiny_model.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


PRETRAIN_WARMUP_STEPS = 50


def token_stream(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def pretrain_causal_lm(model: Any, tokenizer: Any, texts: Sequence[str], cfg: TinyModelConfig) -> dict:
    """Causal-LM training on random windows of the corpus, within a wall-clock budget.

    The same path adapts a real model to a domain (`ragtune pretrain`).
    """
    device = pick_device()
    model.to(device).train()
    stream = token_stream(tokenizer, texts)
    n_val = min(len(stream) // 20, 20_000)
    val, train = stream[:n_val], stream[n_val:]
    if len(train) <= cfg.seq_len + 1:
        raise RagtuneError("the corpus is too small to pretrain on; give it more text")
    rng = random.Random(cfg.seed)
    # betas (0.9, 0.95): the usual choice for LM pretraining from scratch; 50 warmup steps, then constant
    # (the run's length is a time budget, unknown in advance)
    step_core = OptimizerStep(
        model.parameters(),
        lr=cfg.lr,
        betas=(0.9, 0.95),
        weight_decay=0.01,
        schedule=lr_schedule("constant", PRETRAIN_WARMUP_STEPS),
        max_grad_norm=1.0,
        device=device,
        dtype=pick_dtype("auto", device),
    )

    def window_loss(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone()).loss
        return loss, loss.detach()

    step, t0, losses = 0, time.perf_counter(), []
    while time.perf_counter() - t0 < cfg.minutes * 60 and (cfg.max_steps is None or step < cfg.max_steps):
        starts = [rng.randrange(0, len(train) - cfg.seq_len - 1) for _ in range(cfg.batch_size)]
        batch = torch.stack([train[s : s + cfg.seq_len + 1] for s in starts]).to(device)
        losses.extend(float(loss) for loss in step_core.run([batch], window_loss))
        step += 1
    seconds = time.perf_counter() - t0
    model.eval()
    return {
        "steps": step,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(step * cfg.batch_size * cfg.seq_len / max(seconds, 1e-9)),
        "train_loss": round(sum(losses[-20:]) / max(len(losses[-20:]), 1), 4),
        "val_loss": round(heldout_loss(model, val, cfg.seq_len, device), 4) if n_val > cfg.seq_len else None,
    }


@torch.no_grad()
def heldout_loss(model: Any, stream: torch.Tensor, seq_len: int, device: torch.device) -> float:
    windows = stream[: (len(stream) // seq_len) * seq_len].view(-1, seq_len)[:32].to(device)
    if len(windows) == 0:
        return math.nan
    return float(model(input_ids=windows, labels=windows.clone()).loss)
