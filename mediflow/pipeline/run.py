"""``generate()``: run the plan through the stages and the engine, write the output, return the Dataset.

The run is one asyncio program: a fixed number of workers pull instruction groups from the plan
(in plan order) and push them through the stages; the engine bounds the requests in flight and the
number of workers bounds the records in flight, so memory stays flat at any run size. Finished
items go to the :class:`~mediflow.pipeline.collect.ShardCollector`, which commits complete plan
ranges as shards.

With ``engine: ray`` blocks of the plan, one per shard range, are mapped over Ray Data actors
instead, which write the shards themselves (:mod:`mediflow.pipeline.ray_generate`). With
``shard: K/N`` the run makes one deterministic share of the plan (:mod:`mediflow.pipeline.share`);
``mediflow join`` puts the shares back together.

With ``mode: batch`` the teacher's calls are bought through the provider's batch API: before the
run proper, rounds of passes over the pending groups defer every cache miss into batch files, and
their answers fill the cache (:mod:`mediflow.batch.runner`); the run then makes its records from
the cache exactly as an online run would from the same answers.

The output is an :class:`~mediflow.folders.OutputFolder` of kind ``generate`` (guarded and
locked before anything is written; another config's run there is refused unless ``overwrite``).
Resume is a rerun: the engine's cache (``OUT/cache.sqlite``) answers every request already
answered, shards already committed are skipped, and the same plan over the same answers gives the
same records. ``created_at`` is the time the run first started (the manifest's ``created_at``), so
a resumed run's records equal an uninterrupted run's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from mediflow.batch.providers import batch_api_of
from mediflow.batch.runner import check_recorded_batches, fill_cache_in_batches
from mediflow.config import TEACHER_ROLE, RunConfig, load_config
from mediflow.engine import Engine
from mediflow.errors import TeacherError
from mediflow.folders import CACHE_NAME, OutputFolder, check_not_in_use, open_input
from mediflow.folders.output import DATASETS_CACHE
from mediflow.pipeline.collect import PassCollector, ShardCollector
from mediflow.pipeline.flow import GroupFlow
from mediflow.pipeline.output import RunOutput
from mediflow.pipeline.plan import InstructionGroup, Plan, build_plan
from mediflow.pipeline.ray_generate import BlockPlan, BlockWork, absolute_paths, drive_blocks
from mediflow.pipeline.share import Share
from mediflow.pipeline.stages import Stages
from mediflow.records import GENERATION_SCHEMA, content_id
from mediflow.scale.ray_runner import RayRun, check_ray, ray_session
from mediflow.steps import map_ordered, open_engine
from mediflow.sync import run_sync
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers.negotiation import capabilities_by_role
from mediflow.terminology import ICD10CM_RELEASE

if TYPE_CHECKING:
    import datasets


@dataclass
class RunSummary:
    """What a run left in its output directory (read back from the manifest)."""

    out_dir: Path
    status: str  # finished | stopped
    records: int
    rejects: int
    planned: int
    usage: dict[str, Any]
    session: dict[str, Any]  # this process's engine stats: requests, cache hits, tokens paid
    failures: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


async def _drive(groups: Iterator[InstructionGroup], flow: GroupFlow, workers: int) -> None:
    """Groups through ``flow`` in plan order, pulled lazily from the plan, ``workers`` at once; the first error cancels the rest."""
    async for _ in map_ordered(flow.run, groups, max(1, workers)):
        pass


def _share_counts(plan: Plan, share: Share, shard_size: int) -> tuple[Counter[int], int]:
    """A share's items per plan range, and its number of instruction groups (one pass over the lazy plan)."""
    counts: Counter[int] = Counter()
    groups = 0
    for group in share.select(plan.groups()):
        groups += 1
        counts.update(item.position // shard_size for item in group.items)
    return counts, groups


def _failures(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reasons: Counter[str] = Counter()
    for summary in summaries:
        reasons.update(summary["failures"])
    return [{"stage": key.partition(": ")[0], "reason": key.partition(": ")[2], "count": count} for key, count in reasons.most_common()]


def _totals(summaries: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    cells: dict[str, Counter[str]] = {}
    prompt = completion = 0
    cost: float | None = 0.0
    for summary in summaries:
        for cell, counts in summary["cells"].items():
            cells.setdefault(cell, Counter()).update(counts)
        prompt += summary["usage"].get("prompt_tokens", 0)
        completion += summary["usage"].get("completion_tokens", 0)
        shard_cost = summary["usage"].get("cost_usd")
        cost = None if shard_cost is None and summary["records"] + summary["rejects"] else cost
        if cost is not None and shard_cost is not None:
            cost += shard_cost
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": cost}
    return {cell: dict(counts) for cell, counts in sorted(cells.items())}, usage


async def run_async(config: RunConfig, *, overwrite: bool = False) -> RunSummary:
    """Run ``config`` in the current event loop; see :func:`generate` for the synchronous entry point.

    ``overwrite`` replaces an ``--out`` holding another kind of folder or another config's run
    (its teacher cache is kept); without it such a folder is refused before anything is written.
    """
    check_not_in_use(Path(config.output.dir))  # before the plan and its cases (a minute at scale): a second process stops at once
    taxonomy = load_taxonomy(Path(config.taxonomy) if config.taxonomy else None)
    plan: Plan = build_plan(config, taxonomy)
    share = Share.parse(config.shard) if config.shard else None
    share_counts, share_groups = _share_counts(plan, share, config.output.shard_size) if share else (None, 0)
    if config.engine == "ray":
        check_ray(config.ray)
    out = Path(config.output.dir)
    async with open_engine(config.teacher, out / CACHE_NAME, config.limits, prices=config.prices, progress=config.progress) as engine:
        teacher = engine.teacher
        stages = Stages(engine, taxonomy, config)
        unsharded_fingerprint = content_id(
            plan.id,
            teacher.name,
            config.stages,
            dataclasses.asdict(config.sampling),
            config.max_corrections,
            stages.versions,
            taxonomy.version,
            stages.cases.version,
        )
        fingerprint = content_id(unsharded_fingerprint, str(share)) if share else unsharded_fingerprint
        details: dict[str, Any] = {
            "session_started_at": _now().isoformat(),
            "teacher": teacher.name,
            "taxonomy_version": taxonomy.version,
            "case_data_version": stages.cases.version,
            "prompt_versions": stages.versions,
            "icd10cm_release": ICD10CM_RELEASE,
            "plan": {
                "id": plan.id,
                "items": len(plan) if share_counts is None else sum(share_counts.values()),
                "instruction_groups": plan.group_count if share_counts is None else share_groups,
                "shard_size": config.output.shard_size,
            },
        }
        if share:
            details["shard"] = {"share": str(share), "unsharded_fingerprint": unsharded_fingerprint, "unsharded_items": len(plan)}
        plain = config.to_dict()
        taxonomy_paths = [Path(p) for p in (config.taxonomy, config.prompts) if p]
        # a folder we may not write is refused first, offline; then the teacher is asked (nothing written yet:
        # the engine opens its cache in the folder on its first request)
        OutputFolder.check(out, kind="generate", config=plain, fingerprint=fingerprint, input_paths=taxonomy_paths, overwrite=overwrite)
        await teacher.check()  # a dead server or unknown model: one line, nothing written
        if config.mode == "batch":  # a server without a batch API, a recorded batch of another run: one line, nothing written
            api = batch_api_of(teacher, config.batch, TEACHER_ROLE)
            await api.check()
            await check_recorded_batches(out, {TEACHER_ROLE: api})
        folder = OutputFolder.open(out, kind="generate", config=plain, fingerprint=fingerprint, input_paths=taxonomy_paths, overwrite=overwrite, staged=False, details=details)
        with folder:
            return await _generate(config, plan, share, share_counts, folder, engine, stages)


async def _generate(
    config: RunConfig,
    plan: Plan,
    share: Share | None,
    share_counts: Counter[int] | None,
    folder: OutputFolder,
    engine: Engine,
    stages: Stages,
) -> RunSummary:
    """The run itself, inside the locked folder (its manifest says ``running``)."""
    output = RunOutput(folder.root, folder)
    created_at = datetime.fromisoformat(folder.manifest.created_at)
    collector = ShardCollector(output, len(plan), config.output.shard_size, output.finished(), share_counts)
    workers = -(-(config.records_in_flight or 2 * config.limits.concurrency) // config.documents_per_instruction)
    status, stop_reason = "finished", None
    teacher = engine.teacher
    flow = GroupFlow(
        stages,
        collector,
        config,
        teacher=teacher.name,
        created_at=created_at,
        cost_of=engine.cost_usd,
        on_item_done=engine.progress.advance,
    )
    groups = share.select(plan.groups()) if share else plan.groups()
    todo = (group for group in groups if flow.pending(group))
    ray_run, blocks = None, None
    if config.engine == "ray":  # blocks of the plan (one per shard range) on actors that write the shards
        blocks = BlockPlan.of(plan, collector, output.root)
        ray_run = RayRun(blocks.units, BlockWork(absolute_paths(config), created_at), config.ray, folder=output.root, cache=output.cache_path)
    engine.progress.set_total(folder.manifest.details["plan"]["items"] - collector.finished_items)

    def finish(status: str, reason: str | None) -> RunSummary:
        actors = ray_run.teacher_capabilities if ray_run is not None else []
        folder.manifest.teacher_capabilities = capabilities_by_role({TEACHER_ROLE: teacher}, actors, folder.previous)
        return finish_run(output, status, reason, engine.stats.as_dict() if ray_run is None else ray_run.session)

    try:
        if config.mode == "batch":
            folder.manifest.details["batch"] = await _fill_in_batches(config, plan, share, folder, engine, flow, collector, workers)
        if ray_run is None:
            await _drive(todo, flow, workers)
        else:
            assert blocks is not None
            with ray_session(config.ray):  # in the main thread: Ray installs its signal handlers
                await asyncio.to_thread(drive_blocks, ray_run.results(), blocks, created_at, engine.progress.advance)
    except TeacherError as exc:
        status, stop_reason = "stopped", str(exc)
    except (KeyboardInterrupt, asyncio.CancelledError):
        finish("stopped", "interrupted")
        raise
    # any other error propagates: the folder records it as failed, with why
    summary = finish(status, stop_reason)
    if status == "stopped":
        raise TeacherError(f"{stop_reason}; kept {summary.records} records in {output.data_dir} and every answer received in {output.cache_path}: rerun the same command to resume")
    return summary


async def _fill_in_batches(config: RunConfig, plan: Plan, share: Share | None, folder: OutputFolder, engine: Engine, flow: GroupFlow, collector: ShardCollector, workers: int) -> dict[str, Any]:
    """``mode: batch``: rounds of passes over the pending groups until the cache holds every answer the run needs.

    A pass runs the groups through the same stages with a collector that keeps nothing
    (:class:`PassCollector`): no record, reject or shard is written and no item counted as done
    until the run proper, which then reads every answer from the cache.
    """
    passing = GroupFlow(flow.stages, PassCollector(collector), config, teacher=flow.teacher, created_at=flow.created_at, cost_of=engine.cost_usd)

    def units() -> Iterator[InstructionGroup]:
        groups = share.select(plan.groups()) if share else plan.groups()
        return (group for group in groups if flow.pending(group))

    return await fill_cache_in_batches(folder.root, "generate", {TEACHER_ROLE: engine}, {TEACHER_ROLE: config.teacher}, config.batch, units, passing.run, window=workers, progress=engine.progress)


def finish_run(output: RunOutput, status: str, stop_reason: str | None, session: dict[str, Any]) -> RunSummary:
    """Fold the finished shards' rejects and summaries into ``rejects.parquet``, then write the final
    manifest, the run's last write (also ``join``'s last step)."""
    folder = output.writable()
    summaries = list(output.summaries())
    rejects = output.write_rejects()
    cells, usage = _totals(summaries)
    records = sum(summary["records"] for summary in summaries)
    failures = _failures(summaries)
    truncated = sum(f["count"] for f in failures if f["reason"].startswith("truncated"))
    folder.finish(
        {"records": records, "rejects": rejects, "truncated": truncated, "shards": len(summaries), "cells": cells},
        {"finished_at": _now().isoformat(), "usage": usage, "session": session, "failures": failures},
        status=status,
        reason=stop_reason,
    )
    return RunSummary(
        out_dir=output.root,
        status=status,
        records=records,
        rejects=rejects,
        planned=folder.manifest.details["plan"]["items"],
        usage=usage,
        session=session,
        failures=failures,
        stop_reason=stop_reason,
    )


def run(config: RunConfig, *, overwrite: bool = False) -> RunSummary:
    """Run ``config`` to completion, also from inside a running event loop (a notebook cell)."""
    return run_sync(run_async(config, overwrite=overwrite))


def load_output(out_dir: str | Path) -> datasets.Dataset:
    """The records of a run's output directory as a :class:`datasets.Dataset` (memory-mapped)."""
    import datasets

    data = open_input(out_dir, allow_empty=True)
    # A shard is also the commit marker of its plan range, so a range whose items were all rejected
    # leaves a zero-row shard; datasets cannot read those, and they hold nothing to load.
    files = [str(path) for path in data.files if pq.read_metadata(path).num_rows > 0]
    features = datasets.Features.from_arrow_schema(GENERATION_SCHEMA)
    if not files:
        return datasets.Dataset(GENERATION_SCHEMA.empty_table())
    return datasets.Dataset.from_parquet(files, features=features, cache_dir=str(Path(out_dir) / DATASETS_CACHE))


def generate(config: RunConfig | dict[str, Any] | str | Path | None = None, /, *, overwrite: bool = False, **overrides: Any) -> datasets.Dataset:
    """Generate records and return them as a :class:`datasets.Dataset`.

    ``config`` is a run config (a YAML/JSON path, a dict or a :class:`~mediflow.config.RunConfig`);
    ``overrides`` replace its keys (``per_cell=2``, ``teacher="openai:gpt-4o"``, ``out="runs/a"``,
    see :func:`mediflow.config.load_config`). Writes the output directory (``output.dir``, shards,
    rejects, manifest, cache) and resumes it when rerun. Works in a notebook (a running loop).
    """
    return run_sync(generate_async(config, overwrite=overwrite, **overrides))


async def generate_async(config: RunConfig | dict[str, Any] | str | Path | None = None, /, *, overwrite: bool = False, **overrides: Any) -> datasets.Dataset:
    """:func:`generate` for callers already running an event loop."""
    summary = await run_async(load_config(config, **overrides), overwrite=overwrite)
    return load_output(summary.out_dir)
