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


class ResponseCache:
    """A SQLite file of answers by :func:`cache_key`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against process kills; WAL keeps it consistent
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute(_SCHEMA)
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
