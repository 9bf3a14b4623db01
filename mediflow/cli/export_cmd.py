"""``mediflow export``: write the Hub layout and card locally, and optionally upload it to the Hub."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from mediflow.cli.numbers import fraction, positive_float, positive_int
from mediflow.errors import MediflowError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` to the top-level parser."""
    parser = subparsers.add_parser(
        "export",
        help="export records (and DPO pairs) as a Hugging Face dataset: local folder or Hub repo",
        description=(
            "Write data/{config}/{split}-NNNNN-of-MMMMM.parquet (configs sft, dpo, one per task; splits "
            "train/validation/test by document, stratified by task x document type) and a README.md card, "
            "to --local-dir or to a Hub dataset repo (--to-hub) in resumable batched commits."
        ),
    )
    parser.add_argument("input", type=Path, help="a MediFlow output folder (generate or quality) or a Parquet file")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--local-dir", type=Path, help="write the dataset folder here")
    target.add_argument("--to-hub", metavar="REPO_ID", help="upload to this Hub dataset repo (user/name)")
    parser.add_argument("--pairs", type=Path, help="a `mediflow pairs` output folder: adds the dpo config")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the Hub token (default HF_TOKEN)")
    parser.add_argument("--endpoint", help="Hub endpoint URL (default: huggingface_hub's, or $HF_ENDPOINT)")
    parser.add_argument("--files-per-commit", type=positive_int, default=100, help="most files per Hub commit (default 100)")
    parser.add_argument("--split", nargs=3, type=fraction, metavar=("TRAIN", "VALIDATION", "TEST"), default=(0.9, 0.05, 0.05), help="document fractions per split (default 0.9 0.05 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--max-shard-rows", type=positive_int, default=100_000, help="most rows per Parquet shard (default 100000)")
    parser.add_argument("--max-shard-mb", type=positive_float, default=500.0, help="most uncompressed MB per shard (default 500)")
    parser.add_argument("--no-task-configs", action="store_true", help="only the sft and dpo configs")
    parser.add_argument("--license", default="cdla-permissive-2.0", help="licence id for the card (default cdla-permissive-2.0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a --local-dir holding another kind of folder or another export")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from mediflow.export import ExportOptions, ShardLimits, SplitFractions, export_dataset, upload_export

    options = ExportOptions(
        fractions=SplitFractions(*args.split),
        seed=args.seed,
        limits=ShardLimits(max_rows=args.max_shard_rows, max_bytes=int(args.max_shard_mb * 1024 * 1024)),
        per_task_configs=not args.no_task_configs,
        license=args.license,
        repo_id=args.to_hub or args.local_dir.name,
    )
    if args.local_dir is not None:
        summary = export_dataset(args.input, args.local_dir, pairs=args.pairs, options=options, overwrite=args.overwrite)
        _print_summary(summary.rows, summary.files)
        print(f"wrote {args.local_dir}")
        return 0
    token = os.environ.get(args.token_env)
    if not token:
        raise MediflowError(f"no Hub token: set the environment variable {args.token_env} (or pass --token-env NAME)")
    with tempfile.TemporaryDirectory(prefix="mediflow-export-") as staging:
        summary = export_dataset(args.input, Path(staging), pairs=args.pairs, options=options)
        _print_summary(summary.rows, summary.files)
        report = upload_export(
            Path(staging), args.to_hub, token=token, private=args.private, files_per_commit=args.files_per_commit, endpoint=args.endpoint
        )
    sent = sum(len(batch) for batch in report.commits)
    print(f"uploaded {sent} file(s) in {len(report.commits)} commit(s) to {args.to_hub}; {len(report.skipped)} unchanged file(s) skipped")
    return 0


def _print_summary(rows: dict[str, dict[str, int]], files: dict[str, dict[str, list[str]]]) -> None:
    for config, splits in rows.items():
        parts = ", ".join(f"{split} {count} ({len(files[config][split])} shard(s))" for split, count in splits.items())
        print(f"{config}: {parts}")
