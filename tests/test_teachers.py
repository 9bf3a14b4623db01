"""Teachers: spec parsing, keys, strict schemas, and the OpenAI-compatible client against the test server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from aiohttp import web

from mediflow.engine.failures import classify
from mediflow.errors import MediflowError
from mediflow.teachers import ChatRequest, make_teacher
from mediflow.teachers.openai_compat import OpenAICompatTeacher, _chat_response
from mediflow.teachers.strict_schema import strict_form
from mediflow.testing import TeacherServerURL
from mediflow.testing import teacher_server as run_teacher_server

NESTED = {
    "type": "object",
    "properties": {
        "patient": {
            "type": "object",
            "properties": {"age": {"type": "integer"}, "sex": {"type": "string", "enum": ["male", "female"]}},
            "required": ["age"],
        },
        "codes": {"type": "array", "items": {"$ref": "#/$defs/code"}},
        "note": {"type": "string"},
    },
    "required": ["patient", "codes"],
    "$defs": {"code": {"type": "object", "properties": {"code": {"type": "string"}, "why": {"type": ["string", "number"]}}}},
}


def test_strict_form_closes_objects_requires_everything_and_makes_optionals_nullable() -> None:
    strict = strict_form(NESTED)
    assert strict["additionalProperties"] is False
    assert strict["required"] == ["patient", "codes", "note"]
    assert strict["properties"]["note"] == {"type": ["string", "null"]}
    patient = strict["properties"]["patient"]
    assert patient["additionalProperties"] is False and patient["required"] == ["age", "sex"]
    assert patient["properties"]["sex"] == {"anyOf": [{"type": "string", "enum": ["male", "female"]}, {"type": "null"}]}
    code = strict["$defs"]["code"]
    assert code["required"] == ["code", "why"] and code["properties"]["why"]["type"] == ["string", "number", "null"]
    assert NESTED["properties"]["note"] == {"type": "string"}  # the input is not modified


def test_strict_answers_stay_valid_against_the_original_once_nulls_are_dropped() -> None:
    answer = {"patient": {"age": 70, "sex": None}, "codes": [{"code": "I10", "why": None}], "note": None}
    jsonschema.validate(answer, strict_form(NESTED))
    drop_nulls = json.loads(json.dumps(answer), object_hook=lambda o: {k: v for k, v in o.items() if v is not None})
    jsonschema.validate(drop_nulls, NESTED)


def test_unknown_teacher_spec_names_the_known_ones() -> None:
    with pytest.raises(MediflowError, match="unknown teacher 'gpt4'.*openai:MODEL"):
        make_teacher("gpt4")


def test_openai_needs_a_key_unless_self_hosted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MediflowError, match="OPENAI_API_KEY"):
        make_teacher("openai:gpt-4o-mini")
    assert make_teacher("openai:m", base_url="http://127.0.0.1:9/v1").name == "openai:m"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert make_teacher("openai:gpt-4o-mini").name == "openai:gpt-4o-mini"


def test_azure_reads_endpoint_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    with pytest.raises(MediflowError, match="AZURE_OPENAI_ENDPOINT"):
        make_teacher("azure:my-deployment", api_key="k")
    teacher = make_teacher("azure:my-deployment", base_url="https://example.openai.azure.com", api_key="k")
    assert teacher.name == "azure:my-deployment"


async def _ask(teacher: OpenAICompatTeacher, request: ChatRequest) -> Any:
    try:
        return await teacher.complete(request)
    finally:
        await teacher.aclose()


def test_json_schema_request_gets_a_schema_valid_answer(teacher_server: TeacherServerURL) -> None:
    teacher = make_teacher("openai:test-teacher", base_url=teacher_server)
    response = asyncio.run(_ask(teacher, ChatRequest(messages=(("user", "code it"),), response_schema=NESTED)))
    jsonschema.validate(json.loads(response.text), NESTED)
    assert teacher.capabilities()["structured_output"] == "json_schema"


def test_falls_back_to_json_mode_when_json_schema_is_refused(teacher_server: TeacherServerURL) -> None:
    teacher_server.control(response_formats=["text", "json_object"])
    teacher = make_teacher("openai:test-teacher", base_url=teacher_server)

    async def two_requests() -> list[Any]:
        try:
            return [await teacher.complete(ChatRequest(messages=(("user", f"code {i}"),), response_schema=NESTED)) for i in range(2)]
        finally:
            await teacher.aclose()

    responses = asyncio.run(two_requests())
    for response in responses:
        jsonschema.validate(json.loads(response.text), NESTED)  # the schema travelled in the prompt
    assert teacher.capabilities()["structured_output"] == "json_object_schema"
    assert teacher_server.stats()["requests"] == 3  # one refusal, remembered: not asked again


def test_rate_limit_headers_reach_the_response(teacher_server: TeacherServerURL) -> None:
    teacher_server.control(ratelimit_rpm=500)
    teacher = make_teacher("openai:test-teacher", base_url=teacher_server)
    response = asyncio.run(_ask(teacher, ChatRequest(messages=(("user", "hi"),))))
    assert response.headers["x-ratelimit-limit-requests"] == "500"
    assert response.prompt_tokens > 0 and response.completion_tokens > 0


@pytest.mark.parametrize(
    "body",
    [b'{"choices": []}', b'{"choices": [{"message": {"content": 7}}]}', b'{"id": "x"}', b'{"choices": [', b"[1, 2]"],
)
def test_an_unreadable_completion_body_is_a_retryable_malformed_answer(body: bytes) -> None:
    response = httpx.Response(200, content=body, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))
    with pytest.raises(openai.APIResponseValidationError) as raised:
        _chat_response(response, "m")
    failure = classify(raised.value)
    assert failure.kind == "malformed" and failure.retryable


def test_azure_requests_are_routed_to_the_deployment() -> None:
    """Requests go through the client's generic post: Azure's deployment routing must still apply."""
    seen: list[tuple[str, str, str | None, Any]] = []

    async def completions(request: web.Request) -> web.Response:
        seen.append((request.path, request.query.get("api-version", ""), request.headers.get("api-key"), await request.json()))
        body = {"model": "gpt-4o-mini", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
        return web.json_response(body)

    async def scenario() -> Any:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        teacher = make_teacher("azure:my-deployment", base_url=f"http://127.0.0.1:{port}", api_key="k", api_version="2024-10-21")
        try:
            return await _ask(teacher, ChatRequest(messages=(("user", "hi"),), max_tokens=5))
        finally:
            await runner.cleanup()

    response = asyncio.run(scenario())
    assert response.text == "ok" and response.model == "gpt-4o-mini" and response.prompt_tokens == 3
    [(path, version, key, body)] = seen
    assert path == "/openai/deployments/my-deployment/chat/completions" and version == "2024-10-21" and key == "k"
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["max_tokens"] == 5


def test_a_refused_connection_is_reported_as_one_not_as_a_timeout() -> None:
    """The aiohttp transport raises a connect *timeout* for a refused port; the run's error must say 'cannot connect'."""

    async def check_then_ask(teacher: OpenAICompatTeacher, server: Any) -> None:
        try:
            await teacher.check()
            server.__exit__(None, None, None)  # the server goes away after the start-up check
            await teacher.complete(ChatRequest(messages=(("user", "hi"),)))
        finally:
            await teacher.aclose()

    server = run_teacher_server()
    url = server.__enter__()
    teacher = make_teacher("openai:test-teacher", base_url=url)
    with pytest.raises(openai.APIConnectionError) as raised:
        asyncio.run(check_then_ask(teacher, server))
    failure = classify(raised.value)
    assert failure.kind == "connection" and failure.retryable
    assert failure.message.startswith("cannot connect")
