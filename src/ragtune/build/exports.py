"""Exports of a built dataset for other trainers, written under DATASET/exports/<format>/.

| format | consumer | row |
|---|---|---|
| trl-messages | TRL SFTTrainer (conversational) | `messages`: system, user, assistant |
| trl-prompt-completion | TRL SFTTrainer (prompt-completion, loss on the completion) | `prompt`, `completion` text |
| axolotl-chat | Axolotl `type: chat_template` | `messages` |
| axolotl-io | Axolotl `type: input_output` | `segments`: prompt (label false), answer + EOS (label true) |
| llamafactory-alpaca | LLaMA-Factory alpaca (+ dataset_info.json) | `instruction`, `input`, `output`, `system` |
| llamafactory-sharegpt | LLaMA-Factory sharegpt (+ dataset_info.json) | `conversations`, `system` |
| openai | OpenAI fine-tuning JSONL | `messages` |
| raft | RAFT's own columns | `id`, `type`, `question`, `context`, `oracle_context`, `cot_answer`, ... |
| parquet | anything reading Parquet | every `Example` column |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.prompts import Passage, PromptTemplate
from ragtune.records import Example, to_dict, write_jsonl

SPLITS = ("train", "validation", "test")


def _passages(ex: Example) -> list[Passage]:
    titles = ex.meta.get("passage_titles") or [""] * len(ex.passage_texts)
    return [Passage(title=t, text=x, id=i) for t, x, i in zip(titles, ex.passage_texts, ex.passages, strict=True)]


def _messages(ex: Example, t: PromptTemplate) -> list[dict[str, str]]:
    return [*t.messages(ex.question, _passages(ex)), {"role": "assistant", "content": ex.completion}]


def trl_messages(ex: Example, t: PromptTemplate, eos: str) -> dict[str, Any]:
    return {"messages": _messages(ex, t)}


def trl_prompt_completion(ex: Example, t: PromptTemplate, eos: str) -> dict[str, Any]:
    return {"prompt": ex.prompt, "completion": ex.completion}


def axolotl_io(ex: Example, t: PromptTemplate, eos: str) -> dict[str, Any]:
    # input_output takes raw text: the EOS must be written out, and BOS comes from the tokenizer
    return {"segments": [{"label": False, "text": ex.prompt}, {"label": True, "text": ex.completion + eos}]}


def alpaca(ex: Example, t: PromptTemplate, eos: str) -> dict[str, Any]:
    user = t.messages(ex.question, _passages(ex))[1]["content"]
    return {"instruction": user, "input": "", "output": ex.completion, "system": t.system}


def sharegpt(ex: Example, t: PromptTemplate, eos: str) -> dict[str, Any]:
    user = t.messages(ex.question, _passages(ex))[1]["content"]
    return {
        "conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": ex.completion}],
        "system": t.system,
    }


def raft(ex: Example, t: PromptTemplate, eos: str) -> dict[str, Any]:
    docs = "".join(f"<DOCUMENT>{x}</DOCUMENT>\n" for x in ex.passage_texts)
    idx = ex.meta.get("oracle_index")
    return {
        "id": ex.id,
        "type": "general",
        "question": ex.question,
        "context": {"title": [ex.meta.get("passage_titles") or []], "sentences": [ex.passage_texts]},
        "oracle_context": ex.passage_texts[idx] if idx is not None else "",
        "cot_answer": ex.completion,
        "answer": ex.answers[0] if ex.answers else t.refusal,
        "instruction": docs + ex.question,
    }


FORMATS: dict[str, Callable[[Example, PromptTemplate, str], dict[str, Any]]] = {
    "trl-messages": trl_messages,
    "trl-prompt-completion": trl_prompt_completion,
    "axolotl-chat": trl_messages,
    "axolotl-io": axolotl_io,
    "llamafactory-alpaca": alpaca,
    "llamafactory-sharegpt": sharegpt,
    "openai": trl_messages,
    "raft": raft,
}
ALL_FORMATS = (*FORMATS, "parquet")


def _dataset_info(fmt: str, out: Path, splits: list[str]) -> None:
    entries = {}
    for s in splits:
        entry: dict[str, Any] = {"file_name": f"{s}.jsonl"}
        if fmt == "llamafactory-alpaca":
            entry["columns"] = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
        else:
            entry.update(
                formatting="sharegpt",
                columns={"messages": "conversations", "system": "system"},
                tags={"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
            )
        entries[f"ragtune_{s}"] = entry
    (out / "dataset_info.json").write_text(json.dumps(entries, indent=2), encoding="utf-8")


def check_formats(formats: list[str]) -> None:
    unknown = [f for f in formats if f not in ALL_FORMATS]
    if unknown:
        raise RagtuneError(f"unknown export format(s) {', '.join(unknown)}; choose from: {', '.join(ALL_FORMATS)}")


def export_dataset(
    splits: dict[str, list[Example]], template: PromptTemplate, dataset_dir: Path, formats: list[str], eos: str
) -> dict[str, Path]:
    """Write each requested format; returns format -> folder."""
    check_formats(formats)
    written = {}
    present = [s for s in SPLITS if splits.get(s)]
    for fmt in formats:
        out = Path(dataset_dir) / "exports" / fmt
        out.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            from datasets import Dataset

            for s in present:
                Dataset.from_list([to_dict(e) for e in splits[s]]).to_parquet(str(out / f"{s}.parquet"))
        else:
            for s in present:
                write_jsonl(out / f"{s}.jsonl", (FORMATS[fmt](e, template, eos) for e in splits[s]))
            if fmt.startswith("llamafactory"):
                _dataset_info(fmt, out, present)
        written[fmt] = out
    return written
