"""How a (question, passages) pair becomes model input, and a target becomes labels.

One `PromptTemplate` is used to build the dataset, saved beside the adapter as
`ragtune_prompt.json`, and loaded again by `eval`, `ask` and `serve`, so the text a model
is trained on is the text it is asked with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragtune.config import REFUSAL

PROMPT_FILE = "ragtune_prompt.json"
IGNORE_INDEX = -100

# A user message that carries RAG context (what `PromptTemplate.messages` sends); the question
# may come first too (a `question_first` template's messages).
_CONTEXT_MESSAGE = re.compile(
    r"\A(?:Question: [^\n]*\n\n)?Context:\n(?P<context>.*)\n\nQuestion: (?P<question>.*)\Z", re.S
)

DEFAULT_INSTRUCTION = (
    "Answer the question using only the passages in the context. Give a short answer "
    "copied from the passages. If the passages do not contain the answer, reply exactly: "
    "{refusal}"
)


@dataclass
class Passage:
    title: str
    text: str
    id: str = ""


@dataclass
class PromptTemplate:
    """`chat` renders through the tokenizer's chat template; `plain` through fixed headings."""

    style: Literal["chat", "plain"] = "plain"
    instruction: str = DEFAULT_INSTRUCTION
    refusal: str = REFUSAL
    passage_format: str = "[{n}] {title}\n{text}"
    # The question also before the context, so the passages are read knowing what is asked:
    # a causal model's context tokens can then attend to the question's words.
    question_first: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, refusal: str = REFUSAL, question_first: bool = False) -> PromptTemplate:
        style = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
        return cls(style=style, refusal=refusal, question_first=question_first)

    @property
    def system(self) -> str:
        return self.instruction.format(refusal=self.refusal)

    def context_block(self, passages: Sequence[Passage]) -> str:
        return "\n\n".join(
            self.passage_format.format(n=i + 1, title=p.title, text=p.text, id=p.id) for i, p in enumerate(passages)
        )

    def messages(self, question: str, passages: Sequence[Passage]) -> list[dict[str, str]]:
        return self.context_messages(question, self.context_block(passages))

    def context_messages(self, question: str, context: str) -> list[dict[str, str]]:
        """System and user messages for an already formatted context block."""
        first = f"Question: {question}\n\n" if self.question_first else ""
        user = f"{first}Context:\n{context}\n\nQuestion: {question}"
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def render(self, tokenizer: Any, question: str, passages: Sequence[Passage]) -> str:
        """The prompt text, ending where the model's answer starts."""
        return self.render_context(tokenizer, question, self.context_block(passages))

    def render_context(self, tokenizer: Any, question: str, context: str) -> str:
        """`render` for an already formatted context block (what `serve` receives)."""
        if self.style == "chat":
            return tokenizer.apply_chat_template(
                self.context_messages(question, context), tokenize=False, add_generation_prompt=True
            )
        first = f"### Question:\n{question}\n\n" if self.question_first else ""
        return (
            f"### Instruction:\n{self.system}\n\n{first}### Context:\n{context}"
            f"\n\n### Question:\n{question}\n\n### Answer:\n"
        )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PROMPT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PromptTemplate:
        return cls(**json.loads((Path(directory) / PROMPT_FILE).read_text(encoding="utf-8")))

    @classmethod
    def find(cls, *folders: str | Path | None) -> PromptTemplate | None:
        """The first `ragtune_prompt.json` among `folders` (an adapter before its base), else None."""
        for folder in folders:
            if folder and (Path(folder) / PROMPT_FILE).is_file():
                return cls.load(folder)
        return None


def end_of_answer(tokenizer: Any, template: PromptTemplate) -> str:
    """The text that closes an answer: the chat template's end of turn, else the EOS token.

    Found by rendering a turn with a marker answer, so any template works without a
    per-family table.
    """
    eos = tokenizer.eos_token or ""
    if template.style != "chat":
        return eos
    marker = "\u2063RAGTUNE\u2063"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
        tokenize=False,
    )
    tail = text.split(marker, 1)[1]
    if eos and eos in tail:
        return tail[: tail.index(eos) + len(eos)]
    return tail.rstrip() or eos


def encode_example(tokenizer: Any, prompt: str, completion: str, template: PromptTemplate) -> dict[str, list[int]]:
    """Token ids and labels: the prompt masked with -100, the answer and its end token trained.

    Prompt and completion are tokenised separately and concatenated, so the prompt is an
    exact prefix of the training sequence and the same prompt ids are seen at inference.
    """
    add_special = template.style == "plain"  # chat templates already carry BOS in the text
    prompt_ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    target_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    end = end_of_answer(tokenizer, template)
    end_ids = tokenizer(end, add_special_tokens=False)["input_ids"] if end else []
    if tokenizer.eos_token_id is not None and (not end_ids or end_ids[-1] != tokenizer.eos_token_id):
        end_ids = [*end_ids, tokenizer.eos_token_id]
    answer_ids = target_ids + end_ids
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def prompt_ids(tokenizer: Any, prompt: str, template: PromptTemplate) -> list[int]:
    """The ids a model is given at inference; identical to the masked part of `encode_example`."""
    return tokenizer(prompt, add_special_tokens=template.style == "plain")["input_ids"]


def render_messages(
    tokenizer: Any,
    messages: list[dict[str, str]],
    template: PromptTemplate | None,
    passages: list[Passage] | None = None,
) -> list[int]:
    """Prompt token ids for chat messages (serve's requests, the `hf` generator's calls).

    The rule, in order:
    1. With a ragtune template and messages that carry RAG context, the prompt is rendered
       exactly as in training: the template's own instruction as system text, then the context
       and the question. They carry context when `passages` is given (formatted with the
       template's passage format) or when the last user message has the shape
       `Context:\\n<passages>\\n\\nQuestion: <question>`, optionally after
       `Question: <question>\\n\\n` (what `PromptTemplate.messages` sends; the passages are
       used verbatim). A system message is then ignored: the model was trained with the template's.
    2. Otherwise the messages go through the tokenizer's chat template when it has one,
    3. else through a plain transcript (`System: ...`, `User: ...`, ending with `Assistant:`).
    """
    rag = rag_parts(messages, template, passages)
    if rag is not None:
        context, question = rag
        return prompt_ids(tokenizer, template.render_context(tokenizer, question, context), template)  # type: ignore[union-attr]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return tokenizer("\n\n".join([*lines, "Assistant:"]), add_special_tokens=True)["input_ids"]


def rag_parts(
    messages: list[dict[str, str]], template: PromptTemplate | None, passages: list[Passage] | None = None
) -> tuple[str, str] | None:
    """(context block, question) when `render_messages` renders `messages` as a RAG prompt, else None."""
    if template is None:
        return None
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if passages is not None:
        return template.context_block(passages), last_user
    match = _CONTEXT_MESSAGE.match(last_user.strip("\n"))
    return (match["context"], match["question"]) if match else None


def question_span(tokenizer: Any, ids: Sequence[int], question: str) -> tuple[int, int] | None:
    """Token positions [start, end) of the last occurrence of `question` in the prompt `ids`
    (the abstention rule scores how well the context predicts them); None when it is not there
    or the ids do not round-trip through the tokenizer's text."""
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    at = text.rfind(question.strip()) if question.strip() else -1
    if at < 0:
        return None
    end = at + len(question.strip())
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # a slow tokenizer has no offsets
        return None
    if enc["input_ids"] != list(ids):
        return None
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > at and a < end and i > 0]
    return (inside[0], inside[-1] + 1) if inside else None
