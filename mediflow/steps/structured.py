"""JSON answers that must satisfy a JSON Schema: strict mode, local validation, correction turns.

The request carries the schema (``ChatRequest.response_schema``) so that a teacher with a strict
``json_schema`` mode (OpenAI, vLLM guided decoding, llama.cpp grammars) constrains its decoding.
Whatever the teacher claims, the answer is always parsed and validated here with ``jsonschema``.
A failure is never patched up (no bracket-appending, no regex repair: a repaired answer is an
answer the teacher did not give); instead the validator's message goes back to the teacher as a
correction turn (``prompts/correction.yaml``), at most ``max_corrections`` times. What is still
invalid after that comes back with ``value=None``, the last raw text and the reason, for the
caller to put in the run's rejects. The judge and the preference stage use the same call.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import jsonschema

from mediflow.prompts import load_prompts
from mediflow.records import canonical_json
from mediflow.teachers.base import ChatRequest, ChatResponse

#: Longest validator message sent back to the teacher / kept as a reject reason.
_MAX_ERROR_CHARS = 500

_VALIDATORS: dict[str, jsonschema.protocols.Validator] = {}
_VALIDATORS_BY_ID: dict[int, tuple[dict[str, Any], jsonschema.protocols.Validator]] = {}


class CompletesChat(Protocol):
    """What :func:`ask_json` needs from the engine."""

    async def complete(self, request: ChatRequest) -> ChatResponse: ...


@dataclass(frozen=True)
class JsonAnswer:
    """The outcome of :func:`ask_json`: a schema-valid ``value``, or ``None`` with the ``error``."""

    value: Any
    text: str
    error: str | None
    responses: tuple[ChatResponse, ...] = field(default=())  # every teacher answer, first to last

    @property
    def corrections(self) -> int:
        """How many correction turns were needed."""
        return max(len(self.responses) - 1, 0)


def validator_for(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A compiled validator per distinct schema: building one per record would dominate the CPU cost."""
    known = _VALIDATORS_BY_ID.get(id(schema))
    if known is not None and known[0] is schema:  # the same schema object (a task's): no hashing at all
        return known[1]
    key = canonical_json(schema)
    validator = _VALIDATORS.get(key)
    if validator is None:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        validator = _VALIDATORS[key] = cls(schema)
    _VALIDATORS_BY_ID[id(schema)] = (schema, validator)
    return validator


def _shorten(message: str) -> str:
    return message if len(message) <= _MAX_ERROR_CHARS else message[: _MAX_ERROR_CHARS - 3] + "..."


def check_json(text: str, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """Parse ``text`` and validate it: ``(value, None)`` when valid, else ``(None, reason)``."""
    if not text.strip():
        return None, "the answer is empty"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"the answer is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    error = jsonschema.exceptions.best_match(validator_for(schema).iter_errors(value))
    if error is None:
        return value, None
    where = error.json_path if error.absolute_path else "the top level"
    return None, _shorten(f"the JSON does not match the schema at {where}: {error.message}")


@cache
def _correction_template() -> Any:
    return load_prompts().get("correction")


def correction_request(request: ChatRequest, answer: str, error: str, schema: dict[str, Any], template: Any) -> ChatRequest:
    """The follow-up turn: the conversation so far, the bad answer, and the validator's message."""
    turn = template.render(error=error, schema=schema)
    follow_up = tuple((role, content) for role, content in turn if role != "system")
    return dataclasses.replace(
        request,
        messages=request.messages + (("assistant", answer),) + follow_up,
        prompt_version=f"{request.prompt_version}+{template.version}" if request.prompt_version else template.version,
    )


async def ask_json(
    engine: CompletesChat,
    request: ChatRequest,
    schema: dict[str, Any],
    max_corrections: int = 2,
    *,
    correction_template: Any = None,
) -> JsonAnswer:
    """Ask for a JSON answer valid against ``schema``, with up to ``max_corrections`` correction turns."""
    template = correction_template or _correction_template()
    request = dataclasses.replace(request, response_schema=schema)
    responses: list[ChatResponse] = []
    while True:
        response = await engine.complete(request)
        responses.append(response)
        value, error = check_json(response.text, schema)
        if error is None:
            return JsonAnswer(value, response.text, None, tuple(responses))
        if len(responses) > max_corrections:
            reason = f"{error} (after {max_corrections} correction turn{'s' if max_corrections != 1 else ''})"
            return JsonAnswer(None, response.text, reason, tuple(responses))
        request = correction_request(request, response.text, error, schema, template)
