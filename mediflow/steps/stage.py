"""One LLM stage in one call, and the one place a stage's teacher and engine are opened and closed.

:func:`open_engine` is the seam every teacher-calling stage runs on: it builds the teacher its
``teacher:`` section names (:func:`~mediflow.teachers.factory.teacher_from`: the key from the
variable the section names, a pool sized to the limits), puts it behind an
:class:`~mediflow.engine.Engine` (cache, limits, retries, breaker, accounting, progress) and closes
both when the stage ends, however it ends. ``generate``, the judge, the pairs stage's engines, PIT QA
and every Ray actor (``share=``: its slice of the concurrency, the run's shared buckets and cache) open their engine here and
nowhere else, so another way of answering a stage's requests is one change in this function::

    async with open_engine(config.teacher, folder.cache_path, config.limits, where="judge.teacher") as engine:
        results = [r async for r in run_step(engine, step, rows, window)]

:func:`run_llm_stage` is a whole record-to-record stage on top of it: it reads ``source`` with the
one input reader, guards and locks ``out`` (an :class:`~mediflow.folders.OutputFolder`), runs the
step over every record on the engine (a sliding window, in record order), and publishes the records
with the step's value as a new column (or columns) in ``data/``, every row the step rejected in
``rejects.parquet`` with the reason and the raw answer, the teacher's answers in ``cache.sqlite``
(a rerun pays for nothing twice) and the usage and negotiated capabilities in the manifest::

    run_llm_stage("runs/a", "runs/a-summaries", SummaryStep(...), config, kind="summary", column="summary")

With ``mode="batch"`` (and the config's ``batch:`` section) the stage's requests are bought through
the provider's batch API first (:mod:`mediflow.batch.runner`: rounds over the records until the
cache holds every answer), then the records are written from the cache exactly as online.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from mediflow.batch.config import BatchConfig, Mode
from mediflow.engine.config import LimitsConfig, PricesConfig
from mediflow.engine.engine import Engine
from mediflow.engine.limits import SharedLimits
from mediflow.folders import InputData, OutputFolder, StagedWriter, open_input, reject_table
from mediflow.steps.contract import TRUNCATED, LLMStep, StepResult, ask
from mediflow.steps.runner import map_ordered
from mediflow.sync import run_sync
from mediflow.teachers.config import TeacherConfig
from mediflow.teachers.factory import teacher_from
from mediflow.teachers.negotiation import capabilities_by_role

#: Records read from the input at a time (a batch is written once all its records are answered).
_BATCH_ROWS = 2_000


class EngineShare(Protocol):
    """What makes an engine one of several running at once (a Ray actor's: :class:`~mediflow.scale.ray_runner.ActorSession`)."""

    def limits(self, limits: LimitsConfig) -> LimitsConfig:
        """This engine's limits: its share of the concurrency (rpm and tpm stay whole: :attr:`shared_limits` holds them)."""
        ...

    @property
    def shared_limits(self) -> SharedLimits:
        """The rpm and tpm buckets every engine of the run draws from."""
        ...

    def opened(self, engine: Engine) -> None:
        """Told of each engine opened, to flush its answers before results are handed back."""


@asynccontextmanager
async def open_engine(
    section: TeacherConfig,
    cache: Path,
    limits: LimitsConfig | None = None,
    *,
    where: str = "teacher",
    prices: PricesConfig | None = None,
    progress: bool = False,
    share: EngineShare | None = None,
) -> AsyncIterator[Engine]:
    """The engine a stage runs on, for the teacher ``section`` names; the teacher is closed when the block ends.

    ``cache`` is the response cache file (the stage folder's ``cache.sqlite``); it is opened on the
    first request, not here. ``where`` names the section in errors and is the role the manifest's
    ``teacher_capabilities`` files the teacher under. ``share``: this engine is one of several running
    at once (a Ray actor's): it gets its share of the concurrency, draws on the run's shared rpm and
    tpm buckets, and reads ``cache`` read-only while it appends its answers to its own segment.
    """
    limits = limits or LimitsConfig()
    if share is not None:
        limits = share.limits(limits)
    teacher = teacher_from(section, limits, where=where)
    try:
        if share is None:
            engine = Engine(teacher, cache, limits, prices=prices, progress=progress)
        else:
            engine = Engine(teacher, cache, limits, prices=prices, progress=False, shared_limits=share.shared_limits, shared_cache=True)
            share.opened(engine)
        async with engine:
            yield engine
    finally:
        await teacher.aclose()


class TeacherSection(Protocol):
    """A stage's config as :func:`run_llm_stage` reads it: who answers, how hard to push it, and its plain form."""

    @property
    def teacher(self) -> TeacherConfig: ...

    @property
    def limits(self) -> LimitsConfig: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LLMStageResult:
    """What :func:`run_llm_stage` wrote: the folder, its counts, and what the teacher cost."""

    out: Path
    records_in: int
    kept: int
    rejected: int
    usage: dict[str, Any]


def run_llm_stage(
    source: str | Path | InputData,
    out: str | Path,
    step: LLMStep[dict[str, Any], Any],
    section: TeacherSection,
    *,
    kind: str,
    column: str | None = None,
    role: str = "teacher",
    overwrite: bool = False,
    progress: bool = False,
    mode: Mode = "online",
    batch: BatchConfig | None = None,
) -> LLMStageResult:
    """Run ``step`` over every record of ``source`` into the folder ``out`` (see the module docstring); works in a notebook.

    ``kind`` names the stage (the folder's kind, the rejects' ``stage``); the step's value goes into
    the column ``column``, or, with ``column=None``, a mapping value's keys become the columns.
    ``section`` is the stage's config: its ``teacher`` and ``limits`` open the engine and its plain
    form is the manifest's config (a folder holding another config's run is refused unless
    ``overwrite``). ``role`` is the config key of the teacher section, for errors and the manifest.
    ``mode="batch"`` buys the requests through the provider's batch API (``batch``: its settings).
    """
    return run_sync(run_llm_stage_async(source, out, step, section, kind=kind, column=column, role=role, overwrite=overwrite, progress=progress, mode=mode, batch=batch))


async def run_llm_stage_async(
    source: str | Path | InputData,
    out: str | Path,
    step: LLMStep[dict[str, Any], Any],
    section: TeacherSection,
    *,
    kind: str,
    column: str | None = None,
    role: str = "teacher",
    overwrite: bool = False,
    progress: bool = False,
    mode: Mode = "online",
    batch: BatchConfig | None = None,
) -> LLMStageResult:
    """:func:`run_llm_stage` for callers already running an event loop."""
    data = source if isinstance(source, InputData) else open_input(source)
    folder = OutputFolder.open(out, kind=kind, config=section.to_dict(), inputs=[data.ref()], overwrite=overwrite)
    with folder:
        writer = StagedWriter(folder)
        try:
            details: dict[str, Any] = {"stage": kind}
            window = 2 * section.limits.concurrency
            async with open_engine(section.teacher, folder.cache_path, section.limits, where=role, progress=progress) as engine:
                engine.progress.set_total(data.num_rows, "records")
                if mode == "batch":
                    # the batch runner (and the openai SDK it brings) only in batch mode; it runs its passes on this package's runner
                    from mediflow.batch.runner import fill_cache_in_batches

                    async def one(row: dict[str, Any]) -> StepResult[Any]:
                        return await ask(engine, step, row)

                    details["batch"] = await fill_cache_in_batches(folder.root, kind, {role: engine}, {role: section.teacher}, batch or BatchConfig(), lambda: _records(data), one, window=window, progress=engine.progress)
                schema = await _write_results(data, engine, step, writer, kind, column, window=window)
                details["usage"] = usage = engine.stats.as_dict()
                folder.manifest.teacher_capabilities = capabilities_by_role({role: engine.teacher}, previous=folder.previous)
            counts = {"in": data.num_rows, "kept": writer.kept, "rejected": writer.rejected}
            writer.publish(schema, counts, details)
        except BaseException:
            writer.abandon()
            raise
    return LLMStageResult(folder.root, data.num_rows, writer.kept, writer.rejected, usage)


def _records(data: InputData) -> Iterator[dict[str, Any]]:
    return (row for batch in data.iter_batches(batch_rows=_BATCH_ROWS) for row in batch.to_pylist())


async def _write_results(data: InputData, engine: Engine, step: LLMStep[dict[str, Any], Any], writer: StagedWriter, kind: str, column: str | None, window: int) -> pa.Schema:
    """Every record through ``step`` (one sliding window over the whole input, in record order), each input
    batch written as soon as its last record is answered; returns the schema of the kept records."""
    batches: dict[int, pa.Table] = {}

    def rows() -> Iterator[tuple[int, int, dict[str, Any]]]:
        for number, batch in enumerate(data.iter_batches(batch_rows=_BATCH_ROWS)):
            if batch.num_rows:
                batches[number] = batch
                yield from ((number, index, row) for index, row in enumerate(batch.to_pylist()))

    async def answer(item: tuple[int, int, dict[str, Any]]) -> tuple[int, int, StepResult[Any]]:
        number, index, row = item
        result = await ask(engine, step, row)
        engine.progress.advance()
        return number, index, result

    schema = data.schema()
    results: list[StepResult[Any]] = []
    async for number, index, result in map_ordered(answer, rows(), window):
        results.append(result)
        if index == batches[number].num_rows - 1:
            kept = _write_batch(batches.pop(number), results, writer, kind, column)
            schema = kept if writer.kept else schema
            results = []
    return schema


def _write_batch(batch: pa.Table, results: list[StepResult[Any]], writer: StagedWriter, kind: str, column: str | None) -> pa.Schema:
    """The batch's answered records to ``data/`` (with the step's value added), its rejected ones to the rejects."""
    kept = [result.ok for result in results]
    values = [result.value for result, ok in zip(results, kept) if ok]
    records = batch.filter(pa.array(kept))
    added = pa.table({column: pa.array(values)}) if column is not None else pa.Table.from_pylist([_mapping(value) for value in values])
    for name in added.column_names:
        if name in records.column_names:
            records = records.drop_columns([name])
        records = records.append_column(name, added.column(name))
    writer.keep(records)
    failed = [result for result in results if not result.ok]
    if failed:
        rejected = batch.filter(pa.array([not ok for ok in kept]))
        rules = [TRUNCATED if (r.error or "").startswith(TRUNCATED) else f"{kind}_failed" for r in failed]
        reasons = [result.error or "" for result in failed]
        writer.reject(reject_table(rejected, kind, rules, [math.nan] * len(failed), reasons, [None] * len(failed), [r.raw_text for r in failed]))
    return records.schema


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"run_llm_stage(column=None) needs the step to return a mapping of columns, got {type(value).__name__}")
    return value
