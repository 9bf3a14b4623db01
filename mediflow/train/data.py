"""Read the inputs of the training stages into the row layouts TRL expects.

Tables come through the one input reader (:func:`mediflow.folders.open_input`): a MediFlow folder
gives only its kept records (never its rejects, stage copies or caches), a Hub-layout export its
``data/<config>/<split>-*.parquet``, a file itself; a folder of ``.txt``/``.md`` documents is read
here. One small function per layout:

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

from mediflow.errors import MediflowError
from mediflow.folders import open_input
from mediflow.folders.manifest import MANIFEST_NAME
from mediflow.folders.reader import SPLITS
from mediflow.records import content_id, to_messages

_TEXT_SUFFIXES = (".txt", ".md")


def read_table(path: Path, split: str | None = "train", family: str = "sft") -> pa.Table:
    """The checked rows of ``path`` for a reader of ``family`` (a Hub-layout export: only ``split``)."""
    return open_input(path, family, split=split).read()


def _text_files(path: Path) -> list[Path]:
    """The ``.txt``/``.md`` documents of a folder that holds no tables (a plain corpus folder)."""
    if not path.is_dir() or (path / MANIFEST_NAME).exists() or any(p.suffix in (".parquet", ".jsonl") for p in path.iterdir()):
        return []
    return sorted(p for p in path.rglob("*") if p.suffix in _TEXT_SUFFIXES and p.is_file())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MediflowError(f"{path}: not UTF-8 text") from None


def splits_of(path: Path, family: str = "sft") -> set[str]:
    """The export splits (``train``/``validation``/``test``) the rows a ``family`` reader reads at ``path``
    are sharded by (an export root: its ``sft`` config, or ``dpo`` for preferences); empty otherwise."""
    try:
        files = open_input(path, family, split=None, allow_empty=True).files
    except MediflowError:
        return set()
    return {file.name.split("-")[0] for file in files} & set(SPLITS)


def load_documents(path: Path, text_field: str = "text") -> list[dict[str, str]]:
    """Documents as ``{"id", "text"}``: one per ``.txt``/``.md`` file, or one per table row."""
    files = _text_files(path)
    if files:
        return [{"id": p.stem, "text": _read_text(p)} for p in files]
    table = read_table(path, split=None, family="documents")
    if text_field not in table.column_names:
        raise MediflowError(f"{path}: no '{text_field}' column (columns: {table.column_names}); set data.text_field")
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
    texts = table.column(text_field).to_pylist()
    return [{"id": str(doc_id) if doc_id is not None else content_id(text), "text": text} for doc_id, text in zip(ids, texts) if text]


def load_task_rows(path: Path) -> list[dict[str, str]]:
    """PIT task data as prompt/completion rows; ``question``/``answer`` rows become a QA prompt."""
    table = read_table(path, split=None, family="task_data")
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


def load_messages(path: Path, split: str = "train", max_samples: int | None = None) -> list[dict[str, Any]]:
    """MediFlow records as ``{"messages": [...]}`` rows; built from instruction/input/output if needed.

    ``path`` may be an export root: its ``sft`` config is read.
    """
    table = read_table(path, split, "sft")
    columns = [c for c in ("messages", "instruction", "input", "output") if c in table.column_names]
    rows = []
    for row in table.select(columns).to_pylist():
        messages = row.get("messages")
        if not messages and row.get("output"):  # records without the messages view (or with it null): build it
            messages = to_messages(row.get("instruction") or "", row.get("input") or "", row["output"])
        if messages:
            rows.append({"messages": messages})
    return rows[:max_samples] if max_samples else rows


def load_preferences(path: Path, split: str = "train", max_samples: int | None = None) -> list[dict[str, Any]]:
    """Preference pairs as conversational ``prompt``/``chosen``/``rejected`` rows.

    Accepts the preference export (those three columns) or MediFlow records that carry
    ``rejected_output`` (the released ``mediflow_dpo`` layout): chosen = ``output``. ``path`` may be
    an export root: its ``dpo`` config is read.
    """
    table = read_table(path, split, "preferences")
    columns = set(table.column_names)
    if {"prompt", "chosen", "rejected"} <= columns:
        rows = [{"prompt": _as_turns(r["prompt"], "user"), "chosen": _as_turns(r["chosen"], "assistant"), "rejected": _as_turns(r["rejected"], "assistant")} for r in table.select(["prompt", "chosen", "rejected"]).to_pylist()]
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
        raise MediflowError(f"{path}: preference data needs prompt/chosen/rejected columns or records with rejected_output, found {sorted(columns)}")
    rows = [r for r in rows if r["chosen"] and r["rejected"]]
    return rows[:max_samples] if max_samples else rows


def _as_turns(value: Any, role: str) -> list[dict[str, str]]:
    """A conversational list as is; a plain string becomes one turn of ``role``."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": turn["role"], "content": turn["content"]} for turn in value or []]
