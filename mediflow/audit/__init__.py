"""Audit a MediFlow output folder before anyone trains on it: checks, plots, one HTML report.

Each check takes an :class:`OutputFolder` and returns a :class:`CheckResult` (tables, headline
numbers, a matplotlib figure where plotted); :func:`run_audit` runs them all and
:func:`write_html` writes the self-contained report that ``mediflow audit IN --html FILE`` produces.
The notebook ``examples/audit.ipynb`` calls the same functions one section at a time.
"""

from __future__ import annotations

from mediflow.audit.case_mix import case_mix
from mediflow.audit.case_panels import document_type_cases, drugs_by_condition, rule_violations, sex_by_condition
from mediflow.audit.coverage import coverage
from mediflow.audit.diversity import text_diversity
from mediflow.audit.duplicates import near_duplicates
from mediflow.audit.folder import OutputFolder
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

__all__ = [
    "AuditReport",
    "CheckResult",
    "OutputFolder",
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
