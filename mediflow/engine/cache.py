"""Content-addressed response cache: every answer is durable the moment it arrives.

The key is a SHA-256 of exactly what changes an answer (teacher, rendered messages, sampling
parameters, response schema, sample index, seed, prompt version) and nothing else: never a hash of
code or of the dataset, so adding rows or moving code never invalidates finished work, and never an
API key. Storage is SQLite in WAL mode: each answer is its own committed transaction, so a SIGKILL
loses at most the requests still in flight, and any number of readers can open the file at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from mediflow.errors import MediflowError
from mediflow.records import canonical_json
from mediflow.teachers.base import ChatRequest, ChatResponse

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


class ResponseCache:
    """A SQLite file of answers by :func:`cache_key`; any number of processes may share one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise MediflowError(f"cannot open the response cache {self.path}: {exc}") from exc

    def get(self, key: str) -> ChatResponse | None:
        """The stored answer for ``key``, marked ``cached``, or None."""
        row = self._db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, model FROM responses WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        text, finish_reason, prompt_tokens, completion_tokens, model = row
        return ChatResponse(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=model,
            cached=True,
        )

    def put(self, key: str, teacher_name: str, response: ChatResponse) -> None:
        """Store one answer in its own committed transaction (headers are not stored)."""
        self._db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                teacher_name,
                response.text,
                response.finish_reason,
                response.prompt_tokens,
                response.completion_tokens,
                response.model,
                time.time(),
            ),
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        self._db.close()
