"""`ragtune export --gguf`: a tuned model as one GGUF file for llama.cpp, Ollama and LM Studio.

Pure Python on the `gguf` package: tensor names come from its `TensorNameMap`, q8_0 blocks
from `gguf.quants`. The layout follows llama.cpp's `convert_hf_to_gguf.py` where readers
depend on it (Q/K rows permuted for llama, no `output.weight` when the embeddings are tied,
1-D norms kept in f32), so transformers' GGUF loader and llama.cpp both read the file back.
The tokenizer (tokens, types, merges, special ids) and the chat template travel inside it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ragtune.abstain import RefusalRule
from ragtune.errors import RagtuneError
from ragtune.modelstore import ABSTAIN_KEY, PROMPT_KEY, resolve_model
from ragtune.prompts import PromptTemplate

log = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "bf16", "q8_0")
# Hugging Face `model_type` -> GGUF architecture name. Both read back through transformers'
# GGUF loader and run in llama.cpp; SmolLM2, Llama 3 and ragtune's tiny models are `llama`.
SUPPORTED = {"llama": "llama", "qwen2": "qwen2"}
Q8_BLOCK = 32  # q8_0 quantises rows in blocks of 32 values


def write_gguf_from_model(
    model: Any,
    tokenizer: Any,
    out_path: str | Path,
    gguf_type: str = "f16",
    template: PromptTemplate | None = None,
    rule: RefusalRule | None = None,
) -> Path:
    """Write an in-memory Hugging Face causal LM (merged, no adapter) and its tokenizer as GGUF,
    with ragtune's prompt template and abstention rule as metadata for ragtune's GGUF import."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise RagtuneError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}; pick one of those")
    config = model.config
    arch = _arch_of(config)
    n_vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_vocab:
        raise RagtuneError(
            f"the tokenizer has {len(tokenizer)} tokens but the model {n_vocab} embeddings; "
            "resize the model's embeddings to the tokenizer before exporting"
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Tensors spill to a temporary file past 256 MB, so a 7B export does not hold a second copy in memory.
    writer = gguf.GGUFWriter(str(out), arch, use_temp_file=True)
    _add_hparams(writer, config, arch, n_vocab, gguf_type)
    add_tokenizer(writer, tokenizer, n_vocab)
    if template is not None:
        writer.add_string(PROMPT_KEY, json.dumps(asdict(template)))
    if rule is not None:
        writer.add_string(ABSTAIN_KEY, json.dumps(asdict(rule)))
    for name, data, raw_dtype in _tensors(model, arch, gguf_type):
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# ---------------------------------------------------------------- model
def _arch_of(config: Any) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise RagtuneError(
            f"GGUF export supports {', '.join(SUPPORTED)} models (SmolLM2, Llama, Qwen2, ragtune's "
            f"tiny models), not '{model_type}'; export a merged safetensors folder instead"
        )
    return SUPPORTED[model_type]


def _rope(config: Any) -> tuple[float, str]:
    """RoPE base and type, from transformers 5's `rope_parameters` or the older flat fields."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return float(theta), params.get("rope_type") or params.get("type") or "default"


def _add_hparams(writer: Any, config: Any, arch: str, n_vocab: int, gguf_type: str) -> None:
    import gguf

    theta, rope_type = _rope(config)
    if rope_type == "dynamic":
        # Dynamic NTK only changes positions past max_position_embeddings; llama.cpp has no such
        # mode, so the file states that length as the context and behaves identically within it.
        log.warning(
            "dynamic RoPE scaling is not in GGUF: the export is exact up to %d tokens", config.max_position_embeddings
        )
    elif rope_type != "default":
        raise RagtuneError(
            f"RoPE scaling '{rope_type}' is not exported to GGUF yet; export a merged "
            "safetensors folder (ragtune export --out) and convert it with llama.cpp"
        )
    heads = config.num_attention_heads
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "ragtune")).name or "ragtune")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    if arch == "llama":  # transformers reads it back as head_dim for llama only
        writer.add_rope_dimension_count(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(n_vocab)
    file_types = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_file_type(file_types[gguf_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def permute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's rotary layout: within each head, interleave the two halves HF rotates.

    The inverse of transformers' `LlamaTensorProcessor._reverse_permute_weights`.
    """
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensors(model: Any, arch: str, gguf_type: str) -> Iterator[tuple[str, np.ndarray, Any]]:
    """(GGUF name, data, raw dtype or None) for every weight the GGUF reader expects."""
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # readers tie output to token_embd when output.weight is absent
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from rope.freq_base
            raise RagtuneError(f"no GGUF name for the tensor '{hf_name}'; this model's layout is not supported")
        data = tensor.detach().float()
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            data = permute_qk(data, heads if "attn_q" in name else kv_heads)
        yield (name, *_encode(data.cpu().numpy(), gguf_type))


def _encode(data: np.ndarray, gguf_type: str) -> tuple[np.ndarray, Any]:
    """Matrices in the chosen type; vectors (norms, biases) in f32, as llama.cpp keeps them."""
    import gguf

    if data.ndim < 2:
        return data.astype(np.float32), None
    if gguf_type == "f16":
        return data.astype(np.float16), None
    if gguf_type == "q8_0" and data.shape[-1] % Q8_BLOCK:
        return data.astype(np.float16), None  # rows not a whole number of blocks: keep f16
    qtype = gguf.GGMLQuantizationType.BF16 if gguf_type == "bf16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


# ---------------------------------------------------------------- tokenizer
def add_tokenizer(writer: Any, tokenizer: Any, n_vocab: int) -> None:
    """The byte-level BPE tokenizer as llama.cpp's `gpt2` model: tokens, types, merges, ids, template."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre_tokenizers = _pre_tokenizers(spec)
    byte_level = [p for p in pre_tokenizers if p.get("type") == "ByteLevel"]
    if spec["model"].get("type") != "BPE" or not byte_level:
        raise RagtuneError(
            "GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2, Llama 3 and "
            "Qwen2 use); this tokenizer is not one, so export a merged safetensors folder instead"
        )
    tokens, types = vocab_tokens(tokenizer, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(pre_tokenizers))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])])
    for key, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("unk_token_id", writer.add_unk_token_id),
        ("pad_token_id", writer.add_pad_token_id),
    ):
        if getattr(tokenizer, key, None) is not None:
            add(getattr(tokenizer, key))
    add_bos, add_eos = _adds_special(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    prefix_space = adds_prefix_space(tokenizer)
    if prefix_space:
        # llama.cpp's BPE ignores this flag and transformers' GGUF tokenizer drops it: text is then
        # split without the leading space. Recorded so ragtune's own import can restore it.
        log.warning(
            "the tokenizer adds a prefix space, which llama.cpp's BPE does not: the Modelfile's TEMPLATE "
            "starts with one, and a prompt given to llama.cpp directly needs a leading space"
        )
    writer.add_add_space_prefix(prefix_space)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def adds_prefix_space(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a space before text, as ragtune's tiny tokenizers do."""
    pre = _pre_tokenizers(json.loads(tokenizer.backend_tokenizer.to_str()))
    return any(p.get("type") == "ByteLevel" and p.get("add_prefix_space") for p in pre)


def _pre_tokenizers(spec: dict) -> list[dict]:
    pre = spec.get("pre_tokenizer") or {}
    return pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]


def pre_tokenizer_name(pre_tokenizers: list[dict]) -> str:
    """llama.cpp's name for how text is split before BPE, read from the tokenizer's own pipeline.

    A `Split` regex is matched against the ones transformers' GGUF loader knows by name, so the
    file reloads with the same split; a plain GPT-2 ByteLevel is `gpt-2`, with single digits `smollm`.
    """
    splits = [p["pattern"].get("Regex") for p in pre_tokenizers if p.get("type") == "Split"]
    if splits:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

        named = [name for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex == splits[0]]
        if named:
            return named[0]
        log.warning("unknown pre-tokenizer split %r: writing 'default'", splits[0])
        return "default"
    if any(p.get("type") == "Digits" and p.get("individual_digits") for p in pre_tokenizers):
        return "smollm"
    return "gpt-2"


def vocab_tokens(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    """Every id's token and llama.cpp token type; ids the tokenizer lacks become unused `[PAD{id}]`."""
    from gguf import TokenType

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {tok.content: tok.special for tok in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(token)
            special = token in added and (added[token] or token in tokenizer.all_special_tokens)
            types.append(
                TokenType.CONTROL if special else TokenType.USER_DEFINED if token in added else TokenType.NORMAL
            )
    return tokens, [int(t) for t in types]


def _adds_special(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding text adds BOS / EOS, found by encoding it (post-processors vary)."""
    with_special = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    add_bos = bool(with_special) and with_special[0] == tokenizer.bos_token_id and with_special[:1] != bare[:1]
    add_eos = bool(with_special) and with_special[-1] == tokenizer.eos_token_id and with_special[-1:] != bare[-1:]
    return add_bos, add_eos


# ---------------------------------------------------------------- from a folder
def write_gguf(
    model_dir_or_adapter: str | Path,
    out_path: str | Path,
    gguf_type: str = "f16",
    ollama: bool = False,
    base_model: str | None = None,
) -> Path:
    """Export an adapter (merged into its base first) or a full model folder as one GGUF;
    with `ollama`, also a `Modelfile` beside it. Returns the GGUF's path."""
    if gguf_type not in GGUF_TYPES:
        raise RagtuneError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}; pick one of those")
    model, tok, template, rule = load_for_export(Path(model_dir_or_adapter), base_model)
    path = write_gguf_from_model(model, tok, out_path, gguf_type, template, rule)
    if ollama:
        write_modelfile(path, tok, template)
    return path


def load_for_export(source: Path, base_model: str | None = None) -> tuple[Any, Any, PromptTemplate, RefusalRule | None]:
    """The model, its tokenizer, the training prompt template and the abstention rule, from an
    adapter or a model folder.

    An adapter is merged by `models.load_model`, at the dtype eval runs, so the GGUF holds the
    weights eval scored; a model folder keeps its own precision."""
    from transformers import AutoConfig

    from ragtune.models import base_model_of, load_causal_lm, load_model, load_tokenizer

    is_adapter = (source / "adapter_config.json").is_file()
    if not is_adapter and not (source / "config.json").is_file():
        raise RagtuneError(
            f"{source} holds neither adapter_config.json nor config.json; pass the adapter "
            "`ragtune train` wrote or a model folder"
        )
    base = resolve_model(base_model or base_model_of(source)) if is_adapter else str(source)
    try:
        _arch_of(AutoConfig.from_pretrained(base))  # refuse unsupported models before loading weights
    except (OSError, ValueError) as e:
        raise RagtuneError(f"cannot load the model '{base}' ({type(e).__name__}); pass --base-model") from None
    if is_adapter:
        model, tok = load_model(base, source)
    else:
        tok = load_tokenizer(source)
        model = load_causal_lm(base, tok, dtype="auto").eval()
    folders = (source, base)
    template = PromptTemplate.find(*folders) or PromptTemplate.for_tokenizer(tok)
    return model, tok, template, RefusalRule.find(*folders)


# ---------------------------------------------------------------- Ollama
SYSTEM_MARK, PROMPT_MARK, QUESTION_MARK = "\u2063SYSTEM\u2063", "\u2063PROMPT\u2063", "\u2063QUESTION\u2063"
MODELFILE = "Modelfile"


def _go_escape(text: str) -> str:
    """Literal text for a Go template: `{{` would open an action."""
    return text.replace("{{", '{{ "{{" }}')


def prompt_frame(tokenizer: Any, template: PromptTemplate) -> tuple[str, str]:
    """The text before and after the user's part of a training prompt, the system text marked.

    Chat style: the chat template rendered for a system and a user message, split at the user's
    content. Plain style: the fixed headings, split after the instruction and after the question.
    """
    if template.style == "chat":
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_MARK}, {"role": "user", "content": PROMPT_MARK}],
            tokenize=False,
            add_generation_prompt=True,
        )
        if SYSTEM_MARK not in text or text.count(PROMPT_MARK) != 1:
            raise RagtuneError(
                "the chat template drops the system or user message; an Ollama TEMPLATE cannot "
                "reproduce it, so export without --ollama"
            )
        before, after = text.split(PROMPT_MARK)
        return before, after
    marked = PromptTemplate(**{**asdict(template), "instruction": SYSTEM_MARK})
    text = marked.render_context(tokenizer, QUESTION_MARK, PROMPT_MARK)
    start = text.index(SYSTEM_MARK) + len(SYSTEM_MARK) + len("\n\n")
    end = text.rindex(QUESTION_MARK) + len(QUESTION_MARK)
    return text[:start], text[end:]


def ollama_prompt(tokenizer: Any, template: PromptTemplate, question: str, context: str) -> str:
    """What to send Ollama as the prompt so it renders exactly the training prompt for (question, context)."""
    if template.style == "chat":
        return template.context_messages(question, context)[1]["content"]
    before, after = prompt_frame(tokenizer, template)
    full = template.render_context(tokenizer, question, context)
    head = before.replace(SYSTEM_MARK, template.system)
    return full[len(head) : len(full) - len(after)]


def ollama_template(tokenizer: Any, template: PromptTemplate) -> str:
    """The Modelfile TEMPLATE: the training prompt with `.System` and `.Prompt`, then `.Response`
    (Ollama renders up to `.Response` when generating) and the end of an answer. Rendered, it
    tokenises in llama.cpp to the ids the training prompt had."""
    from ragtune.prompts import end_of_answer

    before, after = prompt_frame(tokenizer, template)
    head = _go_escape(before).replace(SYSTEM_MARK, "{{ .System }}")
    if adds_prefix_space(tokenizer) and not head.startswith(" "):
        # llama.cpp does not add the space this tokenizer puts before the text; written here, the
        # prompt's first word gets the ids it had in training (the plain prompt has no special
        # tokens in it, after which the tokenizer would add one again).
        head = " " + head
    end = _go_escape(end_of_answer(tokenizer, template))
    return f"{head}{{{{ .Prompt }}}}{_go_escape(after)}{{{{ .Response }}}}{end}"


def stop_strings(tokenizer: Any, template: PromptTemplate) -> list[str]:
    """Texts that end an answer: the chat turn's end token and EOS."""
    from ragtune.prompts import end_of_answer

    stops = [end_of_answer(tokenizer, template).strip(), tokenizer.eos_token or ""]
    return [s for i, s in enumerate(stops) if s and s not in stops[:i]]


def modelfile_text(gguf_name: str, tokenizer: Any, template: PromptTemplate) -> str:
    """An Ollama Modelfile: the GGUF, the training prompt as TEMPLATE, stop tokens, greedy decoding
    (as `ragtune eval` scores) and the RAG instruction with its refusal sentence as SYSTEM."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{ollama_template(tokenizer, template)}"""']
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stop_strings(tokenizer, template)]
    lines += ["PARAMETER temperature 0", f'SYSTEM """{template.system}"""']
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: str | Path, tokenizer: Any, template: PromptTemplate) -> Path:
    path = Path(gguf_path)
    out = path.parent / MODELFILE
    out.write_text(modelfile_text(path.name, tokenizer, template), encoding="utf-8")
    return out
