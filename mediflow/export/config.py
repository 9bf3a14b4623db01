"""The export config (``mediflow export`` / :func:`mediflow.export`): splits, shards, card, and the Hub upload.

One :class:`~mediflow.configuration.Config` like every other stage's: a YAML file, a dict or keyword
overrides, validated with one-line errors, and the command's flags derived from the fields
(``--seed``, ``--max-shard-rows``, ``--split-train``, ``--to-hub``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mediflow.configuration import Config, option
from mediflow.errors import ConfigError
from mediflow.export.shards import ShardLimits
from mediflow.export.splits import SplitFractions


@dataclass
class SplitConfig(Config):
    """Target shares of documents per split (the unit of the split is the document, never the record)."""

    train: float = option(0.9, "share of documents in the train split", minimum=0, maximum=1)
    validation: float = option(0.05, "share of documents in the validation split", minimum=0, maximum=1)
    test: float = option(0.05, "share of documents in the test split", minimum=0, maximum=1)

    def check(self) -> None:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"train: train + validation + test = {total:g}, they must sum to 1")

    def fractions(self) -> SplitFractions:
        return SplitFractions(self.train, self.validation, self.test)


@dataclass
class HubConfig(Config):
    """Where the export goes on the Hugging Face Hub (nothing is uploaded without ``repo_id``)."""

    repo_id: str | None = option(None, "upload to this Hub dataset repo (user/name); none: write the local folder only")
    private: bool = option(False, "create the Hub repo as private")
    token_env: str = option("HF_TOKEN", "environment variable holding the Hub token")
    endpoint: str | None = option(None, "Hub endpoint URL (default: huggingface_hub's, or $HF_ENDPOINT)")
    files_per_commit: int = option(100, "most files per Hub commit", minimum=1)


@dataclass
class ExportConfig(Config):
    """How records (and DPO pairs) become a Hugging Face dataset: configs, splits, shards, card, upload."""

    ALIASES: ClassVar[dict[str, str]] = {
        "to_hub": "hub.repo_id",
        "private": "hub.private",
        "token_env": "hub.token_env",
        "endpoint": "hub.endpoint",
        "files_per_commit": "hub.files_per_commit",
    }
    pairs: str | None = option(None, "a `mediflow pairs` output folder: adds the dpo config")
    split: SplitConfig = option(SplitConfig(), "document shares of the train / validation / test splits")
    seed: int = option(0, "seed of the split")
    max_shard_rows: int = option(100_000, "most rows per Parquet shard", minimum=1)
    max_shard_mb: float = option(500.0, "most uncompressed MB per shard (estimated from the input's Parquet metadata)", exclusiveMinimum=0)
    task_configs: bool = option(True, "a config per task beside sft and dpo")
    license: str = option("cdla-permissive-2.0", "licence id for the dataset card")
    repo_id: str | None = option(None, "the dataset's name on the card (default: hub.repo_id, else the output folder's name)")
    hub: HubConfig = option(HubConfig(), "the Hub upload")

    def shard_limits(self) -> ShardLimits:
        return ShardLimits(max_rows=self.max_shard_rows, max_bytes=int(self.max_shard_mb * 1024 * 1024))
