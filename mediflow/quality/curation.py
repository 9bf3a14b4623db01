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

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mediflow import __version__
from mediflow.errors import ConfigError, MediflowError
from mediflow.quality.config import CurateConfig, as_plain
from mediflow.quality.decontaminate import run_decontaminate
from mediflow.quality.dedup_stage import run_dedup
from mediflow.quality.filter_stage import run_filters
from mediflow.quality.io import StageOutput, check_output, empty_input_schema, input_files, iter_batches
from mediflow.quality.judge import check_config as check_judge_config, run_judge
from mediflow.quality.report import StageReport
from mediflow.records import conform

STAGES_DIR = "stages"
StageRun = Callable[[Path, Path], StageReport]


def planned_stages(config: CurateConfig) -> list[tuple[str, StageRun]]:
    """The configured stages, in the order they run."""
    stages: list[tuple[str, StageRun]] = []
    if config.filters is not None:
        stages.append(("filter", lambda source, out: run_filters(source, out, config.filters)))
    if config.judge is not None:
        stages.append(("judge", lambda source, out: run_judge(source, out, config.judge)))
    if config.dedup is not None:
        stages.append(("dedup", lambda source, out: run_dedup(source, out, config.dedup)))
    if config.decontaminate is not None:
        stages.append(("decontaminate", lambda source, out: run_decontaminate(source, out, config.decontaminate)))
    return stages


def _config(config: CurateConfig | Path | str | None) -> CurateConfig:
    if config is None:
        return CurateConfig()
    if isinstance(config, CurateConfig):
        return config
    return CurateConfig.load(Path(config))


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
    """Run the configured stages over ``source`` into ``out``; returns the manifest written to ``OUT/manifest.json``."""
    source, out = Path(source), Path(out)
    config = _config(config)
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
        reports.append((run(current, folder), folder))
        current = folder
    manifest = funnel_manifest(source, out, config, reports)
    _publish(source, out, current, [folder for _, folder in reports], manifest)
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
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
        "config": as_plain(config),
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
