"""``run_audit``: every check on one output folder, as one :class:`AuditReport`.

The taxonomy (schemas, coding tasks, compatible cells) and the ICD-10-CM table are looked up
here, once, and handed to the checks as plain data; a check whose input is missing (no judge
columns, no rejects, no taxonomy) becomes a "not available" section rather than an error, so an
audit of any MediFlow-shaped folder always completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mediflow.audit.case_mix import case_mix
from mediflow.audit.case_panels import document_type_cases, drugs_by_condition, rule_violations, sex_by_condition
from mediflow.audit.config import AuditConfig
from mediflow.audit.coverage import coverage
from mediflow.audit.diversity import text_diversity
from mediflow.audit.duplicates import near_duplicates
from mediflow.audit.folder import AuditFolder
from mediflow.audit.funnel import funnel
from mediflow.audit.icd_codes import icd_codes
from mediflow.audit.json_validity import json_validity
from mediflow.audit.judge_scores import judge_scores
from mediflow.audit.lengths import lengths
from mediflow.audit.ngrams import ngrams
from mediflow.audit.plan import planned_cells, run_config
from mediflow.audit.result import CheckResult
from mediflow.audit.samples import sample_cells
from mediflow.errors import MediflowError
from mediflow.taxonomy import Taxonomy, load_taxonomy
from mediflow.terminology import is_billable, is_valid


@dataclass
class AuditReport:
    """The sections of one audit, in report order, with the folder they describe."""

    path: Path
    records: int
    sections: list[CheckResult]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def section(self, key: str) -> CheckResult:
        """The section named ``key`` (coverage, lengths, judge_scores, funnel, json_validity, ...)."""
        for section in self.sections:
            if section.key == key:
                return section
        raise MediflowError(f"no audit section '{key}'; sections: {', '.join(s.key for s in self.sections)}")

    def summary(self) -> str:
        """One line per section: what the CLI prints."""
        lines = [f"audit of {self.path}: {self.records} records"]
        lines += [f"  {s.title}: {s.summary}" for s in self.sections]
        return "\n".join(lines)


def load_taxonomy_or_none(path: str | Path | None = None) -> Any | None:
    """The taxonomy (built-in, or ``path`` merged over it); None when it cannot be loaded, so checks degrade."""
    try:
        return load_taxonomy(Path(path) if path else None)
    except MediflowError:
        return None


def task_schemas(taxonomy: Taxonomy | None) -> dict[str, Any]:
    """Task name -> its JSON output schema."""
    if taxonomy is None:
        return {}
    return {name: task.output_schema for name, task in taxonomy.tasks.items() if task.output_schema}


def coding_tasks(taxonomy: Taxonomy | None) -> list[str]:
    """Tasks whose answers carry ICD-10 codes: their output schema says so (data, not a hard-coded name)."""
    return [name for name, schema in task_schemas(taxonomy).items() if "ICD-10" in json.dumps(schema)]


def run_audit(path: str | Path, config: AuditConfig | None = None, *, taxonomy: Taxonomy | None = None) -> AuditReport:
    """Run every check on the output folder ``path``.

    The taxonomy is ``taxonomy``, else ``config.taxonomy`` (a folder named that does not load is an
    error, never a silent fall back), else the run's own (from its manifest config, or its source
    run's) or the built-in one; ``config.sample_size`` bounds the n-gram and diversity checks,
    ``config.duplicate_records`` the near-duplicate check (records held in memory),
    ``config.sample_cells`` the sample viewer.
    """
    config = config or AuditConfig()
    folder = AuditFolder.open(path)
    user_taxonomy = config.taxonomy or run_config(folder).get("taxonomy")  # a user taxonomy folder (and its cases/), or None
    if taxonomy is None and config.taxonomy is not None:
        taxonomy = load_taxonomy(Path(config.taxonomy))
    if taxonomy is None:
        taxonomy = load_taxonomy_or_none(user_taxonomy)
    sections = [
        coverage_with_plan(folder, taxonomy),
        lengths(folder),
        judge_scores(folder),
        funnel(folder),
        json_validity_with_taxonomy(folder, taxonomy),
        icd_codes_with_terminology(folder, taxonomy),
        ngrams(folder, sample_size=config.sample_size),
        near_duplicates(folder, max_records=config.duplicate_records),
        case_mix_with_plan(folder, taxonomy),
        document_type_cases(folder, taxonomy=user_taxonomy),
        rule_violations(folder, taxonomy=user_taxonomy),
        sex_by_condition(folder),
        drugs_by_condition(folder),
        text_diversity(folder, sample_size=config.sample_size),
        sample_cells(folder, max_cells=config.sample_cells),
    ]
    return AuditReport(path=folder.path, records=len(folder.frame), sections=sections)


def coverage_with_plan(folder: AuditFolder, taxonomy: Taxonomy | None) -> CheckResult:
    """The coverage check against the best plan available (see :mod:`mediflow.audit.plan`)."""
    planned, source = planned_cells(folder, taxonomy)
    result = coverage(folder, planned)
    result.summary += f" (plan: {source})"
    result.numbers["plan_source"] = source
    return result


def case_mix_with_plan(folder: AuditFolder, taxonomy: Taxonomy | None) -> CheckResult:
    """The case mix, with the profile shares the plan asked for."""
    planned, _ = planned_cells(folder, taxonomy)
    return case_mix(folder, planned, taxonomy)


def json_validity_with_taxonomy(folder: AuditFolder, taxonomy: Taxonomy | None) -> CheckResult:
    """The JSON check with the taxonomy's task schemas (outputs still parse-checked without one)."""
    return json_validity(folder, task_schemas(taxonomy))


def icd_codes_with_terminology(folder: AuditFolder, taxonomy: Taxonomy | None) -> CheckResult:
    """The ICD-10-CM check with the taxonomy's coding tasks and the real code table."""
    return icd_codes(folder, coding_tasks(taxonomy), is_valid, is_billable)
