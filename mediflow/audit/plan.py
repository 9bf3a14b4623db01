"""What the run meant to produce: planned records per (task, document type) cell.

The best source is the run's own plan, rebuilt from the config in its manifest with the same
:func:`mediflow.pipeline.plan.build_plan` that ``generate`` used (exact, even for a run stopped
halfway). Failing that, the manifest's per-cell counts (records + rejects of finished shards), and
failing that, the taxonomy's compatible cells for the tasks the folder holds (planned, count
unknown). A stage's output (a curated folder) has no plan of its own: its manifest names the folder
it read, and the plan is taken from there.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, TypeGuard

import pandas as pd

from mediflow.audit.folder import AuditFolder
from mediflow.config import load_config
from mediflow.errors import MediflowError
from mediflow.pipeline.plan import build_plan
from mediflow.taxonomy import Taxonomy, load_taxonomy

CELL = ["task_type", "input_data"]


def planned_cells(folder: AuditFolder, taxonomy: Taxonomy | None) -> tuple[pd.DataFrame | None, str]:
    """Planned records per cell (columns task_type, input_data, planned) and where that came from.

    The folder's own manifest is read first, then those of the folders it was made from (a curated
    folder is checked against the plan of the run it curated: cells the curation emptied show up).
    """
    lineage = folder.lineage()
    for path, manifest in lineage:
        config = manifest.get("config")
        if _is_run_config(config) and taxonomy is not None:
            try:
                return _from_config(config, taxonomy), f"the run's plan (rebuilt from the config in {_where(folder, path)})"
            except (MediflowError, ImportError, KeyError, TypeError, ValueError):
                pass  # a config from another version: look further back
    for path, manifest in lineage:
        counts = manifest.get("counts")
        cells = counts.get("cells") if isinstance(counts, dict) else None
        if isinstance(cells, dict) and cells:
            return _from_cell_counts(cells), f"the per-cell counts of finished shards in {_where(folder, path)}"
    if taxonomy is not None:
        present = set(folder.frame["task_type"])
        cells = [(task, doc) for task, doc in taxonomy.cells() if task in present]
        frame = pd.DataFrame(cells, columns=CELL).assign(planned=float("nan"))
        return frame, "the taxonomy's compatible cells of the tasks present"
    return None, "no manifest plan and no taxonomy"


def run_config(folder: AuditFolder) -> dict[str, Any]:
    """The ``generate`` config behind the folder (its own manifest's, or its source run's); {} when none."""
    for _, manifest in folder.lineage():
        config = manifest.get("config")
        if _is_run_config(config):
            return config
    return {}


def _is_run_config(config: Any) -> TypeGuard[dict[str, Any]]:
    """A ``generate`` config (its manifest always lists ``tasks``, null for all); a stage's config has none."""
    return isinstance(config, dict) and "tasks" in config


def _where(folder: AuditFolder, path: Path) -> str:
    return "the manifest" if path == folder.path else f"the manifest of its source {path}"


def _from_config(config: dict[str, Any], taxonomy: Taxonomy) -> pd.DataFrame:

    parsed = load_config(json.loads(json.dumps(config)))
    if parsed.taxonomy:
        taxonomy = load_taxonomy(parsed.taxonomy)
    counts: Counter[tuple[str, str]] = Counter()
    for (task, document_type, _, _), count in build_plan(parsed, taxonomy).strata().items():
        counts[(task, document_type)] += count
    return pd.DataFrame([(task, doc, n) for (task, doc), n in counts.items()], columns=[*CELL, "planned"])


def _from_cell_counts(cells: dict[str, Any]) -> pd.DataFrame:
    """Cells are named task/document_type/difficulty/format; sum records + rejects over the last two."""
    counts: Counter[tuple[str, str]] = Counter()
    for name, tally in cells.items():
        task, _, rest = str(name).partition("/")
        document_type = rest.partition("/")[0]
        if isinstance(tally, dict):
            counts[(task, document_type)] += int(tally.get("records", 0)) + int(tally.get("rejects", 0))
    return pd.DataFrame([(t, d, n) for (t, d), n in counts.items()], columns=[*CELL, "planned"])
