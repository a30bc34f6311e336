"""Config objects, one per stage, and the YAML loader for `ragtune run`.

Every model forbids unknown keys, so a typo in a YAML file is an error that names the key
instead of a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ragtune.errors import RagtuneError
from ragtune.records import read_text_file

REFUSAL = "Sorry. I cannot find the answer based on the context."


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TinyModelConfig(_Config):
    """`ragtune tiny-model`: a byte-level BPE tokenizer and a small Llama trained on a corpus."""

    vocab_size: int = Field(2048, ge=300)  # the 256 bytes, the special tokens, and some merges
    hidden_size: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(768, ge=1)
    seq_len: int = Field(256, ge=8)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    minutes: float = Field(2.0, gt=0)  # wall-clock budget for pretraining
    max_steps: int | None = Field(None, ge=1)  # stop early when set (tests)
    seed: int = Field(0, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}; "
                "pick sizes that divide"
            )
        return self


class IngestConfig(_Config):
    tokenizer: str | None = None  # path or hub id; None: an approximate word-piece count
    chunk_tokens: int = Field(384, ge=8)  # target size
    min_chunk_tokens: int = Field(64, ge=0)  # smaller trailing pieces merge into their neighbour
    max_chunk_tokens: int = Field(512, ge=8)  # hard cap
    overlap_tokens: int = Field(48, ge=0)
    extensions: list[str] = Field(default_factory=lambda: [".txt", ".md", ".rst", ".html", ".htm", ".pdf", ".jsonl"])

    @model_validator(mode="after")
    def _sizes_in_order(self) -> IngestConfig:
        # (min_chunk_tokens above chunk_tokens is allowed: ingest takes the smaller; overlap is checked there)
        if self.chunk_tokens > self.max_chunk_tokens:
            raise ValueError(
                f"chunk_tokens ({self.chunk_tokens}) must not exceed max_chunk_tokens ({self.max_chunk_tokens})"
            )
        return self


class SynthConfig(_Config):
    generator: str = "extractive"  # registry name: extractive, openai, hf
    questions_per_chunk: int = Field(2, ge=1, le=100)
    unanswerable_share: float = Field(0.1, ge=0, le=1)
    # extractive: shares of question forms (cloze "Fill in the blank", wh in place, loose)
    question_styles: dict[str, float] = Field(default_factory=lambda: {"cloze": 0.5, "wh": 0.5})
    limit: int | None = Field(None, ge=1)  # only the first N chunks
    seed: int = Field(0, ge=0, lt=2**32)
    # LLM backends (openai / hf)
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1, le=1024)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0, le=100)
    temperature: float = Field(0.2, ge=0, le=2)
    max_tokens: int = Field(512, ge=1)
    question_types: list[str] = Field(default_factory=lambda: ["factoid", "explanatory"])
    answer_style: Literal["plain", "cot"] = "plain"
    prompts_dir: str | None = None  # user overrides of the prompt template files
    filters: dict[str, bool] = Field(default_factory=dict)  # switch individual filters off
    dry_run: bool = False
    response_format: Literal["json_schema", "json_object", "none"] = "json_object"  # question calls
    batch_size: int = Field(8, ge=1)  # hf: prompts generated together
    grounding_threshold: float = Field(0.5, ge=0, le=1)  # share of answer content words found in the chunk
    roundtrip_k: int = Field(10, ge=1)  # the question must retrieve its chunk within the top k (BM25)
    dedupe_threshold: float = Field(0.9, gt=0, le=1)  # MinHash Jaccard above which questions are duplicates
    cache_dir: str | None = None  # LLM call cache; synth_to_run uses RUN/cache
    replace: bool = False  # qa.jsonl keeps only imported rows and this run's (default: add to what is there)


class BuildConfig(_Config):
    k_distractors: int = Field(4, ge=0, le=100)
    oracle_p: float = Field(0.8, ge=0, le=1)
    distractors: Literal["hard", "random", "mixed"] = "hard"
    retriever: Literal["bm25", "dense", "hybrid"] = "bm25"
    dense_model: str | None = None
    unanswerable_share: float = Field(0.1, ge=0, lt=1)
    # Chance that an example whose target is the refusal shows the chunk its question came from
    # with the answer's sentences cut out (an on-topic unanswerable), not only other passages.
    cut_oracle_p: float = Field(0.0, ge=0, le=1)
    refusal: str = REFUSAL
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_length: int | None = Field(None, ge=16)  # tokens; None: the tokenizer's model_max_length capped at 2048
    cot: bool = False
    cite: bool = False
    question_first: bool = False  # ask the question before the context as well as after it
    formats: list[str] = Field(default_factory=list)  # exports: see ragtune.build.exports.ALL_FORMATS
    push_to_hub: str | None = None  # a hub dataset id; pushed (private) only when set
    seed: int = Field(0, ge=0, lt=2**32)

    @field_validator("split")
    @classmethod
    def _split_shares(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) < 0 or value[0] <= 0 or abs(sum(value) - 1) > 1e-6:
            raise ValueError("split must be three shares >= 0 (train > 0) that sum to 1, e.g. [0.8, 0.1, 0.1]")
        return value


class TrainConfig(_Config):
    method: Literal["lora", "qlora", "full"] = "lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)  # 0 skips PEFT's dropout: on CPU its masks cost ~20% of a step
    target_modules: str | list[str] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    lr: float = Field(2e-4, gt=0, le=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)  # stop (and save) when the wall-clock budget is spent
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    # Padded tokens per forward / backward pass at most: longer micro-batches are cut further
    # (gradient accumulation, same update), so memory stays flat whatever the rows' lengths.
    micro_batch_tokens: int | None = Field(2048, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    # "example": each example's loss is the mean over its answer tokens and a step's the mean over
    # its examples (short answers weigh as much as long ones); "token": the mean over every answer
    # token of the step (transformers' and TRL's causal-LM loss).
    loss_average: Literal["example", "token"] = "example"
    weight_decay: float = Field(0.0, ge=0)
    max_length: int | None = Field(None, ge=16)
    precision: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    group_by_length: bool = True
    packing: bool = False
    gradient_checkpointing: bool = False
    eval_steps: int | None = Field(None, ge=1)
    save_steps: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    seed: int = Field(0, ge=0, lt=2**32)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"  # after linear warmup
    max_grad_norm: float | None = Field(1.0, gt=0)
    pack_length: int | None = Field(None, ge=16)  # tokens per packed row; None: the longest example
    eval_limit: int | None = Field(256, ge=1)  # validation examples scored per evaluation (None: all)
    resume: bool = True  # continue from OUT/checkpoints/last when saved with the same settings and inputs
    # After training, choose the abstention thresholds (the question's support in the context,
    # the answer's confidence) that maximise SQuAD-v2 F1 on the validation split
    # (ragtune.abstain); eval, ask and serve apply them.
    calibrate_abstention: bool = True
    # ... refusing at most this share of the validation questions whose answer is in the context:
    # a model that answers poorly would otherwise gain F1 by refusing nearly everything.
    abstain_max_answerable_refused: float = Field(0.1, ge=0, le=1)

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, value: str | list[str]) -> str | list[str]:
        if not value or (isinstance(value, list) and not all(v.strip() for v in value)):
            raise ValueError("name at least one module, or 'all-linear'")
        return value


class EvalConfig(_Config):
    split: str = "test"
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(48, ge=1, le=4096)
    limit: int | None = Field(None, ge=1)
    robustness_k: list[Annotated[int, Field(ge=0, le=100)]] = Field(default_factory=lambda: [0, 2, 4])
    robustness: bool = True  # closed book / oracle + k distractors / oracle removed curves
    robustness_limit: int | None = Field(50, ge=1)  # questions per robustness point (None: all)
    refusal: str = REFUSAL
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    cache: bool = True  # reuse predictions cached by (model, adapter, prompt)
    abstention_rule: bool = True  # apply the abstention rule `train` calibrated (adapter/ragtune_abstain.json)
    html: bool = True  # write report.html with the plots inlined
    # Optional LLM judge (faithfulness, correctness) over an OpenAI-compatible endpoint
    judge: bool = False
    judge_model: str | None = None  # default: the first model the endpoint lists
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_repeats: int = Field(3, ge=1, le=20)
    judge_temperature: float = Field(0.0, ge=0, le=2)
    judge_seed: int = Field(0, ge=0, lt=2**32)
    judge_concurrency: int = Field(8, ge=1, le=1024)
    seed: int = Field(0, ge=0, lt=2**32)


class ServeConfig(_Config):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port (tests)
    api_key_env: str | None = None
    model_name: str | None = None  # id reported by /v1/models; default: the model folder's name
    batch_size: int = Field(8, ge=1, le=256)  # requests waiting together with equal settings are generated as one batch
    max_tokens: int = Field(1024, ge=1, le=1_000_000)  # cap of any request's max_tokens (the context caps it too)
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger request bodies get 413
    request_timeout_s: float = Field(120.0, gt=0)  # queueing + generation; past it: 429, or the text so far


class AskConfig(_Config):
    """`ragtune ask` options (command line only)."""

    k: int = Field(4, ge=1, le=100)
    max_new_tokens: int = Field(128, ge=1, le=4096)


class InspectConfig(_Config):
    """`ragtune inspect` options (command line only)."""

    n: int = Field(3, ge=1, le=10_000)


class RunConfig(_Config):
    """`ragtune run CONFIG.yaml`: every stage from one file, sections named after stages."""

    docs: str
    run_dir: str = "runs/latest"
    base_model: str = "tiny"  # "tiny": build one with tiny_model; else a local folder or hub id
    seed: int = Field(0, ge=0, lt=2**32)
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def _explain(err: ValidationError, source: str, cli: bool = False) -> str:
    """One line naming the key (or, from the command line, the option) and what it must be."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; check its spelling against docs/configuration.md"
    if e["type"] == "missing":
        return f"{source}: missing required key '{key}'; add it to the config"
    msg = str(e["msg"]).removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    if cli and e["loc"]:
        name = "--" + str(e["loc"][0]).replace("_", "-")
        return f"{source}: bad value {e['input']!r} for {name}: {msg}; pass a value that fits"
    if not e["loc"]:
        return f"{source}: {msg}; {'change those options' if cli else 'fix those keys'}"
    return f"{source}: bad value {e['input']!r} for '{key}': {msg}; fix that key"


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run YAML. `docs` and a local `base_model` are relative to the YAML
    file; `run_dir` is relative to the working directory, like every output path."""
    path = Path(path)
    if not path.is_file():
        raise RagtuneError(f"config file {path} not found; pass the path of a YAML file")
    try:
        data = yaml.safe_load(read_text_file(path)) or {}
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


def field_default(cls: type[BaseModel], name: str) -> Any:
    """A config field's default: the one source of the matching command-line option's default."""
    return cls.model_fields[name].get_default(call_default_factory=True)


def validated(cls: type[_Config], source: str, **values: object) -> _Config:
    """Build a stage config from CLI options, turning validation errors into one line."""
    try:
        return cls.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise RagtuneError(_explain(e, source, cli=True)) from None


def config_reference() -> str:
    """Markdown table of every key of a run YAML (docs/configuration.md is this text)."""
    lines = [
        "# Configuration reference",
        "",
        "Every key of a `ragtune run` YAML, by section, with its default. Unknown keys are "
        "errors. Generated by `ragtune.config.config_reference()`; a test keeps this file "
        "equal to it.",
        "",
    ]
    sections: list[tuple[str, type[_Config]]] = [("(top level)", RunConfig)]
    sections += [
        (name, f.annotation)
        for name, f in RunConfig.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, _Config)
    ]
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
