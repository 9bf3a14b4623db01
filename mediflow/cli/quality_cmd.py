"""``mediflow filter|judge|dedup|decontaminate|curate IN OUT``: the quality stages (see docs/quality.md).

Every stage command takes the same ``--config`` as ``curate`` (a curate YAML, whose section of the
stage it uses, so one file describes a whole curation) or the stage's own config file.
The flags are derived from the config's fields (:func:`mediflow.configuration.add_flags`) and
override the file. The library functions are imported when a command runs, so ``mediflow --help``
stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from mediflow.configuration import Config, add_flags, flag_overrides
from mediflow.errors import ConfigError
from mediflow.quality.config import CurateConfig, DecontamConfig, DedupConfig, EvalSet, FilterConfig, JudgeConfig, load_stage_config

if TYPE_CHECKING:
    from mediflow.quality.report import StageReport

#: Each stage command: its config section in a curate YAML, its config class, its help line.
_STAGES: dict[str, tuple[str, type[Config], str]] = {
    "filter": ("filters", FilterConfig, "rule filters: length, refusals, template residue, JSON, language, ICD-10 codes, copying"),
    "judge": ("judge", JudgeConfig, "LLM judge: score every record on the rubric (prompts/judge.yaml), drop those below the thresholds"),
    "dedup": ("dedup", DedupConfig, "exact and near-duplicate removal (MinHash-LSH confirmed by rapidfuzz)"),
    "decontaminate": ("decontaminate", DecontamConfig, "drop records sharing word n-grams with evaluation sets"),
}


def _eval_set(value: str) -> EvalSet:
    """``PATH[:field,field]`` -> an eval set (a trailing ``:a,b`` names the text fields; default ``text``)."""
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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``filter``, ``judge``, ``dedup``, ``decontaminate`` and ``curate`` to the top-level parser."""
    for command, (section, cls, help_text) in _STAGES.items():
        parser = subparsers.add_parser(command, help=help_text, description=f"{help_text}. Rerun the same command to resume.")
        _add_io(parser, f"the stage's config, or a curate YAML whose '{section}' section is used (see examples/curate.yaml)")
        add_flags(parser, cls, skip=("eval",))
        if command == "decontaminate":
            parser.add_argument(
                "--eval",
                action="append",
                type=_eval_set,
                default=[],
                metavar="PATH[:field,field]",
                help="an evaluation set (Parquet, JSONL or a datasets folder) and its text fields (default: text); repeatable",
            )
        parser.set_defaults(handler=_stage, command_name=command)

    parser = subparsers.add_parser(
        "curate",
        help="filter -> judge -> dedup -> decontaminate in one run, with the funnel in the manifest",
        description="Run the configured quality stages in order into OUT/stages/<n>-<stage>/ and publish the curated set in OUT.",
    )
    _add_io(parser, "curate YAML (default: filters and dedup with their defaults; see examples/curate.yaml)")
    add_flags(parser, CurateConfig)
    parser.set_defaults(handler=_curate)


def _print_report(report: StageReport, out: Path) -> None:
    print(report.summary_line())
    if report.stage == "judge":
        usage = report.details["usage"]
        batch = usage.get("batch")
        in_batches = f", {batch['requests']} sent in {batch['batches']} batches" if batch is not None else ""
        print(f"judge: {report.details['judged']} judged, {report.details['already_judged']} already judged, {report.details['failed']} failed; {usage['requests']} requests ({usage['cache_hits']} from the cache{in_batches})")
    print(f"wrote {out}")


def _stage(args: argparse.Namespace) -> int:
    from mediflow import api

    _, cls, _ = _STAGES[args.command_name]
    config = load_stage_config(cls, args.config, **flag_overrides(args))
    if isinstance(config, DecontamConfig):
        config = DecontamConfig(config.eval + tuple(args.eval), config.ngram, config.columns)
        if not config.eval:
            raise ConfigError("decontaminate: no evaluation sets (pass --eval PATH[:field,field], or set decontaminate.eval in --config)")
    run = {"filter": api.filter_records, "judge": api.judge, "dedup": api.dedup, "decontaminate": api.decontaminate}
    _print_report(run[args.command_name](args.input, args.out, config, overwrite=args.overwrite), args.out)
    return 0


def _curate(args: argparse.Namespace) -> int:
    from mediflow.api import curate

    manifest = curate(args.input, args.out, args.config, overwrite=args.overwrite, **flag_overrides(args))
    for stage in manifest["stages"]:
        rules = ", ".join(f"{rule} {count}" for rule, count in stage["dropped_by_rule"].items()) or "none"
        print(f"{stage['stage']}: {stage['in']} in, {stage['kept']} kept, {stage['dropped']} dropped ({rules})")
    print(f"curate: {manifest['in']} in -> {manifest['kept']} kept ({manifest['dropped']} dropped over {len(manifest['funnel'])} stages)")
    print(f"wrote {args.out}")
    return 0
