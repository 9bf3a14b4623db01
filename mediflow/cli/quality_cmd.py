"""``mediflow filter|judge|dedup|decontaminate|curate IN OUT``: the quality stages (see docs/quality.md).

Every stage command takes the same ``--config`` as ``curate`` (a curate YAML) and uses its own
section of it, so one file describes a whole curation and each stage can still be run alone.
Flags override the config. The library functions are imported when a command runs, so ``mediflow
--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mediflow.errors import ConfigError

if TYPE_CHECKING:
    from mediflow.quality.config import CurateConfig, EvalSet
    from mediflow.quality.report import StageReport


def _eval_set(value: str) -> EvalSet:
    """``PATH[:field,field]`` -> an eval set (a trailing ``:a,b`` names the text fields; default ``text``)."""
    from mediflow.quality.config import EvalSet

    path, colon, fields = value.rpartition(":")
    if not colon or not fields or "/" in fields or "\\" in fields:
        return EvalSet(value)
    names = tuple(name.strip() for name in fields.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"bad --eval {value!r}: expected PATH[:field,field]")
    return EvalSet(path, names)


def _add_io(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument("input", type=Path, help="a MediFlow output folder, a folder of Parquet files, or one Parquet file")
    parser.add_argument("out", type=Path, help="output folder: data/part-*.parquet (kept), rejects.parquet, manifest.json")
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("--overwrite", action="store_true", help="replace an OUT holding another kind of folder or another config's run")


def _add_teacher(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", help="judge spec: openai:MODEL | azure:DEPLOYMENT | vllm:PATH | local")
    parser.add_argument("--base-url", help="OpenAI-compatible server URL of the judge")
    parser.add_argument("--api-key-env", help="environment variable holding the judge's API key (default: the SDK's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``filter``, ``judge``, ``dedup``, ``decontaminate`` and ``curate`` to the top-level parser."""
    section = "a curate YAML; its '{}' section is used (see examples/curate.yaml)"

    parser = subparsers.add_parser("filter", help="rule filters: length, refusals, template residue, JSON, language, ICD-10 codes, copying")
    _add_io(parser, section.format("filters"))
    parser.set_defaults(handler=_filter)

    parser = subparsers.add_parser(
        "judge",
        help="LLM judge: score every record on the rubric (prompts/judge.yaml), drop those below the thresholds",
        description="Score each record with a judge LLM (N samples, aggregated) and drop records below the thresholds. Rerun to resume from the cache.",
    )
    _add_io(parser, section.format("judge"))
    _add_teacher(parser)
    parser.add_argument("--samples", type=int, help="judge samples per record (self-consistency; default 5)")
    parser.add_argument("--concurrency", type=int, help="judge requests in flight (default 32)")
    parser.add_argument("--rejudge", action="store_true", help="re-score records that already carry judge scores")
    parser.set_defaults(handler=_judge)

    parser = subparsers.add_parser("dedup", help="exact and near-duplicate removal (MinHash-LSH confirmed by rapidfuzz)")
    _add_io(parser, section.format("dedup"))
    parser.set_defaults(handler=_dedup)

    parser = subparsers.add_parser("decontaminate", help="drop records sharing word n-grams with evaluation sets")
    _add_io(parser, section.format("decontaminate"))
    parser.add_argument("--eval", action="append", type=_eval_set, default=[], metavar="PATH[:field,field]",
                        help="an evaluation set (Parquet, JSONL or a datasets folder) and its text fields (default: text); repeatable")
    parser.add_argument("--ngram", type=int, help="n-gram length in words (default 13)")
    parser.set_defaults(handler=_decontaminate)

    parser = subparsers.add_parser(
        "curate",
        help="filter -> judge -> dedup -> decontaminate in one run, with the funnel in the manifest",
        description="Run the configured quality stages in order into OUT/stages/<n>-<stage>/ and publish the curated set in OUT.",
    )
    _add_io(parser, "curate YAML (default: filters and dedup with their defaults; see examples/curate.yaml)")
    _add_teacher(parser)
    parser.set_defaults(handler=_curate)


def _load(path: Path | None) -> CurateConfig:
    from mediflow.quality.config import CurateConfig

    return CurateConfig.load(path) if path is not None else CurateConfig()


def _print_report(report: StageReport, out: Path) -> None:
    print(report.summary_line())
    print(f"wrote {out}")


def _filter(args: argparse.Namespace) -> int:
    from mediflow.quality import FilterConfig, run_filters

    _print_report(run_filters(args.input, args.out, _load(args.config).filters or FilterConfig(), overwrite=args.overwrite), args.out)
    return 0


def _judge_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "teacher": args.teacher,
        "base_url": args.base_url,
        "api_key_env": args.api_key_env,
        "samples": getattr(args, "samples", None),
        "concurrency": getattr(args, "concurrency", None),
        "rejudge": getattr(args, "rejudge", False) or None,
        "progress": False if args.no_progress else None,
    }
    return {name: value for name, value in flags.items() if value is not None}


def _judge(args: argparse.Namespace) -> int:
    from mediflow.quality import JudgeConfig, run_judge

    config = dataclasses.replace(_load(args.config).judge or JudgeConfig(), **_judge_overrides(args))
    report = run_judge(args.input, args.out, config, overwrite=args.overwrite)
    usage = report.details["usage"]
    print(report.summary_line())
    print(
        f"judge: {report.details['judged']} judged, {report.details['already_judged']} already judged, "
        f"{report.details['failed']} failed; {usage['requests']} requests ({usage['cache_hits']} from the cache)"
    )
    print(f"wrote {args.out}")
    return 0


def _dedup(args: argparse.Namespace) -> int:
    from mediflow.quality import DedupConfig, run_dedup

    _print_report(run_dedup(args.input, args.out, _load(args.config).dedup or DedupConfig(), overwrite=args.overwrite), args.out)
    return 0


def _decontaminate(args: argparse.Namespace) -> int:
    from mediflow.quality import DecontamConfig, run_decontaminate

    config = _load(args.config).decontaminate or DecontamConfig()
    config = dataclasses.replace(config, eval=config.eval + tuple(args.eval), **({"ngram": args.ngram} if args.ngram else {}))
    if not config.eval:
        raise ConfigError("decontaminate: no evaluation sets (pass --eval PATH[:field,field], or set decontaminate.eval in --config)")
    _print_report(run_decontaminate(args.input, args.out, config, overwrite=args.overwrite), args.out)
    return 0


def _curate(args: argparse.Namespace) -> int:
    from mediflow.quality import JudgeConfig, curate

    config = _load(args.config)
    overrides = _judge_overrides(args)
    if args.teacher or (config.judge is not None and overrides):
        config = dataclasses.replace(config, judge=dataclasses.replace(config.judge or JudgeConfig(), **overrides))
    manifest = curate(args.input, args.out, config, overwrite=args.overwrite)
    for stage in manifest["stages"]:
        rules = ", ".join(f"{rule} {count}" for rule, count in stage["dropped_by_rule"].items()) or "none"
        print(f"{stage['stage']}: {stage['in']} in, {stage['kept']} kept, {stage['dropped']} dropped ({rules})")
    print(f"curate: {manifest['in']} in -> {manifest['kept']} kept ({manifest['dropped']} dropped over {len(manifest['funnel'])} stages)")
    print(f"wrote {args.out}")
    return 0
