"""The engine: cache -> limits -> retries -> teacher, one request at a time, many at once.

``await engine.complete(request)`` is the whole interface. Requests stream through independently
(no batches, no barriers: a slow answer never holds back the next request); each answer is
written to the cache before ``complete`` returns, so a crash loses only what was in flight.

In batch mode (:meth:`Engine.defer_misses`, driven by :mod:`mediflow.batch`) a miss is not sent:
it is handed to a :class:`~mediflow.engine.deferral.DeferralSink` and the caller gets
:class:`~mediflow.engine.deferral.Deferred`; the batch's answers come back through
:meth:`Engine.store_batch_answer`, into the same cache.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from mediflow.engine.accounting import BatchUsage, EngineStats, Mode, price_per_1k
from mediflow.engine.breaker import ErrorRateBreaker
from mediflow.engine.cache import AnswerStore, ResponseCache, SharedCache, cache_key
from mediflow.engine.config import LimitsConfig, PricesConfig
from mediflow.engine.deferral import DeferralSink, Deferred
from mediflow.engine.failures import Failure, TruncatedAnswer, classify
from mediflow.engine.limits import AdaptiveLimit, LeasedBucket, RateLimitHeaders, SharedLimits, TokenBucket
from mediflow.engine.progress import Activity, Progress
from mediflow.errors import TeacherError
from mediflow.teachers.base import ChatRequest, ChatResponse, Teacher

#: Characters per token, for reserving tokens-per-minute before the server counts them.
_CHARS_PER_TOKEN = 4


class CircuitOpenError(TeacherError):
    """The engine stopped: the teacher failed too often (or refused our credentials). Cached work is kept."""


class _AttemptFailed(Exception):
    """One attempt failed; carries the classification (and the answer, for truncated ones)."""

    def __init__(self, failure: Failure, response: ChatResponse | None = None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.response = response


class Engine:
    """Moves requests to one teacher under limits, with retries, a durable cache and accounting.

    Stages do not build one themselves: :func:`mediflow.steps.open_engine` builds the teacher and
    its engine and closes both. Use as ``async with``; the cache file is opened, and the progress bar
    started, on the first request, so an engine may be opened before the folder holding its cache
    has been guarded (``generate`` asks its server before it writes anything).
    """

    def __init__(
        self,
        teacher: Teacher,
        cache_path: Path,
        limits: LimitsConfig | None = None,
        *,
        prices: PricesConfig | None = None,
        progress: bool = True,
        shared_limits: SharedLimits | None = None,
        shared_cache: bool = False,
    ) -> None:
        self.teacher = teacher
        self.config = limits or LimitsConfig()
        self.prices = prices or PricesConfig()
        self.cache_path = Path(cache_path)
        #: A Ray actor's engine: read ``cache_path`` read-only and append answers to this actor's own
        #: segment, written in groups (:class:`~mediflow.engine.cache.SharedCache`); see :meth:`flush`.
        self.shared_cache = shared_cache
        #: Awaited after each flush that wrote answers, before they are handed over: a Ray actor reports its totals
        #: there, so the counts of an actor that dies include every answer it had on disk (``ActorSession.opened``).
        self.after_flush: Callable[[], Awaitable[None]] | None = None
        self.stats = EngineStats()
        self.limit = AdaptiveLimit(
            min(self.config.concurrency, teacher.max_concurrency or self.config.concurrency),
            adaptive=self.config.adaptive,
            latency_tolerance=self.config.latency_tolerance,
            latency_floor=self.config.latency_floor,
        )
        #: ``engine: ray`` runs one engine per actor; their rpm and tpm buckets are ends of the run's shared
        #: buckets (named after the teacher), so together they keep the limits, configured or reported by the server.
        self.request_bucket: TokenBucket | LeasedBucket
        self.token_bucket: TokenBucket | LeasedBucket
        if shared_limits is None:
            self.request_bucket, self.token_bucket = TokenBucket(self.config.rpm), TokenBucket(self.config.tpm)
        else:
            name = f"{teacher.name} at {teacher.describe()}"
            self.request_bucket = LeasedBucket(f"{name}: requests", self.config.rpm, shared_limits)
            self.token_bucket = LeasedBucket(f"{name}: tokens", self.config.tpm, shared_limits)
        self.progress = Progress(self.stats, self._activity, enabled=progress, request_timeout=self.config.request_timeout)
        self._breaker = ErrorRateBreaker(self.config.error_rate_threshold, self.config.error_window, self.config.error_min_samples)
        self._cache: AnswerStore | None = None
        self._deferrals: DeferralSink | None = None
        self._entered = False
        self._stop_reason: str | None = None
        self._pending: dict[str, asyncio.Future[ChatResponse]] = {}
        self._in_flight: dict[int, float] = {}
        self._attempt_ids = itertools.count()
        self._backing_off = 0
        self._queued = 0
        self._last_answer = time.monotonic()
        self._prices: dict[tuple[str, Mode], tuple[float, float] | None] = {}
        self._where = teacher.describe()
        self._backoff = wait_random_exponential(multiplier=self.config.backoff_initial, max=self.config.backoff_max)

    async def __aenter__(self) -> Engine:
        self._entered = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._entered = False
        await self.progress.stop()
        for bucket in (self.request_bucket, self.token_bucket):
            if isinstance(bucket, LeasedBucket):
                bucket.release()
        if self._cache is not None:
            await self._cache.flush()
            if self.after_flush is not None:
                await self.after_flush()
            self._cache.close()
            self._cache = None

    def _opened_cache(self) -> AnswerStore:
        """The cache, opened (and the progress bar started) on the first request."""
        if not self._entered:
            raise RuntimeError("use the engine inside 'async with Engine(...)'")
        if self._cache is None:
            self._cache = SharedCache(self.cache_path) if self.shared_cache else ResponseCache(self.cache_path)
            self.progress.start()
        return self._cache

    async def flush(self) -> None:
        """Make every answer received so far durable (a shared cache writes its queue; a local one has nothing queued)."""
        if self._cache is not None:
            await self._cache.flush()
            if self.after_flush is not None:
                await self.after_flush()

    @property
    def stopped(self) -> bool:
        """True once the breaker tripped; every later ``complete`` raises :class:`CircuitOpenError`."""
        return self._stop_reason is not None

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """The teacher's answer to ``request``: from the cache, or fetched under limits and retries, then cached.

        Raises :class:`TeacherError` when the request still fails after its retries (or is not
        retryable, e.g. HTTP 400), and :class:`CircuitOpenError` once the engine has stopped.
        A JSON answer still truncated after the retries is returned (``finish_reason == "length"``)
        for the caller to reject with its reason. While misses are deferred (batch mode), a miss
        raises :class:`Deferred` and a hit is not counted (the stage's last pass counts it).
        """
        cache = self._opened_cache()
        self._raise_if_stopped()
        key = cache_key(self.teacher.name, request)
        cached = cache.get(key)
        if cached is not None:
            if self._deferrals is None:
                self.stats.requests += 1
                self.stats.cache_hits += 1
                self._advance_progress()
            return cached
        if self._deferrals is not None:
            self._deferrals.defer(key, request)
            raise Deferred(key)
        pending = self._pending.get(key)
        if pending is not None:  # the same request is already in flight: share its answer
            return await asyncio.shield(pending)
        future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            response = await self._fetch(key, request)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: sharing waiters, if any, re-raise it
            raise
        else:
            future.set_result(response)
            return response
        finally:
            del self._pending[key]

    def cost_usd(self, response: ChatResponse, mode: Mode = "online") -> float | None:
        """What ``response`` costs in ``mode`` (also for cached answers); None if unpriced.

        Records carry the online list price of their answers whichever way they were bought, so a
        record made in batch mode is the same bytes as one made online; what a batch run paid is in
        the stats (:attr:`EngineStats.batch`).
        """
        price = self._price(response.model, mode)
        if price is None:
            return None
        return (response.prompt_tokens * price[0] + response.completion_tokens * price[1]) / 1000.0

    def defer_misses(self, sink: DeferralSink | None) -> None:
        """Batch mode: hand every cache miss to ``sink`` and raise :class:`Deferred` (``None``: stop deferring)."""
        self._deferrals = sink
        if sink is not None and self.stats.batch is None:
            self.stats.batch = BatchUsage()

    def store_batch_answer(self, key: str, response: ChatResponse) -> None:
        """An answer that arrived in a batch output file: into the cache under ``key``, counted at the batch price."""
        self._opened_cache().put(key, self.teacher.name, response)
        if self.stats.batch is None:
            self.stats.batch = BatchUsage()
        usage = self.stats.batch
        usage.requests += 1
        usage.prompt_tokens += response.prompt_tokens
        usage.completion_tokens += response.completion_tokens
        self.stats.prompt_tokens += response.prompt_tokens
        self.stats.completion_tokens += response.completion_tokens
        cost, online = self.cost_usd(response, "batch"), self.cost_usd(response)
        if cost is None or online is None:
            usage.cost_known = self.stats.cost_known = False
        else:
            usage.cost_usd += cost
            usage.online_cost_usd += online
            self.stats.cost_usd += cost
        self._last_answer = time.monotonic()

    async def _fetch(self, key: str, request: ChatRequest) -> ChatResponse:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=self._wait_before_retry,
            retry=retry_if_exception(self._worth_retrying),
            sleep=self._sleep_in_backoff,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._attempt(request)
        except _AttemptFailed as failed:
            self._raise_if_stopped()
            if failed.response is None:
                self.stats.failed_requests += 1
                attempts = retrying.statistics.get("attempt_number", 1)
                raise TeacherError(f"teacher at {self._where}: request failed after {attempts} attempt(s): {failed.failure.message}") from None
            response = failed.response  # truncated every time: hand it over, the caller rejects it
        self._store(key, response)
        await self.flush()  # a shared cache writes answers arriving together as one group; none is handed over before it is on disk
        return response

    async def _attempt(self, request: ChatRequest) -> ChatResponse:
        reserved = _estimate_tokens(request)
        self._queued += 1
        try:
            await self.request_bucket.acquire(1)
            await self.token_bucket.acquire(reserved)
            started = await self.limit.acquire()
        finally:
            self._queued -= 1
        attempt_id = next(self._attempt_ids)
        self._in_flight[attempt_id] = started
        self.stats.attempts += 1
        try:
            self._raise_if_stopped()
            async with asyncio.timeout(self.config.request_timeout):
                response = await self.teacher.complete(request)
        except CircuitOpenError:
            raise
        except Exception as exc:
            failure = classify(exc)
            self._on_failure(failure, started)
            raise _AttemptFailed(failure) from exc
        finally:
            del self._in_flight[attempt_id]
            self.limit.release()
        latency = time.monotonic() - started
        self.stats.record_latency(latency)
        self.limit.on_success(started, latency)
        self.token_bucket.refund(reserved - response.prompt_tokens - response.completion_tokens)
        if response.headers:
            self._observe_rate_limits(response)
        if request.response_schema is not None and response.finish_reason == "length":
            failure = classify(TruncatedAnswer(f"JSON answer cut at max_tokens={request.max_tokens}"))
            self._on_failure(failure, started)
            raise _AttemptFailed(failure, response)
        self._breaker.record(False)
        return response

    def _store(self, key: str, response: ChatResponse) -> None:
        self._opened_cache().put(key, self.teacher.name, response)
        self._last_answer = time.monotonic()
        self.stats.requests += 1
        self.stats.prompt_tokens += response.prompt_tokens
        self.stats.completion_tokens += response.completion_tokens
        cost = self.cost_usd(response)
        if cost is None:
            self.stats.cost_known = False
        else:
            self.stats.cost_usd += cost
        self._advance_progress()

    def _on_failure(self, failure: Failure, started: float) -> None:
        self.stats.errors[failure.kind] += 1
        if failure.is_overload:
            self.limit.on_overload(started)
            return
        self._breaker.record(True)
        if failure.kind == "unavailable":  # the teacher's start-up check: its line names the teacher and the cause
            self._stop(failure.message)
        elif failure.fatal:
            self._stop(f"teacher at {self._where} refused the run ({failure.kind}): {failure.message}")
        elif self._breaker.tripped:
            self._stop(f"teacher at {self._where} failing: {self._breaker.failure_rate:.0%} of the last {self._breaker.samples} requests failed; last error: {failure.message}")

    def _stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason + " (answers received so far are cached; rerun to resume)"

    def _raise_if_stopped(self) -> None:
        if self._stop_reason is not None:
            raise CircuitOpenError(self._stop_reason)

    def _worth_retrying(self, exc: BaseException) -> bool:
        return isinstance(exc, _AttemptFailed) and exc.failure.retryable and self._stop_reason is None

    def _wait_before_retry(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _AttemptFailed) and exc.failure.retry_after is not None:
            return max(0.0, exc.failure.retry_after) * random.uniform(1.0, 1.1)
        return self._backoff(state)

    async def _sleep_in_backoff(self, seconds: float) -> None:
        self.stats.retries += 1
        self._backing_off += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self._backing_off -= 1

    def _observe_rate_limits(self, response: ChatResponse) -> None:
        limits = RateLimitHeaders(response.headers)
        self.request_bucket.observe_server(limits.limit_requests, limits.remaining_requests, user_limit=self.config.rpm)
        self.token_bucket.observe_server(limits.limit_tokens, limits.remaining_tokens, user_limit=self.config.tpm)

    def _price(self, model: str, mode: Mode = "online") -> tuple[float, float] | None:
        if (model, mode) not in self._prices:
            prices = self.prices
            configured = (prices.input_per_1k, prices.output_per_1k, prices.batch_input_per_1k, prices.batch_output_per_1k)
            if all(price is None for price in configured) and self.teacher.price_per_1k:
                self._prices[model, mode] = self.teacher.price_per_1k
            else:
                self._prices[model, mode] = price_per_1k(
                    model or self.teacher.model,
                    prices.input_per_1k,
                    prices.output_per_1k,
                    mode=mode,
                    batch_input_override=prices.batch_input_per_1k,
                    batch_output_override=prices.batch_output_per_1k,
                )
        return self._prices[model, mode]

    def _advance_progress(self) -> None:
        if self.progress.counts_requests:
            self.progress.advance()

    def _activity(self) -> Activity:
        now = time.monotonic()
        oldest = min(self._in_flight.values(), default=now)
        return Activity(
            in_flight=len(self._in_flight),
            oldest_in_flight_s=now - oldest,
            backing_off=self._backing_off,
            queued=self._queued,
            since_last_answer_s=now - self._last_answer,
        )


def _estimate_tokens(request: ChatRequest) -> int:
    characters = sum(len(content) for _, content in request.messages)
    return characters // _CHARS_PER_TOKEN + request.max_tokens
