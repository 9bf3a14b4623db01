"""One preference pair as a row in TRL's conversational preference format, plus the released columns.

TRL's ``DPOTrainer`` reads ``prompt`` (the conversation before the answer), ``chosen`` and
``rejected`` (each the assistant turn) as message lists; the prompt follows MediPhi-Instruct's
layout (system = the task instruction, user = the document). The released MediFlow DPO split's own
columns ride along (``instruction``, ``input``, ``output`` = the chosen answer, ``rejected_output``,
``error_type``, ``task_type``, ``input_data``, ...) so the pairs can be mixed with it, with where
each side came from and the judge's scores for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from mediflow.records import CASE_TYPE, JUDGE_SCORE_COLUMNS, MESSAGE_TYPE, RELEASED_COLUMNS, to_messages

MESSAGES = pa.list_(MESSAGE_TYPE)

#: What ``mediflow pairs`` writes: TRL's three columns first, then provenance and released columns.
PAIR_SCHEMA = pa.schema(
    [
        pa.field("prompt", MESSAGES),
        pa.field("chosen", MESSAGES),
        pa.field("rejected", MESSAGES),
        pa.field("id", pa.string(), nullable=False),  # the source record's id
        *(pa.field(name, pa.string()) for name in RELEASED_COLUMNS),
        pa.field("rejected_output", pa.string()),
        pa.field("error_type", pa.string()),
        pa.field("error_description", pa.string()),
        pa.field("chosen_score", pa.float64()),
        pa.field("rejected_score", pa.float64()),
        pa.field("chosen_source", pa.string()),
        pa.field("rejected_source", pa.string()),
        pa.field("method", pa.string()),
        pa.field("document_id", pa.string()),
        pa.field("document_category", pa.string()),
        *(pa.field(name, pa.float64()) for name in JUDGE_SCORE_COLUMNS),
        pa.field("case", CASE_TYPE),  # the source record's clinical case (not in the export's dpo config)
    ]
)


def pair_row(
    record: Mapping[str, Any],
    *,
    chosen: str,
    rejected: str,
    chosen_score: float,
    rejected_score: float,
    chosen_source: str,
    rejected_source: str,
    method: str,
    error_type: str | None = None,
    error_description: str | None = None,
) -> dict[str, Any]:
    """The output row for one kept pair of ``record`` (a source record as a dict)."""
    prompt = to_messages(record["instruction"], record["input"])
    row: dict[str, Any] = {name: record.get(name) for name in PAIR_SCHEMA.names}
    row.update(
        prompt=prompt,
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        output=chosen,
        rejected_output=rejected,
        error_type=error_type,
        error_description=error_description,
        chosen_score=float(chosen_score),
        rejected_score=float(rejected_score),
        chosen_source=chosen_source,
        rejected_source=rejected_source,
        method=method,
    )
    return row
