"""``mediflow batches OUT``: a run's batches and their state, live from the provider on request; cancelling them.

Reads ``OUT/batches/state.json`` (:mod:`mediflow.batch.state`). With ``refresh`` every batch not yet
read into the cache is looked up at its provider (through the teacher section the state names:
spec, URL and the key's variable); :func:`cancel_batches` asks the provider to stop them, holding
the folder's lock (a run still going is refused: stop it first) and recording each cancellation in
the state. A rerun then reads what the cancelled batches finished and asks the rest again. A
recorded batch whose metadata names another run is refused, as a run refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mediflow.batch.config import BatchConfig
from mediflow.batch.providers import BatchAPI, BatchInfo, batch_api_of
from mediflow.batch.state import BatchRecord, BatchState, load_state, state_path
from mediflow.errors import MediflowError
from mediflow.folders.guards import FolderLock
from mediflow.folders.manifest import now
from mediflow.sync import run_sync
from mediflow.teachers.base import Teacher
from mediflow.teachers.factory import TeacherConfig, teacher_from


@dataclass(frozen=True)
class BatchRow:
    """One recorded batch as listed (``live`` when its status came from the provider just now)."""

    record: BatchRecord
    status: str
    completed: int
    failed: int
    live: bool = False


@dataclass(frozen=True)
class BatchListing:
    """What ``mediflow batches OUT`` shows."""

    out: Path
    state: BatchState
    rows: list[BatchRow] = field(default_factory=list)

    @property
    def in_progress(self) -> int:
        return sum(row.record.id is not None and not row.record.processed for row in self.rows)

    @property
    def done(self) -> int:
        return sum(row.record.processed and row.record.id is not None for row in self.rows)


def _state(out: Path) -> BatchState:
    state = load_state(out)
    if state is None:
        raise MediflowError(f"{out}: no batches recorded ({state_path(out)} does not exist): was the stage run with --batch (mode: batch)?")
    return state


def list_batches(out: str | Path, *, refresh: bool = False) -> BatchListing:
    """The batches recorded in ``out``; with ``refresh``, the live status of those not yet read into the cache."""
    return run_sync(list_batches_async(out, refresh=refresh))


async def list_batches_async(out: str | Path, *, refresh: bool = False) -> BatchListing:
    """:func:`list_batches` for callers already running an event loop."""
    root = Path(out)
    state = _state(root)
    rows = [BatchRow(record, record.status, record.completed, record.failed) for record in state.records]
    if refresh:
        async with _Providers(state) as providers:
            for index, row in enumerate(rows):
                record = row.record
                if record.id is None or record.processed:
                    continue
                info = await providers.owned(record)
                rows[index] = BatchRow(record, info.status, info.completed, info.failed, live=True)
    return BatchListing(root, state, rows)


def cancel_batches(out: str | Path) -> list[BatchRow]:
    """Ask the provider to stop every batch of ``out`` still running; the cancelled ones, as the provider answered."""
    return run_sync(cancel_batches_async(out))


async def cancel_batches_async(out: str | Path) -> list[BatchRow]:
    """:func:`cancel_batches` for callers already running an event loop."""
    root = Path(out)
    state = _state(root)
    cancelled: list[BatchRow] = []
    with FolderLock(root):
        async with _Providers(state) as providers:
            for record in state.records:
                if record.id is None or record.processed:
                    continue
                info = await providers.owned(record)
                if info.finished:
                    record.status, record.completed, record.failed = info.status, info.completed, info.failed
                    continue
                info = await providers.api(record.role).cancel(record.id)
                record.status, record.completed, record.failed = info.status, info.completed, info.failed
                record.errors = [*record.errors, f"cancelled with mediflow batches --cancel at {now()}"][-5:]
                cancelled.append(BatchRow(replace(record), info.status, info.completed, info.failed, live=True))
                state.save(root)
    return cancelled


class _Providers:
    """The batch API of each role the state names, built from its teacher section (the key from its variable)."""

    def __init__(self, state: BatchState) -> None:
        self.state = state
        self._teachers: dict[str, Teacher] = {}
        self._apis: dict[str, BatchAPI] = {}

    async def __aenter__(self) -> _Providers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for api in self._apis.values():
            await api.aclose()
        for teacher in self._teachers.values():
            await teacher.aclose()

    def api(self, role: str) -> BatchAPI:
        if role not in self._apis:
            section: dict[str, Any] | None = self.state.teachers.get(role)
            if section is None:
                raise MediflowError(f"the batch state names no teacher for '{role}'")
            teacher = self._teachers[role] = teacher_from(TeacherConfig.load(section), where=role)
            self._apis[role] = batch_api_of(teacher, BatchConfig(), role)
        return self._apis[role]

    async def owned(self, record: BatchRecord) -> BatchInfo:
        """The provider's view of a recorded batch, refused when its metadata names another run."""
        assert record.id is not None
        api = self.api(record.role)
        info = await api.retrieve(record.id)
        if api.keeps_metadata:
            self.state.check_owns(record, info.metadata, api.describe())
        return info


def describe(row: BatchRow) -> dict[str, Any]:
    """One row of the listing, as plain data (for the CLI's table and for notebooks)."""
    record = row.record
    status = row.status
    if record.id is not None and not record.processed and not row.live:
        status += " (as last recorded; --refresh asks the provider)"
    return {
        "round": record.round,
        "teacher": record.role,
        "batch": record.id or "-",
        "status": status,
        "requests": record.lines,
        "answered": record.stored if record.processed else row.completed,
        "asked_again": record.unanswered if record.processed else row.failed,
        "file": record.file,
    }
