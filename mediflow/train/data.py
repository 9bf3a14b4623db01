"""Read the inputs of the training stages into the row layouts TRL expects.

One reader for every place data comes from (a Parquet file, a folder of shards, the Hub-layout
export ``data/<config>/<split>-*.parquet``, JSONL, a folder of ``.txt``/``.md`` documents), and one
small function per layout:

* documents -> ``{"id", "text"}``
* PIT task data -> ``{"prompt", "completion"}`` (plain text: loss on the completion only)
* MediFlow records -> ``{"messages"}`` (the conversational view of :func:`mediflow.records.to_messages`)
* preference pairs -> ``{"prompt", "chosen", "rejected"}`` (conversational lists)

A ``mediflow export`` root can be named directly: SFT reads its ``sft`` config, DPO its ``dpo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from mediflow.errors import MediflowError
from mediflow.records import content_id, to_messages

_TEXT_SUFFIXES = (".txt", ".md")
#: The split names of a Hub-layout export (``mediflow.export.splits``).
SPLITS = ("train", "validation", "test")


def read_table(path: Path, split: str = "train") -> pa.Table:
    """Read Parquet/JSONL from a file or a folder (Hub layout: only ``<split>-*.parquet`` shards)."""
    if not path.exists():
        raise MediflowError(f"{path}: no such file or folder")
    if path.is_file():
        return _read_file(path)
    shards = sorted(path.rglob(f"{split}-*.parquet"))
    if not shards:
        present = sorted(splits_of(path))
        if present:
            # A split layout without the asked-for split: reading the other splits instead would
            # evaluate on training data (or train on the test set).
            raise MediflowError(f"{path}: no '{split}' split here (splits: {', '.join(present)})")
        shards = sorted(path.rglob("*.parquet")) or sorted(path.rglob("*.jsonl"))
    if not shards:
        raise MediflowError(f"{path}: no .parquet or .jsonl files in this folder")
    return pa.concat_tables([_read_file(shard) for shard in shards], promote_options="default")


def splits_of(path: Path) -> set[str]:
    """The export splits (``train``/``validation``/``test``) a folder's shards are named for; empty for a plain file."""
    if not path.is_dir():
        return set()
    return {p.name.split("-")[0] for p in path.rglob("*-*.parquet")} & set(SPLITS)


def _read_file(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix in (".jsonl", ".json"):
        return pa_json.read_json(path)
    raise MediflowError(f"{path}: expected a .parquet or .jsonl file")


def load_documents(path: Path, text_field: str = "text") -> list[dict[str, str]]:
    """Documents as ``{"id", "text"}``: one per ``.txt``/``.md`` file, or one per table row."""
    if path.is_dir() and not any(path.rglob("*.parquet")) and not any(path.rglob("*.jsonl")):
        files = sorted(p for p in path.rglob("*") if p.suffix in _TEXT_SUFFIXES)
        if not files:
            raise MediflowError(f"{path}: no .txt, .md, .parquet or .jsonl documents in this folder")
        return [{"id": p.stem, "text": p.read_text(encoding="utf-8")} for p in files]
    table = read_table(path)
    if text_field not in table.column_names:
        raise MediflowError(f"{path}: no '{text_field}' column (columns: {table.column_names}); set data.text_field")
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
    texts = table.column(text_field).to_pylist()
    return [
        {"id": str(doc_id) if doc_id is not None else content_id(text), "text": text}
        for doc_id, text in zip(ids, texts)
        if text
    ]


def load_task_rows(path: Path) -> list[dict[str, str]]:
    """PIT task data as prompt/completion rows; ``question``/``answer`` rows become a QA prompt."""
    table = read_table(path)
    columns = set(table.column_names)
    if not ({"prompt", "completion"} <= columns or {"question", "answer"} <= columns):
        raise MediflowError(f"{path}: task data needs prompt/completion (or question/answer) columns, found {sorted(columns)}")
    rows = []
    for row in table.to_pylist():
        if row.get("completion"):
            rows.append({"prompt": row.get("prompt") or "", "completion": row["completion"]})
        elif row.get("question") and row.get("answer"):
            rows.append({"prompt": f"Question: {row['question']}\nAnswer:", "completion": f" {row['answer']}"})
    return rows


def export_config(path: Path, config: str) -> Path:
    """``path/data/<config>`` when ``path`` is the root of a ``mediflow export`` (Hub layout), else ``path``.

    An export root holds several configs (``sft``, ``dpo``, one per task) whose shards share split
    names, so reading the whole root would mix them; SFT reads ``sft`` and DPO ``dpo`` by default.
    """
    candidate = path / "data" / config
    return candidate if path.is_dir() and candidate.is_dir() else path


def load_messages(path: Path, split: str = "train", max_samples: int | None = None) -> list[dict[str, Any]]:
    """MediFlow records as ``{"messages": [...]}`` rows; built from instruction/input/output if needed.

    ``path`` may be an export root: its ``sft`` config is read.
    """
    table = read_table(export_config(path, "sft"), split)
    columns = set(table.column_names)
    if "messages" in columns:
        rows = [{"messages": messages} for messages in table.column("messages").to_pylist() if messages]
    elif {"instruction", "input", "output"} <= columns:
        rows = [
            {"messages": to_messages(row["instruction"], row["input"], row["output"])}
            for row in table.select(["instruction", "input", "output"]).to_pylist()
            if row["output"]
        ]
    else:
        raise MediflowError(f"{path}: records need a 'messages' column or instruction/input/output, found {sorted(columns)}")
    return rows[:max_samples] if max_samples else rows


def load_preferences(path: Path, split: str = "train", max_samples: int | None = None) -> list[dict[str, Any]]:
    """Preference pairs as conversational ``prompt``/``chosen``/``rejected`` rows.

    Accepts the preference export (those three columns) or MediFlow records that carry
    ``rejected_output`` (the released ``mediflow_dpo`` layout): chosen = ``output``. ``path`` may be
    an export root: its ``dpo`` config is read.
    """
    table = read_table(export_config(path, "dpo"), split)
    columns = set(table.column_names)
    if {"prompt", "chosen", "rejected"} <= columns:
        rows = [
            {"prompt": _as_turns(r["prompt"], "user"), "chosen": _as_turns(r["chosen"], "assistant"), "rejected": _as_turns(r["rejected"], "assistant")}
            for r in table.select(["prompt", "chosen", "rejected"]).to_pylist()
        ]
    elif {"instruction", "input", "output", "rejected_output"} <= columns:
        rows = [
            {
                "prompt": to_messages(r["instruction"], r["input"]),
                "chosen": [{"role": "assistant", "content": r["output"]}],
                "rejected": [{"role": "assistant", "content": r["rejected_output"]}],
            }
            for r in table.select(["instruction", "input", "output", "rejected_output"]).to_pylist()
            if r["rejected_output"]
        ]
    else:
        raise MediflowError(
            f"{path}: preference data needs prompt/chosen/rejected columns or records with rejected_output, found {sorted(columns)}"
        )
    rows = [r for r in rows if r["chosen"] and r["rejected"]]
    return rows[:max_samples] if max_samples else rows


def _as_turns(value: Any, role: str) -> list[dict[str, str]]:
    """A conversational list as is; a plain string becomes one turn of ``role``."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": turn["role"], "content": turn["content"]} for turn in value or []]
