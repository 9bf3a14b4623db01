"""Write a MediFlow output (and optionally its preference pairs) as a Hub dataset folder.

Layout (what ``datasets.load_dataset(DIR, name=config)`` and the Hub read through the card's
``configs``)::

    DIR/README.md                                        dataset card (YAML metadata + counts)
    DIR/data/sft/{split}-NNNNN-of-MMMMM.parquet          every record: messages + released columns
    DIR/data/dpo/{split}-NNNNN-of-MMMMM.parquet          preference pairs (when pairs are given)
    DIR/data/{task}/{split}-NNNNN-of-MMMMM.parquet       the sft rows of one task

Two passes over the input keep memory bounded at any size: the first reads only the small columns
(document, task, document type, teacher) to assign splits and count rows per (config, split), so
the shard count in each file name is known; the second streams the records into the shards. Files
are written under a staging folder and moved into place; stale shards of an earlier export are
removed, and the card is written last.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mediflow.errors import MediflowError
from mediflow.export.card import CardFacts, render_card
from mediflow.export.shards import ShardedSplitWriter, ShardLimits
from mediflow.export.splits import SPLITS, SplitFractions, assign_splits, document_key
from mediflow.preference.rows import PAIR_SCHEMA
from mediflow.quality.io import input_files, with_ids
from mediflow.records import FULL_SCHEMA, JUDGE_SCORE_COLUMNS, RELEASED_COLUMNS, conform, to_messages

SFT_COLUMNS: tuple[str, ...] = (
    "id",
    "messages",
    *RELEASED_COLUMNS,
    "document_category",
    "document_id",
    "instruction_id",
    "teacher",
    *JUDGE_SCORE_COLUMNS,
)
SFT_SCHEMA = pa.schema([FULL_SCHEMA.field(name) for name in SFT_COLUMNS])
RESERVED_CONFIGS: tuple[str, ...] = ("sft", "dpo")
_LIGHT_COLUMNS = ["document_id", "input", "task_type", "input_data", "teacher"]
_BATCH_ROWS = 20_000


@dataclass(frozen=True)
class ExportOptions:
    """How the export is split, sharded and described."""

    fractions: SplitFractions = field(default_factory=SplitFractions)
    seed: int = 0
    limits: ShardLimits = field(default_factory=ShardLimits)
    per_task_configs: bool = True
    license: str = "cdla-permissive-2.0"
    repo_id: str = "mediflow-synthetic"


@dataclass(frozen=True)
class ExportSummary:
    """What was written: shard paths per config and split (relative to the root) and row counts."""

    root: Path
    files: dict[str, dict[str, list[str]]]
    rows: dict[str, dict[str, int]]


@dataclass
class _Source:
    """One input (records or pairs) after the first pass."""

    files: list[Path]
    keys: list[str]  # document key per row, in reading order
    tasks: list[str | None]
    document_types: list[str | None]
    bytes_per_row: float

    def document_kinds(self) -> list[tuple[str, str, str]]:
        """(document key, task, document type) per row, for the stratified split."""
        return [(key, task or "", kind or "") for key, task, kind in zip(self.keys, self.tasks, self.document_types)]


def export_dataset(records: Path, out_dir: Path, *, pairs: Path | None = None, options: ExportOptions = ExportOptions()) -> ExportSummary:
    """Export ``records`` (a MediFlow output folder or Parquet) and optional ``pairs`` to ``out_dir``."""
    out_dir = Path(out_dir)
    record_source, tasks, document_types, teachers = _scan(Path(records))
    pair_source = _scan(Path(pairs))[0] if pairs is not None else None
    documents = record_source.document_kinds() + (pair_source.document_kinds() if pair_source is not None else [])
    assignment = assign_splits(documents, options.fractions, options.seed)
    task_configs = sorted({t for t in record_source.tasks if t}) if options.per_task_configs else []
    clash = set(task_configs) & set(RESERVED_CONFIGS)
    if clash:
        raise MediflowError(f"task name(s) {', '.join(sorted(clash))} clash with the reserved config names sft/dpo")

    staging = out_dir / f".staging-{uuid.uuid4().hex[:8]}"
    try:
        written = _write_records(record_source, assignment, task_configs, staging, options.limits)
        if pair_source is not None:
            written.update(_write_pairs(pair_source, assignment, staging, options.limits))
        order = [c for c in RESERVED_CONFIGS if c in written] + task_configs  # the card lists configs in this order
        files = {
            config: {split: sorted(str(p.relative_to(staging)) for p in written[config][split]) for split in SPLITS if split in written[config]}
            for config in order
        }
        _publish(staging, out_dir, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rows = _row_counts(record_source, pair_source, assignment, task_configs)
    facts = CardFacts(
        repo_id=options.repo_id,
        configs=files,
        rows=rows,
        tasks=tasks,
        document_types=document_types,
        teachers=teachers,
        filters=_filters_from_manifest(Path(records)),
        pairs=_pairs_from_manifest(Path(pairs)) if pairs is not None else None,
        seed=options.seed,
        fractions=options.fractions.as_dict(),
        license=options.license,
        judged=_has_judge_scores(record_source.files),
        task_configs=task_configs,
        file_bytes={config: sum((out_dir / path).stat().st_size for paths in splits.values() for path in paths) for config, splits in files.items()},
        split_bytes={config: {split: _uncompressed_bytes(out_dir, paths) for split, paths in splits.items()} for config, splits in files.items()},
    )
    _write_text_atomically(out_dir / "README.md", render_card(facts))
    return ExportSummary(out_dir, files, {config: dict(counts) for config, counts in rows.items()})


def _scan(path: Path) -> tuple[_Source, Counter[str], Counter[str], Counter[str]]:
    """First pass: document keys, tasks, document types and teachers, from the small columns only."""
    files = input_files(path)
    keys: list[str] = []
    tasks: list[str | None] = []
    types: list[str | None] = []
    task_counts, type_counts, teacher_counts = Counter[str](), Counter[str](), Counter[str]()
    for batch in _batches(files, _LIGHT_COLUMNS):
        columns = {name: batch.column(name).to_pylist() for name in _LIGHT_COLUMNS}
        keys.extend(document_key(d, text) for d, text in zip(columns["document_id"], columns["input"]))
        tasks.extend(columns["task_type"])
        types.extend(columns["input_data"])
        task_counts.update(t or "(missing)" for t in columns["task_type"])
        type_counts.update(t or "(missing)" for t in columns["input_data"])
        teacher_counts.update(t for t in columns["teacher"] if t)
    total_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    total_bytes = sum(
        pq.ParquetFile(f).metadata.row_group(i).total_byte_size for f in files for i in range(pq.ParquetFile(f).metadata.num_row_groups)
    )
    source = _Source(files, keys, tasks, types, total_bytes / max(total_rows, 1))
    return source, task_counts, type_counts, teacher_counts


def _batches(files: list[Path], columns: list[str]) -> Iterator[pa.Table]:
    """The files as tables with exactly ``columns`` (absent ones as null strings), batch by batch."""
    for file in files:
        parquet = pq.ParquetFile(file)
        present = [c for c in columns if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=present or None):
            table = pa.Table.from_batches([batch])
            for name in columns:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
            yield table


def _row_counts(records: _Source, pairs: _Source | None, assignment: dict[str, str], task_configs: list[str]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {"sft": Counter(assignment[k] for k in records.keys)}
    for task in task_configs:
        counts[task] = Counter(assignment[k] for k, t in zip(records.keys, records.tasks) if t == task)
    if pairs is not None:
        counts["dpo"] = Counter(assignment[k] for k in pairs.keys)
    return {config: Counter({s: c[s] for s in SPLITS if c[s]}) for config, c in counts.items()}


def _sft_rows(batch: pa.Table) -> pa.Table:
    """A record batch in the SFT schema, with ``messages`` built for records that lack it."""
    table = conform(with_ids(batch)).select(list(SFT_COLUMNS))
    messages = table.column("messages").to_pylist()
    if any(m is None for m in messages):
        fields = {name: table.column(name).to_pylist() for name in ("instruction", "input", "output")}
        messages = [
            m if m is not None else to_messages(fields["instruction"][i] or "", fields["input"][i] or "", fields["output"][i] or "")
            for i, m in enumerate(messages)
        ]
        table = table.set_column(table.column_names.index("messages"), "messages", pa.array(messages, FULL_SCHEMA.field("messages").type))
    return table.cast(SFT_SCHEMA)


def _write_records(
    source: _Source, assignment: dict[str, str], task_configs: list[str], staging: Path, limits: ShardLimits
) -> dict[str, dict[str, list[Path]]]:
    counts = _row_counts(source, None, assignment, task_configs)
    rows_per_shard = limits.rows_per_shard(source.bytes_per_row)
    writers = {
        (config, split): ShardedSplitWriter(staging / "data" / config, split, SFT_SCHEMA, n, rows_per_shard)
        for config, splits in counts.items()
        for split, n in splits.items()
    }
    offset = 0
    for file in source.files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS):
            table = _sft_rows(pa.Table.from_batches([batch]))
            splits = pa.array([assignment[k] for k in source.keys[offset : offset + table.num_rows]], pa.string())
            offset += table.num_rows
            for split in SPLITS:
                in_split = table.filter(pc.equal(splits, split))
                if in_split.num_rows == 0:
                    continue
                writers[("sft", split)].write(in_split)
                for task in task_configs:
                    rows = in_split.filter(pc.equal(in_split.column("task_type"), task))
                    if rows.num_rows:
                        writers[(task, split)].write(rows)
    return _close(writers)


def _write_pairs(source: _Source, assignment: dict[str, str], staging: Path, limits: ShardLimits) -> dict[str, dict[str, list[Path]]]:
    counts = Counter(assignment[k] for k in source.keys)
    rows_per_shard = limits.rows_per_shard(source.bytes_per_row)
    writers = {
        ("dpo", split): ShardedSplitWriter(staging / "data" / "dpo", split, PAIR_SCHEMA, n, rows_per_shard)
        for split, n in counts.items()
    }
    offset = 0
    for file in source.files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS):
            table = conform(pa.Table.from_batches([batch]), PAIR_SCHEMA).select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)
            splits = pa.array([assignment[k] for k in source.keys[offset : offset + table.num_rows]], pa.string())
            offset += table.num_rows
            for split in SPLITS:
                rows = table.filter(pc.equal(splits, split))
                if rows.num_rows:
                    writers[("dpo", split)].write(rows)
    return _close(writers)


def _close(writers: dict[tuple[str, str], ShardedSplitWriter]) -> dict[str, dict[str, list[Path]]]:
    result: dict[str, dict[str, list[Path]]] = {}
    for (config, split), writer in writers.items():
        result.setdefault(config, {})[split] = writer.close()
    return result


def _publish(staging: Path, out_dir: Path, files: dict[str, dict[str, list[str]]]) -> None:
    """Move the new shards into place, then remove shards of an earlier export that are not in this one."""
    new = {path for splits in files.values() for paths in splits.values() for path in paths}
    for relative in sorted(new):
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target)
    data = out_dir / "data"
    for stale in data.rglob("*.parquet"):
        if str(stale.relative_to(out_dir)) not in new:
            stale.unlink()
    for folder in sorted(data.iterdir()):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _uncompressed_bytes(root: Path, paths: list[str]) -> int:
    """The uncompressed size of some shards, from their Parquet footers (what ``num_bytes`` reports)."""
    metadata = [pq.ParquetFile(root / path).metadata for path in paths]
    return sum(m.row_group(i).total_byte_size for m in metadata for i in range(m.num_row_groups))


def _has_judge_scores(files: list[Path]) -> bool:
    return any(name in pq.read_schema(f).names for f in files for name in JUDGE_SCORE_COLUMNS)


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest = (path if path.is_dir() else path.parent) / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        value = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MediflowError(f"{manifest} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    return value if isinstance(value, dict) else {}


def _filters_from_manifest(path: Path) -> list[dict[str, Any]]:
    """Each quality stage's in/kept/dropped and drops per rule, from a curate or stage manifest."""
    manifest = _read_manifest(path)
    listed = manifest.get("stages")
    stages: list[Any] = listed if isinstance(listed, list) else [manifest] if "stage" in manifest else []
    return [
        {
            "stage": stage.get("stage", "?"),
            "records_in": stage.get("in", 0),
            "kept": stage.get("kept", 0),
            "dropped": stage.get("dropped", 0),
            "by_rule": sorted((stage.get("dropped_by_rule") or {}).items()),
        }
        for stage in stages
        if isinstance(stage, dict)
    ]


def _pairs_from_manifest(path: Path) -> dict[str, Any] | None:
    """The pair yield from a ``mediflow pairs`` manifest."""
    manifest = _read_manifest(path).get("pairs")
    if not isinstance(manifest, dict):
        return None
    return {
        "kept": manifest.get("kept", 0),
        "tried": manifest.get("tried", 0),
        "method": manifest.get("method", "?"),
        "dropped": sorted((manifest.get("dropped") or {}).items()),
    }
