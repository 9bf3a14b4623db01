"""MediFlow: synthetic clinical instruction data with a teacher LLM.

``from mediflow import generate`` is the main entry point; see ``README.md`` and ``docs/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mediflow.version import __version__

__all__ = ["__version__", "generate"]

if TYPE_CHECKING:
    from mediflow.pipeline.run import generate


def __getattr__(name: str) -> Any:
    # Lazy so that `import mediflow` (and the CLI's --help) stays fast and light.
    if name == "generate":
        from mediflow.pipeline.run import generate

        return generate
    raise AttributeError(f"module 'mediflow' has no attribute {name!r}")
