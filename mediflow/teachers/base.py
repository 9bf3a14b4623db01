"""The one interface every teacher implements, and the request/response it speaks.

A teacher only turns one chat request into one response. Limits, retries, caching, resume and
accounting belong to :mod:`mediflow.engine`; what to ask and how to read the answer belongs to
:mod:`mediflow.pipeline`. Keeping teachers this small is what lets the OpenAI-compatible client,
offline vLLM and the embedded llama.cpp model be swapped by one ``--teacher`` flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mediflow.batch.config import BatchConfig
    from mediflow.batch.providers import BatchAPI


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for. Everything that changes the answer is in here (and so in the cache key)."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable and order-stable
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    response_schema: dict[str, Any] | None = field(default=None, hash=False)  # JSON Schema for JSON answers
    sample_index: int = 0  # distinguishes repeated samples of the same prompt (self-consistency)
    prompt_version: str = ""  # the template hash(es) that rendered the messages

    def message_dicts(self) -> list[dict[str, str]]:
        """The messages in the OpenAI wire format."""
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True)
class ChatResponse:
    """The teacher's answer, with what accounting and caching need."""

    text: str
    finish_reason: str  # "stop", "length", ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    #: Rate-limit headers the server sent with this answer (``x-ratelimit-*``, ``retry-after``), lower-cased;
    #: the engine seeds its request/token buckets from them. Never cached.
    headers: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: True when the engine served this answer from its cache (no call, no new cost).
    cached: bool = field(default=False, compare=False)


@runtime_checkable
class Teacher(Protocol):
    """Turns one :class:`ChatRequest` into one :class:`ChatResponse`.

    ``complete`` and ``aclose`` are the whole contract; the other members have defaults that a
    teacher overrides where it knows better. Every teacher subclasses this class explicitly, so the
    engine and the manifests read these members directly instead of probing for them.
    """

    #: A stable, human-readable spec such as ``openai:gpt-4o`` or ``local:gemma-3-270m``; part of the cache key.
    name: str
    #: The model asked for, which names its list price (:func:`mediflow.engine.accounting.price_per_1k`).
    model: str = ""
    #: Requests this teacher can serve at once (an in-process model: 1); None: the engine's ``concurrency``.
    max_concurrency: int | None = None
    #: (input, output) USD per 1k tokens when the teacher knows them (a local model: free); None: list prices.
    price_per_1k: tuple[float, float] | None = None

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer one request. Raise the transport's exceptions; the engine decides what to retry."""
        ...

    async def aclose(self) -> None:
        """Release connections / models."""
        ...

    def describe(self) -> str:
        """Where requests go, for error messages (never a key)."""
        return self.name

    async def check(self) -> None:
        """The start-up check, before anything is written or paid for (a server: ``GET /models``).

        An in-process model has nothing to reach, so by default there is nothing to check. A server
        teacher also runs it lazily before its first request, so a caller that skips it only learns
        of a dead server a little later.
        """
        return None

    def capabilities(self) -> dict[str, Any] | None:
        """What the teacher negotiated with its server (structured-output level, parameters), for manifests."""
        return None

    def batch_api(self, options: BatchConfig) -> BatchAPI | None:
        """The provider's batch service for this teacher's requests (``mode: batch``); None: it has none."""
        return None
