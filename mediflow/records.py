"""The Arrow schema of a MediFlow record, stable ids and the ``messages`` view.

Our columns are a superset of the released MediFlow dataset's (``instruction``, ``input``,
``output``, ``task_type``, ``input_data``, ``output_format``, ``difficulty_level``, the five judge
scores, ``rejected_output``, ``error_type``) so that our output and the released set can be mixed
with ``datasets.concatenate_datasets``. Later stages add their columns (judge, DPO) as nullable
fields; :func:`conform` brings any table to the full schema.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
USAGE_TYPE = pa.struct(
    [
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
    ]
)

#: Columns of the released MediFlow set, in its order.
RELEASED_COLUMNS: tuple[str, ...] = (
    "instruction",
    "input",
    "output",
    "task_type",
    "input_data",
    "output_format",
    "difficulty_level",
)

#: The judge's five criteria (released column names), each a score on the rubric's scale.
JUDGE_SCORE_COLUMNS: tuple[str, ...] = ("quality", "alignment", "coherence", "realism", "difficulty")

#: The clinical case behind a record's document (:class:`mediflow.cases.Case`): kept through every
#: stage and in the export's ``records`` config, never in the model-facing ``sft``/``dpo`` columns.
#: ``name`` (the condition's clinical name), ``medications`` (each drug with the code it treats and
#: its role), ``population`` (population-level documents: then ``age``/``sex``/``acuity`` are null)
#: and ``age_months`` (under 2 years) were added later: older files read back with them null.
CONDITION_TYPE = pa.struct([("code", pa.string()), ("description", pa.string()), ("role", pa.string()), ("name", pa.string())])
MEDICATION_TYPE = pa.struct([("name", pa.string()), ("indication", pa.string()), ("role", pa.string()), ("why", pa.string())])
CASE_TYPE = pa.struct(
    [
        ("profile", pa.string()),
        ("age", pa.int32()),
        ("sex", pa.string()),
        ("setting", pa.string()),
        ("acuity", pa.string()),
        ("conditions", pa.list_(CONDITION_TYPE)),
        ("drugs", pa.list_(pa.string())),
        ("medications", pa.list_(MEDICATION_TYPE)),
        ("population", pa.string()),
        ("age_months", pa.int32()),
    ]
)

GENERATION_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("instruction", pa.string()),
    pa.field("input", pa.string()),
    pa.field("output", pa.string()),
    pa.field("task_type", pa.string()),
    pa.field("input_data", pa.string()),
    pa.field("output_format", pa.string()),
    pa.field("difficulty_level", pa.string()),
    pa.field("document_category", pa.string()),
    pa.field("instruction_id", pa.string()),
    pa.field("document_id", pa.string()),
    pa.field("messages", pa.list_(MESSAGE_TYPE)),
    pa.field("teacher", pa.string()),
    pa.field("prompt_version", pa.string()),
    pa.field("usage", USAGE_TYPE),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
    pa.field("case", CASE_TYPE),
]

JUDGE_FIELDS: list[pa.Field] = [pa.field(name, pa.float64()) for name in JUDGE_SCORE_COLUMNS] + [
    pa.field("judge_spread", pa.float64()),
    pa.field("judge_rationale", pa.string()),
]

DPO_FIELDS: list[pa.Field] = [
    pa.field("rejected_output", pa.string()),
    pa.field("error_type", pa.string()),
]

#: What ``mediflow generate`` writes.
GENERATION_SCHEMA = pa.schema(GENERATION_FIELDS)
#: Every column a record can carry after all stages.
FULL_SCHEMA = pa.schema(GENERATION_FIELDS + JUDGE_FIELDS + DPO_FIELDS)


def canonical_json(value: Any) -> str:
    """Sorted-key, separator-stable JSON: the one serialisation we hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_id(*parts: Any, length: int = 16) -> str:
    """A stable id from content (SHA-256 of the canonical JSON of ``parts``), hex, ``length`` long."""
    return hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()[:length]


def record_id(instruction: str, document: str, output: str, task_type: str, output_format: str) -> str:
    """A record's id: derived from its content, so the same record always gets the same id."""
    return content_id(task_type, output_format, instruction, document, output)


def to_messages(instruction: str, document: str, output: str | None = None) -> list[dict[str, str]]:
    """The MediPhi-Instruct conversational layout: system = instruction, user = document, assistant = output."""
    messages = [
        {"role": "system", "content": instruction},
        {"role": "user", "content": document},
    ]
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def conform(table: pa.Table, schema: pa.Schema = FULL_SCHEMA) -> pa.Table:
    """Add any missing column of ``schema`` as nulls, order columns like ``schema``, keep extras last."""
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for field in schema:
        if field.name in table.column_names:
            columns[field.name] = table.column(field.name).cast(field.type)
        else:
            columns[field.name] = pa.nulls(table.num_rows, type=field.type)
    for name in table.column_names:
        if name not in columns:
            columns[name] = table.column(name)
    return pa.table(columns)


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema = GENERATION_SCHEMA) -> pa.Table:
    """Build a table in ``schema`` from row dicts (missing keys become nulls)."""
    return pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema} for row in rows], schema=schema)
