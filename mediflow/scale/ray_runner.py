"""``engine: ray``: map units of work (instruction groups, records) over Ray Data actors that each run our Engine.

The driver turns the units into a Ray Dataset and maps it with ``map_batches`` over a fixed pool
of actors. Each actor opens the stage's :class:`EngineWork` once, inside its own event loop: a
teacher, our :class:`~mediflow.engine.Engine` (cache, limits, retries, breaker) and the stage's
code (validation, correction turns). The actor's ``__call__`` is a coroutine, so Ray Data runs
several batches of one actor at once (its async batch concurrency, 4 by default) and a slow
answer holds back no other batch. Results stream back to the driver as batches finish; the
driver writes them through the stage's usual output (the run's shards, the quality stage's
writer), so the output folder is the same as with the local engine.

What makes it survive a real cluster (docs/scaling.md):

- **Paths**: the driver hands actors absolute paths only (the output folder, the cache), and
  each actor checks, before its first request, that the folder it sees is the driver's (a marker
  file with the run's token): a node that does not mount the output folder at the same path
  refuses with one line instead of writing a cache nobody reads.
- **Cache**: actors never write the run's SQLite cache (WAL needs memory shared on one host).
  Each reads it read-only and appends its answers to its own segment, in groups written from a
  thread (a group commit: an answer is handed over once it is on disk, so a kill loses only the
  requests in flight). The driver merges the segments into the cache at the end, and at the start
  of a rerun.
- **Limits**: the run's coordinator actor holds the rpm and tpm buckets; every engine takes
  chunks from them (:mod:`mediflow.scale.coordinator`), so the actors together keep the limits
  and whoever still has work gets all of them. Concurrency is split: ``1 / actors`` each.
- **Totals**: actors report their engines' totals to the coordinator; a dead actor's last report
  stays counted.

Without ``ray.address`` a local Ray is started on this machine (and stopped at the end); with one,
the driver connects to that cluster, whose nodes must have mediflow installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import pickle
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mediflow.engine.cache import merge_segments, segments_dir
from mediflow.engine.config import LimitsConfig
from mediflow.errors import ConfigError, MediflowError
from mediflow.scale.config import RayConfig
from mediflow.scale.coordinator import CoordinatorLimits, start_coordinator
from mediflow.steps import ask
from mediflow.steps.contract import LLMStep, StepResult
from mediflow.steps.runner import map_ordered
from mediflow.steps.stage import open_engine
from mediflow.teachers.config import TeacherConfig
from mediflow.teachers.negotiation import capabilities_by_role

if TYPE_CHECKING:
    from mediflow.engine import Engine
    from mediflow.folders import InputData

logger = logging.getLogger(__name__)

#: Ray Data's default number of batches one async actor works on at once.
BATCHES_PER_ACTOR = 4
#: The marker a driver leaves in its output folder for its actors to find (``.tmp-``: a killed run's is cleaned up).
MARKER_PREFIX = ".tmp-ray-"
#: Seconds between an actor's reports of its totals (each after a flush of its answers).
REPORT_EVERY_S = 1.0
#: Seconds a finished run waits for its actors to let go of their cache segments before it leaves them to the next merge.
RELEASE_WAIT_S = 60.0


class Worker(Protocol):
    """One actor's open stage: maps a unit to its result on the actor's engines."""

    async def run(self, unit: Any) -> Any: ...

    def stats(self) -> dict[str, Any]:
        """The actor's engine totals so far (:meth:`EngineStats.as_dict`), and ``teacher_capabilities``."""
        ...


class EngineWork(Protocol):
    """A stage's work, sent to every actor (it must pickle); ``open()`` runs once per actor, in its event loop,
    and opens its engines with ``open_engine(..., share=actor)``."""

    def open(self, actor: ActorSession) -> AbstractAsyncContextManager[Worker]: ...


@dataclass(frozen=True)
class RunContext:
    """What the driver hands every actor of one run: the coordinator, the actor count, and the folder it must see."""

    coordinator: Any  # the coordinator's ActorHandle
    actors: int
    folder: Path  # absolute
    token: str

    @property
    def marker(self) -> Path:
        return self.folder / f"{MARKER_PREFIX}{self.token}"


class ActorSession:
    """One actor's side of a run: it checks the output folder, shares the run's limits and cache with the engines its
    work opens (``open_engine(..., share=actor)``: an :class:`~mediflow.steps.stage.EngineShare`), and flushes them."""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.id = uuid.uuid4().hex
        self.engines: list[Engine] = []
        self.worker: Worker | None = None  # once the work is open: its totals are what the actor reports
        self._shared_limits = CoordinatorLimits(context.coordinator)
        self._reporting: asyncio.Lock | None = None
        self._report_waiting = False  # a report_soon waits for the one on its way
        self._reports: set[asyncio.Future[None]] = set()

    def check_folder(self) -> None:
        """Refuse to work on a node that does not see the driver's output folder (its marker) at the same path."""
        if not self.context.marker.is_file():
            raise MediflowError(
                f"engine: ray: the actor on {socket.gethostname()} does not see the driver's output folder {self.context.folder} "
                f"(no {self.context.marker.name} there): every node must mount the output folder at the same path (docs/scaling.md)"
            )

    def limits(self, limits: LimitsConfig) -> LimitsConfig:
        """This actor's limits: ``1 / actors`` of the concurrency; rpm and tpm stay whole (the coordinator's buckets hold them)."""
        shared: LimitsConfig = dataclasses.replace(limits, concurrency=max(1, math.ceil(limits.concurrency / self.context.actors)))
        return shared

    @property
    def shared_limits(self) -> CoordinatorLimits:
        """The coordinator's rpm and tpm buckets."""
        return self._shared_limits

    def opened(self, engine: Engine) -> None:
        """An engine this actor opened (:func:`~mediflow.steps.open_engine` with ``share=``): flushed before results go
        back, and its totals reported as soon as its answers are on disk (``Engine.after_flush``)."""
        self.engines.append(engine)
        engine.after_flush = self.report_soon

    async def flush(self) -> None:
        """Every answer this actor received, on disk."""
        for engine in self.engines:
            await engine.flush()

    async def report(self) -> None:
        """This actor's totals to the coordinator now, read when the report leaves (awaited: a call nobody awaits may
        never leave an actor about to return)."""
        if self.worker is None:
            return
        if self._reporting is None:
            self._reporting = asyncio.Lock()
        async with self._reporting:
            self._report_waiting = False  # this report covers whatever asked for one until now
            await self.context.coordinator.report.remote(self.id, self.worker.stats())

    async def report_soon(self) -> None:
        """A report on its way without holding anyone up (``Engine.after_flush``: answers just written). At most one waits
        behind the one being sent, and it reads the totals when it leaves: answers written together cost one report, and
        what an actor had on disk is counted a round trip later, whether or not it dies."""
        if self._report_waiting or self.worker is None:
            return
        self._report_waiting = True
        task = asyncio.ensure_future(self._report_or_warn())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _report_or_warn(self) -> None:
        try:
            await self.report()
        except Exception as exc:  # the batch's own report raises what matters; this one only runs ahead of it
            logger.warning("engine: ray: an actor's report did not reach the coordinator: %s", exc)


def check_ray(config: RayConfig) -> None:
    """Clear errors before anything is written: Ray not installed, a cluster address nothing answers on, or a
    cluster that wants an auth token we do not have.

    Ray itself keeps retrying an unreachable address for minutes, and a cluster refusing our token
    for 20 s before "Failed to connect"; one TCP connection and one GCS call tell at once.
    """
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("engine: ray needs Ray Data: pip install 'mediflow[ray]'") from None
    if config.address in (None, "local"):
        return
    address = _bootstrap_address(config.address)
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except ValueError:
        raise ConfigError(f"ray.address: {config.address!r} is not HOST:PORT, ray://HOST:PORT or auto") from None
    except OSError as exc:
        raise MediflowError(f"ray.address: nothing answers at {address} ({exc.strerror or exc}): is the Ray cluster up?") from None
    if address.startswith("ray://"):
        return  # Ray Client: the server checks the token when ray.init connects
    _check_auth_token(address)


def _bootstrap_address(address: str) -> str:
    """``auto``: the address of the cluster this machine runs (``RAY_ADDRESS``, or the one ``ray start`` recorded)."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if not found:
        raise MediflowError("ray.address: auto, but no Ray cluster runs on this machine (start one with ray start --head, or give its HOST:PORT)")
    return str(found)


def _token_sources() -> list[str]:
    """Where this process would find a Ray auth token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``)."""
    found = []
    if os.environ.get("RAY_AUTH_TOKEN"):
        found.append("RAY_AUTH_TOKEN")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).is_file():
        found.append(f"RAY_AUTH_TOKEN_PATH={path}")
    if (Path.home() / ".ray" / "auth_token").is_file():
        found.append("~/.ray/auth_token")
    return found


_TOKEN_HINT = "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) to the cluster's token and RAY_AUTH_MODE=token"


def _check_auth_token(address: str) -> None:
    """One GCS call: a cluster with token authentication refuses a driver without the token at once."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "token" and not _token_sources():
        raise MediflowError(f"ray.address: RAY_AUTH_MODE=token but no Ray auth token was found: {_TOKEN_HINT}")
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # compiled, no stub entry; what ray.init connects with
    from ray.exceptions import AuthenticationError, RpcError

    try:
        GcsClient(address=address)
    except AuthenticationError:
        if mode != "token":
            have = _token_sources()
            where = f"a token is in {', '.join(have)} but RAY_AUTH_MODE is not token" if have else "no Ray auth token was found"
            raise MediflowError(f"ray.address: the Ray cluster at {address} requires an auth token and {where}: {_TOKEN_HINT}") from None
        raise MediflowError(f"ray.address: the Ray cluster at {address} refused our Ray auth token ({', '.join(_token_sources())}): {_TOKEN_HINT}") from None
    except RpcError as exc:
        raise MediflowError(f"ray.address: {address} answers but is not a Ray cluster ({exc})") from None


@contextlib.contextmanager
def ray_session(config: RayConfig) -> Iterator[None]:
    """Connect to ``config.address``, or start a local Ray; a session this call started is shut down after."""
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        yield
        return
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # "progress bars disabled" and the like: ours is the bar
    try:
        ray.init(
            # "local", not None: Ray's None joins whatever cluster /tmp/ray/ray_current_cluster last recorded
            address=config.address or "local",
            include_dashboard=False,
            configure_logging=True,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    except AuthenticationError as exc:
        raise MediflowError(f"ray.address: the Ray cluster at {config.address} refused the connection ({exc}): {_TOKEN_HINT}") from None
    except ConnectionError as exc:
        raise MediflowError(f"ray.address: cannot connect to the Ray cluster at {config.address}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


class _EngineActor:
    """The Ray Data UDF: opens the work once (lazily, in Ray's event loop for this actor), then maps batches."""

    def __init__(self, work: EngineWork, context: RunContext) -> None:
        self._work = work
        self._session = ActorSession(context)
        self._worker: Worker | None = None
        self._opening: asyncio.Lock | None = None
        self._stack = contextlib.AsyncExitStack()
        self._reporter: asyncio.Task[None] | None = None

    async def _open(self) -> Worker:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._worker is None:
                self._session.check_folder()
                self._worker = await self._stack.enter_async_context(self._work.open(self._session))
                self._session.worker = self._worker
                self._reporter = asyncio.get_running_loop().create_task(self._report_every(REPORT_EVERY_S))
        return self._worker

    async def _report_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self._flush_and_report()
            except OSError as exc:  # kept queued: the batch's own flush raises it
                logger.warning("engine: ray: cannot write the answer segment yet: %s", exc)

    async def _flush_and_report(self) -> None:
        await self._session.flush()
        await self._session.report()

    async def __call__(self, batch: dict[str, np.ndarray] | pa.Table) -> dict[str, Any]:
        worker = await self._open()
        units = batch.to_pylist() if isinstance(batch, pa.Table) else [pickle.loads(blob) for blob in batch["unit"]]
        results = [result async for result in map_ordered(worker.run, units, max(1, len(units)))]
        await self._flush_and_report()  # nothing is handed back before its answers are on disk
        blobs = [pickle.dumps(result) for result in results]
        return {"result": blobs} if isinstance(batch, pa.Table) else {"index": batch["index"], "result": blobs}


@dataclass(frozen=True)
class RecordFiles:
    """A stage's input that Ray reads itself (``read_parquet`` of its files, in order): the driver lists nothing.

    Each unit is one row, a dict of ``columns``; results come back in row order.
    """

    files: tuple[Path, ...]  # absolute
    columns: tuple[str, ...]
    rows: int

    @classmethod
    def of(cls, data: InputData, columns: Sequence[str]) -> RecordFiles | None:
        """``data``'s files with those of ``columns`` every file has; None when a file is not Parquet (JSONL: read by the driver)."""
        if not all(file.suffix == ".parquet" for file in data.files):
            return None
        present = [set(pq.read_schema(file).names) for file in data.files]
        wanted = tuple(column for column in columns if all(column in names for names in present))
        return cls(tuple(Path(os.path.abspath(file)) for file in data.files), wanted, data.num_rows)

    def dataset(self, blocks: int) -> Any:
        """The files as one dataset, read by tasks that reserve no CPU.

        Ray Data gives every map task a whole CPU unless told otherwise, and the actors' fractions
        (``ray.num_cpus``) can leave no node one whole free CPU (3 actors x 0.5 on 2 CPUs; 2 actors
        over two 1-CPU nodes): a read task that waits for one never runs and the run hangs with its
        actors idle. So the reads ask for no CPU. Ray >= 2.5x's DataSourceV2 read path adds a
        ``ListFiles`` task whose CPU nobody can set (``ray_remote_args`` reaches only ``ReadFiles``):
        the read goes through the file-based path, which the read's ``num_cpus`` reaches.
        """
        import ray.data

        context = ray.data.DataContext.get_current()
        v2 = getattr(context, "use_datasource_v2", None)  # read when read_parquet plans the read; older Rays lack it
        if v2 is not None:
            context.use_datasource_v2 = False
        try:
            return ray.data.read_parquet([str(file) for file in self.files], columns=list(self.columns), override_num_blocks=blocks, num_cpus=0)
        finally:
            if v2 is not None:
                context.use_datasource_v2 = v2


@dataclass(frozen=True)
class RecordTable:
    """Records the driver already holds as Arrow (the pairs stage's selection), handed to Ray as Arrow blocks
    (no list of dicts, no pickle per record); each unit is one row, a dict; results come back in row order."""

    table: pa.Table

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)

    def dataset(self, blocks: int) -> Any:
        import ray.data

        size = max(1, math.ceil(self.rows / blocks))
        return ray.data.from_arrow([self.table.slice(start, size) for start in range(0, self.rows, size)] or [self.table])


class RayRun:
    """One mapping of units over actors; iterate :meth:`results`, then read :attr:`session` (summed engine stats).

    ``units`` are a list (each pickled into a dataset row), :class:`RecordFiles` (read by Ray) or a :class:`RecordTable`.
    ``folder`` is the stage's output folder (actors check they see it) and ``cache`` the run's cache
    (``OUT/cache.sqlite``); both are made absolute here, before they reach an actor.
    """

    def __init__(self, units: Sequence[Any] | RecordFiles | RecordTable, work: EngineWork, config: RayConfig, *, folder: Path, cache: Path) -> None:
        self.units = units
        self.work = work
        self.config = config
        self.folder = Path(os.path.abspath(folder))
        self.cache = Path(os.path.abspath(cache))
        self._reports: dict[str, dict[str, Any]] = {}
        self._dataset_id: str | None = None  # the mapped dataset's, once it is built

    @property
    def total(self) -> int:
        """How many units (results) the run has."""
        return self.units.rows if isinstance(self.units, (RecordFiles, RecordTable)) else len(self.units)

    def results(self) -> Iterator[tuple[int, Any]]:
        """``(index of the unit, its result)``, in the order batches finish (:class:`RecordFiles`: in row order)."""
        if not self.total:
            return
        import ray

        merge_segments(self.cache)  # a killed run's answers first; then the file alone holds them all (actors read it on other hosts)
        context = RunContext(start_coordinator(), self.config.actors, self.folder, uuid.uuid4().hex)
        context.marker.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), encoding="utf-8")
        finished = False
        try:
            yield from self._watched(self._mapped(context))
            finished = True
        finally:
            try:
                self._reports = ray.get(context.coordinator.reports.remote(), timeout=30)
            except Exception as exc:  # a lost coordinator loses the totals, never the data
                logger.warning("engine: ray: the actors' totals are lost (%s)", exc)
            ray.kill(context.coordinator)
            context.marker.unlink(missing_ok=True)
            merge_segments(self.cache)
            if finished:
                _merge_once_released(self.cache, RELEASE_WAIT_S)

    def _mapped(self, context: RunContext) -> Iterator[tuple[int, Any]]:
        import ray.data

        data_context = ray.data.DataContext.get_current()
        data_context.enable_progress_bars = False  # the stage shows its own, in its units
        data_context.print_on_execution_start = False
        per_block = self.config.batch_size * BATCHES_PER_ACTOR
        blocks = min(self.total, max(self.config.actors, math.ceil(self.total / per_block)))  # every actor gets work
        if isinstance(self.units, (RecordFiles, RecordTable)):
            data_context.execution_options.preserve_order = True  # results in row order: the driver needs no index
            dataset, batch_format = self.units.dataset(blocks), "pyarrow"
        else:
            rows = [{"index": index, "unit": pickle.dumps(unit)} for index, unit in enumerate(self.units)]
            dataset, batch_format = ray.data.from_items(rows, override_num_blocks=blocks), "numpy"
        mapped = dataset.map_batches(
            _EngineActor,
            fn_constructor_kwargs={"work": self.work, "context": context},
            batch_size=self.config.batch_size,
            batch_format=batch_format,
            compute=ray.data.ActorPoolStrategy(size=self.config.actors),
            num_cpus=self.config.num_cpus,
        )
        self._dataset_id = mapped.get_dataset_id()
        position = 0
        for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            indexes = batch["index"] if "index" in batch else range(position, position + len(batch["result"]))
            position += len(batch["result"])
            for index, blob in zip(indexes, batch["result"]):
                yield int(index), pickle.loads(blob)

    def _watched(self, results: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        """``results``, iterated in a thread while this one watches the cluster: a cluster where no node could hold an
        actor (at the start, or after losing its nodes) is an error after ``ray.resource_timeout`` s (with a warning at
        once), not a silent wait. However the run ends early (that error, an actor's, the consumer gone), the dataset's
        executor is shut down and the thread ends before this returns: nothing keeps scheduling Ray tasks behind it."""
        items: queue.Queue[Any] = queue.Queue(maxsize=2 * BATCHES_PER_ACTOR * max(1, self.config.batch_size))
        done = object()
        stop = threading.Event()

        def hand(item: Any) -> None:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        def pump() -> None:
            try:
                for item in results:
                    hand(item)
                    if stop.is_set():
                        return
                hand(done)
            except BaseException as exc:  # handed to the consumer, which raises it
                hand(exc)

        thread = threading.Thread(target=pump, name="mediflow-ray-results", daemon=True)
        thread.start()
        finished = False
        try:
            yield from self._consumed(items, done)
            finished = True
        finally:
            stop.set()
            if not finished:
                self._stop_execution()
            thread.join(timeout=30)

    def _consumed(self, items: queue.Queue[Any], done: object) -> Iterator[tuple[int, Any]]:
        """The pump's items until ``done``; its exception raised; the no-room watch while nothing comes."""
        starved_since: float | None = None
        while True:
            try:
                item = items.get(timeout=1.0)
            except queue.Empty:
                room = _no_room_for_an_actor(self.config.num_cpus)
                if room is None:
                    starved_since = None
                    continue
                if starved_since is None:
                    starved_since = time.monotonic()
                    logger.warning("engine: ray: waiting for the cluster: %s", room)
                if time.monotonic() - starved_since > self.config.resource_timeout:
                    raise MediflowError(f"engine: ray: no room for an actor for {self.config.resource_timeout:g} s: {room}; answers received so far are cached: rerun when the cluster has room (or lower ray.num_cpus)") from None
                continue
            if item is done:
                return
            if isinstance(item, BaseException):
                raise _user_error(item) from None
            yield item

    def _stop_execution(self) -> None:
        """Shut down the executor of the run's dataset (Ray Data runs it in a thread named after the dataset), so a run
        that ends early leaves no thread scheduling its tasks: its pending reads and actors are cancelled, and the
        iteration that waited on them ends."""
        if self._dataset_id is None:
            return
        prefix = f"StreamingExecutor-{self._dataset_id.rpartition('_')[0]}_"  # the id ends with the execution's index
        for thread in threading.enumerate():
            shutdown = getattr(thread, "shutdown", None)
            if thread.name.startswith(prefix) and callable(shutdown):
                try:
                    shutdown(force=True)
                except Exception as exc:  # the run's own error is the one to show
                    logger.warning("engine: ray: could not stop the dataset's executor: %s", exc)

    @property
    def teacher_capabilities(self) -> list[dict[str, Any]]:
        """What each actor's teachers negotiated with their servers, ``{role: capabilities}`` per actor
        (each actor learns it for itself; :func:`~mediflow.teachers.negotiation.capabilities_by_role` combines them)."""
        return [stats["teacher_capabilities"] for stats in self._reports.values() if stats.get("teacher_capabilities")]

    @property
    def session(self) -> dict[str, Any]:
        """The actors' engine totals, summed (latency is left out: percentiles do not add); an actor that died counts what it reported."""
        total: dict[str, Any] = {}
        for stats in self._reports.values():
            total = add_stats(total, {**stats, "actors": 1})
        return add_stats(total, {})


def _merge_once_released(cache: Path, seconds: float) -> None:
    """After a finished run, merge the segments of actors still shutting down once they let go of them (Ray stops a
    pool's actors after its dataset ends, seconds later on a busy node), so the run's folder holds the one cache file;
    a segment still held after ``seconds`` stays, merged as far as it is written, for the next run to finish."""
    deadline = time.monotonic() + seconds
    while segments_dir(cache).is_dir() and time.monotonic() < deadline:
        time.sleep(0.5)
        merge_segments(cache)


def _no_room_for_an_actor(num_cpus: float) -> str | None:
    """What the cluster has, in words, when no alive node could ever hold an actor (not one has ``num_cpus`` CPUs: the
    worker nodes are gone, or too small); None while some node could (busy nodes free up, actors wait their turn)."""
    import ray

    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]  # ray ships no types for these
    except Exception:  # the cluster itself is going away: the iteration says why
        return None
    sizes = [float(node.get("Resources", {}).get("CPU", 0.0)) for node in nodes]
    if any(size >= num_cpus for size in sizes):
        return None
    return f"an actor needs {num_cpus:g} CPU (ray.num_cpus) on one node; the cluster's {len(nodes)} alive node(s) have {', '.join(f'{size:g}' for size in sizes) or 'no'} CPU"


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
    while next_index < run.total:
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
    where: str = "teacher"

    @contextlib.asynccontextmanager
    async def open(self, actor: ActorSession) -> AsyncIterator[Worker]:
        async with open_engine(self.teacher, self.cache_path, self.limits, where=self.where, share=actor) as engine:
            yield _StepWorker(engine, self.step, self.where)


class _StepWorker:
    def __init__(self, engine: Engine, step: LLMStep[Any, Any], role: str) -> None:
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


def run_step_on_ray(rows: Sequence[Any], work: StepWork, config: RayConfig, *, folder: Path) -> StepRun:
    """Every row through ``work.step`` on Ray actors (see :class:`StepRun`); ``folder`` is the stage's output folder."""
    run = RayRun(rows, work, config, folder=folder, cache=work.cache_path)
    results: list[StepResult[Any] | None] = [None] * len(rows)
    with ray_session(config):
        for index, result in run.results():
            results[index] = result
    missing = [index for index, result in enumerate(results) if result is None]
    if missing:  # never a silent drop: every row has its result, in its place
        raise MediflowError(f"engine: ray: {len(missing)} of {len(rows)} rows came back without a result (first: row {missing[0]})")
    return StepRun([result for result in results if result is not None], run.session, run.teacher_capabilities)
