"""A small `generate` run config against the test teacher, shared by the tests that need real records.

The cells are picked from the taxonomy (tasks given, or its first two; document types they all
share), never hard-coded, so the tests follow the taxonomy when it grows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mediflow.taxonomy import load_taxonomy

TEST_TEACHER = "openai:mediflow-test-teacher"


def small_run_config(base_url: str | None, out: Path, *, tasks: list[str] | None = None, document_types: int = 2, **extra: Any) -> dict[str, Any]:
    """Tasks x ``document_types`` shared document types x the easiest difficulty, 2 records a cell, half JSON."""
    taxonomy = load_taxonomy()
    tasks = tasks or list(taxonomy.tasks)[:2]
    shared = [d for d in taxonomy.document_types_for(tasks[0]) if all(d in taxonomy.document_types_for(t) for t in tasks)]
    easiest = min(taxonomy.difficulty_levels, key=lambda level: level.rank).name
    config: dict[str, Any] = {
        "teacher": {"spec": TEST_TEACHER, "base_url": str(base_url) if base_url else None},
        "tasks": tasks,
        "document_types": shared[:document_types],
        "difficulty_levels": [easiest],
        "per_cell": 2,
        "json_share": 0.5,
        "progress": False,
        "output": {"dir": str(out)},
    }
    config.update(extra)
    return config
