"""The limiters, breaker and progress states on their own (no server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mediflow.engine.breaker import ErrorRateBreaker
from mediflow.engine.config import LimitsConfig
from mediflow.engine.limits import AdaptiveLimit, TokenBucket, retry_after_seconds
from mediflow.engine.progress import Activity, describe_state
from mediflow.errors import ConfigError


def test_aimd_halves_on_429_once_per_wave_and_grows_back() -> None:
    limit = AdaptiveLimit(32)
    wave_started = time.monotonic()
    limit.on_overload(wave_started)
    assert limit.limit == 16
    limit.on_overload(wave_started)  # another 429 from the same wave: no second cut
    assert limit.limit == 16
    limit.on_overload(time.monotonic())  # a 429 to a request sent after the cut
    assert limit.limit == 8
    for _ in range(200):
        limit.on_success(time.monotonic(), 0.1)
    assert 8 < limit.limit <= 32


def test_aimd_shrinks_when_latency_rises_well_above_its_baseline() -> None:
    limit = AdaptiveLimit(64, latency_tolerance=2.0, latency_floor=1.0)
    for _ in range(50):
        limit.on_success(time.monotonic(), 0.5)  # unloaded: 0.5 s
    assert limit.limit == 64 and limit.decreases == 0
    for _ in range(60):
        limit.on_success(time.monotonic(), 6.0)  # a queueing server: 12x slower, no 429s
    assert limit.decreases >= 1 and limit.limit < 64
    assert limit.latency_baseline is not None and limit.latency_baseline < 1.0  # still remembers "unloaded"


def test_aimd_ignores_small_absolute_latency_changes() -> None:
    limit = AdaptiveLimit(64, latency_tolerance=2.0, latency_floor=1.0)
    for latency in [0.01] * 50 + [0.2] * 100:  # 20x, but only 0.2 s: event-loop noise, not a queue
        limit.on_success(time.monotonic(), latency)
    assert limit.decreases == 0


def test_fixed_limit_is_not_adaptive() -> None:
    limit = AdaptiveLimit(8, adaptive=False)
    limit.on_overload(time.monotonic())
    assert limit.limit == 8


def test_adaptive_limit_bounds_in_flight() -> None:
    async def scenario() -> int:
        limit = AdaptiveLimit(3)
        peak = 0

        async def worker() -> None:
            nonlocal peak
            await limit.acquire()
            peak = max(peak, limit.in_flight)
            await asyncio.sleep(0.01)
            limit.release()

        await asyncio.gather(*(worker() for _ in range(20)))
        return peak

    assert asyncio.run(scenario()) == 3


def test_token_bucket_paces_to_its_rate() -> None:
    async def scenario() -> float:
        bucket = TokenBucket(per_minute=6000)  # 100/s, burst 100
        started = time.monotonic()
        for _ in range(150):
            await bucket.acquire(1)
        return time.monotonic() - started

    assert 0.45 <= asyncio.run(scenario()) < 2.0


def test_token_bucket_lets_an_oversized_request_through_when_full() -> None:
    async def scenario() -> float:
        bucket = TokenBucket(per_minute=600)  # capacity 10 tokens
        return await bucket.acquire(5000)

    assert asyncio.run(scenario()) < 0.1


def test_server_headers_lower_but_never_raise_the_users_limit() -> None:
    bucket = TokenBucket(per_minute=100)
    bucket.observe_server(limit=500, remaining=None, user_limit=100)
    assert bucket.per_minute == 100
    bucket.observe_server(limit=60, remaining=0, user_limit=100)
    assert bucket.per_minute == 60


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"x-ratelimit-reset-requests": "1m30s", "x-ratelimit-reset-tokens": "120ms"}) == 90.0
    assert retry_after_seconds({}) is None


def test_breaker_needs_enough_samples_then_trips_on_rate() -> None:
    breaker = ErrorRateBreaker(threshold=0.5, window=10, min_samples=5)
    for _ in range(4):
        breaker.record(True)
    assert not breaker.tripped
    breaker.record(True)
    assert breaker.tripped
    for _ in range(10):
        breaker.record(False)
    assert not breaker.tripped and breaker.failure_rate == 0.0


def test_progress_tells_waiting_from_stuck() -> None:
    waiting = Activity(in_flight=12, oldest_in_flight_s=40.0, backing_off=0, queued=0, since_last_answer_s=30.0)
    assert describe_state(waiting, request_timeout=120.0, typical_latency=2.0).startswith("waiting on provider")
    stuck = Activity(in_flight=12, oldest_in_flight_s=400.0, backing_off=0, queued=0, since_last_answer_s=300.0)
    assert describe_state(stuck, request_timeout=120.0, typical_latency=2.0).startswith("STUCK")
    backoff = Activity(in_flight=0, oldest_in_flight_s=0.0, backing_off=5, queued=0, since_last_answer_s=3.0)
    assert "5 in backoff" in describe_state(backoff, request_timeout=120.0, typical_latency=2.0)
    moving = Activity(in_flight=8, oldest_in_flight_s=1.0, backing_off=0, queued=0, since_last_answer_s=0.1)
    assert describe_state(moving, request_timeout=120.0, typical_latency=1.0) == "8 in flight"
    silent = Activity(in_flight=0, oldest_in_flight_s=0.0, backing_off=0, queued=0, since_last_answer_s=60.0)
    assert describe_state(silent, request_timeout=120.0, typical_latency=1.0, work_left=True).startswith("STUCK: work left")
    assert describe_state(silent, request_timeout=120.0, typical_latency=1.0, work_left=False) == "idle"


@pytest.mark.parametrize(("field", "value"), [("concurrency", 0), ("rpm", -1), ("error_rate_threshold", 1.5), ("max_retries", -1)])
def test_limits_reject_nonsense_built_from_python_or_loaded(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: "):
        LimitsConfig(**{field: value})
    with pytest.raises(ConfigError, match=f"^limits.{field}: "):
        LimitsConfig.load({"limits": {field: value}}, section="limits")
