"""``mediflow pairs IN OUT``: DPO preference pairs from a MediFlow output (see docs/preference.md)."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from mediflow.errors import MediflowError


def _source(value: str) -> tuple[str, float, str | None]:
    """``SPEC[@TEMPERATURE][,BASE_URL]`` -> (spec, temperature, base_url)."""
    spec, _, base_url = value.partition(",")
    spec, _, temperature = spec.partition("@")
    try:
        return spec, float(temperature) if temperature else 0.7, base_url or None
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad candidate source {value!r}: expected SPEC[@TEMPERATURE][,BASE_URL]") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pairs`` to the top-level parser."""
    parser = subparsers.add_parser(
        "pairs",
        help="build DPO preference pairs (error injection, or candidates from other sources) judged by a teacher",
        description=(
            "Build preference pairs in TRL's format from a MediFlow output. --method inject (the reference "
            "method): the teacher rewrites each best-judged answer with one named error, kept when the judge "
            "confirms it is worse by --min-margin. --method candidates: other sources answer too and the "
            "judge's best and worst make the pair. Rerun the same command to resume from the cache."
        ),
    )
    parser.add_argument("input", type=Path, help="a MediFlow output folder or Parquet file (ideally judged)")
    parser.add_argument("out", type=Path, help="output folder (data/part-*.parquet, rejects.parquet, manifest.json)")
    parser.add_argument("--method", choices=("inject", "candidates"), default="inject", help="default: inject")
    parser.add_argument("--teacher", default="local", help="teacher spec that injects errors / samples hot (default local)")
    parser.add_argument("--base-url", help="OpenAI-compatible server URL of the teacher")
    parser.add_argument("--judge-teacher", help="judge spec (default: the teacher)")
    parser.add_argument("--judge-base-url", help="server URL of the judge")
    parser.add_argument("--api-key-env", help="environment variable holding the API key (default: the SDK's)")
    parser.add_argument("--judge-samples", type=int, default=1, help="judge samples per comparison, averaged (default 1)")
    parser.add_argument("--min-margin", type=float, default=2.0, help="least chosen - rejected judge score, 1-10 scale (default 2)")
    parser.add_argument("--min-score", type=float, help="least mean judge score of a chosen record")
    parser.add_argument("--top-fraction", type=float, default=1.0, help="take the best-judged fraction of the records (default 1.0)")
    parser.add_argument("--max-records", type=int, help="try at most this many records")
    parser.add_argument("--candidate", action="append", type=_source, default=[], metavar="SPEC[@T][,URL]", help="candidates method: another answer source (repeatable), e.g. openai:student@0.7,http://127.0.0.1:8000/v1")
    parser.add_argument("--hot-samples", type=int, default=0, help="candidates method: teacher samples at --hot-temperature")
    parser.add_argument("--hot-temperature", type=float, default=1.2, help="default 1.2")
    parser.add_argument("--error-kinds", type=Path, help="a user error_kinds.yaml (default: built-in)")
    parser.add_argument("--prompts", type=Path, help="a user prompts folder overriding pair_judge / error_injection")
    parser.add_argument("--taxonomy", type=Path, help="a user taxonomy folder (task JSON schemas for the hard checks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the error kinds and the judge's candidate order")
    parser.add_argument("--concurrency", type=int, default=16, help="teacher requests in flight per engine (default 16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace an OUT holding another kind of folder or another config's run")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from mediflow.preference import CandidateSource, PairsConfig, build_pairs

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise MediflowError(f"the environment variable {args.api_key_env} (--api-key-env) is not set")
    config = PairsConfig(
        method=args.method,
        teacher=args.teacher,
        base_url=args.base_url,
        judge_teacher=args.judge_teacher,
        judge_base_url=args.judge_base_url,
        judge_samples=args.judge_samples,
        min_margin=args.min_margin,
        min_score=args.min_score,
        top_fraction=args.top_fraction,
        max_records=args.max_records,
        candidate_sources=tuple(CandidateSource(spec, temperature, url) for spec, temperature, url in args.candidate),
        hot_samples=args.hot_samples,
        hot_temperature=args.hot_temperature,
        seed=args.seed,
        error_kinds_path=args.error_kinds,
        prompts_path=args.prompts,
        taxonomy_path=args.taxonomy,
        concurrency=args.concurrency,
        progress=not args.no_progress,
    )
    with warnings.catch_warnings():  # said once below, as a note rather than a warning with a source line
        warnings.filterwarnings("ignore", message="the input has no judge scores")
        result = build_pairs(args.input, args.out, config, api_key=api_key, overwrite=args.overwrite)
    if not result.manifest["pairs"]["input_judged"]:
        print("note: the input has no judge scores, so every record was tried (run `mediflow curate` with a judge first)")
    drops = ", ".join(f"{reason} {count}" for reason, count in sorted(result.dropped.items())) or "none"
    print(f"pairs: {result.kept} kept of {result.tried} records tried (yield {result.yield_rate:.1%}); dropped: {drops}")
    print(f"wrote {args.out}")
    return 0
