"""`hf` generator: a local transformers model (folder or hub id), no server needed.

The same prompts, parsing and cache as the `openai` backend. Calls issued concurrently by
the pipeline are gathered into batches and generated together with left padding
(`ragtune.generation.generate`, greedy) on one worker thread. Prompts go through the
model's chat template when it has one, else a plain transcript (see `ragtune.serve`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ragtune.config import SynthConfig
from ragtune.errors import RagtuneError
from ragtune.records import Chunk
from ragtune.synth.base import register_generator
from ragtune.synth.llm import LLMGenerator, Reply


class HFComplete:
    """Micro-batching `complete`: requests that arrive while a batch runs form the next one."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int, batch_size: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, max(1, batch_size)
        self.pending: list[tuple[list[int], asyncio.Future]] = []
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-hf")
        self.task: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the batches run, for reports and tests

    async def __call__(self, messages: list[dict[str, str]], json_mode: bool) -> Reply:
        from ragtune.serve import render_messages

        ids = render_messages(self.tokenizer, messages, None)
        future = asyncio.get_running_loop().create_future()
        self.pending.append((ids, future))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        from ragtune.generation import generate

        loop = asyncio.get_running_loop()
        while self.pending:
            await asyncio.sleep(0)  # let the calls issued in this same turn join the batch
            batch, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size:]
            self.batches.append(len(batch))
            try:
                texts = await loop.run_in_executor(
                    self.executor, lambda b=batch: generate(self.model, self.tokenizer, [ids for ids, _ in b],
                                                            max_new_tokens=self.max_new_tokens,
                                                            batch_size=self.batch_size))
            except Exception as e:  # noqa: BLE001 - every waiting call gets the error
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            for (ids, fut), text in zip(batch, texts, strict=True):
                n_out = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                fut.set_result(Reply(text, len(ids), n_out))

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
    return LLMGenerator(name="hf", cfg=greedy, corpus=corpus, model_id=str(cfg.model),
                        make_complete=lambda: HFComplete(model, tokenizer, cfg.max_tokens, cfg.batch_size))
