"""``mediflow generate``: run a config (or, with none, the offline demo) and print what it produced."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mediflow.config import RunConfig
from mediflow.configuration import add_flags, flag_overrides

if TYPE_CHECKING:
    from mediflow.pipeline.run import RunSummary


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``generate`` to the top-level parser."""
    parser = subparsers.add_parser(
        "generate",
        help="generate instruction records with a teacher LLM (no --config: an offline demo)",
        description=(
            "Generate records: document -> instruction -> response for every cell of the plan. "
            "Flags override the config's keys. Without --config, runs a small demo on the embedded "
            "local teacher (CPU, no key, no network). Rerun the same command to resume."
        ),
    )
    parser.add_argument("--config", type=Path, help="run config (YAML or JSON); see docs/generation.md")
    add_flags(parser, RunConfig)
    parser.add_argument("--overwrite", action="store_true", help="replace an --out holding another kind of folder or another config's run (its teacher cache is kept)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, a sample of cases, requests, tokens, cost and time; send and write nothing")
    parser.add_argument("--plan-out", type=Path, help="with --dry-run: write every plan item and its case to this Parquet file")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from mediflow.config import load_config
    from mediflow.pipeline.run import run

    if args.config is not None:
        config = load_config(args.config, **flag_overrides(args))
    else:
        from mediflow.pipeline.demo import demo_config
        from mediflow.taxonomy import load_taxonomy

        taxonomy = load_taxonomy()
        config = load_config(demo_config(taxonomy), **flag_overrides(args))
        if config.teacher.spec != "local":  # the demo's limits are for the embedded teacher only
            config = load_config(demo_config(taxonomy, embedded=False), **flag_overrides(args))
        teacher = "the embedded local teacher (Gemma-3-270M, CPU)" if config.teacher.spec == "local" else config.teacher.spec
        if not (args.dry_run or args.plan_out is not None):
            print(f"no --config given: running the small demo plan on {teacher}; pass --config for a real run")
    if args.dry_run or args.plan_out is not None:
        return _dry_run(config, args.plan_out)
    started = time.monotonic()
    summary = run(config, overwrite=args.overwrite)
    _print_summary(summary, time.monotonic() - started)
    return 0


def _dry_run(config: RunConfig, plan_out: Path | None) -> int:
    from mediflow.pipeline.dry_run import check_plan_out, dry_run, write_plan

    if plan_out is not None:  # before minutes of work
        check_plan_out(config, plan_out)
    report = dry_run(config)
    lines = report.lines()
    if plan_out is not None:
        rows = write_plan(config, plan_out)
        lines[-1] = f"nothing was sent; wrote the plan ({rows:,} items with their cases) to {plan_out}"
    print("\n".join(lines))
    return 0


def _print_summary(summary: RunSummary, seconds: float) -> None:
    usage = summary.usage
    cost = "unknown" if usage["cost_usd"] is None else f"${usage['cost_usd']:.4f}"
    session = summary.session
    print(f"{summary.status}: {summary.records} records, {summary.rejects} rejects (plan: {summary.planned} items) in {seconds:.0f}s")
    for failure in summary.failures[:5]:
        print(f"  reject x{failure['count']} at {failure['stage']}: {failure['reason'][:160]}")
    if len(summary.failures) > 5:
        print(f"  ... {len(summary.failures) - 5} more reasons in rejects.parquet")
    sent = f"{session['requests'] - session['cache_hits']} requests sent"
    batch = session.get("batch")
    if batch is not None:  # mode: batch: what this session bought in batches, and what it would have cost online
        paid = "unknown" if batch["cost_usd"] is None else f"${batch['cost_usd']:.4f} (online: ${batch['online_cost_usd']:.4f})"
        sent = f"{batch['requests']} requests sent in {batch['batches']} batches for {paid}"
    print(f"tokens: {usage['prompt_tokens']:,} prompt + {usage['completion_tokens']:,} completion, cost {cost}{' at the online list price' if batch is not None else ''}; this session: {sent}, {session['cache_hits']} from cache")
    out = summary.out_dir
    print(f"output: {out / 'data'} (Parquet shards), {out / 'rejects.parquet'}, {out / 'manifest.json'}")
