"""Any OpenAI-compatible chat-completions server through the official ``openai`` SDK.

One :class:`openai.AsyncOpenAI` (or ``AsyncAzureOpenAI``) client is created per teacher and reused
for every request, with its connection pool sized for the engine's concurrency and its own
retries switched off: the engine owns retries, so a 429 is seen once, by the component that
knows the rate limits. Response headers travel back on :class:`ChatResponse.headers` so the
engine can read ``x-ratelimit-*``.

Requests go through the client's generic ``post`` (the SDK's documented route for raw bodies) with
a body we build in the wire format, and the answer's JSON is read directly. The typed
``chat.completions.create`` walks every parameter through its TypedDict transformer and builds
pydantic models of the answer: together more CPU than the HTTP exchange itself, which at hundreds
of requests a second is what bounds a run. Auth, base URL, Azure deployment routing, status errors
(``openai.APIStatusError`` and subclasses) and timeouts are still the SDK's.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Any
from urllib.parse import urlparse

import httpx
import openai

from mediflow.errors import MediflowError
from mediflow.teachers.base import ChatRequest, ChatResponse
from mediflow.teachers.strict_schema import is_strict_compatible, strict_form

#: Response headers worth handing to the engine (rate limits and server back-off hints).
_FORWARDED_HEADER_PREFIXES = (b"x-ratelimit-", b"retry-after")
#: Key used when the server is self-hosted and asks for none (vLLM, llama.cpp, the test server).
_NO_KEY = "not-needed"
_DEFAULT_AZURE_API_VERSION = "2024-10-21"
_SCHEMA_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class OpenAICompatTeacher:
    """A teacher behind an OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, Azure, vLLM, SGLang...)."""

    def __init__(
        self,
        model: str,
        *,
        provider: str = "openai",
        base_url: str | None = None,
        api_key: str | None = None,
        api_version: str | None = None,
        max_connections: int = 256,
        timeout: float = 600.0,
    ) -> None:
        self.name = f"{provider}:{model}"
        self.model = model
        self.base_url = base_url
        #: None until the server has answered a json_schema request (True) or refused one (False).
        self.supports_json_schema: bool | None = None
        # aiohttp transport: httpx's own pool costs O(pool size) CPU per request, ~4x more at 256 connections.
        http_client = openai.DefaultAioHttpClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
        )
        if provider == "azure":
            endpoint = base_url or os.environ.get("AZURE_OPENAI_ENDPOINT")
            if not endpoint:
                raise MediflowError("azure teacher needs an endpoint: pass --base-url or set AZURE_OPENAI_ENDPOINT")
            self.base_url = endpoint
            self._client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
                azure_endpoint=endpoint,
                api_key=_api_key(api_key, "AZURE_OPENAI_API_KEY", endpoint),
                api_version=api_version
                or os.environ.get("AZURE_OPENAI_API_VERSION")
                or os.environ.get("OPENAI_API_VERSION")
                or _DEFAULT_AZURE_API_VERSION,
                max_retries=0,
                http_client=http_client,
            )
        else:
            self._client = openai.AsyncOpenAI(
                base_url=base_url,
                api_key=_api_key(api_key, "OPENAI_API_KEY", base_url),
                max_retries=0,
                http_client=http_client,
            )

    def describe(self) -> str:
        """Where requests go, for error messages (never the key)."""
        return str(self._client.base_url).rstrip("/")

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """One chat completion; JSON requests use strict json_schema, falling back to JSON mode once refused."""
        if request.response_schema is None:
            return await self._create(request, response_format=None, messages=request.message_dicts())
        schema = request.response_schema
        if self.supports_json_schema is not False and is_strict_compatible(schema):
            try:
                response = await self._create(
                    request, response_format=_json_schema_format(schema), messages=request.message_dicts()
                )
            except (openai.BadRequestError, openai.UnprocessableEntityError):
                if self.supports_json_schema:
                    raise  # the server takes json_schema: this request itself is bad
                # Fall through: retry once in JSON mode; remember only if that one is accepted.
            else:
                self.supports_json_schema = True
                return response
        response = await self._create(
            request, response_format={"type": "json_object"}, messages=_with_schema_hint(request, schema)
        )
        if self.supports_json_schema is None and is_strict_compatible(schema):
            self.supports_json_schema = False
        return response

    async def _create(
        self, request: ChatRequest, *, response_format: dict[str, Any] | None, messages: list[dict[str, str]]
    ) -> ChatResponse:
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            arguments["seed"] = request.seed
        if response_format is not None:
            arguments["response_format"] = response_format
        http_response = await self._client.post("/chat/completions", body=arguments, cast_to=httpx.Response)
        return _chat_response(http_response, self.model)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.close()


def _chat_response(http_response: httpx.Response, default_model: str) -> ChatResponse:
    """The first choice of a chat-completion body; an unreadable body is a (retryable) validation error."""
    try:
        completion = json.loads(http_response.content)
        choices = completion["choices"]
        if not choices:
            raise ValueError("response has no choices")
        choice = choices[0]
        text = choice["message"].get("content") or ""
        if not isinstance(text, str):
            raise ValueError(f"message content is {type(text).__name__}, not text")
        usage = completion.get("usage") or {}
        return ChatResponse(
            text=text,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=completion.get("model") or default_model,
            headers=_forwarded_headers(http_response.headers.raw),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise openai.APIResponseValidationError(
            http_response, None, message=f"unreadable chat completion: {type(exc).__name__}: {reason}"
        ) from exc


def _forwarded_headers(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The rate-limit headers, lower-cased (one pass over the raw list: this runs for every answer)."""
    forwarded = {}
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered.startswith(_FORWARDED_HEADER_PREFIXES):
            forwarded[lowered.decode("latin-1")] = value.decode("latin-1")
    return forwarded


def _json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    name = _SCHEMA_NAME.sub("_", str(schema.get("title") or "answer"))[:64] or "answer"
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": strict_form(schema)}}


def _with_schema_hint(request: ChatRequest, schema: dict[str, Any]) -> list[dict[str, str]]:
    """JSON mode does not carry the schema, so state it in the conversation (JSON mode also needs the word)."""
    hint = "Answer with one JSON object that validates against this JSON Schema: " + json.dumps(schema)
    return [{"role": "system", "content": hint}, *request.message_dicts()]


def _api_key(explicit: str | None, env_name: str, base_url: str | None) -> str:
    key = explicit or os.environ.get(env_name)
    if key:
        return key
    if base_url is not None and _is_self_hosted(base_url):
        return _NO_KEY
    raise MediflowError(f"no API key: set {env_name} or pass --api-key (the key is never written anywhere)")


def _is_self_hosted(base_url: str) -> bool:
    """Loopback or private-network servers (vLLM, llama.cpp, the test server) usually take no key."""
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private
