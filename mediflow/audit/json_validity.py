"""JSON validity per task: does each ``output_format == "json"`` output parse, and match its task's schema?

Generation only keeps schema-valid answers, so anything failing here came from an older run, a
later edit, a changed taxonomy schema, or another tool's data mixed in: exactly what an audit is
for. Schemas are the taxonomy's task ``output_schema`` (Draft 2020-12), checked with ``jsonschema``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jsonschema
import pandas as pd

from mediflow.audit.folder import AuditFolder
from mediflow.audit.plots import bounded, new_figure
from mediflow.audit.result import CheckResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "JSON validity per task"
#: Failing records listed in the report (the counts cover all of them).
MAX_EXAMPLES = 50


def json_validity(folder: AuditFolder, schemas: Mapping[str, Mapping[str, Any]]) -> CheckResult:
    """Parse and validate every JSON-format output against ``schemas[task]`` (task name -> JSON Schema)."""
    validators = {task: jsonschema.Draft202012Validator(schema) for task, schema in schemas.items()}
    counts: dict[str, dict[str, int]] = {}
    examples: list[dict[str, str]] = []
    for batch in folder.iter_batches(["id", "task_type", "output_format", "output"]):
        for record in batch[batch["output_format"] == "json"].itertuples(index=False):
            task = record.task_type if isinstance(record.task_type, str) else "(missing)"
            tally = counts.setdefault(task, {"json_records": 0, "parses": 0, "schema_valid": 0, "no_schema": 0})
            tally["json_records"] += 1
            problem = _problem(record.output, validators.get(task), tally)
            if problem and len(examples) < MAX_EXAMPLES:
                examples.append({"id": str(record.id), "task_type": task, "problem": problem})
    if not counts:
        return CheckResult.not_available("json_validity", TITLE, "no record with output_format == json")
    table = pd.DataFrame([{"task_type": task, **tally} for task, tally in sorted(counts.items())])
    checked = table["json_records"] - table["no_schema"]
    table["parse_rate"] = table["parses"] / table["json_records"]
    table["valid_rate"] = (table["schema_valid"] / checked).where(checked > 0)
    total = {key: int(table[key].sum()) for key in ("json_records", "parses", "schema_valid", "no_schema")}
    summary = f"{total['json_records']} JSON outputs: {total['json_records'] - total['parses']} do not parse, {total['parses'] - total['schema_valid'] - total['no_schema']} parse but fail their task schema"
    if total["no_schema"]:
        summary += f", {total['no_schema']} have no schema in the taxonomy"
    tables = {"JSON validity per task": table}
    if examples:
        tables["Failing records"] = pd.DataFrame(examples)
    return CheckResult(
        key="json_validity",
        title=TITLE,
        summary=summary,
        numbers={**total, "invalid": total["json_records"] - total["schema_valid"] - total["no_schema"]},
        tables=tables,
        figure=_plot(table),
    )


def _problem(output: Any, validator: jsonschema.protocols.Validator | None, tally: dict[str, int]) -> str | None:
    """Count one output into ``tally``; return why it fails, or None when it passes."""
    try:
        value = json.loads(output) if isinstance(output, str) else None
    except json.JSONDecodeError as exc:
        return f"does not parse: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    if value is None and not isinstance(output, str):
        return "empty output"
    tally["parses"] += 1
    if validator is None:
        tally["no_schema"] += 1
        return "no schema for this task in the taxonomy"
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"schema: {where}: {error.message[:200]}"
    tally["schema_valid"] += 1
    return None


def _plot(table: pd.DataFrame) -> Figure:
    figure = new_figure(8, bounded(0.35 * len(table) + 1.5, 2.5, 8))
    axes = figure.add_subplot()
    tasks = list(table["task_type"])
    valid = table["schema_valid"]
    schema_fail = table["parses"] - table["schema_valid"] - table["no_schema"]
    unparsable = table["json_records"] - table["parses"]
    axes.barh(tasks, valid, color="#27ae60", label="valid")
    axes.barh(tasks, schema_fail, left=valid, color="#e67e22", label="parses, fails schema")
    axes.barh(tasks, unparsable, left=valid + schema_fail, color="#c0392b", label="does not parse")
    axes.barh(tasks, table["no_schema"], left=valid + schema_fail + unparsable, color="#999999", label="no schema")
    axes.invert_yaxis()
    axes.tick_params(axis="y", labelsize=7)
    axes.set_xlabel("JSON-format records")
    axes.legend(fontsize=7, loc="lower right")
    return figure
