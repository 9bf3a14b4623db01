"""Coverage: records per (task, document type) cell against the run's plan.

A synthetic set is stratified on purpose; a cell the plan asked for that came back empty (every
record failed, or the run stopped early) silently skews it. The heatmap shows every cell's count,
marks planned-but-empty cells in red and greys out cells the plan never asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mediflow.audit.folder import AuditFolder
from mediflow.audit.plots import bounded, new_figure
from mediflow.audit.result import CheckResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "Coverage: tasks x document types"
CELL = ["task_type", "input_data"]


def coverage(folder: AuditFolder, planned: pd.DataFrame | None) -> CheckResult:
    """Records per cell, joined with ``planned`` (columns task_type, input_data, planned; None: no plan known)."""
    frame = folder.frame
    counts = frame.groupby(CELL, dropna=False).size().rename("records").reset_index()
    if planned is None:
        cells = counts.assign(planned=np.nan, in_plan=False)
    else:
        cells = planned[[*CELL, "planned"]].merge(counts, on=CELL, how="outer", indicator=True)
        cells["in_plan"] = cells.pop("_merge") != "right_only"
    cells["records"] = cells["records"].fillna(0).astype(int)
    cells["status"] = [_status(*row, have_plan=planned is not None) for row in zip(cells["in_plan"], cells["planned"], cells["records"])]
    cells = cells.sort_values(CELL).reset_index(drop=True)

    n_planned = int((cells["status"] != "not planned").sum()) if planned is not None else None
    empty = cells[cells["status"] == "planned, empty"][[*CELL, "planned"]].reset_index(drop=True)
    below = cells[cells["status"] == "below plan"][[*CELL, "planned", "records"]].reset_index(drop=True)
    unplanned = cells[cells["status"] == "not planned"][[*CELL, "records"]].reset_index(drop=True)
    numbers = {
        "records": int(len(frame)),
        "cells_with_records": int((cells["records"] > 0).sum()),
        "planned_cells": n_planned,
        "planned_empty_cells": int(len(empty)),
        "cells_below_plan": int(len(below)),
        "unplanned_cells": int(len(unplanned)) if planned is not None else None,
    }
    if planned is None:
        summary = f"{numbers['cells_with_records']} cells have records; no plan found (manifest or taxonomy)"
    else:
        summary = f"{numbers['cells_with_records']} of {n_planned} planned cells have records; {len(empty)} planned cells are empty, {len(below)} below plan, {len(unplanned)} not in the plan"
    tables = {"Records per task": _per_task(cells), "Planned cells with no record": empty}
    if len(below):
        tables["Cells below plan"] = below
    if len(unplanned):
        tables["Cells not in the plan"] = unplanned
    return CheckResult(
        key="coverage",
        title=TITLE,
        summary=summary,
        numbers=numbers,
        tables=tables,
        figure=_heatmap(cells),
    )


def _status(in_plan: bool, planned: float, records: int, *, have_plan: bool) -> str:
    """ok / planned, empty / below plan / not planned (``planned`` is NaN when only the cell is known)."""
    if not have_plan:
        return "present"
    if not in_plan:
        return "not planned"
    if records == 0:
        return "planned, empty"
    return "below plan" if pd.notna(planned) and records < planned else "ok"


def _per_task(cells: pd.DataFrame) -> pd.DataFrame:
    grouped = cells.groupby("task_type", dropna=False)
    return pd.DataFrame(
        {
            "records": grouped["records"].sum(),
            "document_types_with_records": grouped["records"].apply(lambda r: int((r > 0).sum())),
            "planned_cells": grouped["status"].apply(lambda s: int((s != "not planned").sum())),
            "planned_empty_cells": grouped["status"].apply(lambda s: int((s == "planned, empty").sum())),
        }
    ).reset_index()


def _heatmap(cells: pd.DataFrame) -> Figure:
    from matplotlib.colors import LogNorm

    records = cells.pivot(index="task_type", columns="input_data", values="records")
    status = cells.pivot(index="task_type", columns="input_data", values="status")
    n_rows, n_cols = records.shape
    figure = new_figure(bounded(0.16 * n_cols + 3, 6, 24), bounded(0.35 * n_rows + 2, 3, 10))
    axes = figure.add_subplot()
    values = records.to_numpy(dtype=float)
    shown = np.ma.masked_where(np.isnan(values) | (values <= 0), values)
    axes.set_facecolor("#eeeeee")  # cells outside the plan / with no records stay grey
    vmax = max(1.0, float(np.nanmax(values)) if values.size else 1.0)
    norm = LogNorm(vmin=1, vmax=vmax) if vmax > 20 else None  # log only when counts span orders of magnitude
    image = axes.imshow(shown, aspect="auto", cmap="viridis", norm=norm, vmin=None if norm else 0, vmax=None if norm else vmax)
    rows, cols = np.nonzero(status.to_numpy() == "planned, empty")
    axes.scatter(cols, rows, marker="s", s=18, color="red", label="planned, empty")
    axes.set_xticks(range(n_cols), records.columns, rotation=90, fontsize=5 if n_cols > 40 else 7)
    axes.set_yticks(range(n_rows), records.index, fontsize=7)
    axes.set_xlabel("document type (input_data)")
    axes.set_ylabel("task")
    if len(rows):
        axes.legend(loc="upper right", fontsize=7)
    figure.colorbar(image, ax=axes, label="records", shrink=0.8)
    return figure
