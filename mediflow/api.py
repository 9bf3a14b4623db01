"""The public API a notebook uses: every stage as one call, ``from mediflow import generate, curate, ...``.

Each stage is ``stage(input, out, config=None, *, overwrite=False, **overrides)`` and its coroutine
twin ``stage_async`` (for callers already running an event loop; the plain function also works
inside one, a Jupyter cell, through :func:`mediflow.sync.run_sync`):

- ``input``: what the stage reads (a MediFlow folder, a Parquet or JSONL file); ``generate`` has
  none (its config's plan is its input), so it is ``generate(config=None, out=None, ...)``;
- ``out``: the folder it writes (``audit``: the HTML report, or None; ``export``: the local folder,
  or None with ``to_hub``);
- ``config``: the stage's :class:`~mediflow.configuration.Config`, a YAML/JSON path or a dict (a
  quality stage also takes a curate config, and uses its own section of it); anything else is one
  :class:`~mediflow.errors.ConfigError` line;
- ``overrides``: config keys or their aliases (``teacher="openai:gpt-4o-mini"``, ``samples=3``,
  ``to_hub="org/name"``), applied over ``config`` and validated the same way;
- ``overwrite``: replace an ``out`` holding another kind of folder or another config's run (a
  stage refuses it otherwise, before writing anything).

The chain::

    from mediflow import generate, curate, build_pairs, export, audit
    records = generate("run.yaml", "runs/a")                      # a datasets.Dataset
    curate("runs/a", "runs/a-curated", "curate.yaml")             # the curate manifest (its funnel)
    build_pairs("runs/a-curated", "runs/a-pairs", "pairs.yaml")   # yield, drops by reason
    export("runs/a-curated", "runs/a-hub", "export.yaml", pairs="runs/a-pairs")
    audit("runs/a-curated", "runs/a-audit.html", "audit.yaml")   # every check, and the HTML report

``export`` and ``audit`` share their names with the packages that implement them, so
``from mediflow import export, audit`` gives those packages, which are callable: the same stages.
The export loads the Hub client when called; the audit loads matplotlib when it draws.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mediflow.preference.build as pairs
import mediflow.quality.curation as curation
from mediflow.audit.report import AuditReport
from mediflow.audit.stage import audit as audit  # the audit stage, re-exported as it is
from mediflow.config import RunConfig, load_config
from mediflow.pipeline.run import load_output, run_async
from mediflow.preference.build import PairsResult
from mediflow.preference.config import PairsConfig
from mediflow.quality.config import CurateConfig, DecontamConfig, DedupConfig, FilterConfig, JudgeConfig, load_stage_config
from mediflow.quality.decontaminate import run_decontaminate
from mediflow.quality.dedup_stage import run_dedup
from mediflow.quality.filter_stage import run_filters
from mediflow.quality.judge import run_judge_async
from mediflow.quality.report import StageReport
from mediflow.sync import run_sync

if TYPE_CHECKING:
    import datasets

    from mediflow.export.run import ExportResult

#: A stage's input (a MediFlow folder, a Parquet or JSONL file) or output.
PathLike = str | Path
#: A config: the stage's Config, a YAML/JSON path, a dict, or None (the defaults).
ConfigSource = Any


def generate(config: RunConfig | Mapping[str, Any] | PathLike | None = None, out: PathLike | None = None, *, overwrite: bool = False, **overrides: Any) -> datasets.Dataset:
    """Generate records into ``out`` (or the config's ``output.dir``) and return them as a :class:`datasets.Dataset`.

    Rerunning the same config resumes it: every answer already received comes from the cache.
    """
    return run_sync(generate_async(config, out, overwrite=overwrite, **overrides))


async def generate_async(config: RunConfig | Mapping[str, Any] | PathLike | None = None, out: PathLike | None = None, *, overwrite: bool = False, **overrides: Any) -> datasets.Dataset:
    """:func:`generate` for callers already running an event loop."""
    summary = await run_async(load_config(config, out=None if out is None else str(out), **overrides), overwrite=overwrite)
    return load_output(summary.out_dir)


def filter_records(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> StageReport:
    """The rule filters (length, refusals, template residue, JSON, language, ICD-10 codes, copying, case)."""
    return run_filters(Path(input), Path(out), load_stage_config(FilterConfig, config, **overrides), overwrite=overwrite)


async def filter_records_async(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> StageReport:
    """:func:`filter_records` in a worker thread (it is CPU-bound), for callers already running an event loop."""
    return await asyncio.to_thread(filter_records, input, out, config, overwrite=overwrite, **overrides)


def judge(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> StageReport:
    """The LLM judge: every record scored on the rubric, those below the thresholds dropped."""
    return run_sync(judge_async(input, out, config, overwrite=overwrite, **overrides))


async def judge_async(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> StageReport:
    """:func:`judge` for callers already running an event loop."""
    return await run_judge_async(Path(input), Path(out), load_stage_config(JudgeConfig, config, **overrides), overwrite=overwrite)


def dedup(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> StageReport:
    """Exact and near-duplicate removal (MinHash-LSH candidates confirmed clinically and with rapidfuzz)."""
    return run_dedup(Path(input), Path(out), load_stage_config(DedupConfig, config, **overrides), overwrite=overwrite)


async def dedup_async(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> StageReport:
    """:func:`dedup` in a worker thread (it is CPU-bound), for callers already running an event loop."""
    return await asyncio.to_thread(dedup, input, out, config, overwrite=overwrite, **overrides)


def decontaminate(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> StageReport:
    """Drop the records sharing word n-grams with the evaluation sets (``eval=[{"path": ...}]``)."""
    return run_decontaminate(Path(input), Path(out), load_stage_config(DecontamConfig, config, **overrides), overwrite=overwrite)


async def decontaminate_async(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> StageReport:
    """:func:`decontaminate` in a worker thread (it is CPU-bound), for callers already running an event loop."""
    return await asyncio.to_thread(decontaminate, input, out, config, overwrite=overwrite, **overrides)


def curate(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> dict[str, Any]:
    """filter -> judge -> dedup -> decontaminate, as configured; returns the curate manifest (its ``funnel``)."""
    return run_sync(curate_async(input, out, config, overwrite=overwrite, **overrides))


async def curate_async(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> dict[str, Any]:
    """:func:`curate` for callers already running an event loop."""
    return await curation.curate_async(Path(input), Path(out), CurateConfig.load(config, **overrides), overwrite=overwrite)


def build_pairs(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> PairsResult:
    """DPO preference pairs (error injection or other candidates, a pair judge, margins)."""
    return run_sync(build_pairs_async(input, out, config, overwrite=overwrite, **overrides))


async def build_pairs_async(input: PathLike, out: PathLike, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> PairsResult:
    """:func:`build_pairs` for callers already running an event loop."""
    return await pairs.build_pairs_async(input, out, PairsConfig.load(config, **overrides), overwrite=overwrite)


def export(input: PathLike, out: PathLike | None = None, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> ExportResult:
    """The Hub-layout dataset (sft, dpo and per-task configs, splits by document, card) in ``out``, uploaded with ``to_hub``."""
    from mediflow.export.run import export as run  # the Hub client, loaded when an export runs

    return run(input, out, config, overwrite=overwrite, **overrides)


async def export_async(input: PathLike, out: PathLike | None = None, config: ConfigSource = None, *, overwrite: bool = False, **overrides: Any) -> ExportResult:
    """:func:`export` in a worker thread, for callers already running an event loop."""
    return await asyncio.to_thread(export, input, out, config, overwrite=overwrite, **overrides)


async def audit_async(input: PathLike, out: PathLike | None = None, config: ConfigSource = None, **overrides: Any) -> AuditReport:
    """:func:`audit` in a worker thread, for callers already running an event loop."""
    return await asyncio.to_thread(audit, input, out, config, **overrides)
