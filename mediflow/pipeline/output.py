"""generate's side of the output-folder contract: plan ranges committed as shards, so a crash loses nothing.

The folder is an :class:`~mediflow.folders.OutputFolder` of kind ``generate``::

    OUT/
      data/part-00000.parquet    accepted records of plan items [0, S), in plan order (GENERATION_SCHEMA)
      data/part-00001.parquet    ... of [S, 2S)
      rejects.parquet            every item kept out of the data, with stage, rule, reason and raw text (the one reject schema)
      manifest.json              the typed manifest: config (no secrets), status, counts, plus versions, usage, cost
      cache.sqlite               the engine's cache of every teacher answer (what makes resume free)
      .parts/                    per-shard rejects and summaries, folded into rejects.parquet / manifest.json

A shard holds the records of a fixed range of plan positions, so its content depends only on the
plan and the teacher's (cached) answers, never on which request came back first. A shard is written
once all items of its range are finished, atomically: a shard is either absent or complete. Its
rejects and summary are written first, so the shard file is the commit marker of its range; on
resume, ranges with a shard are skipped outright and the others are recomputed (from the cache,
for every answer already received).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mediflow.errors import MediflowError
from mediflow.folders import CACHE_NAME, DATA_DIR, REJECTS_NAME, OutputFolder, reject_schema, shard_name, write_json, write_parquet
from mediflow.folders.output import PARTS_DIR
from mediflow.records import GENERATION_SCHEMA, rows_to_table

#: generate's rejects: the plan item (and what was made of it before it failed), in the one reject schema.
REJECT_SCHEMA = reject_schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
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


class RunOutput:
    """One generate run's shards and side files: read from any folder, written inside its :class:`OutputFolder`.

    ``RunOutput(path)`` reads a run (``mediflow join`` reads its shares so); writing needs the
    locked folder, ``RunOutput(folder.root, folder)``.
    """

    def __init__(self, root: str | Path, folder: OutputFolder | None = None, *, for_driver: bool = False) -> None:
        self.root = Path(root)
        self.folder = folder
        #: ``engine: ray``: an actor writing shards (or pieces) into the folder its driver holds locked.
        self.for_driver = for_driver
        self.data_dir = self.root / DATA_DIR
        self.parts_dir = self.root / PARTS_DIR
        self.rejects_path = self.root / REJECTS_NAME
        self.cache_path = self.root / CACHE_NAME
        if folder is not None or for_driver:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.parts_dir.mkdir(parents=True, exist_ok=True)

    def writable(self) -> OutputFolder:
        """The locked folder this run writes (an error for a run opened for reading only)."""
        if self.folder is None:
            raise RuntimeError(f"{self.root}: opened for reading only")
        return self.folder

    def _check_writable(self) -> None:
        if self.folder is None and not self.for_driver:
            raise RuntimeError(f"{self.root}: opened for reading only")

    def shards(self) -> Iterator[tuple[int, Path]]:
        """Finished shards, in order."""
        for path in sorted(self.data_dir.glob("part-*.parquet")):
            yield int(path.stem.split("-")[1]), path

    def shard_path(self, index: int) -> Path:
        return self.data_dir / shard_name(index)

    def finished(self) -> set[int]:
        """The plan ranges already committed (by this run, or by the run it resumes)."""
        return {index for index, _ in self.shards()}

    def write_shard(self, index: int, rows: list[dict[str, Any]], rejects: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Commit one plan range: its rejects and summary first, then its shard (the commit marker)."""
        self._check_writable()
        write_parquet(self.parts_dir / f"rejects-{index:05d}.parquet", rows_to_table(rejects, REJECT_SCHEMA))
        write_json(self.parts_dir / f"summary-{index:05d}.json", summary)
        write_parquet(self.shard_path(index), rows_to_table(rows, GENERATION_SCHEMA))

    def read_summary(self, index: int) -> dict[str, Any]:
        """The summary of finished shard ``index``."""
        summary: dict[str, Any] = json.loads((self.parts_dir / f"summary-{index:05d}.json").read_text(encoding="utf-8"))
        return summary

    def summaries(self) -> Iterator[dict[str, Any]]:
        """The summaries of the finished shards."""
        for index, _ in self.shards():
            yield self.read_summary(index)

    def write_rejects(self) -> int:
        """Fold the finished shards' rejects into ``rejects.parquet``; return how many there are."""
        self.writable()
        tables = [pq.read_table(self.parts_dir / f"rejects-{index:05d}.parquet", schema=REJECT_SCHEMA) for index, _ in self.shards()]
        table = pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()
        write_parquet(self.rejects_path, table)
        return int(table.num_rows)


def interleave_range(parts: Sequence[RunOutput], index: int, created_at: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[int]]]:
    """Plan range ``index`` of every part (the shares of a joined run, the pieces actors wrote), interleaved by plan
    position, ``created_at`` set to the run's start: the records, the rejects and their positions."""
    found: dict[str, list[tuple[int, dict[str, Any]]]] = {"record": [], "reject": []}
    for part in parts:
        path = part.shard_path(index)
        if not path.exists():
            continue
        summary = part.read_summary(index)
        rejects = pq.read_table(part.parts_dir / f"rejects-{index:05d}.parquet", schema=REJECT_SCHEMA).to_pylist()
        records = pq.read_table(path, schema=GENERATION_SCHEMA).to_pylist()
        for kind, table in (("record", records), ("reject", rejects)):
            order = summary["positions"][kind]
            if len(order) != len(table):
                raise MediflowError(f"{path}: its summary lists {len(order)} {kind}s, the files hold {len(table)}")
            found[kind].extend(zip(order, table))
    joined: dict[str, list[dict[str, Any]]] = {}
    positions: dict[str, list[int]] = {}
    for kind, pairs in found.items():
        ordered = [pairs[i] for i in np.argsort([position for position, _ in pairs], kind="stable")]
        positions[kind] = [position for position, _ in ordered]
        joined[kind] = [{**row, "created_at": created_at} for _, row in ordered]
    return joined["record"], joined["reject"], positions
