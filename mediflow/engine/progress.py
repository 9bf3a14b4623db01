"""A progress display that says whether the run is moving, waiting on the provider, or stuck.

On a terminal (or in a notebook) it is a tqdm bar redrawn twice a second. Anywhere else (a log
file: CI, Slurm, nohup) redrawing writes a carriage-return frame per refresh, thousands of them on
one line, so there it is one plain line every :data:`LINE_EVERY_SECONDS` instead (records done,
req/s, tokens, $, errors, state), logged to the ``mediflow.progress`` logger (the CLI shows it on
stderr), plus a last line when the run ends.

Updates come from one ticker task, not from each answer, so the display costs nothing measurable
at hundreds of requests a second. By default it counts requests; the pipeline can switch it to its
own unit of work (records) with :meth:`Progress.set_total` and :meth:`Progress.advance`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Never

from tqdm import tqdm

from mediflow.engine.accounting import EngineStats

_TICK_SECONDS = 0.5
#: How often the progress line is written where there is no terminal to redraw a bar on.
LINE_EVERY_SECONDS = 30.0

logger = logging.getLogger("mediflow.progress")


def _interactive() -> bool:
    """A terminal or a notebook (whose front end redraws a bar in place), as opposed to a log file."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


@dataclass(frozen=True)
class Activity:
    """What the engine is doing right now."""

    in_flight: int
    oldest_in_flight_s: float  # 0 when nothing is in flight
    backing_off: int  # requests sleeping before a retry
    queued: int  # requests waiting for a concurrency slot or a rate-limit bucket
    since_last_answer_s: float


def describe_state(activity: Activity, request_timeout: float, typical_latency: float | None, *, work_left: bool = False) -> str:
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
        state = f"waiting on provider: {activity.in_flight} in flight, no answer for {activity.since_last_answer_s:.0f}s"
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
    """The engine's progress display (disabled -> no output and no ticker); see the module docstring."""

    def __init__(
        self,
        stats: EngineStats,
        activity: Callable[[], Activity],
        *,
        enabled: bool,
        request_timeout: float,
        interactive: bool | None = None,
        line_every: float = LINE_EVERY_SECONDS,
    ) -> None:
        self._stats = stats
        self._activity = activity
        self._enabled = enabled
        self._request_timeout = request_timeout
        self._interactive = interactive
        self._line_every = line_every
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
        if not self._enabled or self._ticker is not None:
            return
        interactive = self._interactive if self._interactive is not None else _interactive()
        if interactive:
            self._bar = tqdm(total=self._total, unit=self._unit, file=sys.stderr, dynamic_ncols=True, mininterval=0)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(_TICK_SECONDS if interactive else self._line_every))

    async def stop(self) -> None:
        if self._ticker is None:
            return
        self._ticker.cancel()
        try:
            await self._ticker
        except asyncio.CancelledError:
            pass
        self._ticker = None
        self._refresh()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    async def _tick_forever(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self._refresh()

    def line(self) -> str:
        """The progress as one line: units done (of the total), rate, cache hits, tokens, cost, errors, state."""
        return f"{self._counted()} | {self._figures()}"

    def _counted(self) -> str:
        if self._total is None:
            return f"{self._done} {self._unit}"
        share = f" ({self._done / self._total:.0%})" if self._total else ""
        return f"{self._done}/{self._total} {self._unit}{share}"

    def _figures(self) -> str:
        stats = self._stats
        elapsed = max(time.monotonic() - self._started, 1e-9)
        fresh = stats.requests - stats.cache_hits
        cost = f"${stats.cost_usd:.4f}" if stats.cost_known else "$?"
        work_left = self._total is not None and self._done < self._total
        typical = stats.latency().get("p50")
        state = self.note or describe_state(self._activity(), self._request_timeout, typical, work_left=work_left)
        return f"{fresh / elapsed:.1f} req/s, {stats.cache_hits} cached, {stats.tokens} tok, {cost}, {stats.error_count} err | {state}"

    def _refresh(self) -> None:
        if self._bar is None:
            logger.info("progress: %s", self.line())
            return
        self._bar.update(self._done - self._bar.n)
        self._bar.set_postfix_str(self._figures(), refresh=True)
