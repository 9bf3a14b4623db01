"""Write a MediFlow output (and optionally its preference pairs) as a Hub dataset folder.

Layout (what ``datasets.load_dataset(DIR, name=config)`` and the Hub read through the card's
``configs``)::

    DIR/README.md                                        dataset card (YAML metadata + counts)
    DIR/data/sft/{split}-NNNNN-of-MMMMM.parquet          every record: messages + released columns
    DIR/data/dpo/{split}-NNNNN-of-MMMMM.parquet          preference pairs (when pairs are given)
    DIR/data/records/{split}-NNNNN-of-MMMMM.parquet      every record with all its columns, the clinical ``case`` included
    DIR/data/{task}/{split}-NNNNN-of-MMMMM.parquet       the sft rows of one task

Two passes over the input keep memory bounded at any size: the first reads only the small columns
(document, task, document type, teacher) to assign splits and count rows per (config, split), so
the shard count in each file name is known; the second streams the records into the shards. The
folder is an :class:`~mediflow.folders.OutputFolder` of kind ``export`` (guarded, locked, with a
manifest beside the card): files are written under a staging folder and moved into place, stale
shards of an earlier export are removed (only inside ``DIR/data``, which the guards keep apart from
every input), and the card and manifest are written last. Task names become folder names, so each
is checked to be a safe name first.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mediflow.errors import MediflowError
from mediflow.export.card import CardFacts, render_card
from mediflow.export.config import ExportConfig
from mediflow.export.shards import ShardedSplitWriter, ShardLimits
from mediflow.export.splits import SPLITS, assign_splits, document_key
from mediflow.folders import InputData, OutputFolder, open_input, refuse_link, with_ids, write_text
from mediflow.folders.atomic import TEMP_PREFIX, commit
from mediflow.folders.reader import read_batches
from mediflow.preference.rows import PAIR_SCHEMA
from mediflow.records import FULL_SCHEMA, JUDGE_SCORE_COLUMNS, RELEASED_COLUMNS, conform, to_messages
from mediflow.safe_names import safe_name

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
#: The model-facing pair columns: the pairs stage's own minus the clinical case (kept in ``records``).
DPO_SCHEMA = pa.schema([field for field in PAIR_SCHEMA if field.name != "case"])
RESERVED_CONFIGS: tuple[str, ...] = ("sft", "dpo", "records")
_LIGHT_COLUMNS = ["document_id", "input", "task_type", "input_data", "teacher"]
_BATCH_ROWS = 20_000
CARD_NAME = "README.md"


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


def export_dataset(records: str | Path, out_dir: str | Path, config: ExportConfig | None = None, *, overwrite: bool = False) -> ExportSummary:
    """Export ``records`` (a MediFlow output folder or Parquet) and ``config.pairs`` (optional) to ``out_dir``."""
    out_dir = Path(out_dir)
    config = config or ExportConfig()
    record_data = open_input(records, "records", require=("output",))
    pair_data = open_input(config.pairs, "pairs") if config.pairs is not None else None
    scanned = _scan(record_data)  # the first pass checks every task name before anything is written
    pair_source = _scan(pair_data)[0] if pair_data is not None else None
    task_configs = _task_configs(scanned[0], record_data, config)
    repo_id = config.repo_id or config.hub.repo_id or out_dir.name
    folder = OutputFolder.open(
        out_dir,
        kind="export",
        holds="export",
        config=_manifest_config(config, repo_id),
        inputs=[data.ref() for data in (record_data, pair_data) if data is not None],
        overwrite=overwrite,
        extra_entries={CARD_NAME},
    )
    with folder:
        return _export(record_data, scanned, pair_data, pair_source, task_configs, folder, config, repo_id)


def _task_configs(source: _Source, data: InputData, config: ExportConfig) -> list[str]:
    """The per-task configs: each task name becomes a folder, so it must be a safe name and not sft/dpo."""
    if not config.task_configs:
        return []
    task_configs = sorted({safe_name(t, f"task_type in {data.path}") for t in source.tasks if t})
    clash = set(task_configs) & set(RESERVED_CONFIGS)
    if clash:
        raise MediflowError(f"task name(s) {', '.join(sorted(clash))} clash with the reserved config names sft/dpo")
    return task_configs


def _manifest_config(config: ExportConfig, repo_id: str) -> dict[str, Any]:
    """What decides the folder's content: not where it is uploaded to, nor the pairs' path (an input)."""
    plain = {key: value for key, value in config.to_dict().items() if key not in ("hub", "pairs")}
    return {**plain, "repo_id": repo_id}


def _export(
    record_data: InputData,
    scanned: tuple[_Source, Counter[str], Counter[str], Counter[str]],
    pair_data: InputData | None,
    pair_source: _Source | None,
    task_configs: list[str],
    folder: OutputFolder,
    config: ExportConfig,
    repo_id: str,
) -> ExportSummary:
    out_dir = folder.root
    record_source, tasks, document_types, teachers = scanned
    documents = record_source.document_kinds() + (pair_source.document_kinds() if pair_source is not None else [])
    assignment = assign_splits(documents, config.split.fractions(), config.seed)
    limits = config.shard_limits()
    staging = out_dir / f"{TEMP_PREFIX}staging-{uuid.uuid4().hex[:8]}"
    try:
        written = _write_records(record_source, assignment, task_configs, staging, limits)
        if pair_source is not None:
            written.update(_write_pairs(pair_source, assignment, staging, limits))
        order = [c for c in RESERVED_CONFIGS if c in written] + task_configs  # the card lists configs in this order
        files = {config: {split: sorted(str(p.relative_to(staging)) for p in written[config][split]) for split in SPLITS if split in written[config]} for config in order}
        _publish(staging, out_dir, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rows = _row_counts(record_source, pair_source, assignment, task_configs)
    facts = CardFacts(
        repo_id=repo_id,
        configs=files,
        rows=rows,
        tasks=tasks,
        document_types=document_types,
        teachers=teachers,
        filters=_filters_from_manifest(record_data),
        pairs=_pairs_from_manifest(pair_data) if pair_data is not None else None,
        seed=config.seed,
        fractions=config.split.fractions().as_dict(),
        license=config.license,
        judged=_has_judge_scores(record_source.files),
        task_configs=task_configs,
        file_bytes={config: sum((out_dir / path).stat().st_size for paths in splits.values() for path in paths) for config, splits in files.items()},
        split_bytes={config: {split: _uncompressed_bytes(out_dir, paths) for split, paths in splits.items()} for config, splits in files.items()},
    )
    write_text(out_dir / CARD_NAME, render_card(facts))
    folder.finish({config: sum(counts.values()) for config, counts in rows.items()}, {"files": files})
    return ExportSummary(out_dir, files, {config: dict(counts) for config, counts in rows.items()})


def _scan(data: InputData) -> tuple[_Source, Counter[str], Counter[str], Counter[str]]:
    """First pass: document keys, tasks, document types and teachers, from the small columns only."""
    files = list(data.files)
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
    total_bytes = sum(pq.ParquetFile(f).metadata.row_group(i).total_byte_size for f in files for i in range(pq.ParquetFile(f).metadata.num_row_groups))
    source = _Source(files, keys, tasks, types, total_bytes / max(total_rows, 1))
    return source, task_counts, type_counts, teacher_counts


def _batches(files: list[Path], columns: list[str]) -> Iterator[pa.Table]:
    """The files as tables with exactly ``columns`` (absent ones as null strings), batch by batch."""
    for file in files:
        present = [c for c in columns if c in pq.read_schema(file).names]
        for table in read_batches(file, present or None, _BATCH_ROWS):
            for name in columns:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
            yield table


def _row_counts(records: _Source, pairs: _Source | None, assignment: dict[str, str], task_configs: list[str]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {"sft": Counter(assignment[k] for k in records.keys)}
    counts["records"] = counts["sft"]
    for task in task_configs:
        counts[task] = Counter(assignment[k] for k, t in zip(records.keys, records.tasks) if t == task)
    if pairs is not None:
        counts["dpo"] = Counter(assignment[k] for k in pairs.keys)
    return {config: Counter({s: c[s] for s in SPLITS if c[s]}) for config, c in counts.items()}


def _full_rows(batch: pa.Table) -> pa.Table:
    """A record batch in the full record schema (the ``records`` config), with ``messages`` built for records that lack it."""
    table = conform(with_ids(batch)).select(FULL_SCHEMA.names)
    messages = table.column("messages").to_pylist()
    if any(m is None for m in messages):
        fields = {name: table.column(name).to_pylist() for name in ("instruction", "input", "output")}
        messages = [m if m is not None else to_messages(fields["instruction"][i] or "", fields["input"][i] or "", fields["output"][i] or "") for i, m in enumerate(messages)]
        table = table.set_column(table.column_names.index("messages"), "messages", pa.array(messages, FULL_SCHEMA.field("messages").type))
    return table.cast(FULL_SCHEMA)


def _write_records(source: _Source, assignment: dict[str, str], task_configs: list[str], staging: Path, limits: ShardLimits) -> dict[str, dict[str, list[Path]]]:
    counts = _row_counts(source, None, assignment, task_configs)
    rows_per_shard = limits.rows_per_shard(source.bytes_per_row)
    writers = {(config, split): ShardedSplitWriter(staging / "data" / config, split, FULL_SCHEMA if config == "records" else SFT_SCHEMA, n, rows_per_shard) for config, splits in counts.items() for split, n in splits.items()}
    offset = 0
    for file in source.files:
        for batch in read_batches(file, None, _BATCH_ROWS):
            full = _full_rows(batch)
            table = full.select(list(SFT_COLUMNS)).cast(SFT_SCHEMA)
            splits = pa.array([assignment[k] for k in source.keys[offset : offset + table.num_rows]], pa.string())
            offset += table.num_rows
            for split in SPLITS:
                in_split = table.filter(pc.equal(splits, split))
                if in_split.num_rows == 0:
                    continue
                writers[("sft", split)].write(in_split)
                writers[("records", split)].write(full.filter(pc.equal(splits, split)))
                for task in task_configs:
                    rows = in_split.filter(pc.equal(in_split.column("task_type"), task))
                    if rows.num_rows:
                        writers[(task, split)].write(rows)
    return _close(writers)


def _write_pairs(source: _Source, assignment: dict[str, str], staging: Path, limits: ShardLimits) -> dict[str, dict[str, list[Path]]]:
    counts = Counter(assignment[k] for k in source.keys)
    rows_per_shard = limits.rows_per_shard(source.bytes_per_row)
    writers = {("dpo", split): ShardedSplitWriter(staging / "data" / "dpo", split, DPO_SCHEMA, n, rows_per_shard) for split, n in counts.items()}
    offset = 0
    for file in source.files:
        for batch in read_batches(file, None, _BATCH_ROWS):
            table = conform(batch, DPO_SCHEMA).select(DPO_SCHEMA.names).cast(DPO_SCHEMA)
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
    refuse_link(out_dir / "data")  # checked when the folder opened; a link planted since is refused too
    for relative in sorted(new):
        target = out_dir / relative
        refuse_link(target.parent).mkdir(parents=True, exist_ok=True)
        commit(staging / relative, target)
    data = out_dir / "data"
    for stale in data.rglob("*.parquet"):
        if str(stale.relative_to(out_dir)) not in new:
            stale.unlink()
    for folder in sorted(data.iterdir()):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _uncompressed_bytes(root: Path, paths: list[str]) -> int:
    """The uncompressed size of some shards, from their Parquet footers (what ``num_bytes`` reports)."""
    metadata = [pq.ParquetFile(root / path).metadata for path in paths]
    return sum(m.row_group(i).total_byte_size for m in metadata for i in range(m.num_row_groups))


def _has_judge_scores(files: list[Path]) -> bool:
    return any(name in pq.read_schema(f).names for f in files for name in JUDGE_SCORE_COLUMNS)


def _read_manifest(data: InputData) -> dict[str, Any]:
    return data.manifest.to_dict() if data.manifest is not None else {}


def _filters_from_manifest(data: InputData) -> list[dict[str, Any]]:
    """Each quality stage's in/kept/dropped and drops per rule, from a curate or stage manifest."""
    manifest = _read_manifest(data)
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


def _pairs_from_manifest(data: InputData) -> dict[str, Any] | None:
    """The pair yield from a ``mediflow pairs`` manifest."""
    manifest = _read_manifest(data).get("pairs")
    if not isinstance(manifest, dict):
        return None
    return {
        "kept": manifest.get("kept", 0),
        "tried": manifest.get("tried", 0),
        "method": manifest.get("method", "?"),
        "dropped": sorted((manifest.get("dropped") or {}).items()),
    }
