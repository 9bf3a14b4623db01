"""Request and token buckets, and the adaptive (AIMD) concurrency limit.

Buckets refill continuously at ``limit / 60`` per second and hold one second's worth, so a
"600 rpm" limit sends 10 requests a second rather than 600 in the first instant (providers enforce
their per-minute limits over shorter periods). A request costing more than the capacity may go
when the bucket is full, driving it negative, so a large request is slowed but never deadlocked.
When the server reports its limits (``x-ratelimit-*``), the buckets adopt them.

Engines on several machines (``engine: ray``) keep one limit together through :class:`LeasedBucket`:
each takes chunks from a shared bucket (:class:`SharedLimits`, the run's coordinator actor) instead
of holding a fixed share of the limit.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import Mapping
from typing import Protocol

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class TokenBucket:
    """A continuously refilled bucket; ``acquire(cost)`` waits until the cost can be paid."""

    def __init__(self, per_minute: float | None) -> None:
        self.per_minute = per_minute
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()  # FIFO: the oldest waiter is served first

    @property
    def capacity(self) -> float:
        return max(1.0, (self.per_minute or 0.0) / 60.0)

    def _refill(self) -> None:
        now = time.monotonic()
        if self.per_minute is not None:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.per_minute / 60.0)
        self._stamp = now

    async def acquire(self, cost: float = 1.0) -> float:
        """Take ``cost`` from the bucket, waiting for refill if needed; returns the seconds waited."""
        if self.per_minute is None:
            return 0.0
        started = time.monotonic()
        async with self._lock:
            while True:
                self._refill()
                needed = min(cost, self.capacity)
                if self._level >= needed or self.per_minute is None:
                    self._level -= cost
                    return time.monotonic() - started
                await asyncio.sleep((needed - self._level) * 60.0 / self.per_minute)

    def refund(self, amount: float) -> None:
        """Give back an over-reservation (or take more when ``amount`` is negative)."""
        if self.per_minute is not None:
            self._refill()
            self._level = min(self.capacity, self._level + amount)

    def observe_server(self, limit: float | None, remaining: float | None, *, user_limit: float | None) -> None:
        """Adopt the server's per-minute limit (never above the user's) and never hold more than it has left."""
        if limit is not None and limit > 0:
            self.per_minute = min(limit, user_limit) if user_limit is not None else limit
        if remaining is not None and self.per_minute is not None:
            self._refill()
            self._level = min(self._level, remaining)


class RateLimitHeaders:
    """The ``x-ratelimit-*`` and ``retry-after`` values of one response."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.limit_requests = _number(headers.get("x-ratelimit-limit-requests"))
        self.limit_tokens = _number(headers.get("x-ratelimit-limit-tokens"))
        self.remaining_requests = _number(headers.get("x-ratelimit-remaining-requests"))
        self.remaining_tokens = _number(headers.get("x-ratelimit-remaining-tokens"))


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``retry-after`` or ``x-ratelimit-reset-*``)."""
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    seconds = _number(headers.get("retry-after"))
    if seconds is not None:
        return seconds
    resets = [_duration(headers.get(name)) for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")]
    known = [value for value in resets if value is not None]
    return max(known) if known else None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _duration(value: str | None) -> float | None:
    """OpenAI's reset format: ``"1s"``, ``"6m0s"``, ``"120ms"``."""
    if not value:
        return None
    parts = _DURATION_PART.findall(value)
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts) if parts else _number(value)


class AdaptiveLimit:
    """A concurrency limit that moves between 1 and ``maximum`` (additive increase, multiplicative decrease).

    It increases by about one slot per ``limit`` successes and halves on a 429. It also shrinks
    (x0.8) when the recent latency rises well above its baseline: a saturated self-hosted server
    queues requests instead of refusing them, and latency is the only signal it gives. A decrease
    applies once per wave: answers to requests sent before the last decrease cannot trigger another.
    """

    def __init__(self, maximum: int, *, adaptive: bool = True, latency_tolerance: float = 2.0, latency_floor: float = 1.0) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self.limit = float(maximum)
        self.in_flight = 0
        self.decreases = 0
        self._latency_tolerance = latency_tolerance
        self._latency_floor = latency_floor
        self._recent_latency: float | None = None  # short EWMA
        self._baseline: float | None = None  # slow-rising minimum of the EWMA
        self._last_decrease = float("-inf")
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> float:
        """Wait for a slot; returns the start time to hand back to :meth:`release`."""
        if self.in_flight >= int(self.limit) or self._waiters:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self.release()  # we were handed a slot we will not use: pass it on
                else:
                    self._waiters.remove(future)
                raise
        else:
            self.in_flight += 1
        return time.monotonic()

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < int(self.limit):
            future = self._waiters.popleft()
            if not future.done():
                self.in_flight += 1
                future.set_result(None)

    def on_success(self, started: float, latency: float) -> None:
        if not self.adaptive:
            return
        self._observe_latency(latency)
        if self._latency_risen() and started > self._last_decrease:
            self._decrease(0.8)
        elif self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
            self._wake()

    def on_overload(self, started: float) -> None:
        """A 429 (or similar push-back) for a request sent at ``started``."""
        if self.adaptive and started > self._last_decrease:
            self._decrease(0.5)

    def _decrease(self, factor: float) -> None:
        self.limit = max(1.0, self.limit * factor)
        self._last_decrease = time.monotonic()
        self.decreases += 1

    def _observe_latency(self, latency: float) -> None:
        if self._recent_latency is None:
            self._recent_latency = self._baseline = latency
            return
        self._recent_latency += 0.1 * (latency - self._recent_latency)
        assert self._baseline is not None
        # The baseline follows the EWMA down at once and up only slowly, so it remembers "unloaded".
        if self._recent_latency < self._baseline:
            self._baseline = self._recent_latency
        else:
            self._baseline += 0.001 * (self._recent_latency - self._baseline)

    def _latency_risen(self) -> bool:
        if self._recent_latency is None or self._baseline is None:
            return False
        return self._recent_latency > self._latency_tolerance * self._baseline and self._recent_latency - self._baseline > self._latency_floor

    @property
    def latency_baseline(self) -> float | None:
        return self._baseline


class SharedLimits(Protocol):
    """The buckets several engines draw from together (``engine: ray``: the run's coordinator actor).

    Buckets are named; each holds one per-minute limit for all the engines that use its name.
    """

    async def take(self, name: str, per_minute: float, amount: float) -> float:
        """Wait until ``amount`` can be taken from bucket ``name`` (created at ``per_minute``), take it, return it."""
        ...

    def give_back(self, name: str, amount: float) -> None:
        """Return what an engine took and did not spend (fire and forget)."""

    def observe(self, name: str, limit: float | None, remaining: float | None, user_limit: float | None) -> None:
        """What the server reported for bucket ``name`` (``x-ratelimit-*``), as :meth:`TokenBucket.observe_server` takes it."""


class LeasedBucket:
    """This engine's end of a bucket shared with other engines: it takes chunks from the shared bucket and spends them here.

    A chunk is a tenth of a second of the limit (at least one unit), so the shared bucket is asked
    about ten times a second at most, not on every request, and an engine holds at most a chunk
    the others cannot use. An engine that runs out of work leaves nothing idle: the shared bucket
    gives the whole limit to whoever asks (the tail of a run, a run after a node loss). Same
    interface as :class:`TokenBucket`.
    """

    #: Seconds of the limit taken at a time.
    CHUNK_S = 0.1
    #: Seconds between two reports of the server's ``remaining`` (a changed limit is reported at once).
    REPORT_EVERY_S = 1.0

    def __init__(self, name: str, per_minute: float | None, shared: SharedLimits) -> None:
        self.name = name
        self.per_minute = per_minute
        self._shared = shared
        self._reserve = 0.0
        self._lock = asyncio.Lock()  # FIFO: the oldest waiter is served first
        self._reported = float("-inf")

    @property
    def chunk(self) -> float:
        return max(1.0, (self.per_minute or 0.0) / 60.0 * self.CHUNK_S)

    async def acquire(self, cost: float = 1.0) -> float:
        """Take ``cost``, from this engine's reserve or a chunk of the shared bucket; returns the seconds waited."""
        if self.per_minute is None:
            return 0.0
        started = time.monotonic()
        async with self._lock:
            if self._reserve < cost:
                self._reserve += await self._shared.take(self.name, self.per_minute, max(self.chunk, cost - self._reserve))
            self._reserve -= cost
        return time.monotonic() - started

    def refund(self, amount: float) -> None:
        """Give back an over-reservation (or take more when ``amount`` is negative); more than a chunk goes back to the shared bucket."""
        if self.per_minute is None:
            return
        self._reserve += amount
        if self._reserve > self.chunk:
            self._shared.give_back(self.name, self._reserve - self.chunk)
            self._reserve = self.chunk

    def observe_server(self, limit: float | None, remaining: float | None, *, user_limit: float | None) -> None:
        """Pass the server's limits on to the shared bucket (a changed limit at once, ``remaining`` once a second)."""
        known = None
        if limit is not None and limit > 0:
            known = min(limit, user_limit) if user_limit is not None else limit
        changed = known is not None and known != self.per_minute
        if changed:
            self.per_minute = known
        now = time.monotonic()
        if changed or (remaining is not None and self.per_minute is not None and now - self._reported >= self.REPORT_EVERY_S):
            self._reported = now
            self._shared.observe(self.name, limit, remaining, user_limit)

    def release(self) -> None:
        """Hand the unspent reserve back (an engine closing)."""
        if self.per_minute is not None and self._reserve > 0:
            self._shared.give_back(self.name, self._reserve)
        self._reserve = 0.0
