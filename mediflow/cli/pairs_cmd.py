"""``mediflow pairs IN OUT``: DPO preference pairs from a MediFlow output (see docs/preference.md)."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from mediflow.configuration import add_flags, flag_overrides
from mediflow.errors import MediflowError
from mediflow.preference.config import CandidateSource, PairsConfig
from mediflow.teachers.config import TeacherConfig


def _source(value: str) -> CandidateSource:
    """``SPEC[@TEMPERATURE][,BASE_URL]`` -> a candidate source (a shorthand for a candidate_sources entry)."""
    spec, _, base_url = value.partition(",")
    spec, _, temperature = spec.partition("@")
    try:
        return CandidateSource(TeacherConfig(spec, base_url or None), float(temperature) if temperature else 0.7)
    except (ValueError, MediflowError):
        raise argparse.ArgumentTypeError(f"bad candidate source {value!r}: expected SPEC[@TEMPERATURE][,BASE_URL]") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    parser.add_argument("--config", type=Path, help="a pairs config (YAML or JSON); see docs/preference.md")
    add_flags(parser, PairsConfig)
    parser.add_argument("--overwrite", action="store_true", help="replace an OUT holding another kind of folder or another config's run")
    parser.add_argument(
        "--candidate",
        action="append",
        type=_source,
        default=[],
        metavar="SPEC[@T][,URL]",
        help="candidates method: another answer source (repeatable), e.g. openai:student@0.7,http://127.0.0.1:8000/v1",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from mediflow.api import build_pairs

    config = PairsConfig.load(args.config, **flag_overrides(args))
    if args.candidate:
        config = PairsConfig.load(config, candidate_sources=[*config.candidate_sources, *args.candidate])
    with warnings.catch_warnings():  # said once below, as a note rather than a warning with a source line
        warnings.filterwarnings("ignore", message="the input has no judge scores")
        result = build_pairs(args.input, args.out, config, overwrite=args.overwrite)
    if not result.manifest["pairs"]["input_judged"]:
        print("note: the input has no judge scores, so every record was tried (run `mediflow curate` with a judge first)")
    drops = ", ".join(f"{reason} {count}" for reason, count in sorted(result.dropped.items())) or "none"
    print(f"pairs: {result.kept} kept of {result.tried} records tried (yield {result.yield_rate:.1%}); dropped: {drops}")
    print(f"wrote {args.out}")
    return 0
