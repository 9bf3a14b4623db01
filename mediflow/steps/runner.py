"""The runner: many rows through one function or one :class:`~mediflow.steps.contract.LLMStep`, concurrently, in order.

:func:`map_ordered` is a sliding window: at most ``window`` rows are being worked on at once, a row
starts the moment an earlier one finishes (no batch barrier: a slow answer never holds back the
next row), and results come out in row order, buffering at most ``ahead`` finished rows behind a
slow one so memory stays bounded. The first failure (a teacher that refused the run, a stopped
engine, a bug) cancels every row still running and is raised at once; what finished before it was
already cached by the engine, so a rerun pays only for the rest.

In batch mode a row whose answer is not cached yet raises :class:`~mediflow.engine.deferral.Deferred`.
That is no failure: the other rows run on (and record their own misses for the same batch), and
the deferral is raised in the row's turn, once they are done. :func:`gather_all` does the same for
a fixed set of awaitables.
"""

from __future__ import annotations

import asyncio
import typing
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

from mediflow.engine.deferral import Deferred
from mediflow.steps.contract import LLMStep, Row, StepResult, Value, ask
from mediflow.steps.structured import CompletesChat

Item = TypeVar("Item")
Result = TypeVar("Result")


async def map_ordered(function: Callable[[Item], Awaitable[Result]], items: Iterable[Item], window: int, *, ahead: int | None = None) -> AsyncIterator[Result]:
    """``function(item)`` for every item, at most ``window`` at once, yielded in item order (see the module docstring)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    ahead = max(ahead or 4 * window, window)
    running = asyncio.Semaphore(window)
    failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def one(item: Item) -> Result:
        async with running:
            try:
                return await function(item)
            except Deferred:
                raise  # batch mode: not a failure; raised in this row's turn
            except Exception as exc:
                if not failed.done():
                    failed.set_result(exc)
                raise

    pending: deque[asyncio.Task[Result]] = deque()
    try:
        for item in items:
            pending.append(asyncio.create_task(one(item)))
            while pending and (len(pending) >= ahead or pending[0].done()):
                yield await _next(pending, failed)
        while pending:
            yield await _next(pending, failed)
    except Deferred:
        await asyncio.gather(*pending, return_exceptions=True)  # the other rows record their misses too
        raise
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _next(pending: deque[asyncio.Task[Result]], failed: asyncio.Future[BaseException]) -> Result:
    """The head's result, or the first failure of any row as soon as it happens."""
    head = pending[0]
    await asyncio.wait([head, typing.cast("asyncio.Future[Result]", failed)], return_when=asyncio.FIRST_COMPLETED)
    if failed.done() and not head.done():
        raise failed.result()
    pending.popleft()
    return head.result()


async def gather_all(*awaitables: Awaitable[Result]) -> list[Result]:
    """Every awaitable run to its end, then their results in order, or the first exception raised.

    Unlike ``asyncio.gather``, no sibling is left running on its own when one fails, and in batch
    mode every sibling records its own misses before the first :class:`Deferred` is raised.
    """
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return typing.cast(list[Result], results)


async def run_step(engine: CompletesChat, step: LLMStep[Row, Value], rows: Iterable[Row], window: int) -> AsyncIterator[StepResult[Value]]:
    """Every row through ``step`` on ``engine``, ``window`` rows at once, results in row order."""
    async for result in map_ordered(lambda row: ask(engine, step, row), rows, window):
        yield result
