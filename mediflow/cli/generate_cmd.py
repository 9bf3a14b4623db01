"""``mediflow generate``: run a config (or, with none, the offline demo) and print what it produced."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediflow.pipeline.run import RunSummary


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--out", help="output directory (config key output.dir)")
    parser.add_argument("--teacher", help="local | openai:MODEL | azure:DEPLOYMENT | vllm:PATH")
    parser.add_argument("--base-url", help="OpenAI-compatible server URL (vLLM, SGLang, llama.cpp, Azure)")
    parser.add_argument("--api-key-env", help="environment variable holding the API key")
    parser.add_argument("--tasks", type=_names, help="comma-separated task names")
    parser.add_argument("--document-types", type=_names, help="comma-separated document type names")
    parser.add_argument("--difficulty", type=_names, help="comma-separated difficulty level names")
    parser.add_argument("--per-cell", type=int, help="records per (task, document type, difficulty) stratum")
    parser.add_argument("--json-share", type=float, help="share of records in JSON output format (0..1)")
    parser.add_argument("--documents-per-instruction", type=int, help="documents sharing one instruction")
    parser.add_argument("--max-records", type=int, help="stop the plan after this many records")
    parser.add_argument("--max-corrections", type=int, help="correction turns for invalid JSON answers")
    parser.add_argument("--seed", type=int, help="seed of the plan and the sampling")
    parser.add_argument("--concurrency", type=int, help="most teacher requests in flight")
    parser.add_argument("--rpm", type=int, help="requests-per-minute limit")
    parser.add_argument("--tpm", type=int, help="tokens-per-minute limit")
    parser.add_argument("--shard-size", type=int, help="plan items per Parquet shard")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out holding another kind of folder or another config's run (its teacher cache is kept)")
    parser.set_defaults(handler=_run)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "out": args.out,
        "teacher": args.teacher,
        "base_url": args.base_url,
        "api_key_env": args.api_key_env,
        "tasks": args.tasks,
        "document_types": args.document_types,
        "difficulty_levels": args.difficulty,
        "per_cell": args.per_cell,
        "json_share": args.json_share,
        "documents_per_instruction": args.documents_per_instruction,
        "max_records": args.max_records,
        "max_corrections": args.max_corrections,
        "seed": args.seed,
        "concurrency": args.concurrency,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "shard_size": args.shard_size,
        "progress": False if args.no_progress else None,
    }


def _run(args: argparse.Namespace) -> int:
    from mediflow.config import load_config
    from mediflow.pipeline.run import run

    if args.config is not None:
        config = load_config(args.config, **_overrides(args))
    else:
        from mediflow.pipeline.demo import demo_config
        from mediflow.taxonomy import load_taxonomy

        config = load_config(demo_config(load_taxonomy()), **_overrides(args))
        teacher = "the embedded local teacher (Gemma-3-270M, CPU)" if config.teacher.spec == "local" else config.teacher.spec
        print(f"no --config given: running the small demo plan on {teacher}; pass --config for a real run")
    started = time.monotonic()
    summary = run(config, overwrite=args.overwrite)
    _print_summary(summary, time.monotonic() - started)
    return 0


def _print_summary(summary: RunSummary, seconds: float) -> None:
    usage = summary.usage
    cost = "unknown" if usage["cost_usd"] is None else f"${usage['cost_usd']:.4f}"
    session = summary.session
    print(
        f"{summary.status}: {summary.records} records, {summary.rejects} rejects "
        f"(plan: {summary.planned} items) in {seconds:.0f}s"
    )
    for failure in summary.failures[:5]:
        print(f"  reject x{failure['count']} at {failure['stage']}: {failure['reason'][:160]}")
    if len(summary.failures) > 5:
        print(f"  ... {len(summary.failures) - 5} more reasons in rejects.parquet")
    print(
        f"tokens: {usage['prompt_tokens']:,} prompt + {usage['completion_tokens']:,} completion, cost {cost}; "
        f"this session: {session['requests'] - session['cache_hits']} requests sent, {session['cache_hits']} from cache"
    )
    out = summary.out_dir
    print(f"output: {out / 'data'} (Parquet shards), {out / 'rejects.parquet'}, {out / 'manifest.json'}")
