"""``generate()``: run the plan through the stages and the engine, write the output, return the Dataset.

The run is one asyncio program: a fixed number of workers pull instruction groups from the plan
(in plan order) and push them through the stages; the engine bounds the requests in flight and the
number of workers bounds the records in flight, so memory stays flat at any run size. Finished
items go to the :class:`~mediflow.pipeline.collect.ShardCollector`, which commits complete plan
ranges as shards.

Resume is a rerun: the engine's cache (``OUT/cache.sqlite``) answers every request already
answered, shards already committed are skipped, and the same plan over the same answers gives the
same records. ``created_at`` is the time the run first started (kept in the manifest), so a resumed
run's records equal an uninterrupted run's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from mediflow import __version__
from mediflow.config import RunConfig, load_config
from mediflow.engine import Engine, EngineConfig
from mediflow.errors import ConfigError, TeacherError
from mediflow.pipeline.collect import ShardCollector
from mediflow.pipeline.flow import GroupFlow
from mediflow.pipeline.output import RunOutput
from mediflow.pipeline.plan import InstructionGroup, Plan, build_plan
from mediflow.pipeline.stages import Stages
from mediflow.records import GENERATION_SCHEMA, content_id
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers import Teacher, make_teacher

if TYPE_CHECKING:
    import datasets


@dataclass
class RunSummary:
    """What a run left in its output directory (read back from the manifest)."""

    out_dir: Path
    status: str  # finished | stopped | interrupted
    records: int
    rejects: int
    planned: int
    usage: dict[str, Any]
    session: dict[str, Any]  # this process's engine stats: requests, cache hits, tokens paid
    failures: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None


def _engine_config(config: RunConfig) -> EngineConfig:
    limits = config.limits
    return EngineConfig(
        concurrency=limits.concurrency,
        rpm=limits.rpm,
        tpm=limits.tpm,
        adaptive=limits.adaptive,
        max_retries=limits.max_retries,
        request_timeout=limits.request_timeout,
        error_rate_threshold=limits.error_rate_threshold,
        price_input_per_1k=config.prices.input_per_1k,
        price_output_per_1k=config.prices.output_per_1k,
        progress=config.progress,
    )


def _make_teacher(config: RunConfig) -> Teacher:
    api_key = None
    if config.teacher.api_key_env:
        api_key = os.environ.get(config.teacher.api_key_env)
        if not api_key:
            raise ConfigError(f"teacher.api_key_env: the environment variable {config.teacher.api_key_env} is not set")
    options: dict[str, Any] = {}
    if config.teacher.spec.startswith(("openai:", "azure:")):
        options["max_connections"] = max(config.limits.concurrency, 16)
        options["timeout"] = config.limits.request_timeout
    return make_teacher(config.teacher.spec, base_url=config.teacher.base_url, api_key=api_key, **options)


def _icd10cm_release() -> str | None:
    from mediflow import terminology

    return getattr(terminology, "ICD10CM_RELEASE", None)


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _drive(groups: Iterator[InstructionGroup], flow: GroupFlow, workers: int) -> None:
    """``workers`` coroutines pull groups in plan order from the lazy plan; the first error cancels the rest."""

    async def worker() -> None:
        for group in groups:
            await flow.run(group)

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, workers))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _failures(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reasons: Counter[str] = Counter()
    for summary in summaries:
        reasons.update(summary["failures"])
    return [
        {"stage": key.partition(": ")[0], "reason": key.partition(": ")[2], "count": count}
        for key, count in reasons.most_common()
    ]


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


async def run_async(config: RunConfig) -> RunSummary:
    """Run ``config`` in the current event loop; see :func:`generate` for the synchronous entry point."""
    taxonomy = load_taxonomy(Path(config.taxonomy) if config.taxonomy else None)
    plan: Plan = build_plan(config, taxonomy)
    output = RunOutput(config.output.dir)
    teacher = _make_teacher(config)
    try:
        engine = Engine(teacher, cache_path=output.cache_path, config=_engine_config(config))
        stages = Stages(engine, taxonomy, config)
        fingerprint = content_id(
            plan.id,
            teacher.name,
            config.stages,
            dataclasses.asdict(config.sampling),
            config.max_corrections,
            stages.versions,
            taxonomy.version,
            stages.cases.version,
        )
        previous = output.read_manifest() or {}
        finished = output.prepare(fingerprint)
        started_at = previous.get("started_at") if previous.get("fingerprint") == fingerprint else None
        created_at = datetime.fromisoformat(started_at) if started_at else _now()
        manifest: dict[str, Any] = {
            "mediflow_version": __version__,
            "status": "running",
            "fingerprint": fingerprint,
            "started_at": created_at.isoformat(),
            "session_started_at": _now().isoformat(),
            "config": config.to_dict(),
            "teacher": teacher.name,
            "taxonomy_version": taxonomy.version,
            "case_data_version": stages.cases.version,
            "prompt_versions": stages.versions,
            "icd10cm_release": _icd10cm_release(),
            "plan": {
                "id": plan.id,
                "items": len(plan),
                "instruction_groups": plan.group_count,
                "shard_size": config.output.shard_size,
            },
        }
        output.write_manifest(manifest)
        stages.warm_up()
        collector = ShardCollector(output, len(plan), config.output.shard_size, finished)
        workers = -(-(config.records_in_flight or 2 * config.limits.concurrency) // config.documents_per_instruction)
        status, stop_reason = "interrupted", None
        async with engine:
            flow = GroupFlow(
                stages,
                collector,
                config,
                teacher=teacher.name,
                created_at=created_at,
                cost_of=engine.cost_usd,
                on_item_done=engine.progress.advance,
            )
            todo = (group for group in plan.groups() if flow.pending(group))
            engine.progress.set_total(len(plan) - collector.finished_items)
            try:
                await _drive(todo, flow, workers)
                status = "finished"
            except TeacherError as exc:
                status, stop_reason = "stopped", str(exc)
            finally:
                summary = _finish(output, manifest, status, stop_reason, engine.stats.as_dict())
        if status == "stopped":
            raise TeacherError(
                f"{stop_reason}; kept {summary.records} records in {output.data_dir} "
                f"and every answer received in {output.cache_path}: rerun the same command to resume"
            )
        return summary
    finally:
        await teacher.aclose()


def _finish(output: RunOutput, manifest: dict[str, Any], status: str, stop_reason: str | None, session: dict[str, Any]) -> RunSummary:
    summaries = list(output.summaries())
    rejects = output.write_rejects()
    cells, usage = _totals(summaries)
    records = sum(summary["records"] for summary in summaries)
    failures = _failures(summaries)
    manifest.update(
        status=status,
        stop_reason=stop_reason,
        finished_at=_now().isoformat(),
        counts={"records": records, "rejects": rejects, "shards": len(summaries), "cells": cells},
        usage=usage,
        session=session,
        failures=failures,
    )
    output.write_manifest(manifest)
    return RunSummary(
        out_dir=output.root,
        status=status,
        records=records,
        rejects=rejects,
        planned=manifest["plan"]["items"],
        usage=usage,
        session=session,
        failures=failures,
        stop_reason=stop_reason,
    )


def run(config: RunConfig) -> RunSummary:
    """Run ``config`` to completion, also from inside a running event loop (a notebook cell)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_async(config))
    # A loop is already running in this thread (Jupyter): run ours in a worker thread and wait.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mediflow-generate") as pool:
        return pool.submit(asyncio.run, run_async(config)).result()


def load_output(out_dir: str | Path) -> datasets.Dataset:
    """The records of a run's output directory as a :class:`datasets.Dataset` (memory-mapped)."""
    import datasets

    output = RunOutput(out_dir)
    # A shard is also the commit marker of its plan range, so a range whose items were all rejected
    # leaves a zero-row shard; datasets cannot read those, and they hold nothing to load.
    files = [str(path) for _, path in output.shards() if pq.read_metadata(path).num_rows > 0]
    features = datasets.Features.from_arrow_schema(GENERATION_SCHEMA)
    if not files:
        return datasets.Dataset(GENERATION_SCHEMA.empty_table())
    return datasets.Dataset.from_parquet(files, features=features, cache_dir=str(output.root / ".datasets-cache"))


def generate(config: RunConfig | dict[str, Any] | str | Path | None = None, /, **overrides: Any) -> datasets.Dataset:
    """Generate records and return them as a :class:`datasets.Dataset`.

    ``config`` is a run config (a YAML/JSON path, a dict or a :class:`~mediflow.config.RunConfig`);
    ``overrides`` replace its keys (``per_cell=2``, ``teacher="openai:gpt-4o"``, ``out="runs/a"``,
    see :func:`mediflow.config.load_config`). Writes the output directory (``output.dir``, shards,
    rejects, manifest, cache) and resumes it when rerun. Works in a notebook (a running loop).
    """
    summary = run(load_config(config, **overrides))
    return load_output(summary.out_dir)
