"""``curate``: the quality stages in order (filters -> judge -> dedup -> decontaminate) and their funnel.

Each configured stage reads the previous one's output and writes its own folder
``OUT/stages/<n>-<stage>/`` (kept records, rejects, manifest: what ``mediflow <stage>`` would
write), so every step can be inspected or rerun alone. The curated set is then published at the
top of ``OUT`` in the same shape as any stage: ``OUT/data/`` (the last stage's kept records),
``OUT/rejects.parquet`` (every stage's rejects, with their ``stage`` and ``rule``) and
``OUT/manifest.json``, whose ``funnel`` (records in / kept per stage) and ``stages`` (each stage's
full report) are what ``mediflow audit`` and the dataset card read, and whose
``teacher_capabilities`` says how the judge's server was asked (as the judge's own folder does). Cheap stages stay cheap
because the expensive one (the judge) answers a rerun from its cache; so a rerun, or a resumed
killed run, redoes every stage and gets the same result, with nothing skipped on stale evidence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mediflow.errors import ConfigError, MediflowError
from mediflow.folders import REJECTS_NAME, InputData, OutputFolder, StagedWriter, open_input
from mediflow.folders.output import STAGES_DIR
from mediflow.quality.config import CurateConfig
from mediflow.quality.decontaminate import run_decontaminate
from mediflow.quality.dedup_stage import run_dedup
from mediflow.quality.filter_stage import run_filters
from mediflow.quality.judge import check_config as check_judge_config
from mediflow.quality.judge import check_judge_cache, run_judge_async
from mediflow.quality.report import StageReport
from mediflow.records import conform
from mediflow.sync import run_sync
from mediflow.teachers.negotiation import capabilities_by_role

StageRun = Callable[[InputData, Path], Awaitable[StageReport]]


def _in_thread(run: Callable[..., StageReport], config: Any) -> StageRun:
    """A CPU-bound stage as a coroutine: it runs in a worker thread, the loop stays free. Curate owns
    its stage folders, so each is replaced (``overwrite``) when the curate run is a new one."""
    return lambda source, out: asyncio.to_thread(run, source, out, config, overwrite=True)


def planned_stages(config: CurateConfig) -> list[tuple[str, StageRun]]:
    """The configured stages, in the order they run."""
    stages: list[tuple[str, StageRun]] = []
    if config.filters is not None:
        stages.append(("filter", _in_thread(run_filters, config.filters)))
    if config.judge is not None:
        judge = config.judge
        stages.append(("judge", lambda source, out: run_judge_async(source, out, judge, overwrite=True)))
    if config.dedup is not None:
        stages.append(("dedup", _in_thread(run_dedup, config.dedup)))
    if config.decontaminate is not None:
        stages.append(("decontaminate", _in_thread(run_decontaminate, config.decontaminate)))
    return stages


def _check_before_running(config: CurateConfig) -> None:
    """What would fail a late stage fails now, before the earlier stages spend time (or the judge money)."""
    if config.judge is not None:
        check_judge_config(config.judge)
    if config.decontaminate is not None:
        if not config.decontaminate.eval:
            raise ConfigError("decontaminate.eval: no evaluation sets given")
        missing = [spec.path for spec in config.decontaminate.eval if not Path(spec.path).exists()]
        if missing:
            raise ConfigError(f"decontaminate.eval: no such file or folder: {', '.join(missing)}")


def curate(source: Path, out: Path, config: CurateConfig | Path | str | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Run the configured stages over ``source`` into ``out``; returns the manifest written to ``OUT/manifest.json``.

    ``config`` is a :class:`CurateConfig` or a curate YAML/JSON path. Works in a notebook (a running loop).
    """
    return run_sync(curate_async(source, out, config, overwrite=overwrite))


async def curate_async(source: Path, out: Path, config: CurateConfig | Path | str | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """:func:`curate` for callers already running an event loop."""
    source, out = Path(source), Path(out)
    config = CurateConfig.load(config)
    stages = planned_stages(config)
    if not stages:
        raise ConfigError("curate config: every stage is switched off (filters, judge, dedup, decontaminate)")
    _check_before_running(config)
    data = open_input(source)
    eval_paths = [Path(spec.path) for spec in config.decontaminate.eval] if config.decontaminate is not None else []
    if config.judge is not None:
        check_judge_cache(config.judge, data, out, eval_paths)
    folder = OutputFolder.open(out, kind="curate", config=config.to_dict(), inputs=[data.ref()], input_paths=eval_paths, overwrite=overwrite)
    with folder:
        reports: list[tuple[StageReport, Path]] = []
        negotiated: list[dict[str, dict[str, Any]]] = []  # each stage's teacher_capabilities (the judge's)
        current = data
        for number, (name, run) in enumerate(stages, start=1):
            stage_folder = out / STAGES_DIR / f"{number}-{name}"
            reports.append((await run(current, stage_folder), stage_folder))
            current = open_input(stage_folder, allow_empty=True)
            negotiated.append(current.manifest.teacher_capabilities if current.manifest is not None else {})
        folder.manifest.teacher_capabilities = capabilities_by_role({}, negotiated, folder.previous)
        manifest = funnel_manifest(source, out, config, reports)
        await asyncio.to_thread(_publish, folder, current, [stage_folder for _, stage_folder in reports], manifest)
    return folder.manifest.to_dict()


def funnel_manifest(source: Path, out: Path, config: CurateConfig, reports: list[tuple[StageReport, Path]]) -> dict[str, Any]:
    """The curate manifest: totals, the funnel per stage, drops per stage/rule and per task, each stage's report."""
    first, last = reports[0][0], reports[-1][0]
    dropped_by_rule = {f"{report.stage}/{rule}": count for report, _ in reports for rule, count in sorted(report.by_rule.items())}
    by_task: dict[str, dict[str, Any]] = {}
    for task, count in sorted(first.in_by_task.items()):
        dropped = {report.stage: report.dropped_by_task[task] for report, _ in reports if report.dropped_by_task[task]}
        by_task[task] = {"in": count, "kept": count - sum(dropped.values()), "dropped": dropped}
    return {
        "stage": "curate",
        "input": str(source),
        "in": first.records_in,
        "kept": last.kept,
        "dropped": first.records_in - last.kept,
        "funnel": [{"stage": report.stage, "in": report.records_in, "kept": report.kept, "dropped": report.dropped, "folder": str(folder.relative_to(out))} for report, folder in reports],
        "dropped_by_rule": dropped_by_rule,
        "by_task": by_task,
        "stages": [report.as_dict() for report, _ in reports],
    }


def _reject_schema(folders: list[Path]) -> pa.Schema:
    """One schema for every stage's rejects (later stages add columns, e.g. the judge's scores)."""
    return pa.unify_schemas([pq.read_schema(folder / "rejects.parquet") for folder in folders], promote_options="permissive")


def _publish(folder: OutputFolder, last: InputData, stage_folders: list[Path], manifest: dict[str, Any]) -> None:
    """Publish ``OUT/data`` (the last stage's kept records), ``OUT/rejects.parquet`` (every stage's) and the manifest last."""
    writer = StagedWriter(folder)
    schema: pa.Schema | None = None
    try:
        for batch in last.iter_batches():
            schema = batch.schema
            writer.keep(batch)
        rejects_schema = _reject_schema(stage_folders)
        for stage_folder in stage_folders:
            for batch in pq.ParquetFile(stage_folder / REJECTS_NAME).iter_batches():
                writer.reject(conform(pa.Table.from_batches([batch]), rejects_schema).select(rejects_schema.names))
        if writer.kept != manifest["kept"]:  # the last stage's folder changed under us
            raise MediflowError(f"curate: published {writer.kept} records but the last stage kept {manifest['kept']}")
        counts = {"in": manifest["in"], "kept": manifest["kept"], "rejected": manifest["dropped"]}
        writer.publish(schema if schema is not None else last.schema(), counts, manifest)
    except BaseException:
        writer.abandon()
        raise
