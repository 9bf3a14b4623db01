"""``mediflow join OUT SHARD_DIR...``: the shares of a ``generate --shard K/N`` job as one run's output folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``join`` to the top-level parser."""
    parser = subparsers.add_parser(
        "join",
        help="join the N share folders of a generate --shard K/N job into one run's output folder",
        description=("Interleave the shares' records and rejects back into the unsharded run's order; OUT then holds exactly what one unsharded generate run writes (and the merged teacher cache)."),
    )
    parser.add_argument("out", type=Path, help="output folder (new or empty)")
    parser.add_argument("shards", type=Path, nargs="+", metavar="SHARD_DIR", help="the output folders of shares 1/N .. N/N")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from mediflow.pipeline.join import join_shares

    summary = join_shares(args.out, args.shards)
    print(f"joined {len(args.shards)} shares: {summary.records} records, {summary.rejects} rejects (plan: {summary.planned} items)")
    print(f"output: {summary.out_dir / 'data'} (Parquet shards), {summary.out_dir / 'rejects.parquet'}, {summary.out_dir / 'manifest.json'}")
    return 0
