"""The LLM-step contract: a stage says what to ask about a row and how to read the answer.

Every stage that calls a teacher (the document, instruction and response stages, the record
judge, error injection, the pair judge, candidate answers, PIT task data) is an :class:`LLMStep`
with two methods, Curator-style::

    class Summary(LLMStep[Record, str]):
        def request(self, row: Record) -> ChatRequest: ...          # fully determined by the row: cacheable
        def parse(self, row: Record, answer: Answer) -> str | Reject: ...

JSON answers: a request that carries ``response_schema`` is answered through
:func:`~mediflow.steps.structured.ask_json` (strict decoding where the server has it, local
validation, correction turns quoting the validator, never a repair), so ``parse`` only ever sees a
schema-valid ``answer.value``; an answer still invalid after ``max_corrections`` turns becomes a
reject without ``parse`` being called. A step that wants whatever the teacher wrote (a weak
candidate's malformed answer is data for the pair judge) sets ``validate_json = False``.

A step whose plain-text answer becomes a record's text (``reject_truncated = True``: the response
stage) has an answer cut at ``max_tokens`` (``finish_reason: length``) asked again once with a larger
budget (:meth:`LLMStep.retry_budget`); still cut, the row is rejected as ``truncated``, so a half
sentence never becomes a record.

:func:`ask` runs one row through a step on an engine (cache, limits, retries); the runner
(:func:`mediflow.steps.runner.run_step`) maps many rows through it concurrently, in order.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mediflow.prompts import PromptTemplate
from mediflow.steps.structured import CompletesChat, ask_json
from mediflow.teachers.base import ChatRequest, ChatResponse

#: The reject reason of a plain-text answer still cut at ``max_tokens`` after its retry (counted in the manifest).
TRUNCATED = "truncated"
Row = TypeVar("Row")
Value = TypeVar("Value")


@dataclass(frozen=True)
class Reject:
    """Why a row produced no value (the reason goes to the stage's rejects)."""

    reason: str


@dataclass(frozen=True)
class Answer:
    """What :meth:`LLMStep.parse` reads: the last raw text, the schema-valid JSON value (JSON requests) and every response."""

    text: str
    value: Any = None
    responses: tuple[ChatResponse, ...] = ()


@dataclass(frozen=True)
class StepResult(Generic[Value]):
    """One row's outcome: the parsed ``value``, or the ``error`` and the raw answer; plus what it cost."""

    value: Value | None
    raw_text: str = ""
    error: str | None = None
    responses: tuple[ChatResponse, ...] = field(default=())
    corrections: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class LLMStep(ABC, Generic[Row, Value]):
    """One teacher call per row: :meth:`request` builds it, :meth:`parse` reads the answer."""

    #: Correction turns for a JSON answer that fails its schema.
    max_corrections: int = 2
    #: The correction prompt (default: the built-in ``prompts/correction.yaml``).
    correction_template: PromptTemplate | None = None
    #: False: hand ``parse`` the raw text of a JSON request without validating or correcting it.
    validate_json: bool = True
    #: True: a plain-text answer cut at ``max_tokens`` is retried once, then rejected as ``truncated``.
    reject_truncated: bool = False

    def retry_budget(self, request: ChatRequest) -> int:
        """The ``max_tokens`` of the one retry a plain-text answer cut at ``max_tokens`` gets (default: twice)."""
        return 2 * request.max_tokens

    @abstractmethod
    def request(self, row: Row) -> ChatRequest:
        """The request for ``row``; everything that changes the answer must come from ``row`` and the step."""

    @abstractmethod
    def parse(self, row: Row, answer: Answer) -> Value | Reject:
        """The value ``answer`` gives for ``row``, or a :class:`Reject` with the reason."""


async def _plain_text(engine: CompletesChat, step: LLMStep[Row, Value], request: ChatRequest) -> tuple[ChatResponse, ...]:
    """A plain-text answer; one cut at ``max_tokens`` (``finish_reason: length``) is asked again, once,
    with the step's larger budget (both answers are cached like any other)."""
    response = await engine.complete(request)
    if response.finish_reason != "length":
        return (response,)
    retry = await engine.complete(dataclasses.replace(request, max_tokens=step.retry_budget(request)))
    return (response, retry)


@dataclass
class PromptStep(LLMStep[Row, Value]):
    """A step that renders one prompt file at fixed sampling settings (error injection, the pair judge)."""

    template: PromptTemplate
    seed: int = 0
    temperature: float = 0.7
    max_tokens: int = 1024
    max_corrections: int = 2


async def ask(engine: CompletesChat, step: LLMStep[Row, Value], row: Row) -> StepResult[Value]:
    """Run one row through ``step`` on ``engine`` (see the module docstring)."""
    request = step.request(row)
    if request.response_schema is None and step.reject_truncated:
        responses = await _plain_text(engine, step, request)
        if responses[-1].finish_reason == "length":
            reason = f"{TRUNCATED}: the answer stopped at max_tokens={request.max_tokens}, and at {step.retry_budget(request)} on its retry"
            return StepResult(None, responses[-1].text, reason, responses, 0)
        answer = Answer(responses[-1].text, None, responses)
    elif request.response_schema is None or not step.validate_json:
        response = await engine.complete(request)
        answer = Answer(response.text, None, (response,))
    else:
        checked = await ask_json(engine, request, request.response_schema, step.max_corrections, correction_template=step.correction_template)
        if checked.error is not None:
            return StepResult(None, checked.text, checked.error, checked.responses, checked.corrections)
        answer = Answer(checked.text, checked.value, checked.responses)
    value = step.parse(row, answer)
    corrections = max(len(answer.responses) - 1, 0)
    if isinstance(value, Reject):
        return StepResult(None, answer.text, value.reason, answer.responses, corrections)
    return StepResult(value, answer.text, None, answer.responses, corrections)
