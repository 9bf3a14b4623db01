"""The one input reader: a folder gives only its kept records (per what its manifest says it holds), a file gives itself.

Every command that reads MediFlow data (the quality stages, curate, pairs, export, audit and the
training stages) opens its input with :func:`open_input`, which

* finds the files: a contract folder's ``data/*.parquet`` (never its rejects, stage copies, caches
  or stray Parquet), a Hub-layout export's ``data/<config>/<split>-*.parquet``, a plain folder's
  own ``*.parquet``, or the one ``.parquet`` / ``.jsonl`` file named;
* refuses a folder holding something else than the caller reads (its manifest's ``holds``: pairs
  where records are expected, a model), a folder another process is writing, and a run that did
  not finish;
* checks every file against the record schema before any work: an unreadable (corrupt,
  truncated) file, a missing or mistyped column, or an input with no rows is one error line
  naming the file and the column.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from mediflow.errors import MediflowError
from mediflow.folders.atomic import TEMP_PREFIX
from mediflow.folders.guards import lock_holder
from mediflow.folders.manifest import InputRef, Manifest, read_manifest
from mediflow.folders.output import DATA_DIR
from mediflow.records import record_id

#: What each reader reads: the columns it needs (any one alternative suffices), the folders it
#: accepts (by what their manifest says they hold), and the config of a Hub-layout export it reads.
REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "records": (("instruction", "input"),),
    "sft": (("messages",), ("instruction", "input", "output")),
    "pairs": (("prompt", "chosen", "rejected"),),
    "preferences": (("prompt", "chosen", "rejected"), ("instruction", "input", "output", "rejected_output")),
    "task_data": (("prompt", "completion"), ("question", "answer")),
    "eval": (("prompt", "reference"), ("messages",), ("instruction", "input")),
    "documents": (),
}
ACCEPTS: dict[str, frozenset[str]] = {
    "records": frozenset({"records"}),
    "sft": frozenset({"records"}),
    "pairs": frozenset({"pairs"}),
    "preferences": frozenset({"pairs", "records"}),
    "task_data": frozenset({"task_data"}),
    "eval": frozenset({"records"}),
    "documents": frozenset({"records"}),
}
EXPORT_CONFIG: dict[str, str] = {"records": "sft", "sft": "sft", "eval": "sft", "documents": "sft", "pairs": "dpo", "preferences": "dpo"}
_TEXT = ("id", "instruction", "input", "output", "task_type", "input_data", "output_format", "difficulty_level", "document_id", "completion", "question", "answer", "rejected_output", "text")
_NUMBER = ("quality", "alignment", "coherence", "realism", "difficulty", "judge_spread")
_CONVERSATION = ("messages", "prompt", "chosen", "rejected")
_SUFFIXES = (".parquet", ".jsonl", ".json")
#: The text each family's rows are made of, as alternatives (a row needs every column of one of them that
#: the file has, non-null): a row with none is refused when the input is opened (see :func:`_check_rows`).
NOT_NULL: dict[str, tuple[tuple[str, ...], ...]] = {
    "records": (("instruction", "input", "output"),),
    "sft": (("messages",), ("instruction", "input", "output")),
    "eval": (("prompt", "reference"), ("messages",), ("instruction", "input", "output")),
    "preferences": (("prompt", "chosen", "rejected"), ("instruction", "input", "output")),  # a record without rejected_output is no pair: skipped
    "pairs": (("prompt", "chosen", "rejected"),),
    "task_data": (("prompt", "completion"), ("question", "answer")),
}
#: The families whose ids name one record each (a record, or the record a pair was made from): one id
#: for two different records is refused (the same record twice is an exact duplicate: dedup's job).
UNIQUE_IDS = frozenset({"records", "sft", "eval", "pairs", "preferences"})
#: What a record's id is derived from (:func:`mediflow.records.record_id`): two rows with one id must agree on these.
ID_CONTENT = ("instruction", "input", "output", "task_type", "output_format")
#: Rows per batch of the validation pass.
_CHECK_ROWS = 50_000
#: The split names of a Hub-layout export (``mediflow.export.splits``).
SPLITS = ("train", "validation", "test")


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind) or kind == pa.string_view())


def _is_conversation(kind: pa.DataType) -> bool:
    if _is_text(kind):
        return True
    return bool((pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_struct(kind.value_type))


def _type_problem(name: str, kind: pa.DataType) -> str | None:
    """What is wrong with column ``name`` of type ``kind`` (None when it is usable)."""
    if name in _CONVERSATION and not _is_conversation(kind):
        return f"is {kind}, expected text or a list of {{role, content}} turns"
    if name in _TEXT and name not in _CONVERSATION and not _is_text(kind):
        return f"is {kind}, expected string"
    if name in _NUMBER and not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
        return f"is {kind}, expected a number"
    return None


@dataclass(frozen=True)
class InputData:
    """An input, checked: its files, what it holds, and how to read it."""

    path: Path
    family: str
    files: tuple[Path, ...]
    manifest: Manifest | None
    num_rows: int

    @property
    def kind(self) -> str:
        """The folder kind that wrote it (``file`` / ``folder`` / ``export`` for outside data)."""
        if self.manifest is not None:
            return self.manifest.kind
        return "file" if self.path.is_file() else "folder"

    @property
    def columns(self) -> list[str]:
        """Every column present in at least one file, in first-seen order."""
        names: dict[str, None] = {}
        for file in self.files:
            names.update(dict.fromkeys(_schema(file).names))
        return list(names)

    def schema(self) -> pa.Schema:
        """The first file's schema (what an empty stage output keeps), with ``id`` first for records."""
        schema = _schema(self.files[0]).remove_metadata()
        schema = pa.schema([field.with_type(plain_type(field.type)) for field in schema])
        if self.family == "records" and "id" not in schema.names:
            schema = schema.insert(0, pa.field("id", pa.string()))
        return schema

    def fingerprint(self) -> str:
        """A fingerprint of the content (file names, sizes and Parquet footers, which hold every chunk's
        offsets and statistics): cheap at any size, different whenever the data differs."""
        digest = hashlib.sha256()
        for file in self.files:
            digest.update(file.name.encode() + b"\0" + str(file.stat().st_size).encode() + b"\0")
            digest.update(_footer(file))
        return digest.hexdigest()[:16]

    def ref(self) -> InputRef:
        """This input as a manifest entry."""
        return InputRef(str(self.path), self.kind, self.fingerprint())

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 20_000) -> Iterator[pa.Table]:
        """The rows as tables of at most ``batch_rows`` (records get an ``id`` when they lack one)."""
        for file in self.files:
            for batch in read_batches(file, columns, batch_rows):
                yield with_ids(batch) if self.family == "records" else batch

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole input (or the named columns of it) as one table."""
        tables = list(self.iter_batches(columns, batch_rows=200_000))
        return pa.concat_tables(tables, promote_options="default") if tables else self.schema().empty_table()


def read_batches(file: Path, columns: Sequence[str] | None = None, batch_rows: int = 20_000) -> Iterator[pa.Table]:
    """One file's rows (the named columns of them that it has) as tables of at most ``batch_rows``, in plain types.

    The one way a stage streams a checked input file: ``large_string`` and ``string_view`` columns
    (pandas, Polars and DuckDB write them) come back as ``string``, large and view lists as lists,
    so no stage meets a type its Arrow kernels lack.
    """
    try:
        if file.suffix == ".parquet":
            parquet = pq.ParquetFile(file)
            wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
            batches: Iterator[pa.Table] = (pa.Table.from_batches([b]) for b in parquet.iter_batches(batch_size=batch_rows, columns=wanted))
        else:
            table = _read_json(file)
            table = table if columns is None else table.select([c for c in columns if c in table.column_names])
            batches = (pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=batch_rows))
        for batch in batches:
            yield plain_types(batch)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a file-system error (the CLI names it), not a corrupt file
        raise MediflowError(f"{file}: cannot be read ({_first_line(exc)})") from None


def read_file(file: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """One whole file (the named columns of it), in :func:`plain_types`: :func:`read_batches` in one table."""
    tables = list(read_batches(file, columns, batch_rows=1 << 20))
    if tables:
        return pa.concat_tables(tables)
    schema = _schema(file)
    return plain_types(schema.empty_table() if columns is None else schema.empty_table().select([c for c in columns if c in schema.names]))


def plain_type(kind: pa.DataType) -> pa.DataType:
    """``kind`` with every large or view string, binary and list type (at any depth) replaced by the plain one."""
    if pa.types.is_large_string(kind) or kind == pa.string_view():
        return pa.string()
    if pa.types.is_large_binary(kind) or kind == pa.binary_view():
        return pa.binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):
        return pa.list_(kind.value_field.with_type(plain_type(kind.value_type)))
    if pa.types.is_struct(kind):
        return pa.struct([kind.field(i).with_type(plain_type(kind.field(i).type)) for i in range(kind.num_fields)])
    return kind


def plain_types(table: pa.Table) -> pa.Table:
    """``table`` cast to :func:`plain_type` column by column (unchanged, and not copied, when already plain)."""
    schema = pa.schema([field.with_type(plain_type(field.type)) for field in table.schema], metadata=table.schema.metadata)
    return table if schema.equals(table.schema) else table.cast(schema)


def with_ids(batch: pa.Table) -> pa.Table:
    """Records from outside MediFlow (e.g. the released set) may lack ``id``: derive it from content."""
    if "id" in batch.column_names and batch.column("id").null_count == 0:
        return batch
    keys = ("instruction", "input", "output", "task_type", "output_format")
    rows = batch.select([c for c in keys if c in batch.column_names]).to_pylist()
    ids = pa.array([record_id(*(str(r.get(k) or "") for k in keys)) for r in rows], pa.string())
    if "id" in batch.column_names:
        return batch.set_column(batch.column_names.index("id"), "id", pc.coalesce(batch.column("id").cast(pa.string()), ids))
    return batch.add_column(0, "id", ids)


def open_input(path: str | Path, family: str = "records", *, split: str | None = None, allow_empty: bool = False, require: Sequence[str] = ()) -> InputData:
    """Find, check and describe the input at ``path`` (see the module docstring).

    ``require`` names columns this reader needs beyond the family's own (export needs ``output``).
    """
    path = Path(path)
    manifest = None
    if path.is_file():
        if path.suffix not in _SUFFIXES:
            raise MediflowError(f"{path}: not a Parquet or JSONL file (expected .parquet, .jsonl, or a MediFlow folder)")
        files = [path]
    elif path.is_dir():
        manifest, files = _folder_files(path, family, split)
    else:
        raise MediflowError(f"{path}: no such file or folder")
    rows = sum(_check_file(file, family, tuple(require)) for file in files)
    if rows == 0 and not allow_empty:
        raise MediflowError(f"{path}: no records (the input has 0 rows)")
    _check_rows(path, files, family, tuple(require))
    return InputData(path, family, tuple(files), manifest, rows)


def _folder_files(path: Path, family: str, split: str | None) -> tuple[Manifest | None, list[Path]]:
    manifest = read_manifest(path)
    holder = lock_holder(path)
    if holder is not None:
        raise MediflowError(f"{path}: is being written by another process ({holder}); wait for it to finish")
    data = path / DATA_DIR
    if manifest is not None:
        held = manifest.holds
        if held is None:
            raise MediflowError(f"{path}: a '{manifest.kind}' folder holds nothing to read")
        if manifest.status not in ("finished", "stopped"):
            why = f": {manifest.reason}" if manifest.reason else ""
            raise MediflowError(f"{path}: the {manifest.kind} run did not finish (status {manifest.status}{why}); rerun it first")
        if held == "export":
            return manifest, _export_files(path, family, split)
        if held not in ACCEPTS.get(family, frozenset({family})):
            raise MediflowError(f"{path}: a '{manifest.kind}' folder holds {held.replace('_', ' ')}, not {family.replace('_', ' ')}")
        return manifest, _parquet_in(data)
    if data.is_dir() and any(p.is_dir() for p in data.iterdir()):
        return None, _export_files(path, family, split)
    files = _in_split(_parquet_in(data) or _parquet_in(path), split, path)  # the contract's layout without a manifest, or a plain folder
    if not files:
        raise MediflowError(f"{path}: no MediFlow manifest and no .parquet/.jsonl files in this folder")
    return None, files


def _parquet_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in _SUFFIXES and p.is_file() and not p.name.startswith((TEMP_PREFIX, ".")))


def _export_files(path: Path, family: str, split: str | None) -> list[Path]:
    """A Hub-layout folder's shards of the config this family reads (``sft`` / ``dpo``, or the only one there is)."""
    config = EXPORT_CONFIG.get(family)
    configs = sorted(p.name for p in (path / DATA_DIR).iterdir() if p.is_dir())
    if config not in configs and len(configs) == 1:
        config = configs[0]  # a dataset with one config (``default``): that is the one
    if config not in configs:
        raise MediflowError(f"{path}: a Hub-layout folder with no '{config}' config to read {family.replace('_', ' ')} from (configs: {', '.join(configs)})")
    folder = path / DATA_DIR / str(config)
    files = _in_split(_parquet_in(folder), split, folder)
    if not files:
        raise MediflowError(f"{folder}: no Parquet shards")
    return files


def _in_split(files: list[Path], split: str | None, where: Path) -> list[Path]:
    """The files of ``split`` when the files are named by split (``train-00000-of-00001.parquet``).

    A split layout without the asked-for split is an error: reading the other splits instead would
    evaluate on training data (or train on the test set).
    """
    present = sorted({f.name.split("-")[0] for f in files} & set(SPLITS))
    if split is None or not present:
        return files
    if split not in present:
        raise MediflowError(f"{where}: no '{split}' split here (splits: {', '.join(present)})")
    return [f for f in files if f.name.startswith(f"{split}-")]


def _schema(file: Path) -> pa.Schema:
    if file.suffix == ".parquet":
        return pq.read_schema(file)
    return _read_json(file).schema


def _read_json(file: Path) -> pa.Table:
    try:
        return pa_json.read_json(file)
    except pa.ArrowException as exc:
        raise MediflowError(f"{file}: not valid JSON Lines ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _check_file(file: Path, family: str, require: tuple[str, ...] = ()) -> int:
    """Rows in ``file`` after checking it opens and has the family's columns with usable types."""
    try:
        if file.suffix == ".parquet":
            metadata = pq.ParquetFile(file).metadata
            schema, rows = metadata.schema.to_arrow_schema(), metadata.num_rows
        else:
            table = _read_json(file)
            schema, rows = table.schema, table.num_rows
    except MediflowError:
        raise
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, PermissionError):
            raise MediflowError(f"{file}: permission denied") from None
        raise MediflowError(f"{file}: not a readable Parquet file ({_first_line(exc)})") from None
    twice = next((name for name in schema.names if schema.names.count(name) > 1), None)
    if twice is not None:
        raise MediflowError(f"{file}: column '{twice}' appears {schema.names.count(twice)} times; column names must be unique")
    alternatives = tuple(names + require for names in REQUIRED.get(family) or ((),))
    if alternatives and any(alternatives) and not any(set(names) <= set(schema.names) for names in alternatives):
        wanted = " or ".join("/".join(names) for names in alternatives)
        missing = [name for name in alternatives[0] if name not in schema.names]
        raise MediflowError(f"{file}: missing column '{missing[0]}' ({family.replace('_', ' ')} need {wanted})")
    for field in schema:
        problem = _type_problem(field.name, field.type)
        if problem:
            raise MediflowError(f"{file}: column '{field.name}' {problem}")
    return int(rows)


def _has_text(kind: pa.DataType) -> bool:
    """Whether values of ``kind`` hold strings, at any depth (``messages``' contents, ``case``'s conditions)."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or kind == pa.string_view():
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):
        return _has_text(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_has_text(kind.field(i).type) for i in range(kind.num_fields))
    return False


def _alternatives(schema: pa.Schema, family: str, require: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The :data:`NOT_NULL` alternatives of ``family`` that this file has (each cut to the columns it has)."""
    present = [tuple(name for name in (*names, *require) if name in schema.names) for names in NOT_NULL.get(family, ())]
    return list(dict.fromkeys(names for names in present if names))


def _check_rows(path: Path, files: Sequence[Path], family: str, require: tuple[str, ...]) -> None:
    """One streaming pass over every file's text columns before any work, one batch in memory at a time:

    * every string (at any depth) is valid UTF-8: else one line naming the file, the column and the first bad row;
    * every row has the text it is made of (:data:`NOT_NULL`: ``instruction``, ``input`` and ``output`` for
      records): a null there refuses the input, naming the file, the column and the first such row (never
      dropped silently, never half-processed: ``filter``, ``dedup``, ``export``, ``audit`` and the training
      stages all say the same);
    * one id never names two different records: refused, naming both rows (:func:`_check_unique_ids`).
      Only the ids are kept across batches (tens of bytes per row, not the records).
    """
    ids: list[pa.Array] = []
    where: list[tuple[Path, int]] = []  # (file, rows) in the order the ids were collected
    for file in files:
        schema = _schema(file)
        texts = [field.name for field in schema if _has_text(field.type)]
        alternatives = _alternatives(schema, family, require)
        keep_ids = family in UNIQUE_IDS and "id" in schema.names
        offset = 0
        for batch in read_batches(file, texts + (["id"] if keep_ids and "id" not in texts else []), batch_rows=_CHECK_ROWS):
            for name in texts:
                _check_utf8(file, name, batch.column(name), offset)
            if alternatives:
                _check_not_null(file, batch, alternatives, offset)
            if keep_ids:
                ids.append(pc.fill_null(batch.column("id").cast(pa.string()), "").combine_chunks())
                where.append((file, batch.num_rows))
            offset += batch.num_rows
    if ids:
        _check_unique_ids(path, ids, where)


def _check_not_null(file: Path, batch: pa.Table, alternatives: list[tuple[str, ...]], offset: int) -> None:
    """Refuse the first row of ``batch`` that has no alternative of :data:`NOT_NULL` complete, naming a column it lacks."""
    complete = [functools.reduce(pc.and_kleene, [batch.column(name).is_valid() for name in names]) for names in alternatives]
    usable = functools.reduce(pc.or_kleene, complete)
    if pc.all(usable).as_py():
        return
    row = pc.index(usable, False).as_py()
    widest = max(alternatives, key=len)  # the record-shaped alternative names the most telling column (output, not messages)
    name = next(name for name in widest if not batch.column(name)[row].is_valid)
    raise MediflowError(f"{file}: column '{name}' is null in row {offset + row} (counting from 0); every row needs its {name}: fill in or drop those rows first")


def _check_utf8(file: Path, name: str, column: pa.ChunkedArray, offset: int) -> None:
    """One line naming ``file``, column ``name`` and the first row (``offset`` + index) holding invalid UTF-8."""
    for chunk in column.chunks:
        if _valid(chunk):
            offset += len(chunk)
            continue
        low, high = 0, len(chunk)  # the first bad row, by halving (only on the way to the error)
        while high - low > 1:
            middle = (low + high) // 2
            if _valid(pa.concat_arrays([chunk.slice(low, middle - low)])):  # compacted: a sliced list would validate its whole child
                low = middle
            else:
                high = middle
        raise MediflowError(f"{file}: column '{name}' is not valid UTF-8 (first bad row {offset + low}, counting from 0); re-save the file with its text encoded as UTF-8")


def _valid(array: pa.Array) -> bool:
    """Whether every string in ``array`` (at any depth) is valid UTF-8: Arrow's full validation, in C++."""
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _check_unique_ids(path: Path, ids: list[pa.Array], where: list[tuple[Path, int]]) -> None:
    """Refuse an input in which one (non-empty) id names two different records, naming the id and both rows.

    Repeated ids are found from the ids alone (Arrow's hash count); only when some repeat are their
    rows read again, and only those rows, to tell an exact duplicate (the same record twice: allowed,
    dedup removes it) from two records under one id.
    """
    every = pa.chunked_array(ids, pa.string())
    counts = pc.value_counts(every)
    repeated = counts.filter(pc.and_(pc.greater(counts.field("counts"), 1), pc.not_equal(counts.field("values"), ""))).field("values")
    if len(repeated) == 0:
        return
    first_content: dict[str, bytes] = {}  # a digest per repeated id: an input with many exact duplicates stays small
    first_place: dict[str, str] = {}
    for file in dict.fromkeys(file for file, _ in where):
        offset = 0
        columns = ["id", *[c for c in ID_CONTENT if c in _schema(file).names]]
        for batch in read_batches(file, columns, batch_rows=_CHECK_ROWS):
            rows = pc.indices_nonzero(pc.is_in(batch.column("id").cast(pa.string()), value_set=repeated)).to_pylist()
            for row, values in zip(rows, batch.take(rows).to_pylist()):
                key = str(values["id"])
                content = hashlib.blake2b(repr(tuple(values.get(c) for c in ID_CONTENT)).encode(), digest_size=16).digest()
                place = f"{file.name} row {offset + row}"
                if key not in first_content:
                    first_content[key], first_place[key] = content, place
                elif first_content[key] != content:
                    raise MediflowError(
                        f"{path}: duplicate id '{key}' for two different records ({first_place[key]} and {place}, counting from 0); ids must be unique: fix them, or drop the id column to derive each from its record's content"
                    )
            offset += batch.num_rows


def _footer(file: Path) -> bytes:
    """The Parquet footer's bytes (the whole file for JSONL, which is small by nature)."""
    with open(file, "rb") as handle:
        if file.suffix != ".parquet":
            return hashlib.sha256(handle.read()).digest()
        size = handle.seek(0, 2)
        handle.seek(max(0, size - 8))
        tail = handle.read(8)
        length = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
        handle.seek(max(0, size - 8 - length))
        return handle.read(length)
