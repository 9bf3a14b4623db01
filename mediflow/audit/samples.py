"""The sample viewer: read actual records of a (task, document type) cell.

Numbers say where to look; only reading records says whether they are good. :func:`samples`
returns the records of one cell for the notebook; :func:`sample_cells` puts one record from each
of a spread of cells into the report, texts cut to a readable length.
"""

from __future__ import annotations

import pandas as pd

from mediflow.audit.folder import JUDGE_COLUMNS, TEXT_COLUMNS, AuditFolder
from mediflow.audit.result import CheckResult
from mediflow.errors import MediflowError

TITLE = "Sample records per cell"
VIEW_COLUMNS: tuple[str, ...] = ("id", "task_type", "input_data", "difficulty_level", "output_format", *TEXT_COLUMNS)
#: Characters of each text shown in the report (the notebook's :func:`samples` shows them whole).
REPORT_TEXT_CHARS = 600


def samples(folder: AuditFolder, task: str, document_type: str, n: int = 3) -> pd.DataFrame:
    """Up to ``n`` records of the cell (``task``, ``document_type``), whole texts, judge scores when present."""
    frame = folder.frame
    in_cell = (frame["task_type"] == task) & (frame["input_data"] == document_type)
    if not in_cell.any():
        known = sorted(set(frame["task_type"]))
        raise MediflowError(f"no record for task '{task}' x document type '{document_type}' in {folder.path} (tasks present: {', '.join(known)})")
    wanted = frame.index[in_cell][:n].to_numpy()  # positions: records need not carry an id
    columns = [*VIEW_COLUMNS, *(c for c in JUDGE_COLUMNS if folder.has_values(c))]
    found, offset = [], 0
    for batch in folder.iter_batches(columns):
        local = wanted[(wanted >= offset) & (wanted < offset + len(batch))] - offset
        found.append(batch.iloc[local])
        offset += len(batch)
        if offset > wanted[-1]:
            break
    return pd.concat(found, ignore_index=True)


def sample_cells(folder: AuditFolder, max_cells: int = 12) -> CheckResult:
    """One record from each of up to ``max_cells`` cells spread over the sorted cell list."""
    cells = folder.frame.groupby(["task_type", "input_data"]).size().reset_index()
    step = max(1, -(-len(cells) // max_cells))
    chosen = cells.iloc[::step].head(max_cells)
    rows = [samples(folder, task, doc, n=1) for task, doc in zip(chosen["task_type"], chosen["input_data"])]
    table = pd.concat(rows, ignore_index=True)
    for column in TEXT_COLUMNS:
        table[column] = table[column].fillna("").str.slice(0, REPORT_TEXT_CHARS)
    return CheckResult(
        key="samples",
        title=TITLE,
        summary=f"one record from each of {len(table)} of {len(cells)} cells (texts cut to {REPORT_TEXT_CHARS} characters; use mediflow.audit.samples() for whole records)",
        numbers={"cells_shown": int(len(table)), "cells": int(len(cells))},
        tables={"Samples": table},
    )
