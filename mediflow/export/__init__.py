"""Publish MediFlow data as a Hugging Face dataset: Hub layout, splits by document, card, upload.

``export_dataset`` writes ``data/{config}/{split}-NNNNN-of-MMMMM.parquet`` (configs ``sft``, ``dpo``
and one per task) and a ``README.md`` card; ``upload_export`` sends that folder to the Hub in
bounded, resumable commits. See ``docs/export.md``.
"""

from mediflow.export.hub import UploadReport, upload_export
from mediflow.export.layout import ExportOptions, ExportSummary, export_dataset
from mediflow.export.shards import ShardLimits
from mediflow.export.splits import SplitFractions

__all__ = [
    "ExportOptions",
    "ExportSummary",
    "ShardLimits",
    "SplitFractions",
    "UploadReport",
    "export_dataset",
    "upload_export",
]
