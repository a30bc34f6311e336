"""`hf` generator: a local transformers model (folder or hub id), no server needed.

The same prompts, parsing and cache as the `openai` backend. Calls issued concurrently by
the pipeline are gathered into batches (`ragtune.batching`) and generated together with left
padding (`ragtune.generation.generate`, greedy) on one worker thread. Prompts go through the
model's chat template when it has one, else a plain transcript (`ragtune.prompts.render_messages`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ragtune.batching import MicroBatcher
from ragtune.config import SynthConfig
from ragtune.errors import RagtuneError
from ragtune.llm_client import Reply
from ragtune.prompts import render_messages
from ragtune.records import Chunk
from ragtune.synth.base import register_generator
from ragtune.synth.llm import LLMGenerator


class HFComplete:
    """Micro-batching `complete`: requests that arrive while a batch runs form the next one."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int, batch_size: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, max(1, batch_size)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-hf")
        self.batcher: MicroBatcher[list[int], Reply] = MicroBatcher(self._replies, self.batch_size, self.executor)

    @property
    def batches(self) -> list[int]:
        """Sizes of the batches run, for reports and tests."""
        return self.batcher.sizes

    async def __call__(self, messages: list[dict[str, str]], json_mode: bool) -> Reply:
        return await self.batcher.submit(render_messages(self.tokenizer, messages, None))

    def _replies(self, prompts: list[list[int]]) -> list[Reply]:
        from ragtune.generation import generate  # torch loads only when the hf generator runs

        texts = generate(
            self.model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size
        )
        return [
            Reply(text, len(ids), len(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
            for ids, text in zip(prompts, texts, strict=True)
        ]

    async def aclose(self) -> None:
        self.executor.shutdown(wait=False)


@register_generator("hf")
def make_hf(cfg: SynthConfig, corpus: Sequence[Chunk]) -> LLMGenerator:
    from ragtune.models import load_model

    if not cfg.model:
        raise RagtuneError("the hf generator needs --model (a local model folder or hub id)")
    model, tokenizer = load_model(cfg.model)
    # Generation is greedy, so temperature does not change a reply or its cache key.
    greedy = cfg.model_copy(update={"temperature": 0.0})
    return LLMGenerator(
        name="hf",
        cfg=greedy,
        corpus=corpus,
        model_id=str(cfg.model),
        make_complete=lambda: HFComplete(model, tokenizer, cfg.max_tokens, cfg.batch_size),
    )
