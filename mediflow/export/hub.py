"""Upload an exported dataset folder to the Hugging Face Hub in bounded, resumable commits.

A 2.5M-record export is thousands of Parquet files; one commit with all of them is slow to retry
and the Hub limits commit sizes. So files go up in batches of at most ``files_per_commit``, data
first and the card last, and a file already on the Hub with the same content (git blob id, or the
LFS SHA-256 for large files) is skipped: rerunning an interrupted upload sends only what is
missing. The token is passed to :class:`huggingface_hub.HfApi` in memory and never written to
disk or logged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from mediflow.errors import MediflowError

CARD = "README.md"


@dataclass
class UploadReport:
    """What one upload did: the files of each commit it made, and the files it skipped as unchanged."""

    repo_id: str
    commits: list[list[str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def export_files(folder: Path) -> list[str]:
    """The export's files in upload order: data shards (sorted), then the card."""
    if not (folder / CARD).is_file() or not (folder / "data").is_dir():
        raise MediflowError(f"{folder} is not a MediFlow export (expected {CARD} and data/; run `mediflow export --local-dir` first)")
    shards = sorted(str(p.relative_to(folder)) for p in (folder / "data").rglob("*.parquet"))
    return shards + [CARD]


def unchanged(local: Path, remote: RepoFile) -> bool:
    """Whether the local file has the content of the remote one (how the Hub itself names content)."""
    if remote.lfs is not None:
        with open(local, "rb") as handle:
            return sha_fileobj(handle).hex() == remote.lfs.sha256
    return git_hash(local.read_bytes()) == remote.blob_id


def batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def upload_export(
    folder: Path,
    repo_id: str,
    *,
    token: str | None,
    private: bool = False,
    files_per_commit: int = 100,
    endpoint: str | None = None,
    revision: str = "main",
) -> UploadReport:
    """Create the dataset repo if needed and commit the export's new or changed files in batches."""
    if files_per_commit < 1:
        raise MediflowError(f"files_per_commit must be >= 1, got {files_per_commit}")
    folder = Path(folder)
    files = export_files(folder)
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    remote = _remote_files(api, repo_id, revision)
    report = UploadReport(repo_id)
    to_send = []
    for path in files:
        if path in remote and unchanged(folder / path, remote[path]):
            report.skipped.append(path)
        else:
            to_send.append(path)
    total = -(-len(to_send) // files_per_commit)
    for number, batch in enumerate(batches(to_send, files_per_commit), start=1):
        api.create_commit(
            repo_id,
            repo_type="dataset",
            revision=revision,
            operations=[CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in batch],
            commit_message=f"Upload MediFlow export ({number}/{total})",
        )
        report.commits.append(batch)
    return report


def _remote_files(api: HfApi, repo_id: str, revision: str) -> dict[str, RepoFile]:
    """Every file already in the repo at ``revision`` (none for a new, empty repo)."""
    try:
        entries = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
        return {entry.path: entry for entry in entries if isinstance(entry, RepoFile)}
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return {}
