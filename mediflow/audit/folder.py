"""Read a MediFlow output folder once, cheaply, for every audit check.

An output folder is what ``mediflow generate`` (or a quality stage) writes: ``data/*.parquet`` in
the record schema, ``manifest.json`` and, optionally, ``rejects.parquet``. It is opened with the
one input reader (:func:`mediflow.folders.open_input`), so the audit sees exactly the kept records
every other stage sees, checked against the record schema first, and its manifests (its own and
those of the folders it was made from) through :func:`mediflow.folders.read_manifest`. Checks must work on a
2.5M-record folder on a laptop, so the folder is never loaded whole: :attr:`OutputFolder.frame`
holds only the small per-record columns (task, document type, lengths, judge scores) computed with
Arrow kernels, and the text-heavy checks stream just the columns they need, shard by shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mediflow.errors import MediflowError
from mediflow.folders import REJECTS_NAME, InputData, open_input, read_manifest
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
class AuditFolder:
    """A MediFlow output folder as the audit reads it: its records through the one input reader, read lazily."""

    data: InputData

    @classmethod
    def open(cls, path: str | Path) -> AuditFolder:
        """The folder at ``path``, checked by :func:`~mediflow.folders.open_input` (a folder with no records is a user error)."""
        root = Path(path)
        if not root.exists():
            raise MediflowError(f"{root}: no such file or folder")
        if not root.is_dir():
            raise MediflowError(f"audit input {root} is not a folder (expected a MediFlow output folder)")
        return cls(open_input(root, "records"))

    @property
    def path(self) -> Path:
        return self.data.path

    @property
    def shards(self) -> tuple[Path, ...]:
        return self.data.files

    @property
    def manifest(self) -> dict[str, Any]:
        """The folder's manifest as written (empty for a plain folder of Parquet files)."""
        return self.data.manifest.to_dict() if self.data.manifest is not None else {}

    @cached_property
    def columns(self) -> frozenset[str]:
        """Every column present in at least one shard."""
        return frozenset(self.data.columns)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """One row per record: key columns, word counts of the text columns, judge scores."""
        wanted = [*KEY_COLUMNS, *TEXT_COLUMNS, *JUDGE_COLUMNS]
        parts = [_light_columns(table) for table in self.data.iter_batches([c for c in wanted if c in self.columns], batch_rows=200_000)]
        frame = pd.concat(parts, ignore_index=True) if parts else _light_columns(pa.table({}))
        for name in ("task_type", "input_data", "output_format"):
            frame[name] = frame[name].fillna(MISSING)
        return frame

    @cached_property
    def rejects(self) -> pd.DataFrame | None:
        """The rejects table (every stage's drops with stage, rule and reason), or None when absent."""
        file = self.path / REJECTS_NAME
        if not file.is_file():
            return None
        present = [c for c in REJECT_COLUMNS if c in pq.read_schema(file).names]
        frame: pd.DataFrame = pq.read_table(file, columns=present).to_pandas()
        return frame

    def lineage(self) -> list[tuple[Path, dict[str, Any]]]:
        """This folder's manifest, then those of the folders it was made from, nearest first.

        A curated (or any stage's) folder names its inputs in its manifest; following the first
        chain reaches the ``generate`` run whose config holds the plan and the taxonomy. Inputs that
        are gone or hold no MediFlow manifest, cycles and chains longer than :data:`MAX_LINEAGE`
        simply end the list.
        """
        chain = [(self.path, self.manifest)]
        seen = {self.path.resolve()}
        while len(chain) < MAX_LINEAGE:
            source = _input_folder(_first_input(chain[-1][1]))
            if source is None or source.resolve() in seen:
                break
            try:
                manifest = read_manifest(source)
            except MediflowError:
                break
            if manifest is None:
                break
            seen.add(source.resolve())
            chain.append((source, manifest.to_dict()))
        return chain

    def has_values(self, column: str) -> bool:
        """Whether ``column`` exists and holds at least one non-null value."""
        return column in self.frame.columns and bool(self.frame[column].notna().any())

    def iter_tables(self, columns: Sequence[str], *, batch_size: int = 50_000) -> Iterator[pa.Table]:
        """Stream ``columns`` as Arrow tables (missing ones as null strings), batch by batch: memory stays bounded."""
        present = [c for c in columns if c in self.columns]
        for table in self.data.iter_batches(present, batch_rows=batch_size):
            yield pa.table({c: _grouping(c, table.column(c) if c in table.column_names else pa.nulls(table.num_rows, pa.string())) for c in columns})

    def iter_batches(self, columns: Sequence[str], *, batch_size: int = 50_000) -> Iterator[pd.DataFrame]:
        """:meth:`iter_tables` as pandas DataFrames."""
        for table in self.iter_tables(columns, batch_size=batch_size):
            yield table.to_pandas()

    @property
    def num_records(self) -> int:
        """Records in the folder, from the Parquet footers (no data read)."""
        return self.data.num_rows

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


def _light_columns(table: pa.Table) -> pd.DataFrame:
    names = set(table.column_names)
    columns: dict[str, Any] = {}
    for name in KEY_COLUMNS:
        columns[name] = table.column(name) if name in names else pa.nulls(table.num_rows, pa.string())
    for name in TEXT_COLUMNS:
        text = table.column(name) if name in names else pa.nulls(table.num_rows, pa.string())
        columns[f"{name}_words"] = pc.count_substring_regex(text, _WORD)
    for name in JUDGE_COLUMNS:
        values = table.column(name) if name in names else pa.nulls(table.num_rows, pa.float64())
        columns[name] = values.cast(pa.float64())
    frame: pd.DataFrame = pa.table(columns).to_pandas()
    return frame


def _grouping(name: str, values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A column the checks group by, its nulls as :data:`MISSING` (as in :attr:`AuditFolder.frame`): a null task sorts with the rest."""
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
