"""Quality stages: rule filters, LLM judge, deduplication, decontamination, and ``curate`` running them in order.

Every stage reads a MediFlow output (a folder or Parquet file) and writes one folder: kept records
in ``data/``, every drop with its stage, rule, score and reason in ``rejects.parquet``, and the
counts in ``manifest.json``. The stage functions are imported on first use, so ``import
mediflow.quality`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from mediflow.quality.config import CurateConfig, DecontamConfig, DedupConfig, EvalSet, FilterConfig, JudgeConfig

_LAZY = {
    "run_filters": "mediflow.quality.filter_stage",
    "run_judge": "mediflow.quality.judge",
    "run_judge_async": "mediflow.quality.judge",
    "run_dedup": "mediflow.quality.dedup_stage",
    "run_decontaminate": "mediflow.quality.decontaminate",
    "curate": "mediflow.quality.curation",  # not quality/curate.py: the submodule would shadow the function
    "curate_async": "mediflow.quality.curation",
}

__all__ = ["CurateConfig", "DecontamConfig", "DedupConfig", "EvalSet", "FilterConfig", "JudgeConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mediflow.quality' has no attribute {name!r}")
