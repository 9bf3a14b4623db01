"""What one OpenAI-compatible server accepts, learned from its refusals and remembered for the run.

Servers that speak OpenAI's wire format still differ in what they take. OpenAI, vLLM and SGLang take
a strict ``json_schema`` response format; llama-cpp-python's server takes only ``text`` and
``json_object`` and answers a ``json_schema`` with HTTP 500; some servers have no JSON mode at all;
OpenAI's reasoning models refuse ``max_tokens`` (they want ``max_completion_tokens``) and ``top_p``.

So a refusal is recognised by what its body says, never by one status code: a 4xx or 5xx naming
``response_format``, ``json_schema``, ``json_object`` or the schema steps structured output down one
level (:data:`STRUCTURED_LEVELS`; below strict mode the schema is also stated in the prompt); one
saying a parameter is unsupported drops it (``seed``, ``top_p``) or
renames it (``max_tokens`` -> ``max_completion_tokens``). A refused non-default ``temperature``
(reasoning models: "Unsupported value: 'temperature' does not support 0.7 with this model. Only the
default (1) value is supported.") is dropped the same way, and said once as a warning: from then on
answers come at the server's default temperature, not the one the config asked for. What was learned
stays with the teacher (one per model and base URL, for the run), so the run pays each refusal about
once, and goes into the manifest of every folder made with the teacher (:func:`capabilities_by_role`,
one entry per role: the generator, the judge, each pair role, the PIT QA teacher). Whatever the
level, every JSON answer is validated locally (:mod:`mediflow.steps.structured`): negotiation
decides how to ask, never what to accept.

The cache key stays the request as asked (temperature included) even when the temperature was
dropped: the cache is read before the server is asked, so a key of what was sent would miss every
answer a resumed run already paid for (a fresh run has not met the refusal yet), and requests that
differ only in temperature stay distinct draws. The teacher's name is in the key, so an answer at
the default is only ever reused for that model (see docs/generation.md).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import openai

from mediflow.prompts import PromptTemplate, load_prompts
from mediflow.teachers.base import ChatRequest, Teacher
from mediflow.teachers.strict_schema import is_strict_compatible, strict_form

if TYPE_CHECKING:
    from mediflow.folders.manifest import Manifest

#: Structured-output levels, best first: strict ``json_schema``; JSON mode carrying the schema in
#: ``response_format.schema`` (llama-cpp-python turns it into a grammar, Anyscale-style servers
#: constrain to it, others ignore the key or refuse it by name); plain JSON mode; no response_format.
STRUCTURED_LEVELS = ("json_schema", "json_object_schema", "json_object", "prompt")
#: Optional request parameters a server may refuse, and what happens then: dropped, or renamed.
#: ``temperature`` is refused by reasoning models unless it is their default; dropping it changes the
#: answers, so that drop is also said once as a warning.
DROPPABLE_PARAMETERS = ("seed", "top_p", "temperature")
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")

#: Statuses that never mean "this server does not take that parameter": auth, missing route or
#: model, rate limits and time-outs are the engine's business.
_NOT_A_REFUSAL = frozenset({401, 403, 404, 408, 409, 429})
_NAMES_STRUCTURED_OUTPUT = re.compile(r"response_format|json_schema|json_object|\bschema\b")
_SAYS_UNSUPPORTED = re.compile(
    r"unsupported|not supported|does not support|unrecogni[sz]ed|unknown (?:parameter|field|argument)"
    r"|extra (?:inputs|fields)|not permitted|not allowed|unexpected keyword"
)
#: A prompt that does not fit names ``max_tokens`` and sometimes the schema, but refuses nothing.
_TOO_LONG = re.compile(r"context length|context window|maximum context|too many tokens|reduce the length")
_SCHEMA_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class WireRequest:
    """One request body as sent, with what it relied on (so a refusal can be traced to its cause)."""

    body: dict[str, Any]
    structured: str | None  # the STRUCTURED_LEVELS entry used; None for a plain-text request
    parameters: tuple[str, ...]  # optional parameters sent: "temperature", "seed", "top_p", and the token-limit field


@dataclass
class Negotiation:
    """The capabilities learned about one server; builds request bodies and reads refusals."""

    model: str
    #: Index into STRUCTURED_LEVELS: the best level the server has not refused.
    level: int = 0
    #: The level the server last answered a JSON request at (None until one was answered).
    answered_level: str | None = None
    dropped: set[str] = field(default_factory=set)
    token_field: str = TOKEN_LIMIT_FIELDS[0]
    #: What each refused capability was refused with (one line each), for the manifest.
    refusals: dict[str, str] = field(default_factory=dict)

    def wire(self, request: ChatRequest) -> WireRequest:
        """The body to send for ``request`` given what the server is known to take."""
        body: dict[str, Any] = {"model": self.model}
        parameters = [self.token_field]
        body[self.token_field] = request.max_tokens
        if "temperature" not in self.dropped:
            body["temperature"] = request.temperature
            parameters.append("temperature")
        if "top_p" not in self.dropped:
            body["top_p"] = request.top_p
            parameters.append("top_p")
        if request.seed is not None and "seed" not in self.dropped:
            body["seed"] = request.seed
            parameters.append("seed")
        schema = request.response_schema
        if schema is None:
            body["messages"] = request.message_dicts()
            return WireRequest(body, None, tuple(parameters))
        level = STRUCTURED_LEVELS[max(self.level, _first_level(schema))]
        if level == "json_schema":
            body["messages"] = request.message_dicts()
            body["response_format"] = _json_schema_format(schema)
        else:
            body["messages"] = _with_schema_hint(request.message_dicts(), schema)
            if level == "json_object_schema":
                body["response_format"] = {"type": "json_object", "schema": schema}
            elif level == "json_object":
                body["response_format"] = {"type": "json_object"}
        return WireRequest(body, level, tuple(parameters))

    def learn(self, wire: WireRequest, error: openai.APIStatusError) -> bool:
        """Step past what ``error`` refuses, if it refuses something ``wire`` relied on; True to resend."""
        if error.status_code in _NOT_A_REFUSAL:
            return False
        text = _error_text(error)
        if _TOO_LONG.search(text):
            return False
        reason = _reason(error)
        if wire.structured in STRUCTURED_LEVELS[:-1] and _NAMES_STRUCTURED_OUTPUT.search(text):
            self.level = max(self.level, STRUCTURED_LEVELS.index(wire.structured) + 1)
            self.refusals.setdefault(wire.structured, reason)
            return True
        name = _refused_parameter(error, text, wire.parameters) if _SAYS_UNSUPPORTED.search(text) else None
        if name in DROPPABLE_PARAMETERS:
            if name == "temperature" and name not in self.dropped:
                _say_temperature_dropped(self.model, reason)
            self.dropped.add(name)
        elif name == TOKEN_LIMIT_FIELDS[0]:
            self.token_field = TOKEN_LIMIT_FIELDS[1]
        else:
            return False  # nothing we sent is refused, or max_completion_tokens refused too: nothing left to try
        self.refusals.setdefault(name, reason)
        return True

    def answered(self, wire: WireRequest) -> None:
        """The server answered ``wire``: its structured level is the one that works."""
        if wire.structured is not None:
            self.answered_level = wire.structured

    def summary(self) -> dict[str, Any]:
        """What was negotiated, for the run's manifest (``structured_output`` None: no JSON request sent)."""
        return {
            "structured_output": self.answered_level,
            "token_limit_field": self.token_field,
            "dropped_parameters": sorted(self.dropped),
            "refusals": dict(self.refusals),
        }


def wire_of(body: Mapping[str, Any]) -> WireRequest:
    """The :class:`WireRequest` a body was built as (a batch line read back from its input file).

    A JSON request below JSON mode cannot be told from a plain one by its body; it has no lower level
    to step down to either, so it reads as plain.
    """
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_object" and isinstance(response_format, Mapping) and "schema" in response_format:
        kind = "json_object_schema"
    parameters = tuple(name for name in (*TOKEN_LIMIT_FIELDS, *DROPPABLE_PARAMETERS) if name in body)
    return WireRequest(dict(body), kind if kind in STRUCTURED_LEVELS else None, parameters)


def _first_level(schema: dict[str, Any]) -> int:
    """Strict json_schema and JSON mode both need an object at the root; anything else goes in the prompt."""
    return 0 if is_strict_compatible(schema) else STRUCTURED_LEVELS.index("prompt")


def _json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    name = _SCHEMA_NAME.sub("_", str(schema.get("title") or "answer"))[:64] or "answer"
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": strict_form(schema)}}


@cache
def _schema_hint_template() -> PromptTemplate:
    return load_prompts().get("schema_hint")


def _with_schema_hint(messages: list[dict[str, str]], schema: dict[str, Any]) -> list[dict[str, str]]:
    """Below strict mode the server does not see the schema: state it in the system turn.

    Merged into an existing system message rather than added as a second one: chat templates such
    as Gemma's refuse conversations whose roles do not alternate.
    """
    hint = "\n\n".join(content for _, content in _schema_hint_template().render(schema=schema))
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + hint}, *messages[1:]]
    return [{"role": "system", "content": hint}, *messages]


def _error_text(error: openai.APIStatusError) -> str:
    """Everything the refusal says, lower-cased: the message and the body (FastAPI puts the field in ``loc``)."""
    body = json.dumps(error.body, default=str) if error.body is not None else ""
    return f"{error.message} {body}".lower()


def _refused_parameter(error: openai.APIStatusError, text: str, parameters: tuple[str, ...]) -> str | None:
    """The sent parameter a refusal is about: the one its body names as ``param`` (OpenAI's errors), else
    the one its text names first ("'top_p' is not supported when temperature is set" refuses top_p)."""
    body = error.body
    inner = body.get("error", body) if isinstance(body, dict) else None
    param = inner.get("param") if isinstance(inner, dict) else None
    if param in parameters:
        return str(param)
    mentions = {name: found.start() for name in parameters if (found := re.search(rf"\b{name}\b", text))}
    return min(mentions, key=lambda name: mentions[name], default=None)


def _reason(error: openai.APIStatusError) -> str:
    """``HTTP <status>: <the server's own message>``, on one line (the SDK's message repeats the whole body)."""
    body = error.body
    message: Any = error.message
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
        elif "detail" in body:
            message = json.dumps(body["detail"], default=str)
    text = " ".join(f"HTTP {error.status_code}: {message}".split())
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


def _say_temperature_dropped(model: str, reason: str) -> None:
    """The one line a run gets when its temperature stops being sent: its answers are no longer sampled as configured."""
    warnings.warn(
        f"model {model!r} refuses the requested temperature ({reason}); temperature is no longer sent for the rest of this run, so its answers come at the server's default temperature (recorded under teacher_capabilities in the manifest)",
        UserWarning,
        stacklevel=2,
    )


def combine(summaries: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """One role's capabilities from several teachers' (:meth:`OpenAICompatTeacher.capabilities`); None if none.

    Each Ray actor negotiates for itself, and a rerun's answers from the cache were got the earlier
    session's way: the lowest structured-output level any of them settled on is the one reported,
    with every dropped parameter and every refusal; other facts (server, model check) come from the
    first summary that has them.
    """
    combined: dict[str, Any] | None = None
    for summary in summaries:
        if not summary:
            continue
        if combined is None:
            negotiated: dict[str, Any] = {"structured_output": None, "token_limit_field": TOKEN_LIMIT_FIELDS[0], "dropped_parameters": [], "refusals": {}}
            combined = {**dict.fromkeys(summary), **negotiated}  # the first summary's key order
        for name, value in summary.items():
            if combined.get(name) is None:
                combined[name] = value
        levels = [level for level in (combined["structured_output"], summary.get("structured_output")) if level in STRUCTURED_LEVELS]
        combined["structured_output"] = max(levels, key=STRUCTURED_LEVELS.index, default=None)
        if summary.get("token_limit_field") == TOKEN_LIMIT_FIELDS[1]:
            combined["token_limit_field"] = TOKEN_LIMIT_FIELDS[1]
        combined["dropped_parameters"] = sorted({*combined["dropped_parameters"], *summary.get("dropped_parameters", ())})
        combined["refusals"] = {**summary.get("refusals", {}), **combined["refusals"]}
    return combined


def capabilities_by_role(
    teachers: Mapping[str, Teacher],
    reported: Iterable[Mapping[str, Mapping[str, Any]]] = (),
    previous: Manifest | None = None,
) -> dict[str, dict[str, Any]]:
    """What each role's teacher negotiated, for a manifest's ``teacher_capabilities``: ``{role: capabilities}``.

    A role is the config key of its ``teacher:`` section (``teacher``, ``judge.teacher``,
    ``judge_teacher``, ``candidate_sources[0].teacher``, ``qa.teacher``). ``teachers`` are this
    process's, ``reported`` what each Ray actor's teachers negotiated (this function, run on the
    actor), ``previous`` the same run's earlier manifest (``OutputFolder.previous``: a rerun's answers
    from the cache were got that session's way, see :func:`combine`). A teacher that negotiates
    nothing (the embedded model, vLLM offline) has no entry.
    """
    reports = list(reported)
    earlier = previous.teacher_capabilities if previous is not None else {}
    roles = dict.fromkeys([*teachers, *(role for report in reports for role in report)])
    by_role: dict[str, dict[str, Any]] = {}
    for role in roles:
        own = teachers[role].capabilities() if role in teachers else None
        summary = combine([own, *(report.get(role) for report in reports), earlier.get(role)])
        if summary is not None:
            by_role[role] = summary
    return by_role
