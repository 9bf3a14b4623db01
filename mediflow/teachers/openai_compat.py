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

Servers differ in what they take; :mod:`mediflow.teachers.negotiation` builds each body in the
best form this server has not refused, and :meth:`OpenAICompatTeacher.check` (``GET /models``)
runs before the first paid request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx
import openai

from mediflow.batch.providers import OpenAIBatchAPI
from mediflow.errors import MediflowError, TeacherUnavailable
from mediflow.teachers.base import ChatRequest, ChatResponse, Teacher
from mediflow.teachers.negotiation import Negotiation

if TYPE_CHECKING:
    from mediflow.batch.config import BatchConfig

#: Response headers worth handing to the engine (rate limits and server back-off hints).
_FORWARDED_HEADER_PREFIXES = (b"x-ratelimit-", b"retry-after")
#: Key used when the server is self-hosted and asks for none (vLLM, llama.cpp, the test server).
_NO_KEY = "not-needed"
_DEFAULT_AZURE_API_VERSION = "2024-10-21"
#: Longest wait for ``GET /models``: a model list is instant on a live server, however loaded.
_CHECK_TIMEOUT = 30.0
_MAX_LISTED_MODELS = 20


class OpenAICompatTeacher(Teacher):
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
        self.provider = provider
        self.base_url = base_url
        #: What this server takes (structured-output level, parameters), learned from its refusals.
        self.negotiation = Negotiation(model)
        #: The start-up check's outcome ("served", "not offered: ...", "failed: ..."); None until run.
        self.models_check: str | None = None
        self._check_error: TeacherUnavailable | None = None
        self._check_lock = asyncio.Lock()
        self._check_timeout = min(timeout, _CHECK_TIMEOUT)
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
                api_version=api_version or os.environ.get("AZURE_OPENAI_API_VERSION") or os.environ.get("OPENAI_API_VERSION") or _DEFAULT_AZURE_API_VERSION,
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

    async def check(self) -> None:
        """The start-up check, once per teacher: the server answers, takes the key and serves the model.

        ``GET /models`` costs nothing, so it runs before the first paid request: a wrong model name
        or a dead server is one line naming the problem instead of a run of failed requests. A
        server without the route (404/405/501) or with an unreadable list is not held to it.
        Raises :class:`TeacherUnavailable` (again on every later call, once failed).
        """
        if self.models_check is not None and self._check_error is None:
            return  # checked and passed: every request after the first comes through here
        async with self._check_lock:
            if self.models_check is None:
                try:
                    self.models_check = await self._check_models()
                except TeacherUnavailable as exc:
                    self.models_check = f"failed: {exc}"
                    self._check_error = exc
        if self._check_error is not None:
            raise self._check_error

    async def _check_models(self) -> str:
        if self.provider == "azure":
            return "skipped: Azure lists base models, not deployments"
        where = self.describe()
        try:
            http_response = await self._client.get("/models", cast_to=httpx.Response, options={"timeout": self._check_timeout})
        except openai.APITimeoutError as exc:
            if isinstance(exc.__cause__, httpx.ConnectTimeout):  # the aiohttp transport's refused connection
                raise TeacherUnavailable(f"cannot connect to the teacher at {where}: is the server running?") from None
            raise TeacherUnavailable(f"teacher at {where} did not answer GET /models within {self._check_timeout:g}s: is the server up and reachable?") from None
        except openai.APIConnectionError as exc:
            raise TeacherUnavailable(f"cannot connect to the teacher at {where}: {_one_line(exc.__cause__ or exc)}") from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise TeacherUnavailable(f"teacher at {where} refused the credentials (HTTP {exc.status_code}): {_one_line(exc)}") from None
            return f"not offered: GET /models answered HTTP {exc.status_code}"
        served = _served_models(http_response)
        if served is None:
            return "not offered: GET /models gave no model list"
        if not _is_served(self.model, served):
            listed = ", ".join(repr(name) for name in served[:_MAX_LISTED_MODELS])
            more = f" and {len(served) - _MAX_LISTED_MODELS} more" if len(served) > _MAX_LISTED_MODELS else ""
            raise TeacherUnavailable(f"teacher at {where} does not serve model {self.model!r}; it serves {listed or 'no model'}{more}")
        return "served"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """One chat completion, in the best form this server takes (see :mod:`mediflow.teachers.negotiation`).

        A refusal of a capability is answered here by resending one step down, so the engine never
        sees it as a failure to retry; every other error goes to the engine unchanged.
        """
        await self.check()
        while True:  # terminates: each resend follows a step down, and the steps are finite
            wire = self.negotiation.wire(request)
            try:
                http_response = await self._client.post("/chat/completions", body=wire.body, cast_to=httpx.Response)
            except openai.APIStatusError as error:
                if not self.negotiation.learn(wire, error):
                    raise
                continue
            self.negotiation.answered(wire)
            return _chat_response(http_response, self.model)

    def capabilities(self) -> dict[str, Any]:
        """What the start-up check found and what was negotiated, for the run's manifest."""
        return {"base_url": self.describe(), "models_check": self.models_check, **self.negotiation.summary()}

    def batch_api(self, options: BatchConfig) -> OpenAIBatchAPI:
        """The server's Files + Batch API, on this teacher's client and negotiation (see :mod:`mediflow.batch.providers`)."""
        return OpenAIBatchAPI(self._client, self.negotiation, self.provider, self.describe(), purpose=options.file_purpose)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.close()


def _chat_response(http_response: httpx.Response, default_model: str) -> ChatResponse:
    """The first choice of a chat-completion body; an unreadable body is a (retryable) validation error."""
    try:
        return completion_response(json.loads(http_response.content), default_model, _forwarded_headers(http_response.headers.raw))
    except ValueError as exc:
        reason = f"JSONDecodeError: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise openai.APIResponseValidationError(http_response, None, message=f"unreadable chat completion: {reason}") from exc


def completion_response(completion: Any, default_model: str, headers: dict[str, str] | None = None) -> ChatResponse:
    """A :class:`ChatResponse` from a chat-completion body (online, or a batch output line's ``response.body``).

    Raises :class:`ValueError` naming what is missing or mistyped.
    """
    try:
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
            headers=headers or {},
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def _forwarded_headers(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The rate-limit headers, lower-cased (one pass over the raw list: this runs for every answer)."""
    forwarded = {}
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered.startswith(_FORWARDED_HEADER_PREFIXES):
            forwarded[lowered.decode("latin-1")] = value.decode("latin-1")
    return forwarded


def _served_models(http_response: httpx.Response) -> list[str] | None:
    """The model ids of an OpenAI-style ``{"data": [{"id": ...}]}`` list; None when it is not one."""
    try:
        listing = json.loads(http_response.content)
        return [str(entry["id"]) for entry in listing["data"]]
    except (ValueError, KeyError, TypeError):
        return None


def _is_served(model: str, served: list[str]) -> bool:
    """Exact match; Ollama also answers a bare name with its ``:latest`` tag."""
    return model in served or (":" not in model and f"{model}:latest" in served)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _api_key(explicit: str | None, env_name: str, base_url: str | None) -> str:
    key = explicit or os.environ.get(env_name)
    if key:
        return key
    if base_url is not None and _is_self_hosted(base_url):
        return _NO_KEY
    raise MediflowError(f"no API key: set {env_name}, or name the variable that holds the key with --api-key-env (the key is never written anywhere)")


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
