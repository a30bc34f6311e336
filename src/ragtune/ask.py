"""`ragtune ask`: answer one question from a context file or from passages retrieved from a
knowledge base, with the prompt template the adapter was trained with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.adapter_check import check_adapter_fits
from ragtune.errors import RagtuneError
from ragtune.prompts import Passage, PromptTemplate
from ragtune.records import Chunk, read_jsonl, read_text_file


def load_for_inference(
    adapter: str | Path | None = None, base_model: str | None = None, precision: str = "auto"
) -> tuple[Any, Any, PromptTemplate]:
    """Model (base + optional adapter), tokenizer, and the prompt template saved with the adapter (or base)."""
    from ragtune.models import base_model_of, is_tuned_dir, load_model

    if adapter is None and base_model is None:
        raise RagtuneError("pass --adapter (a folder `ragtune train` wrote) or --base-model")
    if adapter is not None and not is_tuned_dir(adapter):
        raise RagtuneError(f"'{adapter}' holds no adapter or model; pass the folder `ragtune train` wrote")
    base = base_model or base_model_of(adapter)  # type: ignore[arg-type]
    if adapter is not None:
        check_adapter_fits(adapter, base)
    model, tok = load_model(base, adapter, precision=precision)
    # the adapter's template, else one saved beside the base model's weights
    template = PromptTemplate.find(adapter, base) or PromptTemplate.for_tokenizer(tok)
    return model, tok, template


def context_passages(path: str | Path) -> list[Passage]:
    p = Path(path)
    if not p.is_file():
        raise RagtuneError(f"context file {p} not found; pass a text file with --context")
    try:
        text = read_text_file(p).strip()
    except UnicodeDecodeError:
        raise RagtuneError(f"context file {p} is not UTF-8 text; convert it or use --docs") from None
    if not text:
        raise RagtuneError(f"context file {p} is empty; put the passage text in it")
    return [Passage(title=p.stem, text=text)]


def knowledge_base_chunks(docs: str | Path, tokenizer_source: str | None = None) -> list[Chunk]:
    """Chunks of a run folder (chunks.jsonl), or of a documents folder ingested on the spot."""
    d = Path(docs)
    if (d / "chunks.jsonl").is_file():
        return list(read_jsonl(d / "chunks.jsonl", Chunk))
    if d.is_file() and d.suffix == ".jsonl":
        return list(read_jsonl(d, Chunk))
    if not d.is_dir():
        raise RagtuneError(f"{d} is neither a run folder nor a documents folder; pass one with --docs")
    from ragtune.config import IngestConfig
    from ragtune.ingest import ingest

    return ingest(d, IngestConfig(tokenizer=tokenizer_source)).chunks


def retrieved_passages(chunks: Sequence[Chunk], question: str, k: int, index_dir: Path | None = None) -> list[Passage]:
    from ragtune.evaluate.robustness import retrieve

    if not chunks:
        raise RagtuneError("the knowledge base holds no chunks; run `ragtune ingest` on a folder with text")
    hits = retrieve(chunks, [question], k, index_dir)[0]
    return [Passage(title=chunks[i].title, text=chunks[i].text, id=chunks[i].id) for i in hits]


def ask(
    question: str,
    adapter: str | Path | None = None,
    base_model: str | None = None,
    context: str | Path | None = None,
    docs: str | Path | None = None,
    k: int = 4,
    max_new_tokens: int = 128,
    precision: str = "auto",
) -> str:
    """The model's greedy answer to `question` given a context file or retrieved passages."""
    from ragtune.abstain import RefusalRule, answer_with_rule
    from ragtune.generation import stop_strings
    from ragtune.prompts import prompt_ids

    if not question.strip():
        raise RagtuneError("the question is empty; pass --question \"...\"")
    if (context is None) == (docs is None):
        raise RagtuneError("pass exactly one of --context FILE or --docs DIR (a run or documents folder)")
    passages = context_passages(context) if context is not None else None
    model, tok, template = load_for_inference(adapter, base_model, precision)
    if passages is None:
        source = str(adapter) if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base_model
        run_index = Path(docs) / "index" if (Path(docs) / "chunks.jsonl").is_file() else None  # type: ignore[arg-type]
        passages = retrieved_passages(knowledge_base_chunks(docs, source), question, k, run_index)  # type: ignore[arg-type]
    ids = prompt_ids(tok, template.render(tok, question, passages), template)
    limit = getattr(tok, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and len(ids) + max_new_tokens > limit:
        raise RagtuneError(f"the prompt is {len(ids)} tokens, over the model's {limit}; shorten the "
                           "context file or use --docs with a smaller --k")
    return answer_with_rule(model, tok, [ids], RefusalRule.load(adapter), template.refusal,
                            max_new_tokens=max_new_tokens, batch_size=1, stop_strings=stop_strings(template))[0]
