"""Judge-score distributions per task (after a judge stage; otherwise "not available").

The reference set keeps a high-quality subset by a heuristic on the judge's five scores; a task
whose scores sit far below the others, or whose judge spread (disagreement between the
self-consistency samples) is high, needs a look before anyone trains on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from mediflow.audit.folder import JUDGE_COLUMNS, AuditFolder
from mediflow.audit.plots import bounded, new_figure
from mediflow.audit.result import CheckResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "Judge scores per task"


def judge_scores(folder: AuditFolder) -> CheckResult:
    """Mean, median and count of every judge column per task, with one box plot per criterion."""
    present = [c for c in JUDGE_COLUMNS if folder.has_values(c)]
    if not present:
        return CheckResult.not_available("judge_scores", TITLE, "no judge columns (run `mediflow judge` first)")
    frame = folder.frame
    judged = frame[frame[present].notna().any(axis=1)]
    grouped = judged.groupby("task_type")
    means = grouped[present].mean().add_suffix(" mean")
    medians = grouped[present].median().add_suffix(" median")
    table = pd.concat([grouped.size().rename("judged"), means, medians], axis=1).reset_index()
    overall = {column: float(judged[column].mean()) for column in present}
    summary = f"{len(judged)} of {len(frame)} records judged; mean " + ", ".join(f"{c} {v:.2f}" for c, v in overall.items())
    return CheckResult(
        key="judge_scores",
        title=TITLE,
        summary=summary,
        numbers={"judged": int(len(judged)), "mean": overall},
        tables={"Judge scores per task": table},
        figure=_boxplots(judged, present),
    )


def _boxplots(judged: pd.DataFrame, columns: list[str]) -> Figure:
    tasks = sorted(judged["task_type"].unique())
    n_cols = min(3, len(columns))
    n_rows = -(-len(columns) // n_cols)
    figure = new_figure(bounded(0.4 * len(tasks) * n_cols, 8, 20), 3.6 * n_rows)
    for position, column in enumerate(columns, start=1):
        axes = figure.add_subplot(n_rows, n_cols, position)
        data = [judged.loc[judged["task_type"] == task, column].dropna().to_numpy() for task in tasks]
        axes.boxplot(data, flierprops={"markersize": 2})
        axes.set_xticks(range(1, len(tasks) + 1), tasks, rotation=90, fontsize=6)
        axes.set_title(column)
    return figure
