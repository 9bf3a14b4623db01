"""Alternative answers to a record from other sources: another backend (e.g. the student) or the
teacher sampled hot. Each source answers the record's own prompt (system = instruction, user =
document), with the task's JSON Schema attached for JSON records so strict servers constrain it.
A weak source's malformed answer is kept as a candidate (``validate_json = False``): the judge is
there to score it down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mediflow.records import to_messages
from mediflow.steps import Answer, LLMStep, ask
from mediflow.steps.structured import CompletesChat
from mediflow.teachers.base import ChatRequest


@dataclass(frozen=True)
class AnswerSource:
    """One way of answering a record: an engine, a temperature and a sample index."""

    name: str
    engine: CompletesChat
    temperature: float
    sample_index: int = 0


class AnswerStep(LLMStep[tuple[Mapping[str, Any], "dict[str, Any] | None"], str]):
    """A source's answer text to a record (the row: the record and its task's schema)."""

    validate_json = False

    def __init__(self, source: AnswerSource, *, max_tokens: int, seed: int) -> None:
        self.source = source
        self.max_tokens = max_tokens
        self.seed = seed

    def request(self, row: tuple[Mapping[str, Any], dict[str, Any] | None]) -> ChatRequest:
        record, schema = row
        messages = to_messages(record["instruction"], record["input"])
        return ChatRequest(
            messages=tuple((m["role"], m["content"]) for m in messages),
            temperature=self.source.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed + self.source.sample_index,
            sample_index=self.source.sample_index,
            response_schema=schema if record.get("output_format") == "json" else None,
        )

    def parse(self, row: tuple[Mapping[str, Any], dict[str, Any] | None], answer: Answer) -> str:
        return answer.text


async def answer(source: AnswerSource, record: Mapping[str, Any], schema: dict[str, Any] | None, *, max_tokens: int, seed: int) -> str:
    """The source's answer text to ``record``."""
    result = await ask(source.engine, AnswerStep(source, max_tokens=max_tokens, seed=seed), (record, schema))
    return result.value or ""
