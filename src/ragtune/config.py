"""Config objects, one per stage, and the YAML loader for `ragtune run`.

Every model forbids unknown keys, so a typo in a YAML file is an error that names the key
instead of a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ragtune.errors import RagtuneError

REFUSAL = "Sorry. I cannot find the answer based on the context."


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TinyModelConfig(_Config):
    """`ragtune tiny-model`: a byte-level BPE tokenizer and a small Llama trained on a corpus."""

    vocab_size: int = 2048
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 768
    seq_len: int = 256
    batch_size: int = 16
    lr: float = 3e-3
    minutes: float = 2.0  # wall-clock budget for pretraining
    max_steps: int | None = None  # stop early when set (tests)
    seed: int = 0


class IngestConfig(_Config):
    tokenizer: str | None = None  # path or hub id; None: an approximate word-piece count
    chunk_tokens: int = 384  # target size
    min_chunk_tokens: int = 64  # smaller trailing pieces merge into their neighbour
    max_chunk_tokens: int = 512  # hard cap
    overlap_tokens: int = 48
    extensions: list[str] = Field(
        default_factory=lambda: [".txt", ".md", ".rst", ".html", ".htm", ".pdf", ".jsonl"]
    )


class SynthConfig(_Config):
    generator: str = "extractive"  # registry name: extractive, openai, hf
    questions_per_chunk: int = 2
    unanswerable_share: float = 0.1
    # extractive: shares of question forms (cloze "Fill in the blank", wh in place, loose)
    question_styles: dict[str, float] = Field(default_factory=lambda: {"cloze": 0.5, "wh": 0.5})
    limit: int | None = None  # only the first N chunks
    seed: int = 0
    # LLM backends (openai / hf)
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    rpm: int | None = None
    tpm: int | None = None
    timeout_s: float = 60.0
    max_retries: int = 5
    temperature: float = 0.2
    max_tokens: int = 512
    question_types: list[str] = Field(default_factory=lambda: ["factoid", "explanatory"])
    answer_style: Literal["plain", "cot"] = "plain"
    prompts_dir: str | None = None  # user overrides of the prompt template files
    filters: dict[str, bool] = Field(default_factory=dict)  # switch individual filters off
    dry_run: bool = False
    response_format: Literal["json_schema", "json_object", "none"] = "json_object"  # question calls
    batch_size: int = 8  # hf: prompts generated together
    grounding_threshold: float = 0.5  # share of answer content words found in the chunk
    roundtrip_k: int = 10  # the question must retrieve its chunk within the top k (BM25)
    dedupe_threshold: float = 0.9  # MinHash Jaccard above which questions are duplicates (distilabel: 0.9)
    cache_dir: str | None = None  # LLM call cache; synth_to_run uses RUN/cache


class BuildConfig(_Config):
    k_distractors: int = 4
    oracle_p: float = 0.8
    distractors: Literal["hard", "random", "mixed"] = "hard"
    retriever: Literal["bm25", "dense", "hybrid"] = "bm25"
    dense_model: str | None = None
    unanswerable_share: float = 0.1
    refusal: str = REFUSAL
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_length: int | None = None  # tokens; None: the tokenizer's model_max_length capped at 2048
    cot: bool = False
    cite: bool = False
    question_first: bool = False  # ask the question before the context as well as after it
    formats: list[str] = Field(default_factory=list)  # exports: see ragtune.build.exports.ALL_FORMATS
    push_to_hub: str | None = None  # a hub dataset id; pushed (private) only when set
    seed: int = 0


class TrainConfig(_Config):
    method: Literal["lora", "qlora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # 0 skips PEFT's dropout: on CPU its masks cost ~20% of a step and ~30% of memory
    target_modules: str | list[str] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    lr: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None
    max_minutes: float | None = None  # stop (and save) when the wall-clock budget is spent
    batch_size: int = 8
    grad_accum: int = 1
    # Padded tokens per forward / backward pass at most: longer micro-batches are cut further
    # (gradient accumulation, same update), so memory stays flat whatever the rows' lengths.
    micro_batch_tokens: int | None = 2048
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_length: int | None = None
    precision: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    group_by_length: bool = True
    packing: bool = False
    gradient_checkpointing: bool = False
    eval_steps: int | None = None
    save_steps: int | None = None
    early_stopping_patience: int | None = None
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    seed: int = 0
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"  # after linear warmup
    max_grad_norm: float | None = 1.0
    pack_length: int | None = None  # tokens per packed row; None: the longest example
    eval_limit: int | None = 256  # validation examples scored per evaluation (None: all)
    resume: bool = False  # continue from OUT/checkpoints/last when it exists
    # After training, choose the bias on the refusal's first token that maximises SQuAD-v2 F1
    # on the validation split (ragtune.abstain); eval, ask and serve apply it.
    calibrate_abstention: bool = True


class EvalConfig(_Config):
    split: str = "test"
    batch_size: int = 16
    max_new_tokens: int = 48
    limit: int | None = None
    robustness_k: list[int] = Field(default_factory=lambda: [0, 2, 4])
    robustness: bool = True  # closed book / oracle + k distractors / oracle removed curves
    robustness_limit: int | None = 50  # questions per robustness point (None: all)
    refusal: str = REFUSAL
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    cache: bool = True  # reuse predictions cached by (model, adapter, prompt)
    abstention_rule: bool = True  # apply the refusal bias `train` calibrated (adapter/ragtune_abstain.json)
    html: bool = True  # write report.html with the plots inlined
    # Optional LLM judge (faithfulness, correctness) over an OpenAI-compatible endpoint
    judge: bool = False
    judge_model: str | None = None  # default: the first model the endpoint lists
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_repeats: int = 3
    judge_temperature: float = 0.0
    judge_seed: int = 0
    judge_concurrency: int = 8
    seed: int = 0


class ServeConfig(_Config):
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str | None = None
    model_name: str | None = None  # id reported by /v1/models; default: the model folder's name
    batch_size: int = 8  # requests waiting together with equal settings are generated as one batch


class RunConfig(_Config):
    """`ragtune run CONFIG.yaml`: every stage from one file, sections named after stages."""

    docs: str
    run_dir: str = "runs/latest"
    base_model: str = "tiny"  # "tiny": build one with tiny_model; else a local folder or hub id
    seed: int = 0
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def _explain(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; check its spelling against docs/configuration.md"
    if e["type"] == "missing":
        return f"{source}: missing required key '{key}'; add it to the config"
    return f"{source}: bad value for '{key}': {e['msg']}; fix that key"


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run YAML. `docs` and a local `base_model` are relative to the YAML
    file; `run_dir` is relative to the working directory, like every output path."""
    path = Path(path)
    if not path.is_file():
        raise RagtuneError(f"config file {path} not found; pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise RagtuneError(f"{path}: not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise RagtuneError(f"{path}: expected a mapping of stage sections at the top level")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise RagtuneError(_explain(e, str(path))) from None
    base = path.parent
    cfg.docs = str((base / cfg.docs).resolve())
    if cfg.base_model != "tiny" and (base / cfg.base_model).exists():
        cfg.base_model = str((base / cfg.base_model).resolve())
    return cfg


def validated(cls: type[_Config], source: str, **values: object) -> _Config:
    """Build a stage config from CLI options, turning validation errors into one line."""
    try:
        return cls.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise RagtuneError(_explain(e, source)) from None


def config_reference() -> str:
    """Markdown table of every key of a run YAML (docs/configuration.md is this text)."""
    lines = ["# Configuration reference", "",
             "Every key of a `ragtune run` YAML, by section, with its default. Unknown keys are "
             "errors. Generated by `ragtune.config.config_reference()`; a test keeps this file "
             "equal to it.", ""]
    sections: list[tuple[str, type[_Config]]] = [("(top level)", RunConfig)]
    sections += [(name, f.annotation) for name, f in RunConfig.model_fields.items()
                 if isinstance(f.annotation, type) and issubclass(f.annotation, _Config)]
    for name, cls in sections:
        lines += [f"## `{name}`", "", "| key | type | default |", "|---|---|---|"]
        for key, f in cls.model_fields.items():
            if isinstance(f.annotation, type) and issubclass(f.annotation, _Config):
                continue
            default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
            ann = f.annotation
            kind = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
            kind = kind.replace(" | ", " or ")  # a bare pipe would split the table cell
            lines.append(f"| `{key}` | `{kind}` | `{default}` |")
        lines.append("")
    return "\n".join(lines)
