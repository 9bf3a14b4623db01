"""Read a MediFlow output folder once, cheaply, for every audit check.

An output folder is what ``mediflow generate`` (or a quality stage) writes: ``data/*.parquet`` in
the record schema, ``manifest.json`` and, optionally, ``rejects.parquet``. It is opened with the
one input reader (:func:`mediflow.folders.open_input`), so the audit sees exactly the kept records
every other stage sees, checked against the record schema first. Checks must work on a
2.5M-record folder on a laptop, so the folder is never loaded whole: :attr:`OutputFolder.frame`
holds only the small per-record columns (task, document type, lengths, judge scores) computed with
Arrow kernels, and the text-heavy checks stream just the columns they need, shard by shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mediflow.errors import MediflowError
from mediflow.folders import REJECTS_NAME, open_input
from mediflow.folders.reader import read_batches, read_file
from mediflow.records import JUDGE_SCORE_COLUMNS

#: The record columns the checks group by; absent ones are read as nulls.
KEY_COLUMNS: tuple[str, ...] = (
    "id",
    "task_type",
    "input_data",
    "output_format",
    "difficulty_level",
    "document_id",
    "instruction_id",
)
#: Text columns whose lengths are measured (released names: instruction, input, output).
TEXT_COLUMNS: tuple[str, ...] = ("instruction", "input", "output")
#: The rejects columns the funnel counts by (the rejected text itself is not needed).
REJECT_COLUMNS: tuple[str, ...] = ("stage", "rule", "reason", "task_type", "input_data")
#: Judge columns the audit plots when a judge stage has run.
JUDGE_COLUMNS: tuple[str, ...] = (*JUDGE_SCORE_COLUMNS, "judge_spread")

_WORD = r"\S+"
#: How a record with no task / document type / format is grouped, so it is counted, not dropped.
MISSING = "(missing)"
#: Most manifests followed back through ``input`` (generate -> curate -> ... stays far below this).
MAX_LINEAGE = 8


@dataclass(frozen=True)
class OutputFolder:
    """A MediFlow output folder: its record shards, manifest and rejects, read lazily."""

    path: Path
    shards: tuple[Path, ...]
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> OutputFolder:
        """Find the shards and manifest of ``path``; a folder with no records is a user error."""
        root = Path(path)
        if not root.exists():
            raise MediflowError(f"{root}: no such file or folder")
        if not root.is_dir():
            raise MediflowError(f"audit input {root} is not a folder (expected a MediFlow output folder)")
        data = open_input(root, "records")
        manifest = data.manifest.to_dict() if data.manifest is not None else {}
        return cls(path=root, shards=data.files, manifest=manifest)

    @cached_property
    def columns(self) -> frozenset[str]:
        """Every column present in at least one shard."""
        names: set[str] = set()
        for shard in self.shards:
            names.update(pq.read_schema(shard).names)
        return frozenset(names)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """One row per record: key columns, word counts of the text columns, judge scores."""
        frame = pd.concat([self._light_columns(shard) for shard in self.shards], ignore_index=True)
        for name in ("task_type", "input_data", "output_format"):
            frame[name] = frame[name].fillna(MISSING)
        return frame

    @cached_property
    def rejects(self) -> pd.DataFrame | None:
        """The rejects table (every stage's drops with stage, rule and reason), or None when absent."""
        files = [self.path / REJECTS_NAME] if (self.path / REJECTS_NAME).is_file() else []
        if not files:
            return None
        tables = []
        for file in files:
            present = [c for c in REJECT_COLUMNS if c in pq.read_schema(file).names]
            tables.append(pq.read_table(file, columns=present))
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def lineage(self) -> list[tuple[Path, dict[str, Any]]]:
        """This folder's manifest, then those of the folders it was made from, nearest first.

        A curated (or any stage's) folder names its inputs in its manifest; following the first
        chain reaches the ``generate`` run whose config holds the plan and the taxonomy. Inputs that
        are gone, cycles and chains longer than :data:`MAX_LINEAGE` simply end the list.
        """
        chain = [(self.path, self.manifest)]
        seen = {self.path.resolve()}
        while len(chain) < MAX_LINEAGE:
            source = _input_folder(_first_input(chain[-1][1]))
            if source is None or source.resolve() in seen or not (source / "manifest.json").is_file():
                break
            seen.add(source.resolve())
            chain.append((source, _read_manifest(source / "manifest.json")))
        return chain

    def has_values(self, column: str) -> bool:
        """Whether ``column`` exists and holds at least one non-null value."""
        return column in self.frame.columns and bool(self.frame[column].notna().any())

    def iter_tables(self, columns: Sequence[str], *, batch_size: int = 50_000) -> Iterator[pa.Table]:
        """Stream ``columns`` as Arrow tables (missing ones as null strings), shard by shard: memory stays bounded."""
        for shard in self.shards:
            present = [c for c in columns if c in pq.read_schema(shard).names]
            for table in read_batches(shard, present, batch_size):  # the reader's plain types (large/view strings as string)
                yield pa.table({c: _grouping(c, table.column(c) if c in present else pa.nulls(table.num_rows, pa.string())) for c in columns})

    def iter_batches(self, columns: Sequence[str], *, batch_size: int = 50_000) -> Iterator[pd.DataFrame]:
        """:meth:`iter_tables` as pandas DataFrames."""
        for table in self.iter_tables(columns, batch_size=batch_size):
            yield table.to_pandas()

    @cached_property
    def num_records(self) -> int:
        """Records in the folder, from the Parquet footers (no data read)."""
        return sum(pq.ParquetFile(shard).metadata.num_rows for shard in self.shards)

    def sample(self, columns: Sequence[str], max_records: int) -> pd.DataFrame:
        """Every k-th record (k chosen so at most ``max_records`` remain): deterministic and spread over the run.

        Records are stored in the plan's seeded, stratified order, so an even stride is a
        stratified sample too.
        """
        step = max(1, -(-self.num_records // max(1, max_records)))
        parts, offset = [], 0
        for batch in self.iter_batches(columns):
            parts.append(batch.iloc[(-offset) % step :: step])
            offset += len(batch)
        return pd.concat(parts, ignore_index=True).head(max_records)

    def _light_columns(self, shard: Path) -> pd.DataFrame:
        names = set(pq.read_schema(shard).names)
        wanted = [c for c in (*KEY_COLUMNS, *TEXT_COLUMNS, *JUDGE_COLUMNS) if c in names]
        table = read_file(shard, wanted)
        columns: dict[str, Any] = {}
        for name in KEY_COLUMNS:
            columns[name] = table.column(name) if name in names else pa.nulls(table.num_rows, pa.string())
        for name in TEXT_COLUMNS:
            text = table.column(name) if name in names else pa.nulls(table.num_rows, pa.string())
            columns[f"{name}_words"] = pc.count_substring_regex(text, _WORD)
        for name in JUDGE_COLUMNS:
            values = table.column(name) if name in names else pa.nulls(table.num_rows, pa.float64())
            columns[name] = values.cast(pa.float64())
        return pa.table(columns).to_pandas()


def _grouping(name: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column the checks group by, with its nulls as :data:`MISSING` (as in :attr:`OutputFolder.frame`)."""
    return pc.fill_null(values, MISSING) if name in _GROUPED and values.null_count else values


_GROUPED = frozenset({"task_type", "input_data", "output_format"})


def _input_folder(value: Any) -> Path | None:
    """The folder a manifest's ``input`` names (a folder, or a Parquet file in one); None when it is gone."""
    if not isinstance(value, str) or not value:
        return None
    candidate = Path(value)
    if candidate.is_file():
        candidate = candidate.parent.parent if candidate.parent.name == "data" else candidate.parent
    return candidate if candidate.is_dir() else None


def _first_input(manifest: dict[str, Any]) -> Any:
    """The path of the first input a manifest names (typed ``inputs``; older manifests: ``input``)."""
    inputs = manifest.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        return inputs[0].get("path")
    return manifest.get("input")


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MediflowError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(value, dict):
        raise MediflowError(f"{path} must hold a JSON object, found {type(value).__name__}")
    return value
