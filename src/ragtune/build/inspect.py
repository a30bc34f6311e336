"""`ragtune inspect DATASET`: what the model will be trained on, token by token.

Renders examples exactly as training tokenises them (`prompts.encode_example`): masked
prompt tokens dimmed, trained tokens highlighted, token counts per part, and warnings for
the masking mistakes that silently ruin a fine-tune.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.prompts import IGNORE_INDEX, PROMPT_FILE, PromptTemplate, encode_example, prompt_ids
from ragtune.records import Example, read_jsonl
from ragtune.runfolder import RunFolder


def example_warnings(tokenizer: Any, template: PromptTemplate, prompt: str, completion: str) -> list[str]:
    """Masking problems of one example."""
    enc = encode_example(tokenizer, prompt, completion, template)
    trained = [t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE_INDEX]
    p_ids = prompt_ids(tokenizer, prompt, template)
    joint = tokenizer(prompt + completion, add_special_tokens=template.style == "plain")["input_ids"]
    out = []
    if joint[: len(p_ids)] != p_ids:
        out.append(
            "the tokenised prompt is not a prefix of the tokenised prompt + answer (a token "
            "merges across the boundary); training and inference still agree because both "
            "tokenise the prompt alone"
        )
    if not trained:
        out.append("no trained tokens: every label is -100")
    if tokenizer.eos_token_id is None or tokenizer.eos_token_id not in trained:
        out.append("the EOS token is not trained: the model will not learn to stop")
    return out


def tokenizer_warnings(tokenizer: Any) -> list[str]:
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        return ["pad token equals EOS: a collator that masks padding would mask the EOS label too"]
    return []


def load_examples(dataset_dir: str | Path, split: str) -> list[Example]:
    """The rows of one split as `Example` records (from SPLIT.jsonl)."""
    path = RunFolder.split_file(dataset_dir, split)
    if not path.is_file():
        raise RagtuneError(f"{path} not found; pass a dataset folder written by `ragtune build`")
    return list(read_jsonl(path, Example))


def inspect_dataset(
    dataset: str | Path, n: int = 3, tokenizer: Any = None, split: str = "train", console: Any = None
) -> dict[str, Any]:
    """Print `n` examples with their labels shown; return counts and warnings (for scripts and tests)."""
    from rich.console import Console
    from rich.text import Text

    from ragtune.models import load_tokenizer

    dataset = Path(dataset)
    if not (dataset / PROMPT_FILE).is_file():
        raise RagtuneError(f"{dataset} holds no {PROMPT_FILE}; pass a dataset folder written by `ragtune build`")
    template = PromptTemplate.load(dataset)
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        name = tokenizer or template.extra.get("tokenizer")
        if not name:
            raise RagtuneError("the dataset does not name its tokenizer; pass --tokenizer")
        tokenizer = load_tokenizer(name)
    console = console or Console()
    rows = load_examples(dataset, split)[:n]
    warnings: dict[str, int] = {}
    for w in tokenizer_warnings(tokenizer):
        warnings[w] = 1
        console.print(f"[bold red]warning:[/bold red] {w}")
    shown = []
    for ex in rows:
        enc = encode_example(tokenizer, ex.prompt, ex.completion, template)
        text = Text()
        for tid, lab in zip(enc["input_ids"], enc["labels"], strict=True):
            piece = tokenizer.decode([tid])
            text.append(piece, style="dim" if lab == IGNORE_INDEX else "bold black on green")
        n_prompt = sum(lab == IGNORE_INDEX for lab in enc["labels"])
        n_trained = len(enc["labels"]) - n_prompt
        console.rule(f"{ex.id}  oracle_in_context={ex.oracle_in_context}")
        console.print(text)
        console.print(
            f"tokens: prompt {n_prompt} (masked), answer + end {n_trained} (trained), total {len(enc['input_ids'])}"
        )
        ex_warn = example_warnings(tokenizer, template, ex.prompt, ex.completion)
        for w in ex_warn:
            warnings[w] = warnings.get(w, 0) + 1
            console.print(f"[bold red]warning:[/bold red] {w}")
        shown.append({"id": ex.id, "prompt_tokens": n_prompt, "trained_tokens": n_trained, "warnings": ex_warn})
    if not warnings:
        console.print("[green]no masking problems found[/green]")
    return {"examples": shown, "warnings": warnings}
