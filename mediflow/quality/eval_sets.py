"""Reading user-supplied evaluation sets: Parquet, JSONL, or a ``datasets.save_to_disk`` folder.

Decontamination needs each eval item's text fields and a name to report when a record matches it.
The three formats are read into the same :class:`EvalTexts`; every problem (a missing file, a field
the set does not have, a line that is not JSON) is a one-line :class:`MediflowError` naming the set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mediflow.errors import MediflowError
from mediflow.quality.config import EvalSet
from mediflow.quality.text import json_strings


@dataclass(frozen=True)
class EvalTexts:
    """One eval set's texts: ``texts[j]`` belongs to item ``item[j]``, whose reported name is ``labels[item[j]]``."""

    labels: list[str]  # "<path>#<id>" per item
    texts: list[str]
    item: list[int]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MediflowError(f"eval set {path}: line {number} is not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise MediflowError(f"eval set {path}: line {number} is not a JSON object")
            rows.append(row)
    return rows


def _read_datasets_folder(path: Path, columns: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a saved ``Dataset``, or of every split of a saved ``DatasetDict``, and their row names (``split/row``)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise MediflowError(f"eval set {path}: not a datasets.save_to_disk folder (no dataset_info/state files)") from exc
    splits = sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    rows: list[dict[str, Any]] = []
    row_names: list[str] = []
    for name, split in splits:
        _require(path, columns, split.column_names)
        rows += split.select_columns(columns).to_list()
        row_names += [f"{name}/{i}" if name else str(i) for i in range(split.num_rows)]
    return rows, row_names


def _require(path: Path, wanted: list[str], present: list[str]) -> None:
    missing = [name for name in wanted if name not in present]
    if missing:
        raise MediflowError(f"eval set {path}: no field {', '.join(missing)} (it has: {', '.join(present) or 'nothing'})")


def read_eval_set(spec: EvalSet) -> EvalTexts:
    """The texts of one eval set, with ``<path>#<id>`` names (``id_field``'s value, else the row number)."""
    path = Path(spec.path)
    columns = list(dict.fromkeys([*spec.fields, *([spec.id_field] if spec.id_field else [])]))
    if path.is_dir():
        rows, row_names = _read_datasets_folder(path, columns)
    elif not path.is_file():
        raise MediflowError(f"eval set {path}: no such file or folder")
    elif path.suffix == ".parquet":
        _require(path, columns, pq.read_schema(path).names)
        rows = pq.read_table(path, columns=columns).to_pylist()
        row_names = [str(i) for i in range(len(rows))]
    elif path.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
        _require(path, columns, sorted({key for row in rows for key in row}))
        row_names = [str(i) for i in range(len(rows))]
    else:
        raise MediflowError(f"eval set {path}: unknown format (expected .parquet, .jsonl or a datasets.save_to_disk folder)")
    labels, texts, item = [], [], []
    for index, (row_name, row) in enumerate(zip(row_names, rows)):
        labels.append(f"{spec.path}#{row.get(spec.id_field) if spec.id_field else row_name}")
        for name in spec.fields:
            for text in json_strings(row.get(name)):
                texts.append(text)
                item.append(index)
    return EvalTexts(labels=labels, texts=texts, item=item)
