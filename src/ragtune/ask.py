"""`ragtune ask`: answer one question from a context file or from passages retrieved from a
knowledge base, with the prompt template the adapter was trained with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragtune.abstain import RefusalRule
from ragtune.adapter_check import check_adapter_fits
from ragtune.errors import RagtuneError
from ragtune.modelstore import local_folder
from ragtune.prompts import Passage, PromptTemplate
from ragtune.records import Chunk, read_jsonl, read_text_file
from ragtune.retrieval import retrieve
from ragtune.runfolder import RunFolder


def load_for_inference(
    adapter: str | Path | None = None, base_model: str | None = None, precision: str = "auto"
) -> tuple[Any, Any, PromptTemplate, RefusalRule | None]:
    """Model (base + optional adapter, merged), tokenizer, and the prompt template and abstention
    rule saved with the adapter (or base)."""
    from ragtune.models import base_model_of, is_tuned_dir, load_model

    if adapter is None and base_model is None:
        raise RagtuneError("pass --adapter (a folder `ragtune train` wrote) or --base-model")
    if adapter is not None and not is_tuned_dir(adapter):
        raise RagtuneError(f"'{adapter}' holds no adapter or model; pass the folder `ragtune train` wrote")
    base = base_model or base_model_of(adapter)  # type: ignore[arg-type]
    if adapter is not None:
        check_adapter_fits(adapter, base)
    model, tok = load_model(base, adapter, precision=precision)
    # The adapter's template and abstention rule, else those saved beside the base's weights
    # (a merged or GGUF export carries both).
    folders = (adapter, local_folder(base))
    template = PromptTemplate.find(*folders) or PromptTemplate.for_tokenizer(tok)
    return model, tok, template, RefusalRule.find(*folders)


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


# A documents folder is chunked on the spot by the ingest stage, which `ask` (a stage itself)
# does not import: the caller hands it in (the CLI passes `pipeline.document_chunks`).
ChunkDocuments = Callable[[Path, str | None], list[Chunk]]


def knowledge_base_chunks(
    docs: str | Path, tokenizer_source: str | None = None, chunk_documents: ChunkDocuments | None = None
) -> list[Chunk]:
    """Chunks of a run folder (chunks.jsonl), of a chunks file, or of a documents folder chunked
    by `chunk_documents(folder, tokenizer_source)`."""
    d = Path(docs)
    if RunFolder(d).chunks.is_file():
        return list(read_jsonl(RunFolder(d).chunks, Chunk))
    if d.is_file() and d.suffix == ".jsonl":
        return list(read_jsonl(d, Chunk))
    if not d.is_dir():
        raise RagtuneError(f"{d} is neither a run folder nor a documents folder; pass one with --docs")
    if chunk_documents is None:
        raise RagtuneError(f"{d} is a documents folder; run `ragtune ingest {d} --run RUN` and pass --docs RUN")
    return chunk_documents(d, tokenizer_source)


def retrieved_passages(chunks: Sequence[Chunk], question: str, k: int, index_dir: Path | None = None) -> list[Passage]:
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
    chunk_documents: ChunkDocuments | None = None,
) -> str:
    """The model's greedy answer to `question` given a context file or retrieved passages;
    `chunk_documents` chunks a documents folder passed as `docs` (see `knowledge_base_chunks`)."""
    from ragtune.abstain import answer_with_rule
    from ragtune.generation import stop_strings
    from ragtune.prompts import prompt_ids

    if not question.strip():
        raise RagtuneError('the question is empty; pass --question "..."')
    if (context is None) == (docs is None):
        raise RagtuneError("pass exactly one of --context FILE or --docs DIR (a run or documents folder)")
    if context is not None:
        passages = context_passages(context)
    else:  # retrieved before the model loads, so a bad --docs fails at once
        source = str(adapter) if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base_model
        run = RunFolder(Path(docs))  # type: ignore[arg-type]
        chunks = knowledge_base_chunks(run.root, source, chunk_documents)
        passages = retrieved_passages(chunks, question, k, run.index if run.chunks.is_file() else None)
    model, tok, template, rule = load_for_inference(adapter, base_model, precision)
    ids = prompt_ids(tok, template.render(tok, question, passages), template)
    limit = getattr(tok, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and len(ids) + max_new_tokens > limit:
        raise RagtuneError(
            f"the prompt is {len(ids)} tokens, over the model's {limit}; shorten the "
            "context file or use --docs with a smaller --k"
        )
    return answer_with_rule(
        model,
        tok,
        [ids],
        rule,
        template.refusal,
        questions=[question],
        max_new_tokens=max_new_tokens,
        batch_size=1,
        stop_strings=stop_strings(template),
    )[0]
