"""``curate``: the quality stages in order (filters -> judge -> dedup -> decontaminate) and their funnel.

Each configured stage reads the previous one's output and writes its own folder
``OUT/stages/<n>-<stage>/`` (kept records, rejects, manifest: what ``mediflow <stage>`` would
write), so every step can be inspected or rerun alone. The curated set is then published at the
top of ``OUT`` in the same shape as any stage: ``OUT/data/`` (the last stage's kept records),
``OUT/rejects.parquet`` (every stage's rejects, with their ``stage`` and ``rule``) and
``OUT/manifest.json``, whose ``funnel`` (records in / kept per stage) and ``stages`` (each stage's
full report) are what ``mediflow audit`` and the dataset card read. Cheap stages stay cheap
because the expensive one (the judge) answers a rerun from its cache; so a rerun, or a resumed
killed run, redoes every stage and gets the same result, with nothing skipped on stale evidence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mediflow import __version__
from mediflow.errors import ConfigError, MediflowError
from mediflow.quality.config import CurateConfig
from mediflow.quality.decontaminate import run_decontaminate
from mediflow.quality.dedup_stage import run_dedup
from mediflow.quality.filter_stage import run_filters
from mediflow.quality.io import StageOutput, check_output, empty_input_schema, input_files, iter_batches
from mediflow.quality.judge import check_config as check_judge_config
from mediflow.quality.judge import run_judge_async
from mediflow.quality.report import StageReport
from mediflow.records import conform
from mediflow.sync import run_sync

STAGES_DIR = "stages"
StageRun = Callable[[Path, Path], Awaitable[StageReport]]


def _in_thread(run: Callable[[Path, Path, Any], StageReport], config: Any) -> StageRun:
    """A CPU-bound stage as a coroutine: it runs in a worker thread, the loop stays free."""
    return lambda source, out: asyncio.to_thread(run, source, out, config)


def planned_stages(config: CurateConfig) -> list[tuple[str, StageRun]]:
    """The configured stages, in the order they run."""
    stages: list[tuple[str, StageRun]] = []
    if config.filters is not None:
        stages.append(("filter", _in_thread(run_filters, config.filters)))
    if config.judge is not None:
        judge = config.judge
        stages.append(("judge", lambda source, out: run_judge_async(source, out, judge)))
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


def curate(source: Path, out: Path, config: CurateConfig | Path | str | None = None) -> dict[str, Any]:
    """Run the configured stages over ``source`` into ``out``; returns the manifest written to ``OUT/manifest.json``.

    ``config`` is a :class:`CurateConfig` or a curate YAML/JSON path. Works in a notebook (a running loop).
    """
    return run_sync(curate_async(source, out, config))


async def curate_async(source: Path, out: Path, config: CurateConfig | Path | str | None = None) -> dict[str, Any]:
    """:func:`curate` for callers already running an event loop."""
    source, out = Path(source), Path(out)
    config = CurateConfig.load(config)
    stages = planned_stages(config)
    if not stages:
        raise ConfigError("curate config: every stage is switched off (filters, judge, dedup, decontaminate)")
    _check_before_running(config)
    input_files(source)
    check_output(out, source)
    reports: list[tuple[StageReport, Path]] = []
    current = source
    for number, (name, run) in enumerate(stages, start=1):
        folder = out / STAGES_DIR / f"{number}-{name}"
        reports.append((await run(current, folder), folder))
        current = folder
    manifest = funnel_manifest(source, out, config, reports)
    await asyncio.to_thread(_publish, source, out, current, [folder for _, folder in reports], manifest)
    return manifest


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
        "mediflow_version": __version__,
        "input": str(source),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "in": first.records_in,
        "kept": last.kept,
        "dropped": first.records_in - last.kept,
        "funnel": [
            {"stage": report.stage, "in": report.records_in, "kept": report.kept, "dropped": report.dropped, "folder": str(folder.relative_to(out))}
            for report, folder in reports
        ],
        "dropped_by_rule": dropped_by_rule,
        "by_task": by_task,
        "stages": [report.as_dict() for report, _ in reports],
        "config": config.to_dict(),
    }


def _reject_schema(folders: list[Path]) -> pa.Schema:
    """One schema for every stage's rejects (later stages add columns, e.g. the judge's scores)."""
    return pa.unify_schemas([pq.read_schema(folder / "rejects.parquet") for folder in folders], promote_options="permissive")


def _publish(source: Path, out: Path, last: Path, folders: list[Path], manifest: dict[str, Any]) -> None:
    """Write ``OUT/data``, ``OUT/rejects.parquet`` and ``OUT/manifest.json`` atomically (the manifest last)."""
    output = StageOutput(out, source)
    schema: pa.Schema | None = None
    try:
        for batch in iter_batches(last):
            schema = batch.schema
            output.keep(batch)
        rejects_schema = _reject_schema(folders)
        for folder in folders:
            for batch in pq.ParquetFile(folder / "rejects.parquet").iter_batches():
                output.reject(conform(pa.Table.from_batches([batch]), rejects_schema).select(rejects_schema.names))
        if output.kept != manifest["kept"]:  # the last stage's folder changed under us
            raise MediflowError(f"curate: published {output.kept} records but the last stage kept {manifest['kept']}")
        output.finish(manifest, schema if schema is not None else empty_input_schema(last))
    except BaseException:
        output.abandon()
        raise
