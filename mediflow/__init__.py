"""MediFlow: synthetic clinical instruction data with a teacher LLM.

Every stage is one call, ``stage(input, out, config=None, *, overwrite=False, **overrides)``, with a
coroutine twin ``stage_async`` (see :mod:`mediflow.api`)::

    from mediflow import generate, filter_records, judge, dedup, decontaminate, curate, build_pairs, export, audit

They are imported on first use, so that ``import mediflow`` (and ``mediflow --help``) stays fast.
See ``README.md`` and ``docs/``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mediflow.version import __version__

#: The stages, each with its ``_async`` twin (:mod:`mediflow.api`).
__all__ = [
    "__version__",
    "audit",
    "audit_async",
    "build_pairs",
    "build_pairs_async",
    "curate",
    "curate_async",
    "decontaminate",
    "decontaminate_async",
    "dedup",
    "dedup_async",
    "export",
    "export_async",
    "filter_records",
    "filter_records_async",
    "generate",
    "generate_async",
    "judge",
    "judge_async",
]

if TYPE_CHECKING:
    from mediflow import audit, export
    from mediflow.api import (
        audit_async,
        build_pairs,
        build_pairs_async,
        curate,
        curate_async,
        decontaminate,
        decontaminate_async,
        dedup,
        dedup_async,
        export_async,
        filter_records,
        filter_records_async,
        generate,
        generate_async,
        judge,
        judge_async,
    )


def __getattr__(name: str) -> Any:
    if name in ("export", "audit"):  # the packages of those names, which are callable: the stages themselves
        return import_module(f"mediflow.{name}")
    if name in __all__[1:]:
        from mediflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'mediflow' has no attribute {name!r}")
