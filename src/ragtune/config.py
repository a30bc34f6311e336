"""Config objects, one per stage, and the YAML loader for `ragtune run`.

Every model forbids unknown keys, so a typo in a YAML file is an error that names the key
instead of a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ragtune.errors import RagtuneError
from ragtune.records import read_text_file

REFUSAL = "Sorry. I cannot find the answer based on the context."


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TinyModelConfig(_Config):
    """`ragtune tiny-model`: a byte-level BPE tokenizer and a small Llama trained on a corpus."""

    recipe: Literal["fast", "reader"] = "fast"
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
    # `reader` recipe only (ragtune.reader). Shape / budget fields above that are not set
    # explicitly take the reader's measured defaults (READER_DEFAULTS, or the GPU preset).
    scale: Literal["auto", "cpu", "gpu"] = "auto"  # gpu: bigger model, more tokens per step
    warmup_steps: int = 100
    max_span: int = 160  # longest repeated random span in the copy curriculum
    widen_acc: float = 0.85  # copy spans widen (16 -> max_span) while training copies are this exact
    short_span_share: float = 0.25  # share of spans of 2-12 tokens, so short spans copy too
    copy_phase_max: float = 0.55  # share of the budget the copy-only phase may take at most
    copy_switch_acc: float = 0.9  # leave a self-paced phase once its training answers are this exact
    find_widen_acc: float = 0.75  # `find` levels widen while this share of first answer tokens is right
    find_phase_max: float = 0.35  # end of the `find` phase at the latest, as a share of the budget (0: none)
    recall_phase_max: float = 0.6  # end of the `recall` phase (after find) at the latest, share of the budget; 0: none
    recall_phase_find: float = 0.25  # share of `find` steps in the recall phase, which keep the find circuit
    recall_phase_copy: float = 0.0  # share of `copy` steps (spans up to max_span) in the recall phase (round 12)
    # find rows at levels from 0 to the one reached: "after_find" (recall phase and mix, round 8), "mix" (round 9)
    find_spread: Literal["off", "mix", "after_find"] = "off"
    recall_ambiguous_weight: float = 1.0  # loss weight of recall ids whose previous id has several followers
    copy_patience_steps: int = 1500  # copy phase unfinished after this many steps: start over (normal: 550-1000)
    find_patience_steps: int = 300  # find still at level 0 after this many steps or at its cap: start over
    max_restarts: int = 0  # fresh starts after a stalled phase, while half the budget is left (round 4: off)
    refusal_share: float = 0.0  # RAG-shaped examples whose oracle is swapped out; target: the refusal
    locate_follow_ups: int = 6  # more questions on each `locate` context: denser targets
    rag_follow_ups: int = 0  # more questions on each `rag` context, on any of its passages
    loose_question_share: float = 0.0  # `rag` / `locate` questions in the synth's `loose` form (wh first, some words)
    question_first: bool = True  # `rag` / `locate` prompts ask the question before the context too (round 10)
    loose_shuffled: bool = False  # loose questions' words in random order: matched as a bag of words, not a string
    same_doc_distractors: float = 0.75  # share of `rag` examples whose distractors come from the oracle's document
    first_token_weight: float = 3.0  # loss weight of each answer's first token, where the passage is found
    late_seq_len: int = 640  # sequence length of the mixed phase (RAG-shaped examples)
    rope_dynamic_factor: float = 2.0  # prompts past late_seq_len: dynamic NTK RoPE with this factor; 0: off
    threads: int | None = None  # CPU threads; None: 1 when the CPU is already busy, else torch's default
    # mixed-phase task weights (copy 0.05 until round 12); also available: echo, recall_ids, scatter, lookup, continue
    task_mix: dict[str, float] = Field(
        default_factory=lambda: {"copy": 0.15, "recall": 0.4, "find": 0.1, "rag": 0.25, "locate": 0.15,
                                 "text": 0.05}
    )

    @field_validator("find_spread", mode="before")
    @classmethod
    def _find_spread_bool(cls, value: object) -> object:
        """Round 8's boolean still reads: true spreads the levels after the find phase ("after_find")."""
        return ("after_find" if value else "off") if isinstance(value, bool) else value


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
    replace: bool = False  # qa.jsonl keeps only imported rows and this run's (default: add to what is there)


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
    question_first: bool | None = None  # the question before the context too; None: as the base model was pretrained
    formats: list[str] = Field(default_factory=list)  # exports: see ragtune.build.exports.ALL_FORMATS
    push_to_hub: str | None = None  # a hub dataset id; pushed (private) only when set
    seed: int = 0


class TrainConfig(_Config):
    method: Literal["lora", "qlora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    lr: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None
    max_minutes: float | None = None  # stop (and save) when the wall-clock budget is spent
    batch_size: int = 8
    grad_accum: int = 1
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
    resume: bool = True  # continue from OUT/checkpoints/last when saved with the same settings and inputs


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
