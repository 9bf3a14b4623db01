"""Batch files: the requests of one round as JSONL input files, and the provider's result files read back.

An input line is OpenAI's batch request format, which vLLM's ``run_batch`` and the other OpenAI-style
batch services read too::

    {"custom_id": "<our cache key>", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

The body is exactly what the teacher would send online (:meth:`Negotiation.wire`), so an answer
that comes back under ``custom_id`` is stored in the cache under the key the stage will look up.
A round's lines are split into files of at most ``max_lines`` lines and ``max_bytes`` bytes (the
provider's limits, configurable); the same key twice in a round is one line.

A result line (output file or error file) is::

    {"id": "...", "custom_id": "...", "response": {"status_code": 200, "request_id": "...", "body": {...}}, "error": null}

with ``response: null`` and an ``error`` (``batch_expired``, ``batch_cancelled``) for a line the
batch never ran. A file that does not read that way is one error naming the batch and the line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mediflow.errors import MediflowError
from mediflow.folders.atomic import commit
from mediflow.teachers.base import ChatRequest

#: How a request becomes one input line (the provider's :meth:`BatchAPI.line`).
LineMaker = Callable[[str, ChatRequest], dict[str, Any]]
_PARTIAL = ".part"


@dataclass(frozen=True)
class InputFile:
    """One finished input file of a round: where it is, how many lines and bytes, and its content hash."""

    path: Path
    lines: int
    size: int
    tag: str  # the first 16 hex digits of its SHA-256: names it in the batch's metadata


class RoundWriter:
    """The deferred requests of one teacher in one round, written as JSONL files split by lines and bytes.

    Lines are streamed to disk as they are deferred (a round of millions of requests never sits in
    memory); each file is written as ``<name>.part`` and renamed once complete.
    """

    def __init__(self, folder: Path, prefix: str, make_line: LineMaker, max_lines: int, max_bytes: int) -> None:
        self.folder = folder
        self.prefix = prefix
        self.make_line = make_line
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.files: list[InputFile] = []
        self._seen: set[str] = set()
        self._handle: IO[bytes] | None = None
        self._path: Path | None = None
        self._lines = 0
        self._size = 0
        self._hash = hashlib.sha256()

    @property
    def lines(self) -> int:
        """Lines written so far this round (over every file)."""
        return sum(file.lines for file in self.files) + self._lines

    def defer(self, key: str, request: ChatRequest) -> None:
        """Write ``request`` as a line (once per key per round), starting a new file at the limits."""
        if key in self._seen:
            return
        self._seen.add(key)
        data = (json.dumps(self.make_line(key, request), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        if len(data) > self.max_bytes:
            raise MediflowError(f"a request of {len(data):,} bytes does not fit a batch file of batch.max_bytes={self.max_bytes:,}; raise batch.max_bytes")
        if self._handle is not None and (self._lines >= self.max_lines or self._size + len(data) > self.max_bytes):
            self._close_file()
        if self._handle is None:
            self._path = self.folder / f"{self.prefix}-{len(self.files) + 1:04d}.jsonl"
            self._handle = open(self._path.with_name(self._path.name + _PARTIAL), "wb")
        self._handle.write(data)
        self._hash.update(data)
        self._lines += 1
        self._size += len(data)

    def close(self) -> list[InputFile]:
        """Finish the last file; the round's files, in order."""
        if self._handle is not None:
            self._close_file()
        return self.files

    def abandon(self) -> None:
        """Remove what this round wrote (a pass that failed: its misses will be deferred again)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            assert self._path is not None
            self._path.with_name(self._path.name + _PARTIAL).unlink(missing_ok=True)
        for file in self.files:
            file.path.unlink(missing_ok=True)
        self.files = []

    def _close_file(self) -> None:
        assert self._handle is not None and self._path is not None
        self._handle.close()
        self._handle = None
        commit(self._path.with_name(self._path.name + _PARTIAL), self._path)
        self.files.append(InputFile(self._path, self._lines, self._size, self._hash.hexdigest()[:16]))
        self._lines, self._size, self._hash = 0, 0, hashlib.sha256()


@dataclass(frozen=True)
class LineResult:
    """One line of a batch's output or error file."""

    custom_id: str
    status: int | None  # the line's HTTP status; None when the batch never ran it (expired, cancelled)
    body: dict[str, Any] | None  # the response body (a chat completion, or an error object)
    error: dict[str, Any] | None  # the line's own error (``batch_expired``) when it has no response

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body is not None

    def message(self) -> str:
        """What went wrong with this line, on one line."""
        error: Any = self.error
        if error is None and isinstance(self.body, dict):
            error = self.body.get("error", self.body)
        if isinstance(error, dict):
            text = str(error.get("message") or error.get("code") or error)
            code = error.get("code")
            text = f"{code}: {text}" if code and code not in text else text
        else:
            text = str(error)
        status = f"HTTP {self.status}: " if self.status is not None else ""
        return " ".join(f"{status}{text}".split())[:300]


def read_results(path: Path, what: str) -> Iterator[LineResult]:
    """The lines of a downloaded result file; a line that is not a result line is one error naming ``what`` and the line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                custom_id = line["custom_id"]
                response = line.get("response")
                if not isinstance(custom_id, str) or (response is not None and not isinstance(response, dict)):
                    raise ValueError("custom_id must be text and response an object")
                status = None if response is None else int(response["status_code"])
                body = None if response is None else response.get("body")
                if body is not None and not isinstance(body, dict):
                    raise ValueError("response.body must be an object")
                error = line.get("error")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise MediflowError(f"{what} is not a batch result file (line {number}: {reason})") from None
            yield LineResult(custom_id, status, body, error if isinstance(error, dict) else None)


def remove_partial(folder: Path) -> None:
    """Remove the half-written input files a killed pass left (their requests are deferred again)."""
    for leftover in folder.glob(f"*{_PARTIAL}"):
        leftover.unlink(missing_ok=True)
