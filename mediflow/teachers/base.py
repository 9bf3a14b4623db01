"""The one interface every teacher implements, and the request/response it speaks.

A teacher only turns one chat request into one response. Limits, retries, caching, resume and
accounting belong to :mod:`mediflow.engine`; what to ask and how to read the answer belongs to
:mod:`mediflow.pipeline`. Keeping teachers this small is what lets the OpenAI-compatible client,
offline vLLM and the embedded llama.cpp model be swapped by one ``--teacher`` flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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
    """Turns one :class:`ChatRequest` into one :class:`ChatResponse`."""

    #: A stable, human-readable spec such as ``openai:gpt-4o`` or ``local:gemma-3-270m``; part of the cache key.
    name: str

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer one request. Raise the transport's exceptions; the engine decides what to retry."""
        ...

    async def aclose(self) -> None:
        """Release connections / models."""
        ...


async def check_teacher(teacher: Teacher) -> None:
    """Run the teacher's start-up check where it has one, before anything is written or paid for.

    A server teacher has ``async check()`` (see :class:`~mediflow.teachers.openai_compat.OpenAICompatTeacher`);
    an in-process model has nothing to reach, so it has none. The check also runs lazily before the
    teacher's first request, so callers that skip this only learn of a dead server a little later.
    """
    check = getattr(teacher, "check", None)
    if check is not None:
        await check()


def teacher_capabilities(teacher: Teacher) -> dict[str, Any] | None:
    """What the teacher negotiated with its server (structured-output level, parameters), for manifests."""
    capabilities = getattr(teacher, "capabilities", None)
    return capabilities() if capabilities is not None else None
