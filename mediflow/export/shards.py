"""Bounded Parquet shards named the Hub way: ``data/{config}/{split}-NNNNN-of-MMMMM.parquet``.

The Hub (and ``datasets``) read a split from every file matching ``{split}-*``; the ``-of-MMMMM``
suffix needs the shard count up front, so the caller counts rows first and the writer splits them
into ``ceil(rows / rows_per_shard)`` files. Shard size is bounded in rows and in bytes (estimated
from the source's uncompressed Parquet size per row: the written, compressed files are smaller).
A shard is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mediflow.folders.atomic import commit


@dataclass(frozen=True)
class ShardLimits:
    """Upper bounds per shard file; the tighter of the two wins."""

    max_rows: int = 100_000
    max_bytes: int = 500 * 1024 * 1024

    def rows_per_shard(self, bytes_per_row: float) -> int:
        by_bytes = int(self.max_bytes // max(bytes_per_row, 1.0))
        return max(1, min(self.max_rows, by_bytes))


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


class ShardedSplitWriter:
    """Streams the rows of one (config, split) into a known number of bounded shards."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, total_rows: int, rows_per_shard: int) -> None:
        self.folder = folder
        self.split = split
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        if total_rows < 1:
            raise ValueError(f"{folder}/{split}: a split needs at least one row")
        self.count = math.ceil(total_rows / rows_per_shard)
        self.paths: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._rows_in_shard = 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, table: pa.Table) -> None:
        """Append rows (already in ``schema``), rolling to the next shard at ``rows_per_shard``."""
        offset = 0
        while offset < table.num_rows:
            if self._writer is None or self._rows_in_shard >= self.rows_per_shard:
                self._roll()
            take = min(self.rows_per_shard - self._rows_in_shard, table.num_rows - offset)
            assert self._writer is not None
            self._writer.write_table(table.slice(offset, take))
            self._rows_in_shard += take
            offset += take

    def _roll(self) -> None:
        self._close_current()
        final = self.folder / shard_name(self.split, len(self.paths), self.count)
        self.paths.append(final)
        self._tmp = final.with_name(f".{final.name}.tmp")
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._rows_in_shard = 0

    def _close_current(self) -> None:
        if self._writer is not None and self._tmp is not None:
            self._writer.close()
            commit(self._tmp, self.paths[-1])
            self._writer = None

    def close(self) -> list[Path]:
        """Finish the last shard and return every shard's path (the count must match the announced one)."""
        self._close_current()
        if len(self.paths) != self.count:
            raise RuntimeError(f"{self.folder}/{self.split}: wrote {len(self.paths)} shards, expected {self.count}")
        return self.paths
