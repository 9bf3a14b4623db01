"""Build DPO preference pairs from a MediFlow output: select, corrupt or collect, judge, keep or drop.

The run::

    IN  (records, ideally judged) --select best--> records tried
        inject:      one named error per record (teacher rewrite or code swap) -> hard checks (JSON:
                     tell apart, and differ the way the error kind says)
        candidates:  original + other sources' answers
        -> comparative judge (seeded random order) -> margin rule -> pair or drop(reason)
    OUT/data/part-*.parquet    pairs in TRL's preference format (+ released columns)
        rejects.parquet        every record tried and not paired, with the drop reason
        manifest.json          yield (kept / tried), drops by reason, config, prompt versions, usage,
                               what each role's teacher negotiated with its server (teacher_capabilities)
        cache.sqlite           every teacher answer, every engine's (a rerun re-pays nothing)

Every record tried ends up in exactly one of the two files, so ``kept + dropped == tried``.

With ``mode: batch`` every teacher call (rewrites, candidate answers, the pair judge, their
correction turns) is bought through the providers' batch APIs first, in rounds, one batch file per
distinct teacher (:mod:`mediflow.batch.runner`); the pairs are then made from the cache as online.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mediflow.batch.runner import fill_cache_in_batches
from mediflow.engine import Engine
from mediflow.folders import InputData, OutputFolder, StagedWriter, open_input, reject_table
from mediflow.preference.candidates import AnswerSource, answer
from mediflow.preference.config import PairsConfig
from mediflow.preference.error_kinds import ErrorKind, applicable_kinds, choose_kind, load_error_kinds
from mediflow.preference.hard_checks import KIND_MISMATCH, fits_kind, tell_apart
from mediflow.preference.injection import INJECTION_FAILED, INJECTION_PROMPT, ErrorInjector, InjectionStep
from mediflow.preference.judge import PAIR_JUDGE_PROMPT, PairJudge, PairJudgeStep
from mediflow.preference.margins import IDENTICAL_TEXT, PairDecision, ScoredCandidate, best_worst_pair, confirmed_worse, same_text
from mediflow.preference.rows import PAIR_SCHEMA, pair_row
from mediflow.preference.selection import Selection, select_best
from mediflow.prompts import load_prompts
from mediflow.records import JUDGE_SCORE_COLUMNS, RELEASED_COLUMNS
from mediflow.scale.ray_runner import RayRun, RecordTable, add_stats, check_ray, in_order, ray_session
from mediflow.steps import gather_all, map_ordered, open_engine
from mediflow.sync import run_sync
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers.config import TeacherConfig, api_key_of
from mediflow.teachers.negotiation import capabilities_by_role

if TYPE_CHECKING:
    from mediflow.scale.ray_runner import ActorSession

#: Drop reasons decided here (the margin rule, the hard checks and injection add their own).
NO_APPLICABLE_KIND = "no_applicable_error_kind"
JUDGE_FAILED = "judge_failed"
STAGE = "pairs"
_CHUNK = 512
_INPUT_COLUMNS = ["id", *RELEASED_COLUMNS, "document_id", "document_category", "teacher", *JUDGE_SCORE_COLUMNS, "case"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one record: a pair row, or a drop reason (with a detail)."""

    row: dict[str, Any] | None = None
    drop_reason: str | None = None
    detail: str | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class PairsResult:
    """The run's yield, as written to the manifest."""

    out_dir: Path
    tried: int
    kept: int
    dropped: dict[str, int]
    manifest: dict[str, Any]

    @property
    def yield_rate(self) -> float:
        return self.kept / self.tried if self.tried else 0.0


def build_pairs(input_path: str | Path, out_dir: str | Path, config: PairsConfig | None = None, *, overwrite: bool = False) -> PairsResult:
    """Build pairs from a MediFlow output folder or Parquet file into ``out_dir`` (see the module docstring); works in a notebook."""
    return run_sync(build_pairs_async(input_path, out_dir, config, overwrite=overwrite))


async def build_pairs_async(input_path: str | Path, out_dir: str | Path, config: PairsConfig | None = None, *, overwrite: bool = False) -> PairsResult:
    """:func:`build_pairs` for callers already running an event loop."""
    config = config or PairsConfig()
    data = open_input(input_path)  # a clear error for a missing, empty or malformed input, before any teacher starts
    for role, section in _roles(config):
        api_key_of(section, role)  # an unset key variable fails here, before anything is written
    if config.engine == "ray":
        check_ray(config.ray)
    selection, tried = _tried(data, config)
    schemas = _task_schemas(config)
    prompts = load_prompts(config.prompts_path)
    kinds = load_error_kinds(config.error_kinds_path)
    folder = OutputFolder.open(Path(out_dir), kind=STAGE, holds="pairs", config=config.to_dict(), inputs=[data.ref()], overwrite=overwrite)
    with folder:
        output = StagedWriter(folder)
        try:
            return await _build(tried, selection, config, folder, output, schemas, prompts, kinds)
        except BaseException:
            output.abandon()
            raise


def _tried(data: InputData, config: PairsConfig) -> tuple[Selection, pa.Table]:
    """The selection, and the records to try in selection order.

    The selection reads only the ids and the judge scores; then only the selected records are read in
    full, so the driver never holds the rest of the input. Input whose ids are not all stored (outside
    data: the ids come from the text) is read whole, as before.
    """
    if not _ids_everywhere(data):
        selection = select_best(data.read(_INPUT_COLUMNS), min_score=config.min_score, top_fraction=config.top_fraction)
        return selection, selection.records if config.max_records is None else selection.records.slice(0, config.max_records)
    selection = select_best(data.read(["id", *JUDGE_SCORE_COLUMNS]), min_score=config.min_score, top_fraction=config.top_fraction)
    chosen = selection.records.column("id").combine_chunks()
    chosen = chosen if config.max_records is None else chosen.slice(0, config.max_records)
    parts = [part for batch in data.iter_batches(_INPUT_COLUMNS) if (part := batch.filter(pc.is_in(batch.column("id"), value_set=chosen))).num_rows]
    found = pa.concat_tables(parts, promote_options="default") if parts else data.schema().empty_table()
    rank = {identifier: number for number, identifier in enumerate(chosen.to_pylist())}
    order = np.argsort(np.array([rank[identifier] for identifier in found.column("id").to_pylist()], dtype=np.int64), kind="stable")
    return selection, found.take(pa.array(order, pa.int64()))


def _ids_everywhere(data: InputData) -> bool:
    """Whether every record's ``id`` is stored (Parquet files whose statistics show an ``id`` column without nulls)."""
    for file in data.files:
        if file.suffix != ".parquet":
            return False
        metadata = pq.read_metadata(file)
        leaves = [metadata.schema.column(number).path for number in range(metadata.num_columns)]
        if "id" not in leaves:
            return False
        for group in range(metadata.num_row_groups):
            statistics = metadata.row_group(group).column(leaves.index("id")).statistics
            if statistics is None or not statistics.has_null_count or statistics.null_count:
                return False
    return True


async def _build(
    tried: pa.Table,
    selection: Any,
    config: PairsConfig,
    folder: OutputFolder,
    output: StagedWriter,
    schemas: Mapping[str, dict[str, Any]],
    prompts: Any,
    kinds: tuple[ErrorKind, ...],
) -> PairsResult:
    """The pairing itself, inside the locked output folder; publishes it at the end."""
    dropped, error_types = Counter[str](), Counter[str]()
    outcomes: list[Outcome] = []
    stored = 0
    batch: dict[str, Any] = {}
    async with _outcomes(tried, config, folder, schemas, prompts, kinds, batch) as (results, usage_of, capabilities_of):
        async for outcome in results:
            outcomes.append(outcome)
            if len(outcomes) == _CHUNK:
                _store(output, tried.slice(stored, _CHUNK), outcomes, dropped, error_types)
                stored, outcomes = stored + _CHUNK, []
        if outcomes:
            _store(output, tried.slice(stored, len(outcomes)), outcomes, dropped, error_types)
        usage = usage_of()
        folder.manifest.teacher_capabilities = capabilities_by_role({}, capabilities_of(), folder.previous)
    manifest = {**_manifest(config, selection, tried.num_rows, output.kept, dropped, error_types, usage, prompts, kinds), **batch}
    counts = {"in": selection.considered, "tried": tried.num_rows, "kept": output.kept, "rejected": tried.num_rows - output.kept}
    output.publish(PAIR_SCHEMA, counts, manifest)
    return PairsResult(folder.root, tried.num_rows, output.kept, dict(dropped), folder.manifest.to_dict())


@asynccontextmanager
async def _outcomes(
    tried: pa.Table,
    config: PairsConfig,
    folder: OutputFolder,
    schemas: Mapping[str, dict[str, Any]],
    prompts: Any,
    kinds: tuple[ErrorKind, ...],
    batch: dict[str, Any],
) -> AsyncIterator[tuple[AsyncIterator[Outcome], Callable[[], dict[str, Any]], Callable[[], list[dict[str, Any]]]]]:
    """Every tried record's outcome in record order, on this process's engines or on Ray actors; the usage;
    and what the teachers negotiated with their servers (``{role: capabilities}`` per process).

    ``mode: batch``: first every answer is bought through provider batches (what the manifest records
    of them goes into ``batch``)."""

    def all_records() -> Iterator[dict[str, Any]]:
        return (record for start in range(0, tried.num_rows, _CHUNK) for record in tried.slice(start, _CHUNK).to_pylist())

    cache = folder.cache_path
    records = all_records()
    if config.engine == "ray":
        ray_run = RayRun(RecordTable(tried), PairsWork(config, cache, schemas, prompts, kinds), config.ray, folder=folder.root, cache=cache)
        with ray_session(config.ray):
            yield in_order(ray_run), lambda: {"ray": ray_run.session}, lambda: ray_run.teacher_capabilities
        return
    async with open_pair_runner(config, cache, schemas, prompts, kinds) as (run, engines):
        if config.mode == "batch":
            by_role = {role: engines[name] for (role, _), name in zip(_roles(config), _engine_names(config))}
            batch["batch"] = await fill_cache_in_batches(
                folder.root,
                STAGE,
                by_role,
                dict(_roles(config)),
                config.batch,
                all_records,
                run,
                window=2 * config.limits.concurrency,
                progress=engines["teacher"].progress,
            )
        yield map_ordered(run, records, 2 * config.limits.concurrency), lambda: _usage(engines), lambda: [_capabilities(config, engines)]


@asynccontextmanager
async def open_pair_runner(
    config: PairsConfig,
    cache: Path,
    schemas: Mapping[str, dict[str, Any]],
    prompts: Any,
    kinds: tuple[ErrorKind, ...],
    *,
    actor: ActorSession | None = None,
) -> AsyncIterator[tuple[Callable[[dict[str, Any]], Awaitable[Outcome]], dict[str, Engine]]]:
    """``run(record) -> Outcome`` on open engines (on a Ray ``actor``, its engines); the local and the Ray path both use it."""
    async with AsyncExitStack() as stack:
        engines = await _open_engines(stack, config, cache, actor)
        judge_step = PairJudgeStep(prompts.get(PAIR_JUDGE_PROMPT), seed=config.seed, temperature=config.judge_temperature, max_corrections=config.max_corrections)
        judge = PairJudge(engines["judge"], judge_step, config.judge_samples)
        if config.method == "inject":
            inject_step = InjectionStep(prompts.get(INJECTION_PROMPT), seed=config.seed, max_tokens=config.max_tokens, max_corrections=config.max_corrections)
            injector = ErrorInjector(engines["teacher"], inject_step)
            run = functools.partial(_inject_one, injector=injector, judge=judge, kinds=kinds, schemas=schemas, config=config)
        else:
            sources = _answer_sources(config, engines)
            run = functools.partial(_candidates_one, sources=sources, judge=judge, schemas=schemas, config=config)
        yield run, engines


@dataclass(frozen=True)
class PairsWork:
    """``engine: ray``: what each actor needs to open its own pair runner (it must pickle)."""

    config: PairsConfig
    cache: Path
    schemas: Mapping[str, dict[str, Any]]
    prompts: Any
    kinds: tuple[ErrorKind, ...]

    @asynccontextmanager
    async def open(self, actor: ActorSession) -> AsyncIterator[_PairsWorker]:
        async with open_pair_runner(self.config, self.cache, self.schemas, self.prompts, self.kinds, actor=actor) as (run, engines):
            yield _PairsWorker(run, engines, self.config)


class _PairsWorker:
    def __init__(self, run: Callable[[dict[str, Any]], Awaitable[Outcome]], engines: dict[str, Engine], config: PairsConfig) -> None:
        self._run = run
        self.engines = engines
        self.config = config

    async def run(self, record: dict[str, Any]) -> Outcome:
        return await self._run(record)

    def stats(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for engine in {id(engine): engine for engine in self.engines.values()}.values():
            total = add_stats(total, engine.stats.as_dict())
        return {**total, "teacher_capabilities": _capabilities(self.config, self.engines)}


def _roles(config: PairsConfig) -> list[tuple[str, TeacherConfig]]:
    """Every teacher section a run uses, named by its key in the config (for errors)."""
    roles = [("teacher", config.teacher), ("judge_teacher", config.judge)]
    roles += [(f"candidate_sources[{i}].teacher", source.teacher) for i, source in enumerate(config.candidate_sources)]
    return roles


def _engine_names(config: PairsConfig) -> list[str]:
    """The engine of each role of :func:`_roles`, in the same order."""
    return ["teacher", "judge", *(f"candidate{i}" for i in range(len(config.candidate_sources)))]


def _capabilities(config: PairsConfig, engines: Mapping[str, Engine]) -> dict[str, dict[str, Any]]:
    """What each role's teacher negotiated with its server (roles sharing a teacher share its entry)."""
    return capabilities_by_role({role: engines[name].teacher for (role, _), name in zip(_roles(config), _engine_names(config))})


def _task_schemas(config: PairsConfig) -> dict[str, dict[str, Any]]:
    taxonomy = load_taxonomy(config.taxonomy_path)
    return {name: task.output_schema for name, task in taxonomy.tasks.items()}


async def _open_engines(stack: AsyncExitStack, config: PairsConfig, cache: Path, actor: ActorSession | None = None) -> dict[str, Engine]:
    """One engine per distinct teacher section (the judge shares the teacher's engine when it is the same one);
    they share the folder's one cache file (keys name the teacher, so answers never mix).

    On a Ray ``actor`` the engines are the actor's (its share of the concurrency, the run's shared cache and limits).
    """
    opened: dict[tuple[str, str | None, str | None], Engine] = {}
    engines: dict[str, Engine] = {}
    for (role, section), name in zip(_roles(config), _engine_names(config)):
        identity = (section.spec, section.base_url, section.api_key_env)
        if identity not in opened:
            opened[identity] = await stack.enter_async_context(open_engine(section, cache, config.limits, where=role, progress=config.progress and actor is None, share=actor))
        engines[name] = opened[identity]
    return engines


def _answer_sources(config: PairsConfig, engines: Mapping[str, Engine]) -> list[AnswerSource]:
    sources = [AnswerSource(candidate.name, engines[f"candidate{index}"], candidate.temperature) for index, candidate in enumerate(config.candidate_sources)]
    sources += [AnswerSource(f"{config.teacher.spec}@t={config.hot_temperature:g}#{sample}", engines["teacher"], config.hot_temperature, sample) for sample in range(config.hot_samples)]
    return sources


async def _inject_one(record: dict[str, Any], injector: ErrorInjector, judge: PairJudge, kinds: tuple[ErrorKind, ...], schemas: Mapping[str, dict[str, Any]], config: PairsConfig) -> Outcome:
    task, output_format, chosen = record.get("task_type") or "", record.get("output_format") or "plain_text", record.get("output") or ""
    kind = choose_kind(applicable_kinds(kinds, task, output_format, chosen), record["id"], config.seed)
    if kind is None:
        return Outcome(drop_reason=NO_APPLICABLE_KIND, detail=f"no error kind applies to task {task!r} in {output_format}")
    injection = await injector.inject(record, kind, record["id"])
    if injection.rejected is None:
        return Outcome(drop_reason=INJECTION_FAILED, detail=injection.error, error_type=kind.name)
    if same_text(chosen, injection.rejected):
        return Outcome(drop_reason=IDENTICAL_TEXT, detail="the rewrite is the original answer", error_type=kind.name)
    if output_format == "json":
        checks = tell_apart(chosen, injection.rejected, schemas.get(task))
        if checks.drop_reason:
            return Outcome(drop_reason=checks.drop_reason, error_type=kind.name)
        if not fits_kind(checks.differences, kind.structural):
            return Outcome(drop_reason=KIND_MISMATCH, detail=f"differences {list(checks.differences)} do not fit {kind.name}", error_type=kind.name)
    verdict = await judge.score(record, [chosen, injection.rejected], record["id"])
    if verdict.scores is None:
        return Outcome(drop_reason=JUDGE_FAILED, detail=verdict.error, error_type=kind.name)
    rejected_source = "icd10_sibling" if kind.strategy == "icd10_sibling" else f"{config.teacher.spec}:error_injection"
    decision = confirmed_worse(
        ScoredCandidate(record.get("teacher") or "original", chosen, verdict.scores[0]),
        ScoredCandidate(rejected_source, injection.rejected, verdict.scores[1]),
        config.min_margin,
    )
    return _outcome(record, decision, "inject", kind.name, injection.description, schemas, verdict.scores)


async def _candidates_one(record: dict[str, Any], sources: list[AnswerSource], judge: PairJudge, schemas: Mapping[str, dict[str, Any]], config: PairsConfig) -> Outcome:
    schema = schemas.get(record.get("task_type") or "")
    texts = [record.get("output") or ""]
    texts += await gather_all(*(answer(source, record, schema, max_tokens=config.max_tokens, seed=config.seed) for source in sources))
    names = [record.get("teacher") or "original"] + [source.name for source in sources]
    verdict = await judge.score(record, texts, record["id"])
    if verdict.scores is None:
        return Outcome(drop_reason=JUDGE_FAILED, detail=verdict.error)
    decision = best_worst_pair([ScoredCandidate(n, t, s) for n, t, s in zip(names, texts, verdict.scores)], config.min_margin)
    return _outcome(record, decision, "candidates", None, None, schemas, verdict.scores)


def _outcome(
    record: dict[str, Any],
    decision: PairDecision,
    method: str,
    error_type: str | None,
    description: str | None,
    schemas: Mapping[str, dict[str, Any]],
    scores: tuple[float, ...],
) -> Outcome:
    if not decision.kept:
        return Outcome(drop_reason=decision.drop_reason, detail=f"judge scores {list(scores)}", error_type=error_type)
    assert decision.chosen is not None and decision.rejected is not None
    if method == "candidates" and record.get("output_format") == "json":
        checks = tell_apart(decision.chosen.text, decision.rejected.text, schemas.get(record.get("task_type") or ""))
        if checks.drop_reason:
            return Outcome(drop_reason=checks.drop_reason, detail=f"judge scores {list(scores)}")
    row = pair_row(
        record,
        chosen=decision.chosen.text,
        rejected=decision.rejected.text,
        chosen_score=decision.chosen.score,
        rejected_score=decision.rejected.score,
        chosen_source=decision.chosen.source,
        rejected_source=decision.rejected.source,
        method=method,
        error_type=error_type,
        error_description=description,
    )
    return Outcome(row=row, error_type=error_type)


def _store(output: StagedWriter, chunk: pa.Table, outcomes: list[Outcome], dropped: Counter[str], error_types: Counter[str]) -> None:
    rows = [o.row for o in outcomes if o.row is not None]
    if rows:
        output.keep(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA))
    error_types.update(o.error_type for o in outcomes if o.row is not None and o.error_type)
    failed = [i for i, o in enumerate(outcomes) if o.row is None]
    if failed:
        reasons = [outcomes[i].drop_reason or "" for i in failed]
        dropped.update(reasons)
        details = [outcomes[i].detail or "" for i in failed]
        records = chunk.take(failed).append_column("error_type", pa.array([outcomes[i].error_type for i in failed], pa.string()))
        output.reject(reject_table(records, STAGE, reasons, [float("nan")] * len(failed), details, [None] * len(failed)))


def _usage(engines: Mapping[str, Engine]) -> dict[str, Any]:
    """Usage per engine, keyed by the roles it served (``teacher+judge`` when they share one), so no
    request is counted twice when the manifest's figures are summed."""
    roles: dict[int, list[str]] = {}
    for role, engine in engines.items():
        roles.setdefault(id(engine), []).append(role)
    by_id = {id(engine): engine for engine in engines.values()}
    return {"+".join(names): by_id[key].stats.as_dict() for key, names in roles.items()}


def _manifest(
    config: PairsConfig,
    selection: Any,
    tried: int,
    kept: int,
    dropped: Counter[str],
    error_types: Counter[str],
    usage: dict[str, Any],
    prompts: Any,
    kinds: tuple[ErrorKind, ...],
) -> dict[str, Any]:
    return {
        "stage": STAGE,
        "in": selection.considered,
        "kept": kept,
        "dropped": tried - kept,
        "dropped_by_rule": dict(sorted(dropped.items())),
        "pairs": {
            "method": config.method,
            "records_in": selection.considered,
            "selected": selection.records.num_rows,
            "not_selected": selection.below_threshold,
            "input_judged": selection.judged,
            "tried": tried,
            "kept": kept,
            "yield": round(kept / tried, 4) if tried else 0.0,
            "dropped": dict(sorted(dropped.items())),
            "kept_by_error_type": dict(sorted(error_types.items())),
        },
        "prompt_versions": {name: prompts.get(name).version for name in (PAIR_JUDGE_PROMPT, INJECTION_PROMPT)},
        "error_kinds": [kind.name for kind in kinds],
        "usage": usage,
    }
