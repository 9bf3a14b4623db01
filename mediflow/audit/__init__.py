"""Audit a MediFlow output folder before anyone trains on it: checks, plots, one HTML report.

Each check takes an :class:`AuditFolder` and returns a :class:`CheckResult` (tables, headline
numbers, a matplotlib figure where plotted); :func:`run_audit` runs them all and
:func:`write_html` writes the self-contained report that ``mediflow audit IN --html FILE`` produces.
The notebook ``examples/audit.ipynb`` calls the same functions one section at a time.

The checks are imported on first use, and matplotlib when the first figure is drawn, so importing
this package (the CLI reads :class:`AuditConfig` for its flags) stays light.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mediflow.audit.config import AuditConfig

if TYPE_CHECKING:
    from mediflow.audit.case_mix import case_mix
    from mediflow.audit.case_panels import document_type_cases, drugs_by_condition, rule_violations, sex_by_condition
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

#: Every public name but the config, and the module it lives in (imported on first use).
_HOME = {
    "AuditFolder": "folder",
    "AuditReport": "report",
    "CheckResult": "result",
    "audit": "stage",
    "case_mix": "case_mix",
    "case_mix_with_plan": "report",
    "coverage": "coverage",
    "coverage_with_plan": "report",
    "document_type_cases": "case_panels",
    "drugs_by_condition": "case_panels",
    "funnel": "funnel",
    "icd_codes": "icd_codes",
    "icd_codes_with_terminology": "report",
    "json_validity": "json_validity",
    "json_validity_with_taxonomy": "report",
    "judge_scores": "judge_scores",
    "lengths": "lengths",
    "load_taxonomy_or_none": "report",
    "near_duplicates": "duplicates",
    "ngrams": "ngrams",
    "planned_cells": "plan",
    "render_html": "html_report",
    "rule_violations": "case_panels",
    "run_audit": "report",
    "run_config": "plan",
    "sample_cells": "samples",
    "samples": "samples",
    "sex_by_condition": "case_panels",
    "text_diversity": "diversity",
    "write_html": "html_report",
}

__all__ = [
    "AuditConfig",
    "AuditFolder",
    "AuditReport",
    "CheckResult",
    "audit",
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
    "samples",
    "sex_by_condition",
    "text_diversity",
    "write_html",
]


class _OnFirstUse:
    """A name of the package, imported from its module on first use.

    A data descriptor on the package's class, so it wins over the package's own attributes: the
    import system binds each submodule it loads to the package attribute of the same name
    (``coverage.py`` -> ``mediflow.audit.coverage``), and the check called ``coverage`` must stay the check.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, package: object, owner: type | None = None) -> Any:
        return getattr(import_module(f"{__name__}.{_HOME[self.name]}"), self.name)

    def __set__(self, package: object, value: object) -> None:
        if not isinstance(value, ModuleType):  # the import system's binding of a submodule: the module stays in sys.modules
            raise AttributeError(f"mediflow.audit.{self.name} is read-only")


class _AuditPackage(ModuleType):
    """``mediflow.audit`` is this package and the audit stage at once: ``from mediflow import audit`` then
    ``audit("runs/a", "audit.html", "audit.yaml")`` runs every check (:func:`mediflow.audit.stage.audit`),
    and ``audit.coverage(folder)`` is still one check (``examples/audit.ipynb`` calls them one by one).
    The stage shares the package's name, which the import system binds to the package."""

    def __call__(self, input: str | Path, out: str | Path | None = None, config: Any = None, **overrides: Any) -> AuditReport:
        return self.audit(input, out, config, **overrides)  # type: ignore[no-any-return]

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *__all__})


for _name in _HOME:
    setattr(_AuditPackage, _name, _OnFirstUse(_name))
sys.modules[__name__].__class__ = _AuditPackage
