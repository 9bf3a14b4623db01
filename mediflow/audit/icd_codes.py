"""ICD-10-CM code validity in coding-task outputs: real codes, and billable ones.

A teacher LLM invents plausible codes, and often answers with a category (``N18.3``) where only
its children are billable. Codes are taken from the coding tasks' outputs (JSON: every string
value shaped like a code; plain text: every code-shaped token) and looked up in the real
ICD-10-CM table through :mod:`mediflow.terminology`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd

from mediflow.audit.folder import AuditFolder
from mediflow.audit.plots import bounded, new_figure
from mediflow.audit.result import CheckResult
from mediflow.audit.text import json_strings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "ICD-10-CM code validity"
#: The shape of an ICD-10-CM code in dotted or undotted form (letter, digit, alphanumeric, up to 4 more).
CODE_SHAPE = re.compile(r"[A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?")
#: In running text only the dotted form (or a bare 3-character category such as I10) counts as a code:
#: undotted longer tokens are too often abbreviations (T2DM, A1C).
_CODE_TOKEN = re.compile(r"(?<![A-Za-z0-9.])([A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?)(?![A-Za-z0-9]|\.[0-9A-Za-z])")
#: Invalid / non-billable codes listed in the report.
MAX_LISTED = 30


def icd_codes(
    folder: AuditFolder,
    coding_tasks: Iterable[str],
    is_valid: Callable[[str], bool],
    is_billable: Callable[[str], bool],
) -> CheckResult:
    """Count the codes in ``coding_tasks``' outputs that are valid and billable ICD-10-CM codes."""
    tasks = set(coding_tasks)
    if not tasks:
        return CheckResult.not_available("icd_codes", TITLE, "no coding task (output schema mentioning ICD-10) in the taxonomy")
    per_task: dict[str, Counter[str]] = {}
    codes: Counter[str] = Counter()
    for batch in folder.iter_batches(["task_type", "output_format", "output"]):
        for record in batch[batch["task_type"].isin(tasks)].itertuples(index=False):
            tally = per_task.setdefault(str(record.task_type), Counter())
            tally["records"] += 1
            found = list(codes_in(record.output, record.output_format))
            tally["records_with_codes"] += bool(found)
            codes.update(found)
            for code in found:
                valid = is_valid(code)
                tally["codes"] += 1
                tally["valid"] += valid
                tally["billable"] += valid and is_billable(code)
    if not per_task:
        return CheckResult.not_available("icd_codes", TITLE, f"no record of the coding tasks ({', '.join(sorted(tasks))})")
    table = pd.DataFrame([{"task_type": task, **tally} for task, tally in sorted(per_task.items())])
    table = table.reindex(columns=["task_type", "records", "records_with_codes", "codes", "valid", "billable"], fill_value=0)
    table["valid_share"] = (table["valid"] / table["codes"]).where(table["codes"] > 0)
    table["billable_share"] = (table["billable"] / table["codes"]).where(table["codes"] > 0)
    invalid = _listed(codes, lambda c: not is_valid(c), "invalid (not an ICD-10-CM code)")
    not_billable = _listed(codes, lambda c: is_valid(c) and not is_billable(c), "valid but not billable (a category)")
    total = {key: int(table[key].sum()) for key in ("records", "codes", "valid", "billable")}

    def share(count: int) -> str:
        return f"{count / total['codes']:.1%}" if total["codes"] else "n/a"

    summary = f"{total['codes']} codes in {total['records']} coding records: {share(total['valid'])} valid, {share(total['billable'])} billable; {total['codes'] - total['valid']} invalid"
    tables = {"Codes per task": table, "Codes that need a look": pd.concat([invalid, not_billable], ignore_index=True)}
    return CheckResult(
        key="icd_codes",
        title=TITLE,
        summary=summary,
        numbers={**total, "invalid": total["codes"] - total["valid"], "distinct_codes": len(codes)},
        tables=tables,
        figure=_plot(table) if total["codes"] else None,
    )


def codes_in(output: Any, output_format: Any) -> Iterator[str]:
    """Code-shaped strings of one output: JSON string values that are a code, or code tokens of plain text."""
    if not isinstance(output, str):
        return
    if output_format == "json":
        try:
            value = json.loads(output)
        except json.JSONDecodeError:
            value = None  # unparseable JSON is the JSON check's business; read it as text here
        if value is not None:
            yield from (s.strip() for s in json_strings(value) if CODE_SHAPE.fullmatch(s.strip()))
            return
    yield from (m.group(1) for m in _CODE_TOKEN.finditer(output))


def _listed(codes: Counter[str], keep: Callable[[str], bool], problem: str) -> pd.DataFrame:
    rows = [{"code": c, "occurrences": n, "problem": problem} for c, n in codes.most_common() if keep(c)]
    return pd.DataFrame(rows[:MAX_LISTED], columns=["code", "occurrences", "problem"])


def _plot(table: pd.DataFrame) -> Figure:
    figure = new_figure(7, bounded(0.4 * len(table) + 1.5, 2.5, 6))
    axes = figure.add_subplot()
    tasks = list(table["task_type"])
    billable = table["billable"]
    category = table["valid"] - table["billable"]
    invalid = table["codes"] - table["valid"]
    axes.barh(tasks, billable, color="#27ae60", label="billable")
    axes.barh(tasks, category, left=billable, color="#e67e22", label="valid, not billable")
    axes.barh(tasks, invalid, left=billable + category, color="#c0392b", label="invalid")
    axes.invert_yaxis()
    axes.set_xlabel("codes found in outputs")
    axes.legend(fontsize=7)
    return figure
