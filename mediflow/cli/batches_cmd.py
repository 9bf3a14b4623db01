"""``mediflow batches OUT [--refresh] [--cancel]``: the provider batches of a run made with ``--batch``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``batches`` to the top-level parser."""
    parser = subparsers.add_parser(
        "batches",
        help="list the provider batches of a run made with --batch (mode: batch), or cancel them",
        description=(
            "List the batches recorded in OUT/batches/state.json: round, teacher, batch id, status, requests. "
            "--refresh asks the provider for the live status of those still running; --cancel asks it to stop them "
            "(stop the run first). Rerunning the stage reads what they finished and asks the rest again."
        ),
    )
    parser.add_argument("out", type=Path, help="the output folder of a stage run in batch mode (generate, judge, curate's stage, pairs, train qa)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--refresh", action="store_true", help="ask the provider for the live status of the batches still running")
    action.add_argument("--cancel", action="store_true", help="cancel every batch still running (its finished lines are kept)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from mediflow.batch.listing import cancel_batches, describe, list_batches

    if args.cancel:
        cancelled = cancel_batches(args.out)
        for batch in cancelled:
            print(f"cancelled {batch.record.id} ({batch.record.role}, round {batch.record.round}): {batch.status}, {batch.completed} of {batch.record.lines} requests done")
        print(f"{len(cancelled)} batch(es) cancelled; rerun the stage to read what they finished and ask the rest again" if cancelled else "no batch was running")
        return 0
    listing = list_batches(args.out, refresh=args.refresh)
    rows = [describe(batch) for batch in listing.rows]
    state = listing.state
    print(f"{args.out}: {state.kind} run {state.run[:12]}, {state.rounds} round(s), {len(rows)} batch file(s)")
    if rows:
        columns = ["round", "teacher", "batch", "status", "requests", "answered", "asked_again"]
        widths = {name: max(len(name), *(len(str(row[name])) for row in rows)) for name in columns}
        print("  ".join(name.ljust(widths[name]) for name in columns).rstrip())
        for row in rows:
            print("  ".join(str(row[name]).ljust(widths[name]) for name in columns).rstrip())
    requests = sum(batch.record.lines for batch in listing.rows)
    answered = sum(row["answered"] for row in rows)
    submitted = sum(batch.record.id is not None for batch in listing.rows)
    print(f"batches: {submitted} submitted, {listing.in_progress} in progress, {listing.done} done; requests: {answered:,} answered of {requests:,} sent")
    return 0
