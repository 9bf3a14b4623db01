"""One export: the Hub-layout folder written locally, then (with ``hub.repo_id``) uploaded to the Hub.

Everything that can be wrong is checked before anything is written: no destination at all (neither
a local folder nor a Hub repo), or a Hub upload without its token. Without a local folder the
dataset is written to a temporary folder, uploaded and removed.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediflow.errors import ConfigError, MediflowError
from mediflow.export.config import ExportConfig
from mediflow.export.hub import UploadReport, upload_export
from mediflow.export.layout import ExportSummary, export_dataset


@dataclass(frozen=True)
class ExportResult:
    """What the export wrote (the local folder's shards and counts) and, when it uploaded, what it sent."""

    summary: ExportSummary
    upload: UploadReport | None = None


def run_export(records: str | Path, out: str | Path | None, config: ExportConfig, *, overwrite: bool = False) -> ExportResult:
    """Export ``records`` (and ``config.pairs``) to the folder ``out`` and/or the Hub repo ``config.hub.repo_id``."""
    hub = config.hub
    if out is None and hub.repo_id is None:
        raise ConfigError("export: nowhere to write: give a local folder (--local-dir) or a Hub repo (--to-hub / hub.repo_id)")
    token = None
    if hub.repo_id is not None:
        token = os.environ.get(hub.token_env)
        if not token:
            raise MediflowError(f"no Hub token: set the environment variable {hub.token_env} (or name another with --token-env)")
    if out is not None:
        summary = export_dataset(records, out, config, overwrite=overwrite)
        return ExportResult(summary, _upload(Path(out), config, token) if token else None)
    with tempfile.TemporaryDirectory(prefix="mediflow-export-") as staging:
        summary = export_dataset(records, Path(staging), config)
        return ExportResult(summary, _upload(Path(staging), config, token))


def export(records: str | Path, out: str | Path | None = None, config: Any = None, *, overwrite: bool = False, **overrides: Any) -> ExportResult:
    """The export stage (``mediflow.export(...)``, :func:`mediflow.api.export`): ``config`` an :class:`ExportConfig`,
    a YAML/JSON path or a dict, ``overrides`` its keys (``pairs=``, ``to_hub=``, ``seed=``, ...)."""
    return run_export(records, out, ExportConfig.load(config, **overrides), overwrite=overwrite)


def _upload(folder: Path, config: ExportConfig, token: str | None) -> UploadReport:
    hub = config.hub
    assert hub.repo_id is not None
    return upload_export(folder, hub.repo_id, token=token, private=hub.private, files_per_commit=hub.files_per_commit, endpoint=hub.endpoint)
