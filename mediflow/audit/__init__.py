"""Audit a MediFlow output folder before anyone trains on it: checks, plots, one HTML report.

Each check takes an :class:`AuditFolder` and returns a :class:`CheckResult` (tables, headline
numbers, a matplotlib figure where plotted); :func:`run_audit` runs them all and
:func:`write_html` writes the self-contained report that ``mediflow audit IN --html FILE`` produces.
The notebook ``examples/audit.ipynb`` calls the same functions one section at a time. matplotlib is
loaded when the first figure is drawn, so importing this package (the CLI's flags) stays light.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from mediflow.audit.case_mix import case_mix
from mediflow.audit.case_panels import document_type_cases, drugs_by_condition, rule_violations, sex_by_condition
from mediflow.audit.config import AuditConfig
from mediflow.audit.coverage import coverage
from mediflow.audit.diversity import text_diversity
from mediflow.audit.duplicates import near_duplicates
from mediflow.audit.folder import AuditFolder
from mediflow.audit.funnel import funnel
from mediflow.audit.html_report import render_html, write_html
from mediflow.audit.icd_codes import icd_codes
from mediflow.audit.json_validity import json_validity
from mediflow.audit.judge_scores import judge_scores
from mediflow.audit.lengths import lengths
from mediflow.audit.ngrams import ngrams
from mediflow.audit.plan import planned_cells, run_config
from mediflow.audit.report import (
    AuditReport,
    case_mix_with_plan,
    coverage_with_plan,
    icd_codes_with_terminology,
    json_validity_with_taxonomy,
    load_taxonomy_or_none,
    run_audit,
)
from mediflow.audit.result import CheckResult
from mediflow.audit.samples import sample_cells, samples
from mediflow.audit.stage import audit

__all__ = [
    "AuditConfig",
    "audit",
    "AuditReport",
    "CheckResult",
    "AuditFolder",
    "case_mix",
    "case_mix_with_plan",
    "coverage",
    "coverage_with_plan",
    "document_type_cases",
    "drugs_by_condition",
    "funnel",
    "icd_codes",
    "icd_codes_with_terminology",
    "json_validity",
    "json_validity_with_taxonomy",
    "judge_scores",
    "lengths",
    "load_taxonomy_or_none",
    "near_duplicates",
    "ngrams",
    "planned_cells",
    "render_html",
    "rule_violations",
    "run_audit",
    "run_config",
    "sample_cells",
    "sex_by_condition",
    "text_diversity",
    "samples",
    "write_html",
]


class _AuditPackage(ModuleType):
    """``mediflow.audit`` is this package and the audit stage at once: ``from mediflow import audit`` then
    ``audit("runs/a", "audit.html", "audit.yaml")`` runs every check (:func:`mediflow.audit.stage.audit`),
    and ``audit.coverage(folder)`` is still one check (``examples/audit.ipynb`` calls them one by one).
    The stage shares the package's name, which the import system binds to the package."""

    def __call__(self, input: str | Path, out: str | Path | None = None, config: Any = None, **overrides: Any) -> AuditReport:
        return audit(input, out, config, **overrides)


sys.modules[__name__].__class__ = _AuditPackage
