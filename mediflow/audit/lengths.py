"""Length distributions of instruction, input document and output, by task.

Lengths are whitespace-separated words (tokenizer-free, so the audit needs no model): empty
outputs, truncated documents and runaway answers show up as outliers per task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from mediflow.audit.folder import TEXT_COLUMNS, AuditFolder
from mediflow.audit.plots import bounded, new_figure
from mediflow.audit.result import CheckResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "Length distributions (words) by task"


def lengths(folder: AuditFolder) -> CheckResult:
    """Per task and text column: count, min, median, 5th/95th percentile, max words; empties counted."""
    frame = folder.frame
    rows = []
    for column in TEXT_COLUMNS:
        words = frame[f"{column}_words"]
        for task, values in words.groupby(frame["task_type"]):
            present = values.dropna()
            rows.append(
                {
                    "field": column,
                    "task_type": task,
                    "records": int(len(values)),
                    "empty": int((values.fillna(0) == 0).sum()),
                    "min": _stat(present.min()),
                    "p05": _stat(present.quantile(0.05)),
                    "median": _stat(present.median()),
                    "p95": _stat(present.quantile(0.95)),
                    "max": _stat(present.max()),
                }
            )
    table = pd.DataFrame(rows)
    empty = {column: int((frame[f"{column}_words"].fillna(0) == 0).sum()) for column in TEXT_COLUMNS}
    medians = {column: _stat(frame[f"{column}_words"].median()) for column in TEXT_COLUMNS}
    summary = "median words: " + ", ".join(f"{c} {medians[c]:g}" for c in TEXT_COLUMNS) + "; empty: " + ", ".join(f"{c} {empty[c]}" for c in TEXT_COLUMNS)
    return CheckResult(
        key="lengths",
        title=TITLE,
        summary=summary,
        numbers={"median_words": medians, "empty": empty},
        tables={"Words per field and task": table},
        figure=_boxplots(frame),
    )


def _stat(value: Any) -> float:
    return float(value) if pd.notna(value) else float("nan")


def _boxplots(frame: pd.DataFrame) -> Figure:
    tasks = sorted(frame["task_type"].unique())
    figure = new_figure(bounded(0.45 * len(tasks) * 3, 9, 22), 4.2)
    for position, column in enumerate(TEXT_COLUMNS, start=1):
        axes = figure.add_subplot(1, len(TEXT_COLUMNS), position)
        data = [frame.loc[frame["task_type"] == task, f"{column}_words"].dropna().to_numpy() for task in tasks]
        axes.boxplot(data, showfliers=True, flierprops={"markersize": 2})
        axes.set_xticks(range(1, len(tasks) + 1), tasks, rotation=90, fontsize=6)
        axes.set_title(column)
        axes.set_ylabel("words")
        if frame[f"{column}_words"].max() > 20 * max(1.0, frame[f"{column}_words"].median()):
            axes.set_yscale("symlog")
    return figure
