"""The audit as ONE self-contained HTML file: plots embedded as base64 PNGs, tables as HTML.

One file with no external assets can be mailed, attached to a ticket or opened from an archive
years later; no Jupyter needed. Written atomically so a half-written report never replaces a good one.
"""

from __future__ import annotations

import html
from pathlib import Path

from mediflow.audit.report import AuditReport
from mediflow.folders.atomic import write_text
from mediflow.folders.guards import check_output, make_parent

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { border-bottom: 2px solid #2b7bba; }
section { margin-bottom: 3em; }
img { max-width: 100%; }
table.table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }
table.table th, table.table td { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; text-align: left; }
table.table td { max-width: 40em; white-space: pre-wrap; }
p.unavailable { color: #a05a00; font-style: italic; }
p.note { color: #666; font-size: 12px; }
"""


def render_html(report: AuditReport) -> str:
    """The whole report as an HTML document string."""
    toc = "\n".join(f'<li><a href="#{s.key}">{html.escape(s.title)}</a>: {html.escape(s.summary)}</li>' for s in report.sections)
    body = "\n".join(section.to_html() for section in report.sections)
    title = f"MediFlow data audit: {report.path}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n'
        f"<body><h1>{html.escape(title)}</h1>\n"
        f"<p>{report.records} records; audited {html.escape(report.created_at)}.</p>\n"
        f"<h2>Contents</h2><ul>{toc}</ul>\n{body}\n</body></html>\n"
    )


def write_html(report: AuditReport, path: str | Path) -> Path:
    """Write ``report`` to ``path`` (atomically, its missing folders created); return the path.

    ``path`` goes through the one output guard first: never the audited folder or a file in it, nor a
    file of another run's folder.
    """
    target = check_output(Path(path), [Path(report.path)], what="HTML report", file=True)
    write_text(make_parent(target), render_html(report))
    return target
