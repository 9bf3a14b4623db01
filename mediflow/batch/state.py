"""A folder's batches, recorded in ``OUT/batches/state.json`` before and after every step.

Every provider call that creates something is bracketed by writes of this file (the folder
contract's atomic writer): a round's input file is recorded ``prepared`` before it is uploaded,
``uploaded`` with its file id before the batch is created, then with the batch id the provider
gave. A run killed anywhere in between resumes from it: a ``prepared`` file is dropped (its
requests are simply deferred again), an ``uploaded`` one is looked up among the provider's batches
by its metadata before it is created (so no batch is created twice), and a submitted batch is
waited for and read, never submitted again. The file also names each role's teacher (spec, URL,
the key's variable, never the key) so that ``mediflow batches OUT`` can reach the provider.

Each batch carries ``{"mediflow_run": <this folder's run id>, "mediflow_file": <input file hash>}``
as metadata: a recorded batch whose metadata names another run (a state file copied from another
folder, a hand-edited id) is refused instead of being read into this run's cache.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediflow.errors import MediflowError
from mediflow.folders.atomic import write_json
from mediflow.folders.manifest import now
from mediflow.folders.output import BATCHES_DIR

STATE_NAME = "state.json"
#: Local steps before the provider knows the batch, then the provider's statuses.
PREPARED, UPLOADED = "prepared", "uploaded"


@dataclass
class BatchRecord:
    """One input file and the batch made of it."""

    tag: str  # the input file's content hash (its ``mediflow_file`` metadata)
    role: str  # the config key of the teacher section it was made for (teacher, judge.teacher, ...)
    round: int
    file: str  # the input file's name, in OUT/batches/
    lines: int
    size: int
    status: str = PREPARED
    input_file_id: str | None = None
    id: str | None = None
    uploaded_at: float | None = None
    submitted_at: str | None = None
    finished_at: str | None = None
    completed: int = 0  # the provider's counts
    failed: int = 0
    stored: int = 0  # answers written into the cache
    unanswered: int = 0  # lines that will be asked again (failed, expired, cancelled)
    errors: list[str] = field(default_factory=list)  # the first few problems, one line each
    #: True once its results are in the cache (or its lines are known to be unanswered): it needs nothing more.
    processed: bool = False

    @property
    def outstanding(self) -> bool:
        return not self.processed


@dataclass
class BatchState:
    """Everything ``state.json`` holds (see the module docstring)."""

    run: str
    kind: str
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {spec, base_url, api_key_env}
    records: list[BatchRecord] = field(default_factory=list)
    created_at: str = field(default_factory=now)

    @property
    def rounds(self) -> int:
        return max((record.round for record in self.records), default=0)

    def metadata(self, record: BatchRecord) -> dict[str, str]:
        """What a batch is created with, and what identifies it as this run's later."""
        return {"mediflow_run": self.run, "mediflow_file": record.tag}

    def check_owns(self, record: BatchRecord, metadata: Mapping[str, str], where: str) -> None:
        """Refuse a recorded batch whose metadata (as the provider reports it) names another run."""
        if metadata.get("mediflow_run") != self.run:
            raise MediflowError(
                f"{where}: batch {record.id} belongs to another run (its metadata names run {metadata.get('mediflow_run')!r}, "
                f"this folder's run is {self.run!r}); it was not read or touched: remove it from {BATCHES_DIR}/{STATE_NAME} or use the folder that made it"
            )

    def save(self, root: Path) -> None:
        folder = root / BATCHES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / STATE_NAME, dataclasses.asdict(self))

    @classmethod
    def new(cls, kind: str) -> BatchState:
        return cls(run=uuid.uuid4().hex, kind=kind)


def state_path(root: Path) -> Path:
    return Path(root) / BATCHES_DIR / STATE_NAME


def load_state(root: Path) -> BatchState | None:
    """The folder's batch state; None when it has none; an unreadable file is one error naming it."""
    path = state_path(root)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        records = [BatchRecord(**record) for record in value.pop("records")]
        return BatchState(**value, records=records)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise MediflowError(f"{path}: not a MediFlow batch state file ({type(exc).__name__}: {exc}); move it away to start the batches afresh") from None
