"""The run's output directory: Parquet shards, rejects, manifest, written so that a crash loses nothing.

Layout::

    OUT/
      data/shard-00000.parquet   accepted records of plan items [0, S), in plan order (GENERATION_SCHEMA)
      data/shard-00001.parquet   ... of [S, 2S)
      rejects.parquet            every item kept out of the data, with stage, reason and raw text
      manifest.json              config (no secrets), versions, counts per cell, usage, cost, failures
      cache.sqlite               the engine's cache of every teacher answer (what makes resume free)
      .parts/                    per-shard rejects and summaries, folded into rejects.parquet / manifest.json

A shard holds the records of a fixed range of plan positions, so its content depends only on the
plan and the teacher's (cached) answers, never on which request came back first. A shard is written
once all items of its range are finished, to a temporary file that is then ``os.replace``-d into
place: a shard is either absent or complete. Its rejects and summary are written first, so the
shard file is the commit marker of its range; on resume, ranges with a shard are skipped outright
and the others are recomputed (from the cache, for every answer already received).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mediflow.records import GENERATION_SCHEMA, rows_to_table

REJECT_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw_text", pa.string()),
        pa.field("cell", pa.string()),
        pa.field("task_type", pa.string()),
        pa.field("input_data", pa.string()),
        pa.field("difficulty_level", pa.string()),
        pa.field("output_format", pa.string()),
        pa.field("instruction_id", pa.string()),
        pa.field("document_id", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("input", pa.string()),
        pa.field("corrections", pa.int64()),
        pa.field("teacher", pa.string()),
        pa.field("prompt_version", pa.string()),
        pa.field("usage", GENERATION_SCHEMA.field("usage").type),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("case", GENERATION_SCHEMA.field("case").type),
    ]
)


def _replace_atomically(path: Path, write: Any) -> None:
    """Write through ``write(tmp_path)``, fsync, then rename over ``path``: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomically(table: pa.Table, path: Path) -> None:
    """One Parquet file, atomically."""
    _replace_atomically(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_json_atomically(value: Any, path: Path) -> None:
    """One JSON file, atomically."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"
    _replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class RunOutput:
    """Reads and writes one run's output directory (see the module docstring for the layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.parts_dir = self.root / ".parts"
        self.manifest_path = self.root / "manifest.json"
        self.rejects_path = self.root / "rejects.parquet"
        self.cache_path = self.root / "cache.sqlite"

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest left by an earlier run in this directory, if any."""
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def prepare(self, fingerprint: str) -> set[int]:
        """Make the directory ready for a run; return the shards already finished by the same run.

        A directory holding another run's shards (a different plan, teacher, prompt or sampling
        setting) has its shards and rejects removed; the teacher cache is kept, so every answer the
        new run shares with the old one is still free.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        previous = self.read_manifest()
        if previous is not None and previous.get("fingerprint") == fingerprint:
            return {index for index, _ in self.shards()}
        for path in self.data_dir.glob("shard-*.parquet"):
            path.unlink()
        shutil.rmtree(self.parts_dir)
        self.parts_dir.mkdir()
        self.rejects_path.unlink(missing_ok=True)
        return set()

    def shards(self) -> Iterator[tuple[int, Path]]:
        """Finished shards, in order."""
        for path in sorted(self.data_dir.glob("shard-*.parquet")):
            yield int(path.stem.split("-")[1]), path

    def shard_path(self, index: int) -> Path:
        return self.data_dir / f"shard-{index:05d}.parquet"

    def write_shard(self, index: int, rows: list[dict[str, Any]], rejects: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Commit one plan range: its rejects and summary first, then its shard (the commit marker)."""
        write_parquet_atomically(rows_to_table(rejects, REJECT_SCHEMA), self.parts_dir / f"rejects-{index:05d}.parquet")
        write_json_atomically(summary, self.parts_dir / f"summary-{index:05d}.json")
        write_parquet_atomically(rows_to_table(rows, GENERATION_SCHEMA), self.shard_path(index))

    def read_summary(self, index: int) -> dict[str, Any]:
        """The summary of finished shard ``index``."""
        return json.loads((self.parts_dir / f"summary-{index:05d}.json").read_text(encoding="utf-8"))

    def summaries(self) -> Iterator[dict[str, Any]]:
        """The summaries of the finished shards."""
        for index, _ in self.shards():
            yield self.read_summary(index)

    def write_rejects(self) -> int:
        """Fold the finished shards' rejects into ``rejects.parquet``; return how many there are."""
        tables = [
            pq.read_table(self.parts_dir / f"rejects-{index:05d}.parquet", schema=REJECT_SCHEMA)
            for index, _ in self.shards()
        ]
        table = pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()
        write_parquet_atomically(table, self.rejects_path)
        return table.num_rows

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomically(manifest, self.manifest_path)
