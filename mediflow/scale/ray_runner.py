"""``engine: ray``: map units of work (instruction groups, records) over Ray Data actors that each run our Engine.

The driver turns the units into a Ray Dataset and maps it with ``map_batches`` over a fixed pool
of actors. Each actor opens the stage's :class:`EngineWork` once, inside its own event loop: a
teacher, our :class:`~mediflow.engine.Engine` (cache, limits, retries, breaker) and the stage's
code (validation, correction turns). The actor's ``__call__`` is a coroutine, so Ray Data runs
several batches of one actor at once (its async batch concurrency, 4 by default) and a slow
answer holds back no other batch. Results stream back to the driver as batches finish; the
driver writes them through the stage's usual output (the run's shards, the quality stage's
writer), so the output folder is the same as with the local engine.

Limits: every actor's engine gets ``1 / actors`` of the run's concurrency, rpm and tpm (also of
the limits a server reports in ``x-ratelimit-*`` headers), so the actors together keep the run's
limits without a limiter actor on every request's path. The cost: an actor that runs out of work
early leaves its share unused for the tail of the run.

Cache: all actors write answers to the same SQLite file (WAL, one transaction per answer), so a
killed run loses only the requests in flight, and a rerun, local or on Ray, pays for nothing
twice. On a multi-node cluster the output folder must be on a file system every node mounts with
working POSIX locks (see docs/scaling.md).

Without ``ray.address`` a local Ray is started on this machine (and stopped at the end); with one,
the driver connects to that cluster, whose nodes must have mediflow installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import pickle
import socket
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mediflow.engine.config import LimitsConfig
from mediflow.errors import ConfigError, MediflowError
from mediflow.scale.config import RayConfig
from mediflow.steps import ask
from mediflow.steps.contract import LLMStep, StepResult
from mediflow.steps.runner import map_ordered
from mediflow.steps.stage import open_engine
from mediflow.teachers.config import TeacherConfig
from mediflow.teachers.negotiation import capabilities_by_role

#: Ray Data's default number of batches one async actor works on at once.
BATCHES_PER_ACTOR = 4


class Worker(Protocol):
    """One actor's open stage: maps a unit to its result on the actor's engine."""

    async def run(self, unit: Any) -> Any: ...

    def stats(self) -> dict[str, Any]:
        """The actor's engine totals so far (:meth:`EngineStats.as_dict`)."""
        ...


class EngineWork(Protocol):
    """A stage's work, sent to every actor (it must pickle); ``open()`` runs once per actor, in its event loop."""

    def open(self) -> AbstractAsyncContextManager[Worker]: ...


def check_ray(config: RayConfig) -> None:
    """Clear errors before anything is written: Ray not installed, or a cluster address nothing answers on.

    Ray itself keeps retrying an unreachable address for minutes; one TCP connection tells at once.
    """
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("engine: ray needs Ray Data: pip install 'mediflow[ray]'") from None
    if config.address in (None, "auto", "local"):
        return
    host, _, port = config.address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except ValueError:
        raise ConfigError(f"ray.address: {config.address!r} is not HOST:PORT, ray://HOST:PORT or auto") from None
    except OSError as exc:
        raise MediflowError(f"ray.address: nothing answers at {config.address} ({exc.strerror or exc}): is the Ray cluster up?") from None


@contextlib.contextmanager
def ray_session(config: RayConfig) -> Iterator[None]:
    """Connect to ``config.address``, or start a local Ray; a session this call started is shut down after."""
    import ray

    if ray.is_initialized():
        yield
        return
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # "progress bars disabled" and the like: ours is the bar
    try:
        ray.init(
            address=config.address,
            include_dashboard=False,
            configure_logging=True,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    except ConnectionError as exc:
        raise MediflowError(f"ray.address: cannot connect to the Ray cluster at {config.address}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


class _EngineActor:
    """The Ray Data UDF: opens the work once (lazily, in Ray's event loop for this actor), then maps batches."""

    def __init__(self, work: EngineWork) -> None:
        self._work = work
        self._worker: Worker | None = None
        self._opening: asyncio.Lock | None = None
        self._stack = contextlib.AsyncExitStack()
        self._id = uuid.uuid4().hex

    async def _open(self) -> Worker:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._worker is None:
                self._worker = await self._stack.enter_async_context(self._work.open())
        return self._worker

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        worker = await self._open()
        units = [pickle.loads(blob) for blob in batch["unit"]]
        results = [result async for result in map_ordered(worker.run, units, max(1, len(units)))]
        # The actor's running totals, on every row: the driver keeps the latest per actor.
        stats = json.dumps(worker.stats())
        return {
            "index": batch["index"],
            "result": [pickle.dumps(result) for result in results],
            "actor": [self._id] * len(results),
            "stats": [stats] * len(results),
        }


class RayRun:
    """One mapping of units over actors; iterate :meth:`results`, then read :attr:`session` (summed engine stats)."""

    def __init__(self, units: Sequence[Any], work: EngineWork, config: RayConfig) -> None:
        self.units = units
        self.work = work
        self.config = config
        self._latest: dict[str, dict[str, Any]] = {}

    def results(self) -> Iterator[tuple[int, Any]]:
        """``(index of the unit, its result)``, in the order batches finish (not the units' order)."""
        if not self.units:
            return
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the stage shows its own, in its units
        context.print_on_execution_start = False
        per_block = self.config.batch_size * BATCHES_PER_ACTOR
        rows = [{"index": index, "unit": pickle.dumps(unit)} for index, unit in enumerate(self.units)]
        blocks = min(len(rows), max(self.config.actors, math.ceil(len(rows) / per_block)))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        mapped = dataset.map_batches(
            _EngineActor,
            fn_constructor_kwargs={"work": self.work},
            batch_size=self.config.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.config.actors),
            num_cpus=self.config.num_cpus,
        )
        try:
            for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
                for actor, stats in zip(batch["actor"], batch["stats"]):
                    self._keep_latest(str(actor), json.loads(stats))
                for index, blob in zip(batch["index"], batch["result"]):
                    yield int(index), pickle.loads(blob)
        except Exception as exc:
            raise _user_error(exc) from None

    def _keep_latest(self, actor: str, stats: dict[str, Any]) -> None:
        if stats["requests"] + stats["failed_requests"] >= _done(self._latest.get(actor)):
            self._latest[actor] = stats

    @property
    def teacher_capabilities(self) -> list[dict[str, Any]]:
        """What each actor's teachers negotiated with their servers, ``{role: capabilities}`` per actor
        (each actor learns it for itself; :func:`~mediflow.teachers.negotiation.capabilities_by_role` combines them)."""
        return [stats["teacher_capabilities"] for stats in self._latest.values() if stats.get("teacher_capabilities")]

    @property
    def session(self) -> dict[str, Any]:
        """The actors' engine totals, summed (latency is left out: percentiles do not add)."""
        total: dict[str, Any] = {}
        for stats in self._latest.values():
            total = add_stats(total, {**stats, "actors": 1})
        return add_stats(total, {})


async def in_order(run: RayRun) -> AsyncIterator[Any]:
    """The results of ``run`` in unit order, while Ray works in a thread (the event loop stays free).

    Results that come back ahead of an earlier unit wait in memory until it does.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    finished = object()

    def pump() -> None:
        try:
            for item in run.results():
                loop.call_soon_threadsafe(queue.put_nowait, item)
            loop.call_soon_threadsafe(queue.put_nowait, finished)
        except BaseException as exc:  # handed to the consumer, which raises it
            loop.call_soon_threadsafe(queue.put_nowait, exc)

    worker = loop.run_in_executor(None, pump)
    waiting: dict[int, Any] = {}
    next_index = 0
    while next_index < len(run.units):
        item = await queue.get()
        if item is finished:
            break
        if isinstance(item, BaseException):
            raise item
        index, result = item
        waiting[index] = result
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1
    await worker


def add_stats(total: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Two engines' totals (:meth:`EngineStats.as_dict`) added up; latency percentiles, which do not add, are left out."""
    summed: dict[str, Any] = dict(total)
    for name, value in stats.items():
        if name == "errors":
            summed["errors"] = {kind: summed.get("errors", {}).get(kind, 0) + value.get(kind, 0) for kind in {*summed.get("errors", {}), *value}}
        elif name == "cost_usd":
            known = summed.get("cost_usd", 0.0)
            summed["cost_usd"] = None if value is None or known is None else known + value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            summed[name] = summed.get(name, 0) + value
    for name in ("actors", "requests", "cache_hits", "attempts", "retries", "failed_requests", "prompt_tokens", "completion_tokens"):
        summed.setdefault(name, 0)
    summed.setdefault("errors", {})
    summed.setdefault("cost_usd", 0.0)
    return summed


def _done(stats: dict[str, Any] | None) -> int:
    return -1 if stats is None else int(stats["requests"] + stats["failed_requests"])


def _user_error(exc: BaseException) -> BaseException:
    """The actor's own exception (a :class:`MediflowError`, e.g. the breaker's stop) out of Ray's wrappers."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MediflowError):
            return current
        cause = getattr(current, "cause", None)  # ray.exceptions.RayTaskError
        current = cause if isinstance(cause, BaseException) else (current.__cause__ or current.__context__)
    return exc


@dataclass(frozen=True)
class StepWork:
    """Any :class:`~mediflow.steps.LLMStep` on actors: each actor asks ``step`` about its rows on its own engine."""

    step: LLMStep[Any, Any]
    teacher: TeacherConfig
    limits: LimitsConfig
    cache_path: Path
    actors: int
    where: str = "teacher"

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Worker]:
        async with open_engine(self.teacher, self.cache_path, self.limits, where=self.where, actors=self.actors) as engine:
            yield _StepWorker(engine, self.step, self.where)


class _StepWorker:
    def __init__(self, engine: Any, step: LLMStep[Any, Any], role: str) -> None:
        self.engine = engine
        self.step = step
        self.role = role

    async def run(self, row: Any) -> StepResult[Any]:
        return await ask(self.engine, self.step, row)

    def stats(self) -> dict[str, Any]:
        """The engine's running totals, and what this actor's teacher negotiated with the server."""
        return {**self.engine.stats.as_dict(), "teacher_capabilities": capabilities_by_role({self.role: self.engine.teacher})}


@dataclass(frozen=True)
class StepRun:
    """What :func:`run_step_on_ray` brings back: the results in row order, the actors' summed engine
    stats, and what each actor's teacher negotiated (``{role: capabilities}`` per actor)."""

    results: list[StepResult[Any]]
    session: dict[str, Any]
    teacher_capabilities: list[dict[str, Any]]


def run_step_on_ray(rows: Sequence[Any], work: StepWork, config: RayConfig) -> StepRun:
    """Every row through ``work.step`` on Ray actors (see :class:`StepRun`)."""
    run = RayRun(rows, work, config)
    results: list[StepResult[Any] | None] = [None] * len(rows)
    with ray_session(config):
        for index, result in run.results():
            results[index] = result
    return StepRun([result for result in results if result is not None], run.session, run.teacher_capabilities)
