"""Kept and rejected records of a stage, streamed to a staging folder and published at the end.

A stage's output replaces the folder's data only once it is complete: shards and rejects are
written under ``OUT/.tmp-staging-*`` (removed by the next run if this one is killed), then moved
into ``data/`` and ``rejects.parquet`` and the manifest is written last. So an interrupted rerun
leaves the previous finished output exactly as it was.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mediflow.folders.atomic import TEMP_PREFIX, commit
from mediflow.folders.guards import refuse_link
from mediflow.folders.output import REJECTS_NAME, OutputFolder, shard_name

ROWS_PER_SHARD = 100_000
#: The one reject schema: every reject row of every folder (a stage's, ``generate``'s, ``pairs``',
#: PIT QA's) is the row it rejected (a record, a plan item, a document and prompt) followed by these.
REJECT_FIELDS: list[pa.Field] = [
    pa.field("stage", pa.string()),  # the stage that rejected it
    pa.field("rule", pa.string()),  # which rule or failure: a filter's rule, min_quality, truncated, judge_failed ...
    pa.field("score", pa.float64()),  # the rule's measure, where it has one
    pa.field("reason", pa.string()),  # why, in words: the measure against the limit, the validator's message ...
    pa.field("match", pa.string()),  # the kept duplicate's id, or the eval item (file#row) that was matched
    pa.field("raw_text", pa.string()),  # the teacher's answer that was rejected (LLM stages)
]


def reject_schema(row_fields: Sequence[pa.Field]) -> pa.Schema:
    """The rejects of rows shaped ``row_fields``: those fields, then :data:`REJECT_FIELDS`."""
    names = {field.name for field in REJECT_FIELDS}
    return pa.schema([field for field in row_fields if field.name not in names] + REJECT_FIELDS)


def reject_table(
    records: pa.Table,
    stage: str,
    rule: Sequence[str],
    score: Sequence[float] | np.ndarray,
    reason: Sequence[str],
    match: Sequence[str | None],
    raw_text: Sequence[str | None] | None = None,
) -> pa.Table:
    """``records`` with the reject columns appended (one row per dropped record)."""
    extra = {
        "stage": pa.array([stage] * records.num_rows, pa.string()),
        "rule": pa.array(rule, pa.string()),
        "score": pa.array(np.asarray(score, dtype=np.float64), pa.float64()),
        "reason": pa.array(reason, pa.string()),
        "match": pa.array(match, pa.string()),
        "raw_text": pa.array(raw_text if raw_text is not None else [None] * records.num_rows, pa.string()),
    }
    for name, values in extra.items():
        if name in records.column_names:
            records = records.drop_columns([name])
        records = records.append_column(name, values)
    return records


class StagedWriter:
    """Collects a stage's kept and rejected records in ``folder``'s staging area; :meth:`publish` moves them in."""

    def __init__(self, folder: OutputFolder, rows_per_shard: int = ROWS_PER_SHARD) -> None:
        self.folder = folder
        self.rows_per_shard = rows_per_shard
        self.staging = folder.root / f"{TEMP_PREFIX}staging-{uuid.uuid4().hex[:8]}"
        (self.staging / "data").mkdir(parents=True)
        self._kept_writer: pq.ParquetWriter | None = None
        self._kept_rows_in_shard = 0
        self._shards: list[str] = []
        self._reject_writer: pq.ParquetWriter | None = None
        self._reject_schema: pa.Schema | None = None
        self.kept = 0
        self.rejected = 0

    def _open_shard(self, schema: pa.Schema) -> pq.ParquetWriter:
        name = shard_name(len(self._shards))
        self._shards.append(name)
        return pq.ParquetWriter(self.staging / "data" / name, schema, compression="zstd")

    def keep(self, table: pa.Table) -> None:
        """Append kept records, rolling over to a new shard every ``rows_per_shard`` rows."""
        offset = 0
        while offset < table.num_rows:
            if self._kept_writer is None or self._kept_rows_in_shard >= self.rows_per_shard:
                if self._kept_writer is not None:
                    self._kept_writer.close()
                self._kept_writer = self._open_shard(table.schema)
                self._kept_rows_in_shard = 0
            take = min(self.rows_per_shard - self._kept_rows_in_shard, table.num_rows - offset)
            self._kept_writer.write_table(table.slice(offset, take).cast(self._kept_writer.schema))
            self._kept_rows_in_shard += take
            self.kept += take
            offset += take

    def reject(self, table: pa.Table) -> None:
        """Append rejected records (already carrying the reject columns)."""
        if table.num_rows == 0:
            return
        if self._reject_writer is None:
            self._reject_schema = table.schema
            self._reject_writer = pq.ParquetWriter(self.staging / REJECTS_NAME, table.schema, compression="zstd")
        assert self._reject_schema is not None
        self._reject_writer.write_table(table.select(self._reject_schema.names).cast(self._reject_schema))
        self.rejected += table.num_rows

    def publish(self, empty_schema: pa.Schema, counts: dict[str, Any], details: dict[str, Any] | None = None) -> None:
        """Close the files, move them into the folder (stale shards removed) and write the manifest last."""
        if self._kept_writer is None:
            self._kept_writer = self._open_shard(empty_schema)
        self._kept_writer.close()
        if self._reject_writer is None:
            rejects_schema = pa.schema(list(empty_schema) + [f for f in REJECT_FIELDS if f.name not in empty_schema.names])
            self._reject_writer = pq.ParquetWriter(self.staging / REJECTS_NAME, rejects_schema)
        self._reject_writer.close()
        data = refuse_link(self.folder.data_dir)  # checked when the folder opened; a link planted since is refused too
        data.mkdir(exist_ok=True)
        for stale in data.glob("*.parquet"):
            if stale.name not in self._shards:
                stale.unlink()
        for name in self._shards:
            commit(self.staging / "data" / name, data / name)
        commit(self.staging / REJECTS_NAME, self.folder.rejects_path)
        shutil.rmtree(self.staging)
        self.folder.finish(counts, details)

    def abandon(self) -> None:
        """Remove the staging area after a failure; what was published before stays as it was."""
        for writer in (self._kept_writer, self._reject_writer):
            if writer is not None:
                try:
                    writer.close()
                except (OSError, ValueError):
                    pass
        shutil.rmtree(self.staging, ignore_errors=True)
