"""`mediflow audit IN --html report.html`: every audit check on an output folder, without Jupyter."""

from __future__ import annotations

import argparse
from pathlib import Path

from mediflow.audit.config import AuditConfig
from mediflow.configuration import add_flags, flag_overrides


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` to the top-level parser."""
    parser = subparsers.add_parser(
        "audit",
        help="audit an output folder: coverage, lengths, judge scores, funnel, JSON and ICD-10 validity, duplicates",
        description="Run every audit check on a MediFlow output folder, print a one-line summary per section and optionally write them all as one self-contained HTML report with the plots.",
    )
    parser.add_argument("input", metavar="IN", help="a MediFlow output folder (data/*.parquet, manifest.json, rejects.parquet)")
    parser.add_argument("--html", metavar="FILE", type=Path, help="write the self-contained HTML report here")
    parser.add_argument("--config", type=Path, help="an audit YAML (keys below)")
    add_flags(parser, AuditConfig)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `mediflow --help` does not load pandas and matplotlib.
    from mediflow.api import audit

    report = audit(args.input, args.html, args.config, **flag_overrides(args))
    print(report.summary())
    if args.html:
        print(f"report written to {args.html}")
    return 0
