"""``mediflow export``: write the Hub layout and card locally, and optionally upload it to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from mediflow.configuration import add_flags, flag_overrides
from mediflow.export.config import ExportConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` to the top-level parser."""
    parser = subparsers.add_parser(
        "export",
        help="export records (and DPO pairs) as a Hugging Face dataset: local folder and/or Hub repo",
        description=(
            "Write data/{config}/{split}-NNNNN-of-MMMMM.parquet (configs sft, dpo, one per task; splits "
            "train/validation/test by document, stratified by task x document type) and a README.md card, "
            "to --local-dir and/or to a Hub dataset repo (--to-hub) in resumable batched commits."
        ),
    )
    parser.add_argument("input", type=Path, help="a MediFlow output folder (generate or quality) or a Parquet file")
    parser.add_argument("--local-dir", type=Path, help="write the dataset folder here (without it, --to-hub uploads from a temporary folder)")
    parser.add_argument("--config", type=Path, help="an export YAML (keys below)")
    parser.add_argument("--overwrite", action="store_true", help="replace a --local-dir holding another kind of folder or another export")
    add_flags(parser, ExportConfig)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from mediflow.api import export

    result = export(args.input, args.local_dir, args.config, overwrite=args.overwrite, **flag_overrides(args))
    for config, splits in result.summary.rows.items():
        files = result.summary.files[config]
        print(f"{config}: " + ", ".join(f"{split} {count} ({len(files[split])} shard(s))" for split, count in splits.items()))
    if args.local_dir is not None:
        print(f"wrote {args.local_dir}")
    if result.upload is not None:
        sent = sum(len(batch) for batch in result.upload.commits)
        print(f"uploaded {sent} file(s) in {len(result.upload.commits)} commit(s) to {result.upload.repo_id}; {len(result.upload.skipped)} unchanged file(s) skipped")
    return 0
