"""The ``judge`` stage: a teacher scores every record on the rubric's criteria and thresholds drop the weak.

Each record is shown to the judge ``samples`` times (self-consistency; the MediFlow judge used 5),
each sample a separate request (``sample_index`` and ``seed`` differ, so a server that honours seeds
draws independent samples and the cache keeps each one). Every answer is schema-validated JSON via
:func:`~mediflow.steps.structured.ask_json` (correction turns, never regex repair). The valid
samples are aggregated per criterion (mean or median) into the released columns (``quality``,
``alignment``, ``coherence``, ``realism``, ``difficulty``); ``judge_spread`` is the largest standard
deviation of a criterion across the samples (0 = the samples agree; high = low confidence) and
``judge_rationale`` the rationale of the sample closest to the aggregate.

Requests go through the same :class:`~mediflow.engine.Engine` as generation: limits, retries, the
error breaker, and a durable cache (``OUT/cache.sqlite`` by default; it sits beside the
published files, which :class:`~mediflow.folders.StagedWriter` replaces atomically, so it
survives both a finished run and a killed one). A rerun therefore re-asks nothing already answered
and, the answers being the same, writes the same records.

With ``mode: batch`` the judge's requests are bought through the provider's batch API first
(:mod:`mediflow.batch.runner`: rounds of passes over the records to judge, each sample and
correction turn a line), and the stage then runs from the cache as it does online.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mediflow.batch.runner import fill_cache_in_batches
from mediflow.engine import Engine
from mediflow.errors import ConfigError
from mediflow.folders import InputData, OutputFolder, check_output
from mediflow.quality.config import JudgeConfig
from mediflow.quality.report import StageReport
from mediflow.quality.rubric import RATIONALE, Rubric, load_rubric
from mediflow.quality.stage import Drops, open_stage, run_stage_async
from mediflow.scale.ray_runner import StepWork, add_stats, check_ray, ray_session, run_step_on_ray
from mediflow.scale.vllm_processor import run_step_on_vllm
from mediflow.steps import Answer, LLMStep, StepResult, ask, open_engine, run_step
from mediflow.steps.structured import CompletesChat
from mediflow.sync import run_sync
from mediflow.teachers.base import ChatRequest
from mediflow.teachers.config import api_key_of
from mediflow.teachers.negotiation import capabilities_by_role

STAGE = "judge"
#: The judge's role in the manifest's ``teacher_capabilities`` (the config key of its teacher section).
ROLE = "judge.teacher"
#: The rule of a record none of whose judge samples gave a valid answer (``on_failure: drop``).
FAILED_RULE = "judge_failed"
SPREAD_COLUMN = "judge_spread"
RATIONALE_COLUMN = "judge_rationale"
#: The record fields the judge prompt shows.
_PROMPT_COLUMNS = ("instruction", "input", "output", "task_type", "output_format")
_REASON_RATIONALE_CHARS = 300


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


class JudgeStep(LLMStep[tuple[dict[str, Any], int], dict[str, Any]]):
    """One judge sample of one record: the rubric's prompt, seeded by the sample, a schema-valid answer."""

    def __init__(self, rubric: Rubric, config: JudgeConfig) -> None:
        self.rubric = rubric
        self.config = config
        self.schema = rubric.answer_schema()
        self.max_corrections = config.max_corrections

    def request(self, row: tuple[dict[str, Any], int]) -> ChatRequest:
        record, sample = row
        return ChatRequest(
            messages=self.rubric.render(record),
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            seed=sample,
            sample_index=sample,
            prompt_version=self.rubric.version,
            response_schema=self.schema,
        )

    def parse(self, row: tuple[dict[str, Any], int], answer: Answer) -> dict[str, Any]:
        return dict(answer.value)


class RecordJudge:
    """Asks the judge about records, ``samples`` requests each, and aggregates the answers."""

    def __init__(self, engine: CompletesChat, rubric: Rubric, config: JudgeConfig, cache: Path | None = None) -> None:
        self.engine = engine
        self.rubric = rubric
        self.config = config
        self.cache = cache
        self.step = JudgeStep(rubric, config)
        self.corrections = 0
        self.failed_samples = 0
        self.ray_usage: dict[str, Any] = {}  # engine: ray: the actors' engine totals, summed over batches
        self.ray_capabilities: list[dict[str, Any]] = []  # engine: ray: what each actor's teacher negotiated, per batch

    async def judge(self, records: Sequence[dict[str, Any]], on_done: Callable[[], None] | None = None) -> list[Judgement]:
        """One judgement per record, in record order.

        Every sample of every record is a row of the step runner: ``batch_records`` records' samples
        run at once as a sliding window (a record starts as soon as an earlier one finishes: no
        batch barrier), and the engine bounds the requests in flight.
        """
        samples = self.config.samples
        rows = ((record, sample) for record in records for sample in range(samples))
        judgements: list[Judgement] = []
        answers: list[StepResult[dict[str, Any]]] = []
        async for answer in self._answers(rows):
            answers.append(answer)
            if len(answers) == samples:
                judgements.append(self._combine(answers))
                answers = []
                if on_done is not None:
                    on_done()
        return judgements

    async def _answers(self, rows: Iterator[tuple[dict[str, Any], int]]) -> AsyncIterator[StepResult[dict[str, Any]]]:
        """The step's results in row order: on this engine, or (``engine: ray``) on Ray actors sharing the cache."""
        if self.config.engine == "local":
            async for answer in run_step(self.engine, self.step, rows, self.config.batch_records * self.config.samples):
                yield answer
            return

        assert self.config.teacher is not None and self.cache is not None
        if self.config.teacher.spec.startswith("vllm:"):  # a GPU teacher: ray.data.llm's vLLM engine processor

            model = self.config.teacher.spec.partition(":")[2]
            for result in await asyncio.to_thread(run_step_on_vllm, list(rows), self.step, model, self.config.ray.vllm):
                yield result
            return
        work = StepWork(self.step, self.config.teacher, self.config.limits, self.cache, self.config.ray.actors, ROLE)
        run = await asyncio.to_thread(run_step_on_ray, list(rows), work, self.config.ray)
        self.ray_usage = add_stats(self.ray_usage, run.session)
        self.ray_capabilities += run.teacher_capabilities
        for result in run.results:
            yield result

    def _combine(self, answers: Sequence[StepResult[dict[str, Any]]]) -> Judgement:
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
    values: np.ndarray = pc.cast(batch.column(name), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    return values


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
        missing: np.ndarray = np.isnan(np.stack([_floats(batch, name) for name in self.rubric.names])).any(axis=0)
        return missing

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


async def _fill_in_batches(data: InputData, folder: OutputFolder, config: JudgeConfig, engine: Engine, stage: JudgeStage) -> dict[str, Any]:
    """``mode: batch``: every sample of every record to judge answered through provider batches, into the cache."""
    assert config.teacher is not None
    step = stage.judge.step

    def rows() -> Iterator[tuple[dict[str, Any], int]]:
        for batch in data.iter_batches():
            todo = np.flatnonzero(stage.pending(batch))
            records = batch.select([c for c in _PROMPT_COLUMNS if c in batch.column_names]).take(pa.array(todo, pa.int64())).to_pylist()
            yield from ((record, sample) for record in records for sample in range(config.samples))

    async def one(row: tuple[dict[str, Any], int]) -> StepResult[dict[str, Any]]:
        return await ask(engine, step, row)

    window = config.batch_records * config.samples
    return await fill_cache_in_batches(folder.root, STAGE, {ROLE: engine}, {ROLE: config.teacher}, config.batch, rows, one, window=window, progress=engine.progress)


def check_config(config: JudgeConfig) -> Rubric:
    """Everything about ``config`` that can be wrong before a request is sent (``curate`` checks it before any stage runs)."""
    rubric = load_rubric(config.rubric)
    unknown = sorted(set(config.thresholds) - set(rubric.names))
    if unknown:
        raise ConfigError(f"judge.thresholds: {', '.join(unknown)} not among the rubric's criteria ({', '.join(rubric.names)})")
    if config.teacher is None:
        raise ConfigError("judge: no teacher (pass --teacher SPEC, or set judge.teacher.spec in the config)")
    api_key_of(config.teacher, "judge.teacher")
    if config.engine == "ray":
        check_ray(config.ray)
    return rubric


def _ray_session_if(config: JudgeConfig) -> contextlib.AbstractContextManager[None]:
    if config.engine == "local":
        return contextlib.nullcontext()

    return ray_session(config.ray)


def check_judge_cache(config: JudgeConfig, source: Path | InputData, out: Path, others: Sequence[Path] = ()) -> None:
    """A ``cache:`` set apart from ``OUT/cache.sqlite`` goes through the one output guard: not an input
    (``source``, ``others``) or the config file, not a file of another run's folder (``out`` is the judge's own)."""
    if config.cache:
        source_path = source.path if isinstance(source, InputData) else Path(source)
        check_output(Path(config.cache), [source_path, *others], what="judge cache", file=True, own=out)


def run_judge(source: Path | InputData, out: Path, config: JudgeConfig, *, overwrite: bool = False) -> StageReport:
    """Judge ``source`` and write ``out`` (kept records with the judge columns, rejects, manifest); works in a notebook."""
    return run_sync(run_judge_async(source, out, config, overwrite=overwrite))


async def run_judge_async(source: Path | InputData, out: Path, config: JudgeConfig, *, overwrite: bool = False) -> StageReport:
    """:func:`run_judge` for callers already running an event loop."""
    rubric = check_config(config)
    assert config.teacher is not None  # check_config said so
    manifest_config = {**config.to_dict(), "rubric_version": rubric.version}
    check_judge_cache(config, source, Path(out))
    # the input is checked and the output folder guarded and locked here, before a teacher starts
    data, folder = open_stage(source, Path(out), STAGE, manifest_config, overwrite=overwrite)
    cache = Path(config.cache) if config.cache else folder.cache_path
    with folder:
        return await _judge_into(data, folder, config, rubric, cache)


async def _judge_into(data: InputData, folder: OutputFolder, config: JudgeConfig, rubric: Rubric, cache: Path) -> StageReport:
    """The judging itself, inside the locked output folder."""
    assert config.teacher is not None
    async with open_engine(config.teacher, cache, config.limits, where=ROLE, progress=config.progress) as engine:
        engine.progress.set_total(data.num_rows, "records")
        judge = RecordJudge(engine, rubric, config, cache)
        stage = JudgeStage(judge, rubric, config, engine.progress)
        batch_report = await _fill_in_batches(data, folder, config, engine, stage) if config.mode == "batch" else None

        async def decide(batch: pa.Table, offset: int) -> tuple[pa.Table, Drops]:
            return await stage.decide(batch)

        def details() -> dict[str, Any]:
            # the stage's last step before it publishes: the manifest also says how the judge was asked
            folder.manifest.teacher_capabilities = capabilities_by_role({ROLE: engine.teacher}, judge.ray_capabilities, folder.previous)
            return {
                **{name: stage.counts[name] for name in ("judged", "already_judged", "failed")},
                "samples": config.samples,
                "failed_samples": judge.failed_samples,
                "correction_turns": judge.corrections,
                "criteria": list(rubric.names),
                "rubric_version": rubric.version,
                "cache": str(cache),
                "usage": engine.stats.as_dict() if config.engine == "local" else judge.ray_usage,
                **({"batch": batch_report} if batch_report is not None else {}),
            }

        with _ray_session_if(config):  # in the main thread: Ray installs its signal handlers
            return await run_stage_async(data, folder, decide, details)
