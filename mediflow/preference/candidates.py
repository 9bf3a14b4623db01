"""Alternative answers to a record from other sources: another backend (e.g. the student) or the
teacher sampled hot. Each source answers the record's own prompt (system = instruction, user =
document), with the task's JSON Schema attached for JSON records so strict servers constrain it.
A weak source's malformed answer is kept as a candidate: the judge is there to score it down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mediflow.pipeline.structured import CompletesChat
from mediflow.records import to_messages
from mediflow.teachers.base import ChatRequest


@dataclass(frozen=True)
class AnswerSource:
    """One way of answering a record: an engine, a temperature and a sample index."""

    name: str
    engine: CompletesChat
    temperature: float
    sample_index: int = 0


async def answer(
    source: AnswerSource, record: Mapping[str, Any], schema: dict[str, Any] | None, *, max_tokens: int, seed: int
) -> str:
    """The source's answer text to ``record``."""
    messages = to_messages(record["instruction"], record["input"])
    request = ChatRequest(
        messages=tuple((m["role"], m["content"]) for m in messages),
        temperature=source.temperature,
        max_tokens=max_tokens,
        seed=seed + source.sample_index,
        sample_index=source.sample_index,
        response_schema=schema if record.get("output_format") == "json" else None,
    )
    response = await source.engine.complete(request)
    return response.text
