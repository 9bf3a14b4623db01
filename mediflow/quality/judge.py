"""The ``judge`` stage: a teacher scores every record on the rubric's criteria and thresholds drop the weak.

Each record is shown to the judge ``samples`` times (self-consistency; the MediFlow judge used 5),
each sample a separate request (``sample_index`` and ``seed`` differ, so a server that honours seeds
draws independent samples and the cache keeps each one). Every answer is schema-validated JSON via
:func:`~mediflow.pipeline.structured.ask_json` (correction turns, never regex repair). The valid
samples are aggregated per criterion (mean or median) into the released columns (``quality``,
``alignment``, ``coherence``, ``realism``, ``difficulty``); ``judge_spread`` is the largest standard
deviation of a criterion across the samples (0 = the samples agree; high = low confidence) and
``judge_rationale`` the rationale of the sample closest to the aggregate.

Requests go through the same :class:`~mediflow.engine.Engine` as generation: limits, retries, the
error breaker, and a durable cache (``OUT/cache.sqlite`` by default; it sits beside the
published files, which :class:`~mediflow.folders.StagedWriter` replaces atomically, so it
survives both a finished run and a killed one). A rerun therefore re-asks nothing already answered
and, the answers being the same, writes the same records.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mediflow.engine import Engine, EngineConfig
from mediflow.errors import ConfigError
from mediflow.pipeline.structured import CompletesChat, JsonAnswer, ask_json
from mediflow.quality.config import JudgeConfig, as_plain
from mediflow.quality.report import StageReport
from mediflow.quality.rubric import RATIONALE, Rubric, load_rubric
from mediflow.folders import InputData, OutputFolder
from mediflow.quality.stage import Drops, open_stage, run_stage
from mediflow.teachers import make_teacher
from mediflow.teachers.base import ChatRequest

STAGE = "judge"
#: The rule of a record none of whose judge samples gave a valid answer (``on_failure: drop``).
FAILED_RULE = "judge_failed"
SPREAD_COLUMN = "judge_spread"
RATIONALE_COLUMN = "judge_rationale"
#: The record fields the judge prompt shows.
_PROMPT_COLUMNS = ("instruction", "input", "output", "task_type", "output_format")
_REASON_RATIONALE_CHARS = 300

T = TypeVar("T")


@dataclass(frozen=True)
class Judgement:
    """One record's aggregated scores, or the reason the judge gave none."""

    scores: dict[str, float] | None
    spread: float | None = None
    rationale: str | None = None
    samples: int = 0  # valid samples aggregated
    error: str | None = None


def aggregate(answers: Sequence[dict[str, Any]], criteria: Sequence[str], how: str) -> Judgement:
    """Combine valid judge answers: per-criterion mean or median, the largest std as spread, the most typical rationale."""
    matrix = np.array([[float(answer[name]) for name in criteria] for answer in answers])
    center = matrix.mean(axis=0) if how == "mean" else np.median(matrix, axis=0)
    typical = int(np.argmin(np.abs(matrix - center).sum(axis=1)))  # first on ties: deterministic
    return Judgement(
        scores={name: float(value) for name, value in zip(criteria, center)},
        spread=float(matrix.std(axis=0).max()),
        rationale=str(answers[typical][RATIONALE]).strip(),
        samples=len(answers),
    )


async def gather_or_cancel(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather``, except that the first failure cancels the rest (a down teacher stops the batch at once)."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class RecordJudge:
    """Asks the judge about records, ``samples`` requests each, and aggregates the answers."""

    def __init__(self, engine: CompletesChat, rubric: Rubric, config: JudgeConfig) -> None:
        self.engine = engine
        self.rubric = rubric
        self.config = config
        self.schema = rubric.answer_schema()
        self.corrections = 0
        self.failed_samples = 0

    def request(self, record: dict[str, Any], sample: int) -> ChatRequest:
        return ChatRequest(
            messages=self.rubric.render(record),
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            seed=sample,
            sample_index=sample,
            prompt_version=self.rubric.version,
        )

    async def judge(self, records: Sequence[dict[str, Any]], on_done: Callable[[], None] | None = None) -> list[Judgement]:
        """One judgement per record, in record order.

        At most ``batch_records`` records are being judged at a time, as a sliding window: a record
        starts as soon as an earlier one finishes, so a slow answer never holds back the rest (no
        batch barrier). The engine bounds the requests in flight.
        """
        window = asyncio.Semaphore(self.config.batch_records)

        async def one(record: dict[str, Any]) -> Judgement:
            async with window:
                answers = await gather_or_cancel(
                    [ask_json(self.engine, self.request(record, sample), self.schema, self.config.max_corrections) for sample in range(self.config.samples)]
                )
            if on_done is not None:
                on_done()
            return self._combine(answers)

        return await gather_or_cancel([one(record) for record in records])

    def _combine(self, answers: Sequence[JsonAnswer]) -> Judgement:
        self.corrections += sum(answer.corrections for answer in answers)
        valid = [answer.value for answer in answers if answer.value is not None]
        self.failed_samples += len(answers) - len(valid)
        if not valid:
            return Judgement(None, error=f"all {len(answers)} judge samples failed; last: {answers[-1].error}")
        return aggregate(valid, self.rubric.names, self.config.aggregate)


def _floats(batch: pa.Table, name: str) -> np.ndarray:
    """A column as float64 with NaN for nulls (all NaN when absent)."""
    if name not in batch.column_names:
        return np.full(batch.num_rows, np.nan)
    return pc.cast(batch.column(name), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _put(batch: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """Replace or append column ``name``."""
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), pa.field(name, values.type), values)
    return batch.append_column(pa.field(name, values.type), values)


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.float64(), mask=np.isnan(values))


class JudgeStage:
    """The per-batch decision of the judge stage: judge what needs it, add the columns, apply the thresholds."""

    def __init__(self, judge: RecordJudge, rubric: Rubric, config: JudgeConfig, progress: Any) -> None:
        self.judge = judge
        self.rubric = rubric
        self.config = config
        self.progress = progress
        self.counts: Counter[str] = Counter()

    def pending(self, batch: pa.Table) -> np.ndarray:
        """Rows to judge: all with ``rejudge``, else those missing any criterion's score."""
        if self.config.rejudge:
            return np.ones(batch.num_rows, bool)
        return np.isnan(np.stack([_floats(batch, name) for name in self.rubric.names])).any(axis=0)

    async def decide(self, batch: pa.Table) -> tuple[pa.Table, Drops]:
        todo = np.flatnonzero(self.pending(batch))
        self.counts["already_judged"] += batch.num_rows - len(todo)
        self.progress.advance(batch.num_rows - len(todo))
        records = batch.select([c for c in _PROMPT_COLUMNS if c in batch.column_names]).take(pa.array(todo, pa.int64())).to_pylist()
        judgements = await self.judge.judge(records, on_done=lambda: self.progress.advance(1))
        self.counts["judged"] += sum(j.scores is not None for j in judgements)
        self.counts["failed"] += sum(j.scores is None for j in judgements)
        batch = self._with_columns(batch, todo, judgements)
        return batch, self._drops(batch, todo, judgements)

    def _with_columns(self, batch: pa.Table, rows: np.ndarray, judgements: list[Judgement]) -> pa.Table:
        for name in self.rubric.names:
            values = _floats(batch, name)
            values[rows] = [j.scores[name] if j.scores else np.nan for j in judgements]
            batch = _put(batch, name, _nullable(values))
        spread = _floats(batch, SPREAD_COLUMN)
        spread[rows] = [j.spread if j.scores else np.nan for j in judgements]
        batch = _put(batch, SPREAD_COLUMN, _nullable(spread))
        rationale = batch.column(RATIONALE_COLUMN).to_pylist() if RATIONALE_COLUMN in batch.column_names else [None] * batch.num_rows
        for row, judgement in zip(rows.tolist(), judgements):
            rationale[row] = judgement.rationale
        return _put(batch, RATIONALE_COLUMN, pa.array(rationale, pa.string()))

    def _drops(self, batch: pa.Table, judged_rows: np.ndarray, judgements: list[Judgement]) -> Drops:
        errors = {row: j.error for row, j in zip(judged_rows.tolist(), judgements) if j.scores is None}
        scores = {name: _floats(batch, name) for name in self.rubric.names}
        spread = _floats(batch, SPREAD_COLUMN)
        rationale = batch.column(RATIONALE_COLUMN).to_pylist()
        thresholds = [(name, self.config.thresholds[name]) for name in self.rubric.names if name in self.config.thresholds]
        drops = Drops.none(batch.num_rows)
        for row in range(batch.num_rows):
            if row in errors:
                if self.config.on_failure == "drop":
                    drops.mask[row] = True
                    drops.rule.append(FAILED_RULE)
                    drops.score.append(np.nan)
                    drops.reason.append(f"judge: {errors[row]}")
                    drops.match.append(None)
                continue
            below = [(name, scores[name][row], minimum) for name, minimum in thresholds if scores[name][row] < minimum]
            if not below:
                continue
            name, score, _ = below[0]
            failed = "; ".join(f"{n} {s:.2f} < {m:g}" for n, s, m in below)
            confidence = f" (spread {spread[row]:.2f})" if not np.isnan(spread[row]) else ""
            why = f": {rationale[row][:_REASON_RATIONALE_CHARS]}" if rationale[row] else ""
            drops.mask[row] = True
            drops.rule.append(f"min_{name}")
            drops.score.append(float(score))
            drops.reason.append(f"{failed}{confidence}{why}")
            drops.match.append(None)
        return drops


def _api_key(config: JudgeConfig) -> str | None:
    if config.api_key or not config.api_key_env:
        return config.api_key
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ConfigError(f"judge.api_key_env: the environment variable {config.api_key_env} is not set")
    return key


def _engine_config(config: JudgeConfig) -> EngineConfig:
    try:
        return EngineConfig(
            concurrency=config.concurrency,
            rpm=config.rpm,
            tpm=config.tpm,
            max_retries=config.max_retries,
            request_timeout=config.request_timeout,
            progress=config.progress,
        )
    except ConfigError as exc:
        raise ConfigError(f"judge: {exc}") from None


def run_judge(source: Path | InputData, out: Path, config: JudgeConfig, *, overwrite: bool = False) -> StageReport:
    """Judge ``source`` and write ``out`` (kept records with the judge columns, rejects, manifest)."""
    return asyncio.run(arun_judge(source, out, config, overwrite=overwrite))


def check_config(config: JudgeConfig) -> Rubric:
    """Everything about ``config`` that can be wrong before a request is sent (``curate`` checks it before any stage runs)."""
    rubric = load_rubric(config.rubric)
    unknown = sorted(set(config.thresholds) - set(rubric.names))
    if unknown:
        raise ConfigError(f"judge.thresholds: {', '.join(unknown)} not among the rubric's criteria ({', '.join(rubric.names)})")
    if not config.teacher:
        raise ConfigError("judge: no teacher (pass --teacher SPEC, or set judge.teacher in the config)")
    _engine_config(config)
    _api_key(config)
    return rubric


async def arun_judge(source: Path | InputData, out: Path, config: JudgeConfig, *, overwrite: bool = False) -> StageReport:
    """:func:`run_judge` for callers already inside an event loop (notebooks)."""
    rubric = check_config(config)
    engine_config, api_key = _engine_config(config), _api_key(config)
    manifest_config = {**as_plain(config), "rubric_version": rubric.version}
    # the input is checked and the output folder guarded and locked here, before a teacher starts
    data, folder = open_stage(source, out, STAGE, manifest_config, overwrite=overwrite)
    cache = Path(config.cache) if config.cache else folder.cache_path
    with folder:
        return await _judge_into(data, folder, config, rubric, engine_config, api_key, cache)


async def _judge_into(data: InputData, folder: OutputFolder, config: JudgeConfig, rubric: Rubric, engine_config: EngineConfig, api_key: str | None, cache: Path) -> StageReport:
    teacher = make_teacher(config.teacher, base_url=config.base_url, api_key=api_key)
    try:
        async with Engine(teacher, cache, engine_config) as engine:
            engine.progress.set_total(data.num_rows, "records")
            judge = RecordJudge(engine, rubric, config)
            stage = JudgeStage(judge, rubric, config, engine.progress)
            loop = asyncio.get_running_loop()

            def decide(batch: pa.Table, offset: int) -> tuple[pa.Table, Drops]:
                return asyncio.run_coroutine_threadsafe(stage.decide(batch), loop).result()

            def details() -> dict[str, Any]:
                return {
                    **{name: stage.counts[name] for name in ("judged", "already_judged", "failed")},
                    "samples": config.samples,
                    "failed_samples": judge.failed_samples,
                    "correction_turns": judge.corrections,
                    "criteria": list(rubric.names),
                    "rubric_version": rubric.version,
                    "cache": str(cache),
                    "usage": engine.stats.as_dict(),
                }

            return await asyncio.to_thread(run_stage, data, folder, decide, details)
    finally:
        await teacher.aclose()
