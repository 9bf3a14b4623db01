"""Gather requests that arrive concurrently into batches for a blocking batch call.

Offline engines (vLLM's ``LLM.chat``) are fastest when given many prompts at once, while the
engine sends requests one by one. The batcher collects whatever arrives within a short window
(or until ``max_batch``), runs the batch in a worker thread so the event loop keeps moving, and
hands each caller its own result. Requests arriving while a batch runs form the next batch, so
there is no fixed barrier: the device is kept busy as long as requests keep coming.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """``await submit(item)`` -> that item's result from ``run_batch(items)`` (a blocking function)."""

    def __init__(self, run_batch: Callable[[Sequence[Item]], Sequence[Result]], *, window: float = 0.02, max_batch: int = 256) -> None:
        self._run_batch = run_batch
        self._window = window
        self._max_batch = max_batch
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._worker: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self.batch_sizes: list[int] = []

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            if len(self._queue) < self._max_batch:
                await asyncio.sleep(self._window)  # let concurrent callers join this batch
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            batch = [(item, future) for item, future in batch if not future.cancelled()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                results = await asyncio.to_thread(self._run_batch, [item for item, _ in batch])
            except Exception as exc:  # the whole batch failed: every caller sees why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def aclose(self) -> None:
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)
