"""The test teacher server: deterministic schema-valid answers, scripted faults, garbage mode, stats."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import openai
import pytest

from mediflow.testing import TeacherServerURL
from mediflow.testing.instances import schema_instance

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z][0-9]{2}(\\.[0-9A-Z]{1,4})?$"}}, "required": ["code"]},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"}, "n": {"type": "integer", "minimum": 3, "maximum": 4}}},
    {"type": "array", "items": {"type": "string", "enum": ["yes", "no"]}, "minItems": 3},
    {"type": "object", "properties": {"x": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 10}]}}, "required": ["x"]},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}, {"properties": {"b": {"type": "string", "minLength": 40}}}]},
    {
        "type": "object",
        "properties": {"entities": {"type": "array", "items": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 5}, "type": {"enum": ["drug", "dose"]}}, "required": ["text", "type"], "additionalProperties": False}}},
        "required": ["entities"],
        "additionalProperties": False,
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_instances_are_valid_and_deterministic(schema: dict[str, Any]) -> None:
    for seed in ("a", "b", "c"):
        instance = schema_instance(schema, seed)
        jsonschema.validate(instance, schema, format_checker=jsonschema.FormatChecker())
        assert schema_instance(schema, seed) == instance


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def ask(url: str, content: str, **options: Any) -> Any:
    with client(url) as c:
        return c.chat.completions.create(model="m", messages=[{"role": "user", "content": content}], **options)


def test_plain_answers_are_clinical_deterministic_and_differ_by_prompt(teacher_server: TeacherServerURL) -> None:
    first, again, other = (ask(teacher_server, p).choices[0].message.content for p in ("a note", "a note", "another"))
    assert first == again and first != other
    assert "year-old" in first or "Patient" in first or "Follow-up" in first
    short = ask(teacher_server, "a note", max_tokens=5).choices[0]
    assert short.finish_reason == "length" and len(short.message.content) <= 20


def test_json_object_mode_reads_the_schema_from_the_prompt(teacher_server: TeacherServerURL) -> None:
    schema = SCHEMAS[0]
    prompt = f"Answer with JSON. JSON Schema: {json.dumps(schema)}"
    answer = ask(teacher_server, prompt, response_format={"type": "json_object"}).choices[0].message.content
    jsonschema.validate(json.loads(answer), schema)


def test_garbage_mode_spoils_the_first_tries_of_a_conversation(teacher_server: TeacherServerURL) -> None:
    teacher_server.control(garbage=2)
    schema = SCHEMAS[0]
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    opening = [{"role": "user", "content": "code this"}]
    answers = []
    with client(teacher_server) as c:
        messages = list(opening)
        for _ in range(3):
            text = c.chat.completions.create(model="m", messages=messages, response_format=response_format).choices[0].message.content
            answers.append(text)
            messages = [*opening, {"role": "assistant", "content": text}, {"role": "user", "content": "fix it"}]
    with pytest.raises(json.JSONDecodeError):
        json.loads(answers[0])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(answers[1]), schema)
    jsonschema.validate(json.loads(answers[2]), schema)


def test_scripted_faults_stats_and_reset(teacher_server: TeacherServerURL) -> None:
    teacher_server.control(sequence=["429", "500"], retry_after=2.5)
    with pytest.raises(openai.RateLimitError) as rate_limited:
        ask(teacher_server, "x")
    assert rate_limited.value.response.headers["retry-after"] == "3"
    assert rate_limited.value.response.headers["retry-after-ms"] == "2500"
    with pytest.raises(openai.InternalServerError):
        ask(teacher_server, "x")
    ask(teacher_server, "x")
    stats = teacher_server.stats()
    assert stats["requests"] == 3 and stats["served"] == 1 and stats["faults"] == {"429": 1, "500": 1}
    assert list(stats["by_key"].values()) == [3]
    teacher_server.reset()
    stats = teacher_server.stats()
    assert stats["requests"] == 0 and stats["settings"]["retry_after"] == 1.0


def test_fault_header_applies_to_one_request(teacher_server: TeacherServerURL) -> None:
    with client(teacher_server) as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], extra_headers={"X-Mediflow-Fault": "401"})
    assert ask(teacher_server, "x").choices[0].message.content


def test_command_line_fault_rates(start_teacher_server: Callable[..., TeacherServerURL]) -> None:
    url = start_teacher_server("--fault-rate", "500=1.0", "--latency", "0.01")
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            ask(url, "x")
    assert url.stats()["faults"] == {"500": 3}
