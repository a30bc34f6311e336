"""Micro-batching on an event loop, for serve's requests and the `hf` generator's calls.

Callers on the loop `await batcher.submit(item)`. While a batch runs on the worker thread,
new items wait; then the oldest waiting item and those after it that share its key (up to
`batch_size`) run as the next batch, in one call of `run`. Each caller's future gets its own
result, or the batch's exception. An item that `dropped` marks (its caller went away) is
skipped before it starts and its future cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def _same_key(_item: Any) -> Hashable:
    return None


def _kept(_item: Any) -> bool:
    return False


class MicroBatcher(Generic[Item, Result]):
    """Items submitted from the event loop, run in batches by `run` on `executor`."""

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Result]],
        batch_size: int,
        executor: Executor,
        key: Callable[[Item], Hashable] = _same_key,
        dropped: Callable[[Item], bool] = _kept,
    ) -> None:
        self.run, self.batch_size, self.executor = run, max(1, batch_size), executor
        self.key, self.dropped = key, dropped
        self.pending: list[tuple[Item, asyncio.Future]] = []
        self.task: asyncio.Task | None = None
        self.sizes: list[int] = []  # sizes of the batches run, for reports and tests

    async def submit(self, item: Item) -> Result:
        """The item's result, once the batch it joins has run."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            await asyncio.sleep(0)  # items submitted in this same turn join the batch
            batch = self._next_batch()
            if not batch:
                break
            self.sizes.append(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - every waiting caller gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        """Take the next batch off the queue, dropping items whose callers went away."""
        for item, fut in self.pending:
            if self.dropped(item):
                fut.cancel()  # nothing to compute for it
        self.pending = [p for p in self.pending if not self.dropped(p[0])]
        if not self.pending:
            return []
        key = self.key(self.pending[0][0])
        batch = [p for p in self.pending if self.key(p[0]) == key][: self.batch_size]
        taken = {id(fut) for _, fut in batch}
        self.pending = [p for p in self.pending if id(p[1]) not in taken]
        return batch
