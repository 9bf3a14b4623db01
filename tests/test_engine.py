"""The engine against the real test teacher subprocess, through the real openai client (loopback only)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mediflow.engine import CircuitOpenError, Engine, LimitsConfig, PricesConfig, cache_key
from mediflow.engine.accounting import EngineStats
from mediflow.engine.cache import ResponseCache
from mediflow.engine.progress import Activity, Progress
from mediflow.errors import TeacherError
from mediflow.teachers import ChatRequest, ChatResponse, make_teacher
from mediflow.testing import TeacherServerURL

SCHEMA = {
    "type": "object",
    "properties": {
        "diagnosis": {"type": "string"},
        "icd10": {"type": "string", "pattern": "^[A-Z][0-9]{2}(\\.[0-9A-Z]{1,4})?$"},
        "severity": {"type": "string", "enum": ["mild", "moderate", "severe"]},
    },
    "required": ["diagnosis", "icd10"],
}


def fast_config(**changes: Any) -> LimitsConfig:
    """Test settings: short backoff and timeouts."""
    defaults: dict[str, Any] = {
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "request_timeout": 10.0,
    }
    return LimitsConfig(**{**defaults, **changes})


def plain(i: int, max_tokens: int = 200) -> ChatRequest:
    return ChatRequest(messages=(("system", "Write a short progress note."), ("user", f"patient {i}")), max_tokens=max_tokens)


def structured(i: int) -> ChatRequest:
    return ChatRequest(messages=(("user", f"Code the diagnosis of patient {i}."),), response_schema=SCHEMA)


async def run_requests(url: str, cache: Path, requests: list[ChatRequest], config: LimitsConfig | None = None) -> tuple[list[Any], Engine]:
    teacher = make_teacher("openai:test-teacher", base_url=url)
    try:
        async with Engine(teacher, cache, config or fast_config(), progress=False) as engine:
            results = await asyncio.gather(*(engine.complete(r) for r in requests), return_exceptions=True)
    finally:
        await teacher.aclose()
    return results, engine


def test_answers_are_cached_and_a_rerun_sends_nothing(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    requests = [plain(i) for i in range(20)] + [structured(i) for i in range(5)]
    first, engine = asyncio.run(run_requests(teacher_server, tmp_path / "cache.sqlite", requests))
    assert teacher_server.stats()["requests"] == 25
    assert engine.stats.requests == 25 and engine.stats.cache_hits == 0
    for response in first[20:]:
        jsonschema.validate(json.loads(response.text), SCHEMA)

    second, engine = asyncio.run(run_requests(teacher_server, tmp_path / "cache.sqlite", requests))
    assert teacher_server.stats()["requests"] == 25  # nothing new reached the server
    assert engine.stats.cache_hits == 25
    assert [r.text for r in second] == [r.text for r in first]
    assert all(r.cached for r in second)


def test_cache_key_covers_what_changes_the_answer_and_nothing_else() -> None:
    base = plain(1)
    assert cache_key("openai:m", base) == cache_key("openai:m", plain(1))
    variants = [
        ChatRequest(messages=base.messages, max_tokens=base.max_tokens, temperature=0.1),
        ChatRequest(messages=base.messages, max_tokens=base.max_tokens, seed=3),
        ChatRequest(messages=base.messages, max_tokens=base.max_tokens, sample_index=1),
        ChatRequest(messages=base.messages, max_tokens=base.max_tokens, prompt_version="abc"),
        ChatRequest(messages=base.messages, max_tokens=base.max_tokens, response_schema=SCHEMA),
        plain(2),
    ]
    keys = {cache_key("openai:m", r) for r in variants} | {cache_key("openai:other", base)}
    assert len(keys) == len(variants) + 1 and cache_key("openai:m", base) not in keys


def test_many_connections_open_one_fresh_cache_at_once(tmp_path: Path) -> None:
    # Ray actors and shards on a shared disk open one cache together; turning a fresh file to WAL
    # used to fail one of them at once with "database is locked" (seen in CI on the Ray pairs test).
    failures: list[BaseException] = []
    for trial in range(60):
        path = tmp_path / f"cache-{trial}.sqlite"
        start = threading.Barrier(8)

        def open_and_write(worker: int, path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                cache = ResponseCache(path)
                cache.put(f"key-{worker}", "openai:m", ChatResponse(text=str(worker), finish_reason="stop"))
                cache.close()
            except BaseException as exc:  # collected, then asserted empty below
                failures.append(exc)

        workers = [threading.Thread(target=open_and_write, args=(worker,)) for worker in range(8)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        assert not failures, failures[:3]
        cache = ResponseCache(path)
        assert len(cache) == 8
        cache.close()


def test_concurrency_cap_is_honoured(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(latency=0.1)
    results, _ = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [plain(i) for i in range(48)], fast_config(concurrency=6)))
    assert not [r for r in results if isinstance(r, BaseException)]
    assert teacher_server.stats()["max_in_flight"] == 6


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("429", "rate_limited"),
        ("500", "server_error"),
        ("malformed", "malformed"),
        ("cut", "connection"),
        ("truncated", "truncated"),
    ],
)
def test_each_fault_is_retried_and_survived(teacher_server: TeacherServerURL, tmp_path: Path, fault: str, kind: str) -> None:
    teacher_server.control(sequence=[fault, fault], retry_after=0.01)
    [response], engine = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [structured(1)]))
    jsonschema.validate(json.loads(response.text), SCHEMA)
    assert response.finish_reason == "stop"
    assert teacher_server.stats()["requests"] == 3
    assert engine.stats.retries == 2 and engine.stats.errors == {kind: 2}


def test_retry_after_is_honoured(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(sequence=["429"], retry_after=0.6)
    started = time.monotonic()
    [response], engine = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [plain(1)]))
    assert response.text and engine.stats.errors == {"rate_limited": 1}
    assert time.monotonic() - started >= 0.6


#: Long enough that no loopback answer reaches it, however loaded the machine (one took over 0.5 s at
#: load average 15); only the scripted hang, which the server holds until the client gives up, does.
HANG_TIMEOUT = 5.0


def test_a_hanging_request_times_out_and_is_retried(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(sequence=["hang"])
    [response], engine = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [plain(1)], fast_config(request_timeout=HANG_TIMEOUT)))
    assert response.text and engine.stats.errors == {"timeout": 1} and engine.stats.attempts == 2
    stats = teacher_server.stats()  # the server's own count: the hang, then one answer
    assert stats["faults"] == {"hang": 1} and stats["requests"] == 2 and stats["served"] == 1


def test_a_json_answer_truncated_every_time_is_returned_for_the_caller_to_reject(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(sequence=["truncated"] * 3)
    [response], engine = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [structured(1)], fast_config(max_retries=2)))
    assert response.finish_reason == "length"
    assert engine.stats.errors == {"truncated": 3} and not engine.stopped


def test_bad_request_is_not_retried(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(sequence=["400"])
    [error, ok], engine = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [plain(1), plain(2)]))
    assert isinstance(error, TeacherError) and not isinstance(error, CircuitOpenError)
    assert "HTTP 400" in str(error) and "1 attempt" in str(error)
    assert ok.text and not engine.stopped
    assert teacher_server.stats()["requests"] == 2


def test_unauthorised_stops_the_engine_without_retrying(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(sequence=["401"])
    [error], engine = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [plain(1)]))
    assert isinstance(error, CircuitOpenError) and "HTTP 401" in str(error)
    assert engine.stopped and teacher_server.stats()["requests"] == 1


def test_error_rate_breaker_stops_with_a_clear_message_and_keeps_the_cache(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite"
    asyncio.run(run_requests(teacher_server, cache, [plain(i) for i in range(5)]))
    teacher_server.control(fault_rates={"500": 1.0})
    config = fast_config(error_window=10, error_min_samples=10, max_retries=3, concurrency=4)
    results, engine = asyncio.run(run_requests(teacher_server, cache, [plain(i) for i in range(40)], config))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 35 and all(isinstance(e, CircuitOpenError) for e in errors)
    message = str(errors[0])
    assert f"teacher at {teacher_server} failing: 100% of the last 10 requests failed" in message
    assert "HTTP 500" in message
    assert engine.stats.cache_hits == 5  # the earlier answers are still served
    assert teacher_server.stats()["requests"] < 5 + 10 + 4  # it stopped soon after the window filled


def test_identical_requests_in_flight_are_sent_once(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(latency=0.05)
    results, engine = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [plain(1)] * 5))
    assert len({r.text for r in results}) == 1
    assert teacher_server.stats()["requests"] == 1


def test_rpm_bucket_spaces_requests(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    started = time.monotonic()
    asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [plain(i) for i in range(30)], fast_config(rpm=1200)))
    # 1200 rpm = 20/s with a one-second burst of 20: the last 10 need at least half a second.
    assert time.monotonic() - started >= 0.45


def test_rate_limit_headers_seed_the_request_bucket(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(ratelimit_rpm=6000)
    _, engine = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [plain(i) for i in range(3)]))
    assert engine.request_bucket.per_minute == 6000


def test_429s_shrink_the_adaptive_limit(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(sequence=["429"] * 4, retry_after=0.01, latency=0.02)
    _, engine = asyncio.run(run_requests(teacher_server, tmp_path / "c.sqlite", [plain(i) for i in range(16)], fast_config(concurrency=16)))
    assert engine.limit.decreases >= 1 and engine.limit.limit < 16
    assert engine.stats.requests == 16


@pytest.mark.parametrize(("prices", "paid"), [((1000.0, 0.0), "prompt_tokens"), ((0.0, 1000.0), "completion_tokens")])
def test_configured_prices_charge_each_side_of_the_tokens(teacher_server: TeacherServerURL, tmp_path: Path, prices: tuple[float, float], paid: str) -> None:
    async def one() -> tuple[ChatResponse, Engine]:
        teacher = make_teacher("openai:test-teacher", base_url=teacher_server)
        try:
            async with Engine(teacher, tmp_path / "c.sqlite", fast_config(), prices=PricesConfig(*prices), progress=False) as engine:
                return await engine.complete(plain(1)), engine
        finally:
            await teacher.aclose()

    response, engine = asyncio.run(one())
    assert response.prompt_tokens > 0 and response.completion_tokens > 0
    # $1 a token on one side only: the cost is exactly that side's token count.
    assert engine.stats.cost_usd == pytest.approx(getattr(response, paid))
    assert engine.cost_usd(response) == pytest.approx(getattr(response, paid))


def test_without_a_terminal_progress_is_one_plain_line_every_interval(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """A log file (CI, Slurm, nohup) gets whole lines, never carriage-return frames: records, req/s, tokens, $."""
    stats = EngineStats(requests=12, cache_hits=2, prompt_tokens=300, completion_tokens=200, cost_usd=0.0125)
    idle = Activity(in_flight=1, oldest_in_flight_s=0.1, backing_off=0, queued=0, since_last_answer_s=0.1)
    progress = Progress(stats, lambda: idle, enabled=True, request_timeout=30.0, interactive=False, line_every=0.05)

    async def run() -> None:
        progress.set_total(40, "records")
        progress.start()
        for _ in range(4):
            progress.advance(5)
            await asyncio.sleep(0.06)
        await progress.stop()

    with caplog.at_level(logging.INFO, logger="mediflow.progress"):
        asyncio.run(run())
    records = [record for record in caplog.records if record.name == "mediflow.progress"]
    lines = [record.getMessage() for record in records]
    assert len(lines) >= 3  # one per interval, and the last when the run ends
    assert all(later.created - earlier.created >= 0.045 for earlier, later in zip(records[:-2], records[1:-1]))  # never more often
    assert lines[-1].startswith("progress: 20/40 records (50%) | ") and "2 cached, 500 tok, $0.0125, 0 err | 1 in flight" in lines[-1]
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert "\r" not in capsys.readouterr().err  # no tqdm frames on stderr (the CLI, if a test ran it here, shows the lines)
