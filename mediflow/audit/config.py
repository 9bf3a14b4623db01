"""The audit config (``mediflow audit`` / :func:`mediflow.audit`): how much of a large folder each check samples."""

from __future__ import annotations

from dataclasses import dataclass

from mediflow.configuration import Config, option


@dataclass
class AuditConfig(Config):
    """What the audit reads beside the folder, and how many records its sampled checks look at."""

    taxonomy: str | None = option(None, "taxonomy folder merged over the built-in one (default: the run's, from its manifest)")
    sample_size: int = option(20_000, "records sampled for the n-gram and diversity checks", minimum=1)
    duplicate_records: int = option(50_000, "records sampled for the near-duplicate check", minimum=1)
    sample_cells: int = option(12, "task x document-type cells shown in the samples section", minimum=1)
