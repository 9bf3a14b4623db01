"""Batch mode's hook in the engine: a cache miss is recorded for the next batch instead of being sent.

In batch mode (:mod:`mediflow.batch`) a stage runs in passes. During a pass the engine answers
what its cache holds as usual, and hands every miss to a :class:`DeferralSink` (which writes it as
a line of the next batch file) and raises :class:`Deferred`: the row that asked cannot go further
this pass. The runner catches it per unit of work (an instruction group, a record), so a deferred
row is never a reject, never a record and never counted as done. Once the batch's answers are in
the cache, the next pass goes one step further along each row's chain of requests.
"""

from __future__ import annotations

from typing import Protocol

from mediflow.teachers.base import ChatRequest


class Deferred(Exception):
    """The answer is not in the cache yet; the request went to the next batch."""

    def __init__(self, key: str) -> None:
        super().__init__(f"request {key[:12]} deferred to the next batch")
        self.key = key


class DeferralSink(Protocol):
    """Where a deferring engine records its misses (one per engine: the requests of one teacher)."""

    def defer(self, key: str, request: ChatRequest) -> None:
        """Record ``request`` (its cache key ``key``) for the next batch; the same key twice is one line."""
        ...
