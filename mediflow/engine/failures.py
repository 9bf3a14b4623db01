"""What went wrong with one attempt, and whether trying again can help.

Teachers raise their transport's exceptions; this module is the one place that maps them to a
kind the engine counts, retries or gives up on. 429, 5xx, timeouts, connection errors, cut bodies
and truncated JSON answers are worth another attempt; 400/401/403/404 are not (the same request
will fail the same way), and 401/403/404 and an exhausted quota stop the whole run, since every
other request will fail too, as does a failed start-up check (:class:`TeacherUnavailable`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx
import openai

from mediflow.engine.limits import retry_after_seconds
from mediflow.errors import TeacherUnavailable


class TruncatedAnswer(Exception):
    """The teacher stopped at ``max_tokens`` although a JSON answer was asked for."""


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified."""

    kind: str  # rate_limited, server_error, timeout, connection, malformed, truncated, bad_request, auth, ...
    retryable: bool
    fatal: bool  # no later request can succeed either: stop the run
    message: str
    retry_after: float | None = None

    @property
    def is_overload(self) -> bool:
        """The server pushed back: the adaptive limit should shrink."""
        return self.kind == "rate_limited"


def classify(exc: BaseException) -> Failure:
    """Map an exception raised by a teacher (or by the engine's timeout) to a :class:`Failure`."""
    message = _one_line(exc)
    if isinstance(exc, TeacherUnavailable):  # the start-up check failed: no request can succeed
        return Failure("unavailable", retryable=False, fatal=True, message=message)
    if isinstance(exc, openai.APIStatusError):
        return _classify_status(exc.status_code, exc, message)
    if isinstance(exc, openai.APITimeoutError) and isinstance(exc.__cause__, httpx.ConnectTimeout):
        # The aiohttp transport reports a refused connection as a connect *timeout*: say what happened.
        return Failure("connection", retryable=True, fatal=False, message=f"cannot connect: {_one_line(exc.__cause__)}")
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError, httpx.TimeoutException)):
        return Failure("timeout", retryable=True, fatal=False, message=message or "request timed out")
    if isinstance(exc, (openai.APIConnectionError, httpx.TransportError, ConnectionError)):
        return Failure("connection", retryable=True, fatal=False, message=message)
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, httpx.DecodingError)):
        return Failure("malformed", retryable=True, fatal=False, message=f"malformed response: {message}")
    if isinstance(exc, TruncatedAnswer):
        return Failure("truncated", retryable=True, fatal=False, message=message)
    return Failure("unexpected", retryable=False, fatal=False, message=f"{type(exc).__name__}: {message}")


def _classify_status(status: int, exc: openai.APIStatusError, message: str) -> Failure:
    headers = {name.lower(): value for name, value in exc.response.headers.items()}
    detail = f"HTTP {status}: {message}"
    if status == 429:
        if getattr(exc, "code", None) == "insufficient_quota":
            return Failure("quota", retryable=False, fatal=True, message=detail)
        return Failure("rate_limited", True, False, detail, retry_after=retry_after_seconds(headers))
    if status in (401, 403):
        return Failure("auth", retryable=False, fatal=True, message=detail)
    if status == 404:
        return Failure("not_found", retryable=False, fatal=True, message=detail)
    if status in (408, 409) or status >= 500:
        return Failure("server_error", True, False, detail, retry_after=retry_after_seconds(headers))
    return Failure("bad_request", retryable=False, fatal=False, message=detail)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")
