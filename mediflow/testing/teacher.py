"""An OpenAI-compatible test teacher on loopback: deterministic answers, latency and injected faults.

    python -m mediflow.testing.teacher --port 8001 [--latency 0.5] [--fault-rate 429=0.05] [--garbage 1]

``POST /v1/chat/completions`` answers JSON requests (``response_format`` json_schema, json_object
with a ``schema`` key or a ``JSON Schema:`` in the prompt, or no response_format with that phrase in
the prompt) with a deterministic schema-valid instance, and plain requests with deterministic
clinical-looking text. It can play other servers: which ``response_format`` types it takes
(``--response-formats text,json_object``, as llama-cpp-python's server), the status it refuses the
others with (``--refusal-status 500``), parameters it refuses as unsupported (``--refuse-parameter
seed``, as OpenAI's reasoning models do with ``top_p`` and ``max_tokens``) or accepts at one value
only (``--refuse-parameter temperature=1``: any other temperature is refused as those models do,
"Unsupported value: 'temperature' does not support 0.7 ..."), and the models it serves
(``--models a,b``: listed at ``GET /v1/models``, others answered 404; without it the route is absent
and any model name is answered). Faults (``429`` with Retry-After, ``500``,
``hang``, ``malformed`` HTTP body, ``cut`` body, ``truncated`` answer with finish_reason length,
``bad_json`` content, ``400``, ``401``) come from rates (``--fault-rate``), a per-request header
(``X-Mediflow-Fault: 429``) or a script (``POST /control {"sequence": ["429", "429"]}``).
``GET /stats`` reports what was served (``requests``, ``by_key``, ``faults``, ``max_in_flight``,
``arrivals``: each request's arrival, seconds since the last reset, for rate checks over time);
``POST /reset`` clears counters and restores the command-line settings. The tests, the benchmarks
and anyone evaluating the library use it; it needs no key and no network.

It also emulates a provider's Files and Batch APIs (``/v1/files``, ``/v1/batches``: statuses, an
output and an error file, expired and failed batches, per-line errors; :mod:`mediflow.testing.batches`),
answering each batch line exactly as ``/v1/chat/completions`` answers the same body. Azure OpenAI's
routes are served too (``/openai/deployments/{deployment}/chat/completions``, ``/openai/files``,
``/openai/batches``, each with an ``api-version`` query), so ``azure:DEPLOYMENT`` teachers run against it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from aiohttp import web

from mediflow.testing.batches import BatchService, azure_route, error_body, error_response
from mediflow.testing.instances import schema_instance
from mediflow.testing.texts import clinical_text

FAULT_KINDS = ("429", "500", "hang", "malformed", "cut", "truncated", "bad_json", "400", "401")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
FAULT_HEADER = "X-Mediflow-Fault"
MODEL_ID = "mediflow-test-teacher"
_SCHEMA_MARKER = "JSON Schema:"


@dataclass
class Settings:
    """What the server does; the command line sets the defaults, ``POST /control`` changes them."""

    latency: float = 0.0
    jitter: float = 0.0
    fault_rates: dict[str, float] = field(default_factory=dict)
    retry_after: float = 1.0
    #: Invalid JSON answers for the first ``garbage`` tries of each conversation (correction-turn tests).
    garbage: int = 0
    #: Enforce (and report in x-ratelimit-* headers) this many requests per minute; 0 = no limit.
    ratelimit_rpm: int = 0
    #: The response_format types accepted; a request with another type is refused, naming it.
    response_formats: list[str] = field(default_factory=lambda: list(RESPONSE_FORMATS))
    #: The status of a refusal (OpenAI answers 400; llama-cpp-python's server 500).
    refusal_status: int = 400
    #: Request parameters refused as unsupported (e.g. "seed", "top_p", "max_tokens"), or, as
    #: ``NAME=VALUE``, refused at any value but that one (``temperature=1``, as reasoning models do).
    refused_parameters: list[str] = field(default_factory=list)
    #: The model names served (GET /v1/models, 404 for others); None: no model list, any name answered.
    models: list[str] | None = None
    seed: int = 0
    #: The Files and Batch APIs (False: answer them 404, as a server without a batch API does).
    batch_api: bool = True
    #: Seconds each batch status step (validating, in_progress, finalizing) takes.
    batch_step: float = 0.05
    #: The provider's limits on one batch input file (OpenAI: 50,000 requests, 200 MB); a file over them fails validation.
    batch_max_lines: int = 50_000
    #: The purpose batch input files must be uploaded with (OpenAI, Azure OpenAI, Groq: batch; Together: batch-api).
    batch_purpose: str = "batch"
    batch_max_bytes: int = 200 * 1024 * 1024
    #: Faults for the next N batches (fail validation; expire after half the lines; a corrupt output file) or lines (HTTP 500).
    batch_fail: int = 0
    batch_expire: int = 0
    batch_corrupt: int = 0
    batch_line_errors: int = 0


def request_key(body: dict[str, Any]) -> str:
    """The id of one distinct request: what changes its answer (messages, sampling, format)."""
    identity = {name: body.get(name) for name in ("messages", "seed", "temperature", "top_p", "max_tokens")}
    if "max_completion_tokens" in body:
        identity["max_completion_tokens"] = body["max_completion_tokens"]
    identity["response_format"] = body.get("response_format")
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def conversation_key(messages: list[dict[str, Any]]) -> str:
    """The id of a conversation's opening (up to its first user turn): shared by its correction turns."""
    opening: list[Any] = []
    for message in messages:
        opening.append(message)
        if message.get("role") == "user":
            break
    return hashlib.sha256(json.dumps(opening, sort_keys=True).encode()).hexdigest()[:16]


class TestTeacher:
    """The server's state and handlers."""

    def __init__(self, settings: Settings) -> None:
        self.defaults = settings
        self.settings = replace(settings, fault_rates=dict(settings.fault_rates))
        self._random = random.Random(settings.seed)
        self.batches = BatchService(lambda: self.settings, self.answer_body)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.requests = 0
        self.served = 0
        self.by_key: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        #: Requests by response_format type ("none" when absent), refused ones included.
        self.formats: collections.Counter[str] = collections.Counter()
        self.refusals = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.sequence: collections.deque[str] = collections.deque()
        self.garbage_tries: collections.Counter[str] = collections.Counter()
        self.minute: collections.deque[float] = collections.deque()
        self.started = time.monotonic()
        self.arrivals: list[float] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", azure_route(self.chat_completions))
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/reset", self.reset)
        app.router.add_post("/control", self.control)
        self.batches.routes(app)
        return app

    async def models(self, request: web.Request) -> web.Response:
        if self.settings.models is None:
            return _error(404, "Not Found", "not_found")
        served = [{"id": name, "object": "model", "owned_by": "mediflow"} for name in self.settings.models]
        return web.json_response({"object": "list", "data": served})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": self.requests,
                "served": self.served,
                "by_key": dict(self.by_key),
                "faults": dict(self.faults),
                "formats": dict(self.formats),
                "refusals": self.refusals,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "arrivals": self.arrivals,
                "settings": asdict(self.settings),
                **self.batches.stats(),
            }
        )

    async def reset(self, request: web.Request) -> web.Response:
        self.settings = replace(self.defaults, fault_rates=dict(self.defaults.fault_rates))
        self._random = random.Random(self.defaults.seed)
        self._reset_counters()
        self.batches.reset()
        return web.json_response({"ok": True})

    async def control(self, request: web.Request) -> web.Response:
        changes = await request.json()
        unknown_faults = [kind for kind in changes.get("sequence", []) if kind not in (*FAULT_KINDS, "ok")]
        if unknown_faults:
            return web.json_response({"error": f"unknown fault kinds {unknown_faults}"}, status=400)
        self.sequence.extend(changes.pop("sequence", []))
        for name, value in changes.items():
            if not hasattr(self.settings, name):
                return web.json_response({"error": f"unknown setting {name!r}"}, status=400)
            setattr(self.settings, name, value)
        return web.json_response(asdict(self.settings))

    def _choose_fault(self, request: web.Request) -> str | None:
        header = request.headers.get(FAULT_HEADER)
        if header:
            return header
        if self.sequence:
            kind = self.sequence.popleft()
            return None if kind == "ok" else kind
        for kind, rate in self.settings.fault_rates.items():
            if rate > 0 and self._random.random() < rate:
                return kind
        return None

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.arrivals.append(round(time.monotonic() - self.started, 4))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = json.loads(await request.read())
            self.formats[_format_type(body) or "none"] += 1
            key = request_key(body)
            self.by_key[key] += 1
            settings = self.settings
            if settings.latency or settings.jitter:
                await asyncio.sleep(settings.latency + self._random.uniform(0.0, settings.jitter))
            fault = self._choose_fault(request) or self._rate_limit_fault()
            if fault is not None:
                self.faults[fault] += 1
                early = await self._fault_response(fault, request)
                if early is not None:
                    return early
            refusal = self._refusal(body)
            if refusal is not None:
                self.refusals += 1
                return web.json_response(refusal[1], status=refusal[0])
            text, finish_reason = self._answer(body, key, fault)
            self.served += 1
            payload = _completion(body, key, text, finish_reason)
            if fault == "malformed":
                return web.Response(body=payload[: len(payload) // 2], content_type="application/json")
            if fault == "cut":
                return await _cut_body(request, payload)
            return web.Response(body=payload, content_type="application/json", headers=self._ratelimit_headers())
        finally:
            self.in_flight -= 1

    def answer_body(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One batch line: the status and body ``POST /v1/chat/completions`` would answer ``body`` with (no faults, no latency)."""
        refusal = self._refusal(body)
        if refusal is not None:
            self.refusals += 1
            return refusal
        key = request_key(body)
        self.by_key[key] += 1
        text, finish_reason = self._answer(body, key, None)
        return 200, _completion_dict(body, key, text, finish_reason)

    def _refusal(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """What this server refuses in ``body`` (status and error body, as the emulated server answers); None if nothing."""
        settings = self.settings
        if settings.models is not None and body.get("model") not in settings.models:
            return 404, error_body(f"The model `{body.get('model')}` does not exist", "model_not_found")
        kind = _format_type(body)
        if kind is not None and kind not in settings.response_formats:
            accepted = " or ".join(repr(name) for name in settings.response_formats)
            message = f"response_format.type: Input should be {accepted}; got {kind!r}"
            return settings.refusal_status, error_body(message, "invalid_request_error", param="response_format")
        for refused in settings.refused_parameters:
            name, _, only = refused.partition("=")
            if name not in body:
                continue
            if not only:
                message = f"Unsupported parameter: '{name}' is not supported with this model."
                return settings.refusal_status, error_body(message, "unsupported_parameter", param=name)
            if str(body[name]) != only and body[name] != _number(only):
                message = f"Unsupported value: '{name}' does not support {body[name]} with this model. Only the default ({only}) value is supported."
                return settings.refusal_status, error_body(message, "unsupported_value", param=name)
        return None

    def _rate_limit_fault(self) -> str | None:
        if not self.settings.ratelimit_rpm:
            return None
        now = time.monotonic()
        while self.minute and self.minute[0] < now - 60.0:
            self.minute.popleft()
        if len(self.minute) >= self.settings.ratelimit_rpm:
            return "429"
        self.minute.append(now)
        return None

    def _ratelimit_headers(self) -> dict[str, str]:
        if not self.settings.ratelimit_rpm:
            return {}
        return {
            "x-ratelimit-limit-requests": str(self.settings.ratelimit_rpm),
            "x-ratelimit-remaining-requests": str(max(0, self.settings.ratelimit_rpm - len(self.minute))),
        }

    async def _fault_response(self, fault: str, request: web.Request) -> web.StreamResponse | None:
        """The response for faults that replace the answer; None for faults that alter it."""
        if fault == "429":
            wait = self.settings.retry_after
            return _error(
                429,
                "Rate limit reached for requests (test teacher)",
                "rate_limit_exceeded",
                headers={"retry-after": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000)), **self._ratelimit_headers()},
            )
        if fault == "500":
            return _error(500, "The server had an error while processing your request (test teacher)", "server_error")
        if fault == "400":
            return _error(400, "Invalid request (test teacher)", "invalid_request_error")
        if fault == "401":
            return _error(401, "Incorrect API key provided (test teacher)", "invalid_api_key")
        if fault == "hang":
            await asyncio.sleep(3600)  # until the client gives up and disconnects (handler is cancelled)
            return _error(504, "hung", "timeout")
        if fault not in ("malformed", "cut", "truncated", "bad_json"):
            return _error(400, f"unknown fault {fault!r}; known: {', '.join(FAULT_KINDS)}", "invalid_request_error")
        return None

    def _answer(self, body: dict[str, Any], key: str, fault: str | None) -> tuple[str, str]:
        messages = body.get("messages") or []
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        digest = hashlib.sha256(key.encode()).digest()
        schema = _requested_schema(body, prompt)
        if schema is not None:
            conversation = conversation_key(messages)
            if self.garbage_tries[conversation] < self.settings.garbage:
                self.garbage_tries[conversation] += 1
                text = _garbage(schema, self.garbage_tries[conversation])
            else:
                text = json.dumps(schema_instance(schema, key))
        else:
            text = clinical_text(prompt, digest)
        if fault == "bad_json":
            text = text[: max(1, len(text) // 2)] + " (and then some prose)"
        max_chars = 4 * int(body.get("max_tokens") or body.get("max_completion_tokens") or 1_000_000)
        if fault == "truncated" or len(text) > max_chars:
            return text[: min(max_chars, max(1, len(text) // 2))], "length"
        return text, "stop"


def _format_type(body: dict[str, Any]) -> str | None:
    response_format = body.get("response_format")
    return response_format.get("type") if isinstance(response_format, dict) else None


def _requested_schema(body: dict[str, Any], prompt: str) -> dict[str, Any] | None:
    """The schema a JSON answer must follow; None for a plain-text request."""
    kind = _format_type(body)
    if kind == "json_schema":
        return body["response_format"].get("json_schema", {}).get("schema") or {"type": "object"}
    given = body["response_format"].get("schema") if kind == "json_object" else None
    if isinstance(given, dict):
        return given  # llama-cpp-python / Anyscale style: JSON mode with a schema
    stated = _schema_in_prompt(prompt)
    if kind == "json_object":
        return stated or {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    return stated  # no response_format: a good model follows a schema stated in the prompt


def _schema_in_prompt(prompt: str) -> dict[str, Any] | None:
    position = prompt.find(_SCHEMA_MARKER)
    if position < 0:
        return None
    try:
        schema, _ = json.JSONDecoder().raw_decode(prompt[position + len(_SCHEMA_MARKER) :].lstrip())
    except json.JSONDecodeError:
        return None
    return schema if isinstance(schema, dict) else None


def _garbage(schema: dict[str, Any], attempt: int) -> str:
    """Alternately not JSON at all, and JSON that breaks the schema (a wrong type at the root)."""
    if attempt % 2:
        return "Sure! Here is the answer: {'answer': unquoted"
    return json.dumps(["not", "an", "object"]) if schema.get("type") == "object" else json.dumps({"wrong": True})


def _completion(body: dict[str, Any], key: str, text: str, finish_reason: str) -> bytes:
    return json.dumps(_completion_dict(body, key, text, finish_reason)).encode()


def _completion_dict(body: dict[str, Any], key: str, text: str, finish_reason: str) -> dict[str, Any]:
    prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [])
    prompt_tokens, completion_tokens = prompt_chars // 4 + 1, len(text) // 4 + 1
    return {
        "id": f"chatcmpl-{key}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or MODEL_ID,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None, param: str | None = None) -> web.Response:
    return error_response(status, message, code, param, headers)


async def _cut_body(request: web.Request, payload: bytes) -> web.StreamResponse:
    """Promise the whole body, send half, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(payload))})
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


def _fault_rate(text: str) -> tuple[str, float]:
    kind, _, rate = text.partition("=")
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
    try:
        return kind, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fault-rate wants KIND=RATE, e.g. 429=0.05; got {text!r}") from None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mediflow.testing.teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra uniform random seconds (0..jitter)")
    parser.add_argument("--fault-rate", type=_fault_rate, action="append", default=[], metavar="KIND=RATE", help=f"inject a fault at this rate; kinds: {', '.join(FAULT_KINDS)}")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds sent with 429s")
    parser.add_argument("--garbage", type=int, default=0, help="invalid JSON for the first K tries of each prompt")
    parser.add_argument("--ratelimit-rpm", type=int, default=0, help="enforce and advertise requests per minute")
    parser.add_argument("--response-formats", type=_names, default=list(RESPONSE_FORMATS), metavar="A,B", help=f"response_format types accepted (default: {','.join(RESPONSE_FORMATS)})")
    parser.add_argument("--refusal-status", type=int, default=400, help="HTTP status of a refusal (llama-cpp-python: 500)")
    parser.add_argument(
        "--refuse-parameter",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="refuse requests carrying this parameter as unsupported (seed, top_p, max_tokens, ...); with =VALUE, refuse any other value (temperature=1: as OpenAI's reasoning models)",
    )
    parser.add_argument("--models", type=_names, default=None, metavar="A,B", help="serve only these model names, listed at GET /v1/models (default: no list, any name)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws and jitter")
    parser.add_argument("--no-batch-api", action="store_true", help="answer /v1/files and /v1/batches with 404, as a server without a batch API")
    parser.add_argument("--batch-step", type=float, default=0.05, help="seconds each batch status step takes")
    args = parser.parse_args(argv)
    settings = Settings(
        latency=args.latency,
        jitter=args.jitter,
        fault_rates=dict(args.fault_rate),
        retry_after=args.retry_after,
        garbage=args.garbage,
        ratelimit_rpm=args.ratelimit_rpm,
        response_formats=args.response_formats,
        refusal_status=args.refusal_status,
        refused_parameters=args.refuse_parameter,
        models=args.models,
        seed=args.seed,
        batch_api=not args.no_batch_api,
        batch_step=args.batch_step,
    )
    server = TestTeacher(settings)
    print(f"mediflow test teacher listening on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(server.app(), host=args.host, port=args.port, access_log=None, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
