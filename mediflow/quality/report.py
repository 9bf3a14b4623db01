"""Counts of what a stage kept and dropped: per rule, per task and per document type.

The report is what lets a user trust the curated set: it says, for each stage, how many records
came in, how many left, and which rule dropped how many of which task and document type. The same
:class:`StageReport` is written into each stage's ``manifest.json`` and chained into the curate
funnel.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


def _counts(table: pa.Table, column: str) -> Counter[str]:
    if column not in table.column_names or table.num_rows == 0:
        return Counter({"(none)": table.num_rows}) if table.num_rows else Counter()
    values = table.column(column).fill_null("(none)").value_counts().to_pylist()
    return Counter({entry["values"]: entry["counts"] for entry in values})


@dataclass
class StageReport:
    """What one stage did. ``details`` holds stage-specific figures (clusters, candidate pairs, ...)."""

    stage: str
    records_in: int = 0
    kept: int = 0
    dropped: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    in_by_task: Counter[str] = field(default_factory=Counter)
    dropped_by_task: Counter[str] = field(default_factory=Counter)
    in_by_document_type: Counter[str] = field(default_factory=Counter)
    dropped_by_document_type: Counter[str] = field(default_factory=Counter)
    details: dict[str, Any] = field(default_factory=dict)

    def count_in(self, records: pa.Table) -> None:
        self.records_in += records.num_rows
        self.in_by_task.update(_counts(records, "task_type"))
        self.in_by_document_type.update(_counts(records, "input_data"))

    def count_kept(self, records: pa.Table) -> None:
        self.kept += records.num_rows

    def count_dropped(self, rejects: pa.Table) -> None:
        self.dropped += rejects.num_rows
        self.by_rule.update(_counts(rejects, "rule"))
        self.dropped_by_task.update(_counts(rejects, "task_type"))
        self.dropped_by_document_type.update(_counts(rejects, "input_data"))

    def as_dict(self) -> dict[str, Any]:
        def table(counts_in: Counter[str], dropped: Counter[str]) -> dict[str, dict[str, int]]:
            return {name: {"in": counts_in[name], "dropped": dropped[name], "kept": counts_in[name] - dropped[name]} for name in sorted(counts_in)}

        return {
            "stage": self.stage,
            "in": self.records_in,
            "kept": self.kept,
            "dropped": self.dropped,
            "dropped_by_rule": dict(sorted(self.by_rule.items())),
            "by_task": table(self.in_by_task, self.dropped_by_task),
            "by_document_type": table(self.in_by_document_type, self.dropped_by_document_type),
            **({"details": self.details} if self.details else {}),
        }

    def summary_line(self) -> str:
        rules = ", ".join(f"{rule} {count}" for rule, count in sorted(self.by_rule.items())) or "none"
        return f"{self.stage}: {self.records_in} in, {self.kept} kept, {self.dropped} dropped ({rules})"
