"""Publish MediFlow data as a Hugging Face dataset: Hub layout, splits by document, card, upload.

``run_export`` writes ``data/{config}/{split}-NNNNN-of-MMMMM.parquet`` (configs ``sft``, ``dpo``
and one per task) and a ``README.md`` card (``export_dataset``), and with ``hub.repo_id`` sends that
folder to the Hub in bounded, resumable commits (``upload_export``); :class:`ExportConfig` says how.
See ``docs/export.md``.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mediflow.export.config import ExportConfig, HubConfig, SplitConfig

if TYPE_CHECKING:
    from mediflow.export.run import ExportResult

#: Imported on first use: ``import mediflow.export`` (the CLI's flags) must not load the Hub client.
_LAZY = {
    "ExportResult": "mediflow.export.run",
    "ExportSummary": "mediflow.export.layout",
    "UploadReport": "mediflow.export.hub",
    "export": "mediflow.export.run",
    "export_dataset": "mediflow.export.layout",
    "run_export": "mediflow.export.run",
    "upload_export": "mediflow.export.hub",
}

__all__ = ["ExportConfig", "HubConfig", "SplitConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mediflow.export' has no attribute {name!r}")


class _ExportPackage(ModuleType):
    """``mediflow.export`` is this package and the export stage at once: ``from mediflow import export`` then
    ``export("runs/a-curated", "runs/a-hub", "export.yaml")`` runs it (:func:`mediflow.export.run.export`),
    and ``from mediflow.export import ExportConfig`` still imports. The stage shares the package's name,
    which the import system binds to the package."""

    def __call__(self, records: str | Path, out: str | Path | None = None, config: Any = None, *, overwrite: bool = False, **overrides: Any) -> ExportResult:
        from mediflow.export.run import export  # the Hub client, loaded when an export runs

        return export(records, out, config, overwrite=overwrite, **overrides)


sys.modules[__name__].__class__ = _ExportPackage
