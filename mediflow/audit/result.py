"""What every audit check returns: numbers, tables, an optional figure, and one summary line.

One shape for all checks lets the notebook show a check by just evaluating it (``_repr_html_``),
the HTML report stitch sections together, and the CLI print the summary lines, with one renderer.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Rows shown per table in HTML; the full tables stay on the result for the notebook.
HTML_TABLE_ROWS = 60


@dataclass
class CheckResult:
    """One audit section.

    ``tables`` are the data a reader scans (DataFrames), ``numbers`` the headline figures tests and
    the CLI read, ``unavailable`` says why a section has nothing to show (e.g. no judge columns)
    instead of failing.
    """

    key: str
    title: str
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figure: Figure | None = None
    unavailable: str | None = None
    _png: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def not_available(cls, key: str, title: str, reason: str) -> CheckResult:
        """A section whose input is missing from this output folder."""
        return cls(key=key, title=title, summary=f"not available: {reason}", unavailable=reason)

    def to_html(self) -> str:
        """This section as self-contained HTML (the figure embedded as a base64 PNG)."""
        parts = [f'<section id="{self.key}">', f"<h2>{html.escape(self.title)}</h2>"]
        css = "unavailable" if self.unavailable else "summary"
        parts.append(f'<p class="{css}">{html.escape(self.summary)}</p>')
        if self.figure is not None:
            parts.append(f'<img alt="{html.escape(self.title)}" src="data:image/png;base64,{self.figure_png()}">')
        for name, table in self.tables.items():
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(table_html(table))
        parts.append("</section>")
        return "\n".join(parts)

    def figure_png(self) -> str:
        """The figure as base64 PNG, rendered once (the notebook shows it, then the report embeds it)."""
        if self._png is None and self.figure is not None:
            self._png = figure_png_base64(self.figure)
        return self._png or ""

    def _repr_html_(self) -> str:
        return self.to_html()


def figure_png_base64(figure: Figure) -> str:
    """Render ``figure`` with Agg to PNG, base64-encoded for a ``data:`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)  # constrained layout already fits the labels
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def table_html(table: pd.DataFrame) -> str:
    """A table as escaped HTML, cut to :data:`HTML_TABLE_ROWS` rows with a note saying so."""
    shown = table.head(HTML_TABLE_ROWS)
    out = shown.to_html(border=0, classes="table", escape=True, na_rep="", float_format=lambda v: f"{v:.3g}")
    if len(table) > len(shown):
        out += f'<p class="note">showing {len(shown)} of {len(table)} rows</p>'
    return out
