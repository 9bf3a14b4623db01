"""The audit as a stage, like every other one: ``audit(input, out=None, config=None, **overrides)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mediflow.audit.config import AuditConfig
from mediflow.audit.html_report import write_html
from mediflow.audit.report import AuditReport, run_audit
from mediflow.folders.guards import check_output


def audit(input: str | Path, out: str | Path | None = None, config: Any = None, **overrides: Any) -> AuditReport:
    """Every check on ``input``; with ``out``, the self-contained HTML report written there.

    ``config`` is an :class:`AuditConfig`, a YAML/JSON path or a dict; ``overrides`` are its keys
    (``sample_size=``, ``taxonomy=``, ...). Also ``mediflow.audit(...)`` and :func:`mediflow.api.audit`.
    """
    loaded = AuditConfig.load(config, **overrides)
    if out is not None:  # before minutes of auditing: the report may not land on the data it reports on
        reads = [Path(input), *(Path(p) for p in (loaded.taxonomy,) if p), *([Path(config)] if isinstance(config, (str, Path)) else [])]
        check_output(Path(out), reads, what="HTML report", file=True)
    report = run_audit(input, loaded)
    if out is not None:
        write_html(report, out)
    return report
