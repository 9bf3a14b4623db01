"""Content-addressed response cache: every answer is durable the moment it arrives.

The key is a SHA-256 of exactly what changes an answer (teacher, rendered messages, sampling
parameters, response schema, sample index, seed, prompt version) and nothing else: never a hash of
code or of the dataset, so adding rows or moving code never invalidates finished work, and never an
API key. Storage is SQLite in WAL mode: each answer is its own committed transaction, so a SIGKILL
loses at most the requests still in flight, and any number of readers can open the file at once.

That holds on one host. WAL needs memory shared by every process that opens the file, so Ray actors
on other machines must not write it (``engine: ray``, docs/scaling.md). Each of them gets a
:class:`SharedCache` instead: it reads the run's cache read-only (the driver merged and
checkpointed it before the actors started, and does not write it while they run) and appends its
own answers to its own segment, ``<cache>-segments/<id>.jsonl``: one writer per file, append-only,
no file-system lock shared between hosts. Answers that arrive together are written as one group by
a thread (never a commit per answer on the actor's event loop), and an answer is handed over only
once its group is on disk, so a kill loses only the requests in flight. :func:`merge_segments` folds the segments into the
cache, at the end of a run and at the start of the next (the resume of a killed one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from mediflow.errors import MediflowError
from mediflow.records import canonical_json
from mediflow.teachers.base import ChatRequest, ChatResponse

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    teacher TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    model TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def cache_key(teacher_name: str, request: ChatRequest) -> str:
    """The SHA-256 (hex) of the canonical JSON of everything that determines ``request``'s answer."""
    identity = {
        "teacher": teacher_name,
        "messages": [[role, content] for role, content in request.messages],
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "response_schema": request.response_schema,
        "sample_index": request.sample_index,
        "prompt_version": request.prompt_version,
    }
    return hashlib.sha256(canonical_json(identity).encode("utf-8")).hexdigest()


_BUSY_TIMEOUT_S = 10.0


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


@retry(
    retry=retry_if_exception(_is_busy),
    stop=stop_after_delay(_BUSY_TIMEOUT_S * 3),
    wait=wait_random_exponential(multiplier=0.02, max=0.5),
    reraise=True,
)
def _connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, retrying while another process is creating or converting it.

    Several processes open one cache at once (Ray actors, shards on a shared disk). Switching a
    fresh file to WAL needs an exclusive lock, and SQLite answers ``database is locked`` at once
    there instead of waiting out the busy timeout, so the whole open is retried with jitter.
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable against process kills; WAL keeps it consistent
        db.execute(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


_SELECT = "SELECT text, finish_reason, prompt_tokens, completion_tokens, model FROM responses WHERE key = ?"
_INSERT = "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
#: The columns of a stored answer, in the table's order (also the fields of a segment line).
_COLUMNS = ("key", "teacher", "text", "finish_reason", "prompt_tokens", "completion_tokens", "model", "created_at")
Row = tuple[str, str, str, str, int, int, str, float]


def _row(key: str, teacher_name: str, response: ChatResponse) -> Row:
    """What is stored of one answer (headers are not)."""
    return (key, teacher_name, response.text, response.finish_reason, response.prompt_tokens, response.completion_tokens, response.model, time.time())


def _cached(row: Sequence[Any]) -> ChatResponse:
    """A stored answer (``text, finish_reason, prompt_tokens, completion_tokens, model``), marked ``cached``."""
    text, finish_reason, prompt_tokens, completion_tokens, model = row
    return ChatResponse(text=text, finish_reason=finish_reason, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, model=model, cached=True)


class ResponseCache:
    """A SQLite file of answers by :func:`cache_key`; any number of processes on one host may share one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise MediflowError(f"cannot open the response cache {self.path}: {exc}") from exc

    def get(self, key: str) -> ChatResponse | None:
        """The stored answer for ``key``, marked ``cached``, or None."""
        row = self._db.execute(_SELECT, (key,)).fetchone()
        return None if row is None else _cached(row)

    def put(self, key: str, teacher_name: str, response: ChatResponse) -> None:
        """Store one answer in its own committed transaction (headers are not stored)."""
        self._db.execute(_INSERT, _row(key, teacher_name, response))

    def put_rows(self, rows: Sequence[Sequence[Any]]) -> int:
        """Store stored-answer rows (:data:`_COLUMNS`) in one transaction, keeping answers already here; returns how many were new."""
        before = self._db.total_changes
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return self._db.total_changes - before

    def checkpoint(self) -> None:
        """Move the WAL into the main file and empty it: the file alone then holds every answer."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def flush(self) -> None:
        """Nothing to do: every :meth:`put` is already committed."""

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        self._db.close()


class AnswerStore(Protocol):
    """Where an engine keeps answers: :class:`ResponseCache` (one host) or :class:`SharedCache` (a Ray actor)."""

    path: Path

    def get(self, key: str) -> ChatResponse | None: ...

    def put(self, key: str, teacher_name: str, response: ChatResponse) -> None: ...

    async def flush(self) -> None:
        """Make every answer put so far durable."""

    def close(self) -> None: ...


def merge_caches(target: Path, sources: Sequence[Path]) -> int:
    """Every answer of the caches ``sources`` into ``target`` (the shares of a joined run); returns how many were new."""
    ResponseCache(target).close()  # creates the table
    db = sqlite3.connect(target, timeout=_BUSY_TIMEOUT_S)
    added = 0
    try:
        for number, source in enumerate(sources):
            if not source.exists():
                continue
            before = db.total_changes
            db.execute(f"ATTACH DATABASE ? AS share{number}", (str(source),))
            db.execute(f"INSERT OR IGNORE INTO responses SELECT * FROM share{number}.responses")
            db.commit()
            db.execute(f"DETACH DATABASE share{number}")
            added += db.total_changes - before
    finally:
        db.close()
    return added


# -- segments: the cache of actors on other hosts ------------------------------------------------------


def segments_dir(cache_path: Path) -> Path:
    """Where actors append their answers for the cache at ``cache_path``: ``OUT/cache.sqlite`` -> ``OUT/cache-segments/``."""
    return Path(cache_path).with_name(f"{Path(cache_path).stem}-segments")


def _writer_gone(handle: BinaryIO) -> bool:
    """Whether the writer of an open segment is gone: its exclusive ``flock`` is free (the lock is released again)."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return True


def _segment_lines(handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of every complete line of a segment (a killed writer may leave half a last line)."""
    offset = 0
    for line in handle:
        if line.endswith(b"\n"):
            yield offset, line
        offset += len(line)


def _parse(line: bytes) -> dict[str, Any] | None:
    """One segment line's fields, or None for a line that is not a whole answer."""
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) and all(name in fields for name in _COLUMNS) else None


def _fields_response(fields: dict[str, Any]) -> ChatResponse:
    return _cached([fields[name] for name in ("text", "finish_reason", "prompt_tokens", "completion_tokens", "model")])


class SegmentWriter:
    """One actor's append-only answer log: grouped appends, one fsync per group, readable back by offset.

    The writer holds an exclusive ``flock`` on its file for its whole life, so a reader tells a
    segment whose writer died (the lock is free) from one still growing.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{uuid.uuid4().hex}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._reader = os.open(self.path, os.O_RDONLY)
        self._offsets: dict[str, int] = {}  # this writer's written answers, to read its own back
        self._queued: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()  # one group write at a time (a flush runs in a thread)

    def append(self, key: str, teacher_name: str, response: ChatResponse) -> None:
        """Queue one answer; it is durable after the next :meth:`write_queued`."""
        line = json.dumps(dict(zip(_COLUMNS, _row(key, teacher_name, response))), ensure_ascii=False).encode("utf-8") + b"\n"
        self._queued.append((key, line))

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def written(self) -> int:
        return len(self._offsets)

    def write_queued(self) -> list[str]:
        """Append every queued answer in one write and fsync it (called from a thread); returns their keys."""
        with self._lock:
            group = self._queued[:]
            if not group:
                return []
            offset = os.fstat(self._fd).st_size  # appends go to the end, whatever a failed write left there
            torn = offset > 0 and os.pread(self._reader, 1, offset - 1) != b"\n"
            data = memoryview((b"\n" if torn else b"") + b"".join(line for _, line in group))
            offset += torn
            while data:  # a failure (a full disk) keeps the group queued: a partial line is skipped when read
                data = data[os.write(self._fd, data) :]
            os.fsync(self._fd)
            del self._queued[: len(group)]
            for key, line in group:
                self._offsets[key] = offset
                offset += len(line)
            return [key for key, _ in group]

    def read(self, key: str) -> ChatResponse | None:
        """An answer this writer wrote, or None."""
        offset = self._offsets.get(key)
        if offset is None:
            return None
        with self.path.open("rb") as handle:
            handle.seek(offset)
            fields = _parse(handle.readline())
        return None if fields is None else _fields_response(fields)

    def close(self) -> None:
        """Write what is queued and release the file (and its lock)."""
        try:
            self.write_queued()
        finally:
            os.close(self._reader)
            os.close(self._fd)


class SharedCache:
    """A Ray actor's view of a run's cache on storage every node mounts (see the module docstring).

    ``get`` looks in the run's cache (read-only and never locked: the driver merged and checkpointed
    it before the actors started and does not write it while they run), in the segments of actors
    that died during this run (a batch Ray retries here after a node loss is answered from what the
    dead actor had received), and in this actor's own segment. ``put`` queues the answer and
    :meth:`flush` writes the queue in one group from a thread; the engine awaits the flush before it
    hands an answer over, so answers arriving together share one write and one fsync (a group
    commit), and none is handed over before it is on disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._base: sqlite3.Connection | None = None
        if self.path.exists():
            try:
                self._base = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
                self._base.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            except sqlite3.DatabaseError as exc:
                raise MediflowError(f"cannot read the response cache {self.path}: {exc}") from exc
            if self._base.execute("SELECT 1 FROM sqlite_master WHERE name = 'responses'").fetchone() is None:
                self._base.close()
                self._base = None
        directory = segments_dir(self.path)
        self._dead = _index_dead_segments(directory)
        self._writer = SegmentWriter(directory)
        self._queued: dict[str, ChatResponse] = {}  # put, not yet written
        self._flushing: asyncio.Lock | None = None

    @property
    def segment(self) -> Path:
        """This actor's segment file."""
        return self._writer.path

    def get(self, key: str) -> ChatResponse | None:
        """The stored answer for ``key``, marked ``cached``, or None."""
        queued = self._queued.get(key)
        if queued is not None:
            return dataclasses.replace(queued, cached=True, headers={})
        if self._base is not None:
            row = self._base.execute(_SELECT, (key,)).fetchone()
            if row is not None:
                return _cached(row)
        own = self._writer.read(key)
        if own is not None:
            return own
        where = self._dead.get(key)
        if where is None:
            return None
        with where[0].open("rb") as handle:
            handle.seek(where[1])
            fields = _parse(handle.readline())
        return None if fields is None else _fields_response(fields)

    def put(self, key: str, teacher_name: str, response: ChatResponse) -> None:
        """Queue one answer (durable after the next :meth:`flush`)."""
        self._writer.append(key, teacher_name, response)
        self._queued[key] = response

    async def flush(self) -> None:
        """Write the queued answers in a thread; returns once every answer put before the call is on disk."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            if self._writer.queued:
                for key in await asyncio.to_thread(self._writer.write_queued):
                    self._queued.pop(key, None)

    def __len__(self) -> int:
        base = int(self._base.execute("SELECT COUNT(*) FROM responses").fetchone()[0]) if self._base is not None else 0
        return base + len(self._dead) + self._writer.written + len(self._queued)

    def close(self) -> None:
        """Write what is queued, release the segment, close the run's cache."""
        self._writer.close()
        self._queued.clear()
        if self._base is not None:
            self._base.close()


def _index_dead_segments(directory: Path) -> dict[str, tuple[Path, int]]:
    """Where each answer of a segment whose writer is gone sits (answers another actor received this run)."""
    index: dict[str, tuple[Path, int]] = {}
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        with path.open("rb") as handle:
            if not _writer_gone(handle):
                continue  # its actor is alive: its batches are its own
            for offset, line in _segment_lines(handle):
                fields = _parse(line)
                if fields is not None:
                    index[str(fields["key"])] = (path, offset)
    return index


def segment_usage(cache_path: Path) -> tuple[int, int, int]:
    """``(answers, prompt_tokens, completion_tokens)`` written in the segments next to ``cache_path``: what the run's
    actors paid for and have on disk (each fresh answer is one line; a request two actors both paid for, two)."""
    answers = prompt = completion = 0
    directory = segments_dir(cache_path)
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        with path.open("rb") as handle:
            for _, line in _segment_lines(handle):
                fields = _parse(line)
                if fields is not None:
                    answers += 1
                    prompt += int(fields["prompt_tokens"] or 0)
                    completion += int(fields["completion_tokens"] or 0)
    return answers, prompt, completion


def merge_segments(cache_path: Path) -> int:
    """Fold the actors' segments into the cache at ``cache_path`` and checkpoint it; returns the answers added.

    A segment whose writer is gone is removed once merged; one still held (an actor of this run still
    shutting down) is merged as far as it is written and kept, so the next merge finishes it. The
    cache is left with an empty WAL, so actors on other hosts can read the one file.
    """
    cache = ResponseCache(cache_path)  # creates the file and its table
    directory = segments_dir(cache_path)
    added = 0
    try:
        for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
            with path.open("rb") as handle:
                finished = _writer_gone(handle)
                rows = [tuple(fields[name] for name in _COLUMNS) for _, line in _segment_lines(handle) if (fields := _parse(line)) is not None]
            added += cache.put_rows(rows)
            if finished:
                path.unlink()
            else:
                logger.info("%s: its actor still holds it; merged what it holds, kept for the next merge", path)
        cache.checkpoint()
    finally:
        cache.close()
    with contextlib.suppress(OSError):
        directory.rmdir()  # only when empty
    return added
