"""Figures for the audit, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot``: a library that opens pyplot figures leaks them (and its global state) into the
caller's session; a bare :class:`~matplotlib.figure.Figure` is garbage-collected like any object,
renders to PNG for the HTML report and displays inline in Jupyter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches attached to an Agg canvas (matplotlib is loaded here, on first use)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def bounded(size: float, low: float, high: float) -> float:
    """``size`` clamped to [low, high]: figures grow with the number of tasks, within reason."""
    return max(low, min(high, size))
