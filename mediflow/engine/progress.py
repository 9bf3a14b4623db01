"""A progress bar that says whether the run is moving, waiting on the provider, or stuck.

Updates come from one ticker task twice a second, not from each answer, so the bar costs nothing
measurable at hundreds of requests a second. By default it counts requests; the pipeline can switch
it to its own unit of work (records) with :meth:`Progress.set_total` and :meth:`Progress.advance`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Never

from tqdm import tqdm

from mediflow.engine.accounting import EngineStats

_TICK_SECONDS = 0.5


@dataclass(frozen=True)
class Activity:
    """What the engine is doing right now."""

    in_flight: int
    oldest_in_flight_s: float  # 0 when nothing is in flight
    backing_off: int  # requests sleeping before a retry
    queued: int  # requests waiting for a concurrency slot or a rate-limit bucket
    since_last_answer_s: float


def describe_state(
    activity: Activity, request_timeout: float, typical_latency: float | None, *, work_left: bool = False
) -> str:
    """One phrase: running / waiting on provider / stuck / backoff / rate-limited / idle.

    "Waiting on provider" means requests are out and the provider is slow to answer. "STUCK" means
    something on our side: a request outliving its own timeout, or nothing out at all (nothing in
    flight, queued or backing off) for a while although ``work_left`` says the run is not done.
    """
    patience = max(5.0, 3.0 * (typical_latency or 0.0))
    quiet = not (activity.in_flight or activity.queued or activity.backing_off)
    if activity.in_flight and activity.oldest_in_flight_s > request_timeout + 10.0:
        state = f"STUCK: a request in flight {activity.oldest_in_flight_s:.0f}s (timeout {request_timeout:.0f}s)"
    elif quiet and work_left and activity.since_last_answer_s > patience:
        state = f"STUCK: work left but nothing sent or answered for {activity.since_last_answer_s:.0f}s"
    elif activity.in_flight and activity.since_last_answer_s > patience:
        state = (
            f"waiting on provider: {activity.in_flight} in flight, "
            f"no answer for {activity.since_last_answer_s:.0f}s"
        )
    elif activity.in_flight:
        state = f"{activity.in_flight} in flight"
    elif activity.queued:
        state = f"rate-limited: {activity.queued} queued"
    elif activity.backing_off:
        state = "backing off"
    else:
        state = "idle"
    if activity.backing_off:
        state += f", {activity.backing_off} in backoff"
    return state


class Progress:
    """The engine's tqdm bar (disabled -> no output and no ticker)."""

    def __init__(
        self,
        stats: EngineStats,
        activity: Callable[[], Activity],
        *,
        enabled: bool,
        request_timeout: float,
    ) -> None:
        self._stats = stats
        self._activity = activity
        self._enabled = enabled
        self._request_timeout = request_timeout
        self._unit = "req"
        self._done = 0
        self._total: int | None = None
        self._bar: tqdm[Never] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        #: Shown instead of the engine's activity while set (batch mode: the batches in flight and the requests done).
        self.note: str | None = None

    @property
    def counts_requests(self) -> bool:
        return self._unit == "req"

    def set_total(self, total: int | None, unit: str = "records") -> None:
        """Count the caller's units (e.g. records) instead of requests; ``total`` enables the ETA."""
        self._unit, self._total, self._done = unit, total, 0
        if self._bar is not None:
            self._bar.reset(total=total)
            self._bar.unit = unit

    def advance(self, n: int = 1) -> None:
        self._done += n

    def start(self) -> None:
        if self._enabled and self._ticker is None:
            self._bar = tqdm(total=self._total, unit=self._unit, file=sys.stderr, dynamic_ncols=True, mininterval=0)
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        if self._bar is not None:
            self._refresh()
            self._bar.close()
            self._bar = None

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(_TICK_SECONDS)
            self._refresh()

    def _refresh(self) -> None:
        assert self._bar is not None
        stats = self._stats
        elapsed = max(time.monotonic() - self._started, 1e-9)
        fresh = stats.requests - stats.cache_hits
        cost = f"${stats.cost_usd:.4f}" if stats.cost_known else "$?"
        work_left = self._total is not None and self._done < self._total
        typical = stats.latency().get("p50")
        state = self.note or describe_state(self._activity(), self._request_timeout, typical, work_left=work_left)
        self._bar.update(self._done - self._bar.n)
        self._bar.set_postfix_str(
            f"{fresh / elapsed:.1f} req/s, {stats.cache_hits} cached, {stats.tokens} tok, {cost}, "
            f"{stats.error_count} err | {state}",
            refresh=True,
        )
