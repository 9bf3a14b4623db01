"""`mediflow audit IN --html report.html`: every audit check on an output folder, without Jupyter."""

from __future__ import annotations

import argparse
from pathlib import Path

from mediflow.cli.numbers import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the top-level parser."""
    parser = subparsers.add_parser(
        "audit",
        help="audit an output folder: coverage, lengths, judge scores, funnel, JSON and ICD-10 validity, duplicates",
        description="Run every audit check on a MediFlow output folder, print a one-line summary per section "
        "and optionally write them all as one self-contained HTML report with the plots.",
    )
    parser.add_argument("input", metavar="IN", help="a MediFlow output folder (data/*.parquet, manifest.json, rejects.parquet)")
    parser.add_argument("--html", metavar="FILE", help="write the self-contained HTML report here")
    parser.add_argument("--taxonomy", metavar="DIR", help="taxonomy folder merged over the built-in one (default: the run's)")
    parser.add_argument("--sample-size", type=positive_int, default=20_000, help="records sampled for the n-gram check (default: 20000)")
    parser.add_argument(
        "--duplicate-records", type=int, default=50_000, help="records sampled for the near-duplicate check (default: 50000)"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `mediflow --help` does not load pandas and matplotlib.
    from mediflow.audit import run_audit, write_html
    from mediflow.folders import check_output

    if args.html:  # before minutes of auditing: the report may not land on the data it reports on
        check_output(Path(args.html), [Path(args.input), *([Path(args.taxonomy)] if args.taxonomy else [])], what="HTML report", file=True)
    taxonomy = None
    if args.taxonomy:  # asked for by name: a broken folder is an error, not a silent fallback
        from mediflow.taxonomy import load_taxonomy

        taxonomy = load_taxonomy(Path(args.taxonomy))
    report = run_audit(args.input, taxonomy=taxonomy, sample_size=args.sample_size, duplicate_records=args.duplicate_records)
    print(report.summary())
    if args.html:
        print(f"report written to {write_html(report, args.html)}")
    return 0
