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
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mediflow.batch.runner import fill_cache_in_batches
from mediflow.engine import Engine
from mediflow.engine.config import LimitsConfig
from mediflow.errors import ConfigError, MediflowError
from mediflow.folders import InputData, OutputFolder, check_output
from mediflow.quality.config import JudgeConfig
from mediflow.quality.report import StageReport
from mediflow.quality.rubric import RATIONALE, Rubric, load_rubric
from mediflow.quality.stage import Drops, open_stage, run_stage_async
from mediflow.records import content_id
from mediflow.scale.ray_runner import RayRun, RecordFiles, StepWork, check_ray, in_order, ray_session
from mediflow.scale.vllm_processor import build_vllm_processor, run_step_on_vllm
from mediflow.steps import Answer, LLMStep, StepResult, ask, open_engine, run_step
from mediflow.steps.structured import CompletesChat
from mediflow.sync import run_sync
from mediflow.teachers.base import ChatRequest, ChatResponse, Teacher
from mediflow.teachers.config import TeacherConfig, api_key_of
from mediflow.teachers.negotiation import capabilities_by_role

if TYPE_CHECKING:
    from mediflow.scale.ray_runner import ActorSession

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
    """Asks the judge about records, ``samples`` requests each, and aggregates the answers.

    Locally every batch's records go through the engine. With ``engine: ray`` the whole input is
    one Ray run opened once for the stage (:meth:`ray_answers`): Ray reads the input files itself,
    actors judge every record that needs it (all its samples), and the answers come back in row
    order, which :meth:`judge_batch` checks against each batch's rows.
    """

    def __init__(self, engine: CompletesChat, rubric: Rubric, config: JudgeConfig, cache: Path | None = None) -> None:
        self.engine = engine
        self.rubric = rubric
        self.config = config
        self.cache = cache
        self.step = JudgeStep(rubric, config)
        self.corrections = 0
        self.failed_samples = 0
        self._ray_answers: AsyncIterator[tuple[str, list[StepResult[dict[str, Any]]] | None]] | None = None
        self._ray_run: Any = None  # the RayRun of the stage (engine: ray, actors): its totals and negotiated capabilities

    async def judge(self, records: Sequence[dict[str, Any]], on_done: Callable[[], None] | None = None) -> list[Judgement]:
        """One judgement per record, in record order, on this process's engine.

        Every sample of every record is a row of the step runner: ``batch_records`` records' samples
        run at once as a sliding window (a record starts as soon as an earlier one finishes: no
        batch barrier), and the engine bounds the requests in flight.
        """
        samples = self.config.samples
        rows = ((record, sample) for record in records for sample in range(samples))
        judgements: list[Judgement] = []
        answers: list[StepResult[dict[str, Any]]] = []
        async for answer in run_step(self.engine, self.step, rows, self.config.batch_records * self.config.samples):
            answers.append(answer)
            if len(answers) == samples:
                judgements.append(self._combine(answers))
                answers = []
                if on_done is not None:
                    on_done()
        return judgements

    def ray_answers(self, data: InputData, folder: Path) -> None:
        """``engine: ray``: start the stage's one Ray run over all of ``data`` (inside a Ray session)."""
        assert self.config.teacher is not None and self.cache is not None
        columns = [*_PROMPT_COLUMNS, *self.rubric.names]
        model = vllm_model(self.config)
        if model is not None:
            self._ray_answers = self._vllm_answers(data, model)
            return
        work = JudgeWork(self.step, self.config.teacher, self.config.limits, self.cache, self.config.samples, tuple(self.rubric.names), self.config.rejudge)
        files = RecordFiles.of(data, columns)
        units: Any = files if files is not None else data.read(columns).to_pylist()  # JSONL input: read by the driver
        self._ray_run = RayRun(units, work, self.config.ray, folder=folder, cache=self.cache)
        self._ray_answers = in_order(self._ray_run)

    async def _vllm_answers(self, data: InputData, model: str) -> AsyncIterator[tuple[str, list[StepResult[dict[str, Any]]] | None]]:
        """The vLLM processor's answers for every record, in row order (one processor, built once, for the whole input)."""

        records = data.read([*_PROMPT_COLUMNS, *self.rubric.names]).to_pylist()
        todo = [index for index, record in enumerate(records) if _needs_judging(record, self.rubric.names, self.config.rejudge)]
        rows = [(records[index], sample) for index in todo for sample in range(self.config.samples)]
        processor = build_vllm_processor(model, self.config.ray.vllm)
        answered = dict(await asyncio.to_thread(lambda: list(run_step_on_vllm(rows, self.step, processor))))
        samples = {index: [answered[n * self.config.samples + sample] for sample in range(self.config.samples)] for n, index in enumerate(todo)}
        for index, record in enumerate(records):
            yield _record_key(record), samples.get(index)

    async def judge_batch(self, batch: pa.Table, todo: np.ndarray, on_done: Callable[[], None]) -> list[Judgement]:
        """``engine: ray``: the judgements of ``batch``'s rows ``todo``, from the stage's Ray run (one answer per row, in order)."""
        assert self._ray_answers is not None
        keys = [_record_key(record) for record in batch.select([c for c in _PROMPT_COLUMNS if c in batch.column_names]).to_pylist()]
        answers = [await anext(self._ray_answers) for _ in keys]
        if [key for key, _ in answers] != keys:  # never a misaligned score
            raise MediflowError("engine: ray: the judge's answers came back out of row order")
        judgements = []
        for row in todo.tolist():
            results = answers[row][1]
            if results is None:
                raise MediflowError(f"engine: ray: row {row} of a batch was not judged by the actors but needs judging")
            judgements.append(self._combine(results))
            on_done()
        return judgements

    async def finish_ray(self) -> None:
        """``engine: ray``: wait for the stage's Ray run to end (its answers merged into the cache, its totals in)."""
        if self._ray_answers is not None:
            async for _ in self._ray_answers:
                raise MediflowError("engine: ray: the judge's Ray run gave more answers than the input has rows")

    @property
    def ray_usage(self) -> dict[str, Any]:
        """``engine: ray``: the actors' engine totals."""
        return self._ray_run.session if self._ray_run is not None else {}

    @property
    def ray_capabilities(self) -> list[dict[str, Any]]:
        """``engine: ray``: what each actor's teacher negotiated with its server."""
        return self._ray_run.teacher_capabilities if self._ray_run is not None else []

    def _combine(self, answers: Sequence[StepResult[dict[str, Any]]]) -> Judgement:
        self.corrections += sum(answer.corrections for answer in answers)
        valid = [answer.value for answer in answers if answer.value is not None]
        self.failed_samples += len(answers) - len(valid)
        if not valid:
            return Judgement(None, error=f"all {len(answers)} judge samples failed; last: {answers[-1].error}")
        return aggregate(valid, self.rubric.names, self.config.aggregate)


def _record_key(record: dict[str, Any]) -> str:
    """What identifies a record to the judge (the columns its prompt shows): checks that answers and rows line up."""
    return content_id(*(str(record.get(column) or "") for column in _PROMPT_COLUMNS))


def _needs_judging(record: dict[str, Any], criteria: Sequence[str], rejudge: bool) -> bool:
    """The rule of :meth:`JudgeStage.pending` for one row: all with ``rejudge``, else those missing any criterion's score."""
    return rejudge or any(record.get(name) is None or record.get(name) != record.get(name) for name in criteria)


@dataclass(frozen=True)
class JudgeWork:
    """``engine: ray``: what an actor needs to judge whole records (every sample) on its own engine; it must pickle."""

    step: JudgeStep
    teacher: TeacherConfig
    limits: LimitsConfig
    cache: Path
    samples: int
    criteria: tuple[str, ...]
    rejudge: bool

    @contextlib.asynccontextmanager
    async def open(self, actor: ActorSession) -> AsyncIterator[_JudgeWorker]:

        async with StepWork(self.step, self.teacher, self.limits, self.cache, ROLE).open(actor) as steps:
            yield _JudgeWorker(steps, self)


class _JudgeWorker:
    def __init__(self, steps: Any, work: JudgeWork) -> None:
        self.steps = steps
        self.work = work

    async def run(self, record: dict[str, Any]) -> tuple[str, list[StepResult[dict[str, Any]]] | None]:
        """The record's key, and its samples' results (None: already judged, nothing asked)."""
        if not _needs_judging(record, self.work.criteria, self.work.rejudge):
            return _record_key(record), None
        results = await asyncio.gather(*(self.steps.run((record, sample)) for sample in range(self.work.samples)))
        return _record_key(record), list(results)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.steps.stats()
        return stats


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
        if self.config.engine == "ray":
            judgements = await self.judge.judge_batch(batch, todo, on_done=lambda: self.progress.advance(1))
        else:
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


def vllm_model(config: JudgeConfig) -> str | None:
    """The model path of a ``vllm:PATH`` judge on ``engine: ray`` (ray.data.llm's processor loads it on the GPU
    nodes, never in the driver), made absolute when it names a folder here; else None."""
    if config.engine != "ray" or config.teacher is None or not config.teacher.spec.startswith("vllm:"):
        return None
    model = config.teacher.spec.partition(":")[2]
    return os.path.abspath(model) if os.path.exists(model) else model


class _ProcessorTeacher(Teacher):
    """The driver's stand-in for a judge answered by the vLLM processor: it names the model and answers nothing."""

    def __init__(self, model: str) -> None:
        self.name = f"vllm:{model}"
        self.model = model

    async def complete(self, request: ChatRequest) -> ChatResponse:
        raise MediflowError(f"{self.name} answers on the Ray vLLM processor only")

    async def aclose(self) -> None:
        return None


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
    model = vllm_model(config)
    # a vLLM judge on Ray is answered by the processor on the GPU nodes: the driver builds no model, only an
    # engine for the progress bar and the manifest's teacher name
    opened = open_engine(config.teacher, cache, config.limits, where=ROLE, progress=config.progress) if model is None else Engine(_ProcessorTeacher(model), cache, config.limits, progress=config.progress)
    async with opened as engine:
        engine.progress.set_total(data.num_rows, "records")
        judge = RecordJudge(engine, rubric, config, cache)
        stage = JudgeStage(judge, rubric, config, engine.progress)
        batch_report = await _fill_in_batches(data, folder, config, engine, stage) if config.mode == "batch" else None

        async def decide(batch: pa.Table, offset: int) -> tuple[pa.Table, Drops]:
            decided = await stage.decide(batch)
            if offset + batch.num_rows >= data.num_rows:
                await judge.finish_ray()  # the last batch: the Ray run's answers merged and its totals in, before the manifest
            return decided

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
            if config.engine == "ray":
                judge.ray_answers(data, folder.root)  # the stage's one Ray run, over the whole input
            return await run_stage_async(data, folder, decide, details)
