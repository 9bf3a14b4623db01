"""Reading any MediFlow Parquet output and writing a stage's output folder atomically.

Inputs come in three shapes: a ``mediflow generate`` folder (``data/shard-*.parquet`` +
``manifest.json``), one Parquet file, or a folder of Parquet files. Every stage writes the same
output shape: ``data/part-*.parquet`` (kept records), ``rejects.parquet`` (every dropped record
with stage, rule, score, reason and what it matched) and ``manifest.json`` (the counts). Files are
written under a staging folder and moved into place with ``os.replace``; the manifest moves last,
so a folder with a manifest is complete, and an interrupted run never leaves a half-written file
where a finished one was.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mediflow.errors import MediflowError
from mediflow.records import record_id

REJECT_FIELDS: list[pa.Field] = [
    pa.field("stage", pa.string()),
    pa.field("rule", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("reason", pa.string()),
    pa.field("match", pa.string()),  # the kept duplicate's id, or the eval item (file#row) that was matched
]
REJECT_COLUMNS: tuple[str, ...] = tuple(field.name for field in REJECT_FIELDS)
ROWS_PER_SHARD = 100_000
BATCH_ROWS = 20_000


def input_files(path: Path) -> list[Path]:
    """The Parquet files that make up a MediFlow output at ``path``, in a stable order."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".parquet":
            raise MediflowError(f"{path}: not a Parquet file (expected a .parquet file or a folder of them)")
        return [path]
    if not path.is_dir():
        raise MediflowError(f"{path}: no such file or folder")
    data = path / "data"
    files = sorted(data.glob("*.parquet")) if data.is_dir() else sorted(path.glob("*.parquet"))
    if not files:
        raise MediflowError(f"{path}: no Parquet files found (looked in {data if data.is_dir() else path})")
    return files


def count_rows(path: Path) -> int:
    """Rows in the input without reading its data."""
    return sum(pq.ParquetFile(file).metadata.num_rows for file in input_files(path))


def with_ids(batch: pa.Table) -> pa.Table:
    """Records from outside MediFlow (e.g. the released set) may lack ``id``: derive it from content."""
    if "id" in batch.column_names and batch.column("id").null_count == 0:
        return batch
    rows = batch.select([c for c in ("instruction", "input", "output", "task_type", "output_format") if c in batch.column_names]).to_pylist()
    ids = pa.array(
        [
            record_id(r.get("instruction") or "", r.get("input") or "", r.get("output") or "", r.get("task_type") or "", r.get("output_format") or "")
            for r in rows
        ],
        pa.string(),
    )
    if "id" in batch.column_names:
        ids = pc.coalesce(batch.column("id"), ids)
        return batch.set_column(batch.column_names.index("id"), "id", ids)
    return batch.add_column(0, "id", ids)


def empty_input_schema(path: Path) -> pa.Schema:
    """The columns of an input with no rows (so an empty stage output keeps them), ``id`` first."""
    schema = pq.read_schema(input_files(path)[0]).remove_metadata()
    return schema if "id" in schema.names else schema.insert(0, pa.field("id", pa.string()))


def iter_batches(path: Path, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """The input as tables of at most ``batch_rows`` rows, each with an ``id`` column."""
    for file in input_files(path):
        parquet = pq.ParquetFile(file)
        wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
            yield with_ids(pa.Table.from_batches([batch]))


def read_columns(path: Path, columns: list[str]) -> pa.Table:
    """Only the named columns of the whole input (those it has), plus ``id``."""
    tables = list(iter_batches(path, sorted(set(columns) | {"id", "instruction", "input", "output", "task_type", "output_format"}), batch_rows=200_000))
    return pa.concat_tables(tables, promote_options="default").combine_chunks()


def reject_table(records: pa.Table, stage: str, rule: list[str], score: list[float] | np.ndarray, reason: list[str], match: list[str | None]) -> pa.Table:
    """``records`` with the reject columns appended (one row per dropped record)."""
    extra = {
        "stage": pa.array([stage] * records.num_rows, pa.string()),
        "rule": pa.array(rule, pa.string()),
        "score": pa.array(np.asarray(score, dtype=np.float64), pa.float64()),
        "reason": pa.array(reason, pa.string()),
        "match": pa.array(match, pa.string()),
    }
    for name, values in extra.items():
        if name in records.column_names:
            records = records.drop_columns([name])
        records = records.append_column(name, values)
    return records


def check_output(out: Path, source: Path) -> None:
    """A clear error when ``out`` cannot be a stage's output folder for ``source`` (checked before any work)."""
    out, source = Path(out), Path(source)
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise MediflowError(f"{out}: the output folder must not be (or be inside) the input {source}")
    if out.exists() and not out.is_dir():
        raise MediflowError(f"{out}: exists and is not a folder")


class StageOutput:
    """Collects one stage's kept and rejected records and publishes the folder atomically on :meth:`finish`."""

    def __init__(self, out: Path, source: Path) -> None:
        self.out = Path(out)
        check_output(self.out, source)
        self.staging = self.out / f".staging-{uuid.uuid4().hex[:8]}"
        (self.staging / "data").mkdir(parents=True)
        self._kept_writer: pq.ParquetWriter | None = None
        self._kept_rows_in_shard = 0
        self._shards: list[str] = []
        self._reject_writer: pq.ParquetWriter | None = None
        self._reject_schema: pa.Schema | None = None
        self.kept = 0
        self.rejected = 0

    def _open_shard(self, schema: pa.Schema) -> pq.ParquetWriter:
        name = f"part-{len(self._shards):05d}.parquet"
        self._shards.append(name)
        return pq.ParquetWriter(self.staging / "data" / name, schema)

    def keep(self, table: pa.Table) -> None:
        """Append kept records, rolling over to a new shard every ``ROWS_PER_SHARD`` rows."""
        offset = 0
        while offset < table.num_rows:
            if self._kept_writer is None or self._kept_rows_in_shard >= ROWS_PER_SHARD:
                if self._kept_writer is not None:
                    self._kept_writer.close()
                self._kept_writer = self._open_shard(table.schema)
                self._kept_rows_in_shard = 0
            take = min(ROWS_PER_SHARD - self._kept_rows_in_shard, table.num_rows - offset)
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
            self._reject_writer = pq.ParquetWriter(self.staging / "rejects.parquet", table.schema)
        assert self._reject_schema is not None  # set with the writer
        self._reject_writer.write_table(table.select(self._reject_schema.names).cast(self._reject_schema))
        self.rejected += table.num_rows

    def finish(self, manifest: dict[str, Any], empty_schema: pa.Schema) -> None:
        """Close the files and move them into ``out`` (old shards removed); the manifest goes last."""
        if self._kept_writer is None:
            self._kept_writer = self._open_shard(empty_schema)
        self._kept_writer.close()
        if self._reject_writer is None:
            rejects_schema = pa.schema(list(empty_schema) + [f for f in REJECT_FIELDS if f.name not in empty_schema.names])
            self._reject_writer = pq.ParquetWriter(self.staging / "rejects.parquet", rejects_schema)
        self._reject_writer.close()
        (self.staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        (self.out / "manifest.json").unlink(missing_ok=True)  # no manifest = incomplete, while files move
        data = self.out / "data"
        data.mkdir(exist_ok=True)
        for stale in data.glob("*.parquet"):
            if stale.name not in self._shards:
                stale.unlink()
        for name in self._shards:
            os.replace(self.staging / "data" / name, data / name)
        os.replace(self.staging / "rejects.parquet", self.out / "rejects.parquet")
        os.replace(self.staging / "manifest.json", self.out / "manifest.json")
        shutil.rmtree(self.staging)

    def abandon(self) -> None:
        """Remove the staging folder after a failure; what was published before stays as it was."""
        shutil.rmtree(self.staging, ignore_errors=True)
