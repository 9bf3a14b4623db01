"""The LLM-step contract and its runner: ordered output, a sliding window, cancellation, JSON corrections."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mediflow.engine import Engine, LimitsConfig
from mediflow.steps import Answer, LLMStep, Reject, ask, map_ordered, run_step
from mediflow.sync import run_sync
from mediflow.teachers import ChatRequest, make_teacher
from mediflow.testing import TeacherServerURL

SCHEMA = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"], "additionalProperties": False}


def test_results_come_back_in_order_while_later_rows_already_run() -> None:
    started: list[int] = []
    seen_started: list[int] = []

    async def slow_first(n: int) -> int:
        started.append(n)
        await asyncio.sleep(0.05 if n == 0 else 0.001)
        return n * 10

    async def collect() -> list[int]:
        results = []
        async for value in map_ordered(slow_first, range(6), window=3):
            seen_started.append(len(started))
            results.append(value)
        return results

    assert asyncio.run(collect()) == [0, 10, 20, 30, 40, 50]
    # No batch barrier: while row 0 was slow, the rows after it (beyond the first window of 3) started.
    assert seen_started[0] == 6


def test_the_window_bounds_rows_in_flight() -> None:
    in_flight, most = 0, 0

    async def work(n: int) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001 * (n % 3))
        in_flight -= 1
        return n

    async def collect() -> list[int]:
        return [value async for value in map_ordered(work, range(40), window=4)]

    assert asyncio.run(collect()) == list(range(40)) and most == 4


def test_the_first_failure_cancels_the_rest_at_once() -> None:
    finished: list[int] = []

    async def work(n: int) -> int:
        if n == 3:
            await asyncio.sleep(0.01)
            raise RuntimeError("teacher down")
        await asyncio.sleep(0.5 if n == 0 else 0.2)  # the head is slower than the failure
        finished.append(n)
        return n

    async def collect() -> None:
        async for _ in map_ordered(work, range(8), window=8):
            pass

    with pytest.raises(RuntimeError, match="teacher down"):
        asyncio.run(asyncio.wait_for(collect(), timeout=0.15))  # raised long before the head would finish
    assert finished == []


class CodeStep(LLMStep[int, str]):
    """A JSON step: the code the teacher gives, rejected when it is not upper-case."""

    max_corrections = 1

    def request(self, row: int) -> ChatRequest:
        return ChatRequest(messages=(("user", f"Give the ICD-10 code of patient {row}."),), response_schema=SCHEMA, seed=row)

    def parse(self, row: int, answer: Answer) -> str | Reject:
        code = answer.value["code"]
        return code if code.isupper() or not code.isalpha() else Reject(f"lower-case code {code!r}")


class EchoStep(LLMStep[int, str]):
    """A JSON request whose raw text is wanted as it is."""

    validate_json = False

    def request(self, row: int) -> ChatRequest:
        return ChatRequest(messages=(("user", f"patient {row}"),), response_schema=SCHEMA)

    def parse(self, row: int, answer: Answer) -> str:
        assert answer.value is None  # not validated, not parsed
        return answer.text


async def _through(server: str, cache: Path, step: LLMStep[int, str], rows: list[int]) -> list[Any]:
    teacher = make_teacher("openai:test-teacher", base_url=server)
    try:
        async with Engine(teacher, cache, LimitsConfig(concurrency=4), progress=False) as engine:
            return [result async for result in run_step(engine, step, rows, window=3)]
    finally:
        await teacher.aclose()


def test_a_json_step_sees_only_schema_valid_values_and_its_rejects_carry_the_reason(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    results = asyncio.run(_through(teacher_server, tmp_path / "c.sqlite", CodeStep(), list(range(5))))
    assert len(results) == 5
    for result in results:
        assert json.loads(result.raw_text)["code"]  # the raw answer is kept either way
        if result.ok:
            assert result.value == json.loads(result.raw_text)["code"]
        else:
            assert result.value is None and result.error.startswith("lower-case code")
    assert teacher_server.stats()["requests"] == 5
    again = asyncio.run(_through(teacher_server, tmp_path / "c.sqlite", CodeStep(), list(range(5))))
    assert again == results and teacher_server.stats()["requests"] == 5  # every answer from the cache


def test_an_invalid_json_answer_gets_corrections_then_is_a_reject(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(garbage=5)
    [result] = asyncio.run(_through(teacher_server, tmp_path / "c.sqlite", CodeStep(), [1]))
    assert not result.ok and "after 1 correction turn" in (result.error or "") and result.corrections == 1
    assert len(result.responses) == 2


def test_validate_json_false_hands_over_the_raw_text(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(garbage=5)
    [result] = asyncio.run(_through(teacher_server, tmp_path / "c.sqlite", EchoStep(), [1]))
    assert result.ok and result.value == result.raw_text and result.corrections == 0


def test_run_sync_works_with_and_without_a_running_loop() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert run_sync(answer()) == 42

    async def inside_a_notebook_cell() -> int:
        return run_sync(answer())  # asyncio.run would raise here

    assert asyncio.run(inside_a_notebook_cell()) == 42


def test_ask_runs_one_row(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    async def one() -> Any:
        teacher = make_teacher("openai:test-teacher", base_url=teacher_server)
        try:
            async with Engine(teacher, tmp_path / "c.sqlite", progress=False) as engine:
                return await ask(engine, EchoStep(), 7)
        finally:
            await teacher.aclose()

    assert asyncio.run(one()).raw_text
