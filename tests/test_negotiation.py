"""Server negotiation: structured-output levels, refused parameters and the start-up check.

The test teacher plays the other servers (which response_format types it takes, the status it refuses
with, parameters it refuses, the models it lists); the real llama-cpp-python server is exercised in
``test_llama_cpp_server.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import yaml
from fixtures import small_run_config

from mediflow.cli import main
from mediflow.engine import Engine, LimitsConfig
from mediflow.engine.failures import classify
from mediflow.errors import TeacherError, TeacherUnavailable
from mediflow.steps.structured import ask_json
from mediflow.teachers import ChatRequest, make_teacher
from mediflow.teachers.negotiation import Negotiation
from mediflow.teachers.openai_compat import OpenAICompatTeacher
from mediflow.testing import TeacherServerURL

SCHEMA = {
    "type": "object",
    "properties": {"diagnoses": {"type": "array", "items": {"type": "string"}}, "note": {"type": "string"}},
    "required": ["diagnoses"],
}
#: What llama-cpp-python's server does: text and json_object only, anything else is an HTTP 500.
LLAMA_CPP_PYTHON = {"response_formats": ["text", "json_object"], "refusal_status": 500}


def _json_request(i: int) -> ChatRequest:
    return ChatRequest(messages=(("user", f"extract the diagnoses of note {i}"),), response_schema=SCHEMA, seed=i)


async def _through_engine(teacher: OpenAICompatTeacher, requests: list[ChatRequest], tmp_path: Path, **config: Any) -> list[Any]:
    try:
        async with Engine(teacher, tmp_path / "cache.sqlite", LimitsConfig(**config), progress=False) as engine:
            answers = await asyncio.gather(*(ask_json(engine, request, SCHEMA, max_corrections=0) for request in requests))
            assert engine.stats.retries == 0 and not engine.stats.errors  # refusals never reach the engine
            return answers
    finally:
        await teacher.aclose()


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_server_without_json_schema_is_negotiated_down_once_not_retried(teacher_server: TeacherServerURL, tmp_path: Path, concurrency: int) -> None:
    teacher_server.control(**LLAMA_CPP_PYTHON)
    teacher = make_teacher("openai:m", base_url=teacher_server)
    answers = asyncio.run(_through_engine(teacher, [_json_request(i) for i in range(12)], tmp_path, concurrency=concurrency))
    assert all(answer.value is not None for answer in answers)
    stats = teacher_server.stats()
    # Refused once per request already in flight when the first refusal came back (one, sequentially).
    assert 1 <= stats["refusals"] <= concurrency and stats["refusals"] == stats["formats"]["json_schema"]
    assert stats["formats"]["json_object"] == 12
    capabilities = teacher.capabilities()
    assert capabilities["structured_output"] == "json_object_schema"
    assert capabilities["refusals"]["json_schema"].startswith("HTTP 500: response_format.type: Input should be")


def test_a_server_without_any_json_mode_gets_the_schema_in_the_prompt(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(response_formats=["text"], refusal_status=422)
    teacher = make_teacher("openai:m", base_url=teacher_server)
    answers = asyncio.run(_through_engine(teacher, [_json_request(i) for i in range(3)], tmp_path, concurrency=1))
    for answer in answers:
        jsonschema.validate(answer.value, SCHEMA)
    stats = teacher_server.stats()
    assert stats["refusals"] == 3 and stats["formats"]["none"] == 3  # json_schema, json_object (+schema, plain), then none
    assert teacher.capabilities()["structured_output"] == "prompt"


def test_a_generic_server_error_is_not_mistaken_for_a_refusal(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(sequence=["500", "ok", "400"])
    teacher = make_teacher("openai:m", base_url=teacher_server)

    async def two() -> tuple[Any, Any]:
        try:
            async with Engine(teacher, tmp_path / "c.sqlite", LimitsConfig(backoff_initial=0.01), progress=False) as engine:
                first = await engine.complete(_json_request(1))  # a 500 with no word of response_format: retried
                with pytest.raises(TeacherError, match="HTTP 400"):
                    await engine.complete(_json_request(2))  # a 400 that names nothing: the request's own fault
                return first, engine.stats.errors
        finally:
            await teacher.aclose()

    first, errors = asyncio.run(two())
    jsonschema.validate(json.loads(first.text), SCHEMA)
    assert errors == {"server_error": 1, "bad_request": 1}
    assert teacher.capabilities()["structured_output"] == "json_schema" and not teacher.capabilities()["refusals"]


def test_refused_parameters_are_dropped_or_renamed_and_remembered(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(refused_parameters=["seed", "top_p", "max_tokens"])
    teacher = make_teacher("openai:o-model", base_url=teacher_server)
    requests = [ChatRequest(messages=(("user", f"note {i}"),), seed=i, max_tokens=50) for i in range(4)]

    async def ask() -> list[Any]:
        try:
            async with Engine(teacher, tmp_path / "c.sqlite", LimitsConfig(concurrency=1), progress=False) as engine:
                return [await engine.complete(request) for request in requests]
        finally:
            await teacher.aclose()

    responses = asyncio.run(ask())
    assert all(response.text for response in responses)
    assert all(len(response.text) <= 4 * 50 for response in responses)  # the limit still applies, renamed
    assert teacher_server.stats()["refusals"] == 3  # one per parameter, then never again
    capabilities = teacher.capabilities()
    assert capabilities["dropped_parameters"] == ["seed", "top_p"]
    assert capabilities["token_limit_field"] == "max_completion_tokens"


def _status_error(status: int, message: str, param: str | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    body = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    response = httpx.Response(status, json={"error": body}, request=request)
    return openai.APIStatusError(message, response=response, body=body)


@pytest.mark.parametrize(
    ("status", "message", "param"),
    [
        # vLLM's over-long prompt names max_tokens and "not supported" nowhere near a refusal of the field
        (400, "'max_tokens' or 'max_completion_tokens' is too large: 1024. This model's maximum context length is 2048 tokens", None),
        # OpenAI counts the schema in an over-long prompt: still not a refusal of response_format
        (400, "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens (including 90 in the response_format schemas.)", "messages"),
        (429, "Rate limit reached for requests; response_format is fine", None),
        (401, "Incorrect API key provided", None),
        (500, "The server had an error while processing your request", None),
    ],
)
def test_what_is_not_a_refusal(status: int, message: str, param: str | None) -> None:
    negotiation = Negotiation("m")
    wire = negotiation.wire(ChatRequest(messages=(("user", "x"),), response_schema=SCHEMA, seed=1))
    assert negotiation.learn(wire, _status_error(status, message, param)) is False
    assert negotiation.wire(ChatRequest(messages=(("user", "x"),), response_schema=SCHEMA, seed=1)) == wire


@pytest.mark.parametrize(
    ("status", "message", "param", "learned"),
    [
        (400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.", "response_format", "level"),
        (500, "1 validation error: {'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\"}", None, "level"),
        (422, "Invalid schema for response_format 'answer': 'additionalProperties' is required", None, "level"),
        (400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", "max_tokens", "token"),
        (400, "Unsupported parameter: 'top_p' is not supported with this model.", "top_p", "top_p"),
        # no param field: the parameter named first is the refused one, not the temperature named after it
        (400, "Unsupported parameter: 'top_p' is not supported with this model when temperature is set.", None, "top_p"),
        (422, "Extra inputs are not permitted: seed", None, "seed"),
    ],
)
def test_refusals_are_read_from_the_body_whatever_the_status(status: int, message: str, param: str | None, learned: str) -> None:
    negotiation = Negotiation("m")
    request = ChatRequest(messages=(("user", "x"),), response_schema=SCHEMA, seed=1)
    assert negotiation.learn(negotiation.wire(request), _status_error(status, message, param)) is True
    body = negotiation.wire(request).body
    expected = {
        "level": body.get("response_format") == {"type": "json_object", "schema": SCHEMA},
        "token": "max_completion_tokens" in body and "max_tokens" not in body,
        "top_p": "top_p" not in body and "temperature" in body,
        "seed": "seed" not in body,
    }
    assert expected[learned]
    assert negotiation.summary()["refusals"][{"level": "json_schema", "token": "max_tokens"}.get(learned, learned)].startswith(f"HTTP {status}: ")


def test_the_schema_hint_joins_the_system_turn_instead_of_adding_a_second_one() -> None:
    negotiation = Negotiation("m", level=2)
    request = ChatRequest(messages=(("system", "You are a clinician."), ("user", "x")), response_schema=SCHEMA)
    messages = negotiation.wire(request).body["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]  # Gemma's chat template refuses two system turns
    assert messages[0]["content"].startswith("You are a clinician.") and json.dumps(SCHEMA) in messages[0]["content"]


def test_a_non_object_schema_goes_in_the_prompt_without_a_response_format() -> None:
    wire = Negotiation("m").wire(ChatRequest(messages=(("user", "x"),), response_schema={"type": "array"}))
    assert wire.structured == "prompt" and "response_format" not in wire.body


# --- the start-up check ---------------------------------------------------------------------------


def _check(teacher: OpenAICompatTeacher) -> None:
    async def run() -> None:
        try:
            await teacher.check()
        finally:
            await teacher.aclose()

    asyncio.run(run())


def test_the_model_must_be_served(teacher_server: TeacherServerURL) -> None:
    teacher_server.control(models=["gemma-3-270m", "qwen"])
    with pytest.raises(TeacherUnavailable, match=r"does not serve model 'gpt-4o-mini'; it serves 'gemma-3-270m', 'qwen'$"):
        _check(make_teacher("openai:gpt-4o-mini", base_url=teacher_server))
    served = make_teacher("openai:qwen", base_url=teacher_server)
    _check(served)
    assert served.capabilities()["models_check"] == "served"
    assert teacher_server.stats()["requests"] == 0  # no chat request was sent (and none paid for)


def test_a_server_without_a_model_list_is_not_held_to_it(teacher_server: TeacherServerURL) -> None:
    teacher = make_teacher("openai:anything", base_url=teacher_server)
    _check(teacher)
    assert teacher.capabilities()["models_check"] == "not offered: GET /models answered HTTP 404"


def test_an_ollama_bare_name_matches_its_latest_tag(teacher_server: TeacherServerURL) -> None:
    teacher_server.control(models=["llama3.2:latest"])
    _check(make_teacher("openai:llama3.2", base_url=teacher_server))


def test_a_server_that_never_answers_gets_one_line_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(TeacherUnavailable, match=r"did not answer GET /models within 1s"):
            _check(make_teacher("openai:m", base_url=url, timeout=1.0))


def test_a_closed_port_gets_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TeacherUnavailable, match=rf"cannot connect to the teacher at http://127.0.0.1:{port}/v1"):
        _check(make_teacher("openai:m", base_url=f"http://127.0.0.1:{port}/v1"))


def test_a_failed_check_stops_an_engine_at_its_first_request(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    """Callers that do not run the check first (judge, pairs) still get one fatal error, not retries."""
    teacher_server.control(models=["served"])
    teacher = make_teacher("openai:other", base_url=teacher_server)

    async def ask() -> None:
        try:
            async with Engine(teacher, tmp_path / "c.sqlite", progress=False) as engine:
                with pytest.raises(TeacherError, match="does not serve model 'other'"):
                    await engine.complete(_json_request(1))
                assert engine.stopped and engine.stats.attempts == 1 and engine.stats.retries == 0
        finally:
            await teacher.aclose()

    asyncio.run(ask())
    assert classify(TeacherUnavailable("x")).fatal
    assert teacher_server.stats()["requests"] == 0


def test_generate_with_an_unserved_model_is_one_line_and_writes_nothing(teacher_server: TeacherServerURL, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher_server.control(models=["gemma-3-270m"])
    out = tmp_path / "run"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(small_run_config(teacher_server, out, json_share=1.0)))
    assert main(["generate", "--config", str(config_path), "--teacher", "openai:gemma"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: teacher at {teacher_server} does not serve model 'gemma'; it serves 'gemma-3-270m'\n"
    assert not out.exists()


def test_generate_records_the_negotiated_level_in_the_manifest(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(models=["gemma-3-270m"], **LLAMA_CPP_PYTHON)
    out = tmp_path / "run"
    config = small_run_config(teacher_server, out, json_share=1.0, limits={"concurrency": 4})
    config["teacher"]["spec"] = "openai:gemma-3-270m"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["generate", "--config", str(config_path)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["counts"]["rejects"] == 0
    capabilities = manifest["teacher_capabilities"]["teacher"]
    assert capabilities["models_check"] == "served" and capabilities["structured_output"] == "json_object_schema"
    assert "server_error" not in manifest["session"]["errors"]

    assert main(["generate", "--config", str(config_path)]) == 0  # resumed from the cache: the level is kept
    assert json.loads((out / "manifest.json").read_text())["teacher_capabilities"] == manifest["teacher_capabilities"]


# --- a refused non-default temperature (OpenAI's reasoning models) -------------------------------

#: OpenAI's answer to o1/o3/gpt-5 asked for a temperature other than 1 (HTTP 400, param "temperature").
TEMPERATURE_REFUSAL = "Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is supported."


def test_a_refused_temperature_is_dropped_once_and_said_once() -> None:
    negotiation = Negotiation("o3")
    request = ChatRequest(messages=(("user", "x"),), temperature=0.7)
    wire = negotiation.wire(request)
    with pytest.warns(UserWarning, match=r"model 'o3' refuses the requested temperature \(HTTP 400: Unsupported value") as said:
        assert negotiation.learn(wire, _status_error(400, TEMPERATURE_REFUSAL, "temperature")) is True
        assert negotiation.learn(wire, _status_error(400, TEMPERATURE_REFUSAL, "temperature")) is True  # one in flight too
    assert len(said) == 1
    assert "temperature" not in negotiation.wire(request).body
    assert negotiation.summary()["dropped_parameters"] == ["temperature"]
    assert negotiation.summary()["refusals"]["temperature"] == f"HTTP 400: {TEMPERATURE_REFUSAL}"


def test_a_reasoning_model_gets_its_default_temperature_and_a_rerun_reuses_every_answer(start_teacher_server: Any, tmp_path: Path) -> None:
    """The test teacher plays o3: temperature only at 1, no top_p, max_completion_tokens instead of max_tokens."""
    server = start_teacher_server("--refuse-parameter", "temperature=1", "--refuse-parameter", "top_p", "--refuse-parameter", "max_tokens")
    requests = [ChatRequest(messages=(("user", f"note {i}"),), temperature=0.7, max_tokens=50) for i in range(6)]

    async def ask(teacher: OpenAICompatTeacher) -> list[Any]:
        try:
            async with Engine(teacher, tmp_path / "c.sqlite", LimitsConfig(concurrency=3), progress=False) as engine:
                answers = await asyncio.gather(*(engine.complete(request) for request in requests))
                assert engine.stats.retries == 0 and not engine.stats.errors  # refusals never reach the engine
                return answers
        finally:
            await teacher.aclose()

    teacher = make_teacher("openai:o3", base_url=server)
    with pytest.warns(UserWarning, match="refuses the requested temperature") as said:
        answers = asyncio.run(ask(teacher))
    assert len([w for w in said if "temperature" in str(w.message)]) == 1
    assert all(answer.text for answer in answers)
    capabilities = teacher.capabilities()
    assert capabilities["dropped_parameters"] == ["temperature", "top_p"]
    assert capabilities["token_limit_field"] == "max_completion_tokens"
    assert capabilities["refusals"]["temperature"] == f"HTTP 400: {TEMPERATURE_REFUSAL}"
    # The cache key is the request as asked: a new run (which has not met the refusal yet) pays for nothing again.
    served = server.stats()["requests"]
    again = asyncio.run(ask(make_teacher("openai:o3", base_url=server)))
    assert server.stats()["requests"] == served and [a.text for a in again] == [a.text for a in answers]
    # Asked for the default itself, the temperature is kept.
    default = make_teacher("openai:o3", base_url=server)
    asyncio.run(ask_one(default, ChatRequest(messages=(("user", "x"),), temperature=1.0)))
    assert default.capabilities()["dropped_parameters"] == ["top_p"]


async def ask_one(teacher: OpenAICompatTeacher, request: ChatRequest) -> None:
    try:
        await teacher.complete(request)
    finally:
        await teacher.aclose()


def test_generate_against_a_reasoning_model_records_the_default_temperature(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(refused_parameters=["temperature=1"])
    out = tmp_path / "run"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(small_run_config(teacher_server, out, limits={"concurrency": 4})))
    with pytest.warns(UserWarning, match="refuses the requested temperature") as said:
        assert main(["generate", "--config", str(config_path)]) == 0
    assert len([w for w in said if "temperature" in str(w.message)]) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["counts"]["records"] > 0
    capabilities = manifest["teacher_capabilities"]["teacher"]
    assert capabilities["dropped_parameters"] == ["temperature"]
    assert capabilities["refusals"]["temperature"].startswith("HTTP 400: Unsupported value: 'temperature' does not support 0.")


def test_the_command_line_says_a_mediflow_warning_in_one_line() -> None:
    from mediflow import cli

    inside = str(Path(cli.__file__).parents[1] / "teachers" / "negotiation.py")
    assert cli._warning_line(UserWarning("model 'o3' refuses the requested temperature"), UserWarning, inside, 140) == ("warning: model 'o3' refuses the requested temperature\n")
    assert cli._warning_line(FutureWarning("x"), FutureWarning, "/elsewhere/lib.py", 3).startswith("/elsewhere/lib.py:3: FutureWarning: x")
