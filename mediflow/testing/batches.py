"""The test teacher's emulation of the OpenAI Files and Batch APIs (``/v1/files``, ``/v1/batches``).

What a provider's batch service does, on loopback and in seconds instead of hours, so the whole
batch path (upload, create, poll, download, resume, faults) runs in CI against a real HTTP server
through the real ``openai`` SDK:

- ``POST /v1/files`` (multipart ``file`` + ``purpose``), ``GET /v1/files/{id}``, ``GET
  /v1/files/{id}/content``, ``DELETE /v1/files/{id}``;
- ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``, ``GET
  /v1/batches`` (``limit``, ``after``; newest first, as OpenAI lists them);
- the same under ``/openai/files`` and ``/openai/batches`` with an ``api-version`` query, as Azure
  OpenAI serves them (its batches and lines name the endpoint ``/chat/completions``);
- a batch goes ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed``, each step
  taking ``batch_step`` seconds; every line is answered exactly as ``POST /v1/chat/completions``
  would answer its body (the same deterministic answers and refusals), successes in the output
  file and failures in the error file, in OpenAI's line format.

Faults, each for the next N batches or lines (``POST /control``): ``batch_fail`` (the batch fails
validation), ``batch_expire`` (it expires after answering half of its lines; the rest are
``batch_expired`` lines in the error file), ``batch_line_errors`` (lines answered with HTTP 500 in
the error file), ``batch_corrupt`` (the output file is not JSONL). ``batch_max_lines`` and
``batch_max_bytes`` are the provider's limits on one input file (a file over them fails
validation, as OpenAI's does); ``batch_purpose`` is the upload purpose it takes (``batch``; Together's
``batch-api`` to play Together); ``batch_api: false`` plays a server without a batch API (404).
``/stats`` reports ``batches_created``, ``files_uploaded``, ``batch_submitted`` (each custom_id and
how many batches it was submitted in) and ``batch_lines`` (how many times each was answered).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

#: The endpoint a batch (and each of its lines) names: OpenAI's versioned path; Azure OpenAI's
#: deployment-relative one (its routes live under ``/openai`` and take an ``api-version`` query).
OPENAI_ENDPOINT = "/v1/chat/completions"
AZURE_ENDPOINT = "/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
EXPIRED_LINE = {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}


class BatchSettings(Protocol):
    """The part of the server's settings the batch service reads (see :class:`mediflow.testing.teacher.Settings`)."""

    batch_api: bool
    batch_step: float
    batch_max_lines: int
    batch_purpose: str
    batch_max_bytes: int
    batch_fail: int
    batch_expire: int
    batch_line_errors: int
    batch_corrupt: int


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class EmulatedBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    status: str = "validating"
    created_at: int = field(default_factory=lambda: int(time.time()))
    times: dict[str, int] = field(default_factory=dict)
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    #: Set by ``POST /cancel``: the batch stops at once, not at the end of its current step.
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 24 * 3600,
            **{f"{name}_at": at for name, at in self.times.items()},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }


#: Answers one chat-completion body: (HTTP status, the response body), as ``POST /v1/chat/completions`` would.
Answerer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


class BatchService:
    """The files and batches of one test teacher (see the module docstring)."""

    def __init__(self, settings: Callable[[], BatchSettings], answer: Answerer) -> None:
        self._settings = settings
        self._answer = answer
        self.reset()

    def reset(self) -> None:
        for task in getattr(self, "_tasks", ()):
            task.cancel()
        self._tasks: set[asyncio.Task[None]] = set()
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, EmulatedBatch] = {}
        self._ids = itertools.count(1)
        self.lines: collections.Counter[str] = collections.Counter()
        self.submitted: collections.Counter[str] = collections.Counter()
        self.created = 0
        self.uploaded = 0

    def stats(self) -> dict[str, Any]:
        return {"batches_created": self.created, "files_uploaded": self.uploaded, "batch_submitted": dict(self.submitted), "batch_lines": dict(self.lines)}

    def routes(self, app: web.Application) -> None:
        """OpenAI's routes under ``/v1``, and Azure OpenAI's under ``/openai`` (with an ``api-version``)."""
        for prefix, route in (("/v1", _plain), ("/openai", azure_route)):
            app.router.add_post(f"{prefix}/files", route(self.upload))
            app.router.add_get(f"{prefix}/files/{{id}}", route(self.file))
            app.router.add_get(f"{prefix}/files/{{id}}/content", route(self.content))
            app.router.add_delete(f"{prefix}/files/{{id}}", route(self.delete))
            app.router.add_post(f"{prefix}/batches", route(self.create))
            app.router.add_get(f"{prefix}/batches", route(self.list_batches))
            app.router.add_get(f"{prefix}/batches/{{id}}", route(self.retrieve))
            app.router.add_post(f"{prefix}/batches/{{id}}/cancel", route(self.cancel))

    # -- files ------------------------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

    def _off(self) -> web.Response | None:
        return None if self._settings().batch_api else error_response(404, "Not Found", "not_found")

    async def upload(self, request: web.Request) -> web.Response:
        if (off := self._off()) is not None:
            return off
        form = await request.post()
        upload, purpose = form.get("file"), str(form.get("purpose") or "")
        if not isinstance(upload, web.FileField):
            return error_response(400, "'file' is a required multipart field", "invalid_request_error", "file")
        if purpose != self._settings().batch_purpose:
            return error_response(400, f"Invalid value for 'purpose': {purpose!r}; batch input files take {self._settings().batch_purpose!r}", "invalid_request_error", "purpose")
        stored = StoredFile(self._new_id("file"), upload.filename or "upload.jsonl", purpose, upload.file.read())
        self.files[stored.id] = stored
        self.uploaded += 1
        return web.json_response(stored.to_dict())

    def _stored(self, request: web.Request) -> StoredFile | web.Response:
        stored = self.files.get(request.match_info["id"])
        return stored if stored is not None else error_response(404, f"No such File object: {request.match_info['id']}", "not_found", "id")

    async def file(self, request: web.Request) -> web.Response:
        stored = self._off() or self._stored(request)
        return stored if isinstance(stored, web.Response) else web.json_response(stored.to_dict())

    async def content(self, request: web.Request) -> web.Response:
        stored = self._off() or self._stored(request)
        return stored if isinstance(stored, web.Response) else web.Response(body=stored.content, content_type="application/octet-stream")

    async def delete(self, request: web.Request) -> web.Response:
        stored = self._off() or self._stored(request)
        if isinstance(stored, web.Response):
            return stored
        del self.files[stored.id]
        return web.json_response({"id": stored.id, "object": "file", "deleted": True})

    # -- batches ----------------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        if (off := self._off()) is not None:
            return off
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return error_response(404, f"No such File object: {body.get('input_file_id')}", "not_found", "input_file_id")
        endpoint = AZURE_ENDPOINT if request.path.startswith("/openai/") else OPENAI_ENDPOINT
        if body.get("endpoint") != endpoint:
            return error_response(400, f"endpoint must be {endpoint}", "invalid_request_error", "endpoint")
        if body.get("completion_window") != "24h":
            return error_response(400, "completion_window must be '24h'", "invalid_request_error", "completion_window")
        batch = EmulatedBatch(self._new_id("batch"), body["input_file_id"], body["endpoint"], "24h", body.get("metadata"))
        self.batches[batch.id] = batch
        self.created += 1
        for raw in self.files[batch.input_file_id].content.splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                self.submitted[str(json.loads(raw)["custom_id"])] += 1
        task = asyncio.get_running_loop().create_task(self._process(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(batch.to_dict())

    def _batch(self, request: web.Request) -> EmulatedBatch | web.Response:
        batch = self.batches.get(request.match_info["id"])
        return batch if batch is not None else error_response(404, f"No such Batch object: {request.match_info['id']}", "not_found", "id")

    async def retrieve(self, request: web.Request) -> web.Response:
        batch = self._off() or self._batch(request)
        return batch if isinstance(batch, web.Response) else web.json_response(batch.to_dict())

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self._off() or self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.status in TERMINAL:
            return error_response(409, f"Cannot cancel a batch with status '{batch.status}'.", "invalid_request_error")
        if batch.status != "cancelling":
            batch.status = "cancelling"
            batch.times["cancelling"] = int(time.time())
            batch.cancel_requested.set()
        return web.json_response(batch.to_dict())

    async def list_batches(self, request: web.Request) -> web.Response:
        if (off := self._off()) is not None:
            return off
        limit = int(request.query.get("limit", "20"))
        newest_first = sorted(self.batches.values(), key=lambda batch: batch.id, reverse=True)
        after = request.query.get("after")
        if after is not None:
            newest_first = [batch for batch in newest_first if batch.id < after]
        page = newest_first[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": [batch.to_dict() for batch in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest_first) > limit,
            }
        )

    # -- processing -------------------------------------------------------------------------------
    async def _step(self, batch: EmulatedBatch) -> bool:
        """Wait one status step; False once the batch is being cancelled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.cancel_requested.wait(), self._settings().batch_step)
        return batch.status != "cancelling"

    async def _process(self, batch: EmulatedBatch) -> None:
        settings = self._settings()
        content = self.files[batch.input_file_id].content
        if not await self._step(batch):
            self._finish(batch, "cancelled", [], [])
            return
        lines, errors = _validate(content, batch.endpoint, settings)
        if settings.batch_fail > 0:
            settings.batch_fail -= 1
            errors = errors or [{"code": "invalid_request", "message": "the batch failed validation (test teacher fault)", "line": None, "param": None}]
        if errors:
            batch.errors = errors
            self._finish(batch, "failed", [], [])
            return
        batch.status, batch.total = "in_progress", len(lines)
        batch.times["in_progress"] = int(time.time())
        expire = settings.batch_expire > 0
        if expire:
            settings.batch_expire -= 1
        if not await self._step(batch):
            self._finish(batch, "cancelled", [], [])
            return
        answered: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for index, line in enumerate(lines):
            if expire and index >= len(lines) // 2:
                failed += [{"id": f"batch_req_{batch.id}_{i}", "custom_id": rest["custom_id"], "response": None, "error": EXPIRED_LINE} for i, rest in enumerate(lines[index:], index)]
                batch.failed += len(lines) - index
                self._finish(batch, "expired", answered, failed)
                return
            self.lines[line["custom_id"]] += 1
            status, body = self._answer(line["body"])
            if settings.batch_line_errors > 0:
                settings.batch_line_errors -= 1
                status, body = 500, error_body("The server had an error while processing your request (test teacher)", "server_error")
            result = {"id": f"batch_req_{batch.id}_{index}", "custom_id": line["custom_id"], "response": {"status_code": status, "request_id": f"req_{index}", "body": body}, "error": None}
            if status == 200:
                answered.append(result)
                batch.completed += 1
            else:
                failed.append(result)
                batch.failed += 1
            if index % 64 == 63:
                await asyncio.sleep(0)  # let polls see the counts move
                if batch.status == "cancelling":
                    self._finish(batch, "cancelled", answered, failed)
                    return
        batch.status = "finalizing"
        batch.times["finalizing"] = int(time.time())
        if not await self._step(batch):
            self._finish(batch, "cancelled", answered, failed)
            return
        self._finish(batch, "completed", answered, failed)

    def _finish(self, batch: EmulatedBatch, status: str, answered: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
        settings = self._settings()
        if answered:
            text = "".join(json.dumps(line) + "\n" for line in answered).encode()
            if settings.batch_corrupt > 0:
                settings.batch_corrupt -= 1
                text = text[: len(text) // 2] + b"\x00 not json at all\n"
            batch.output_file_id = self._store(f"{batch.id}_output.jsonl", text)
        if failed:
            batch.error_file_id = self._store(f"{batch.id}_error.jsonl", "".join(json.dumps(line) + "\n" for line in failed).encode())
        batch.status = status
        batch.times[status] = int(time.time())

    def _store(self, filename: str, content: bytes) -> str:
        stored = StoredFile(self._new_id("file"), filename, "batch_output", content)
        self.files[stored.id] = stored
        return stored.id


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _plain(handler: Handler) -> Handler:
    return handler


def azure_route(handler: Handler) -> Handler:
    """``handler`` as an Azure OpenAI route: a request without the ``api-version`` query is refused, as Azure does."""

    async def route(request: web.Request) -> web.StreamResponse:
        if "api-version" not in request.query:
            return error_response(404, "Resource not found: Azure OpenAI needs the api-version query parameter", "404")
        return await handler(request)

    return route


def _validate(content: bytes, endpoint: str, settings: BatchSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input file's lines, or what makes it invalid (as OpenAI reports it: one error per problem, with its line)."""
    if len(content) > settings.batch_max_bytes:
        return [], [{"code": "too_large", "message": f"the input file is {len(content)} bytes, over the limit of {settings.batch_max_bytes}", "line": None, "param": None}]
    lines: list[dict[str, Any]] = []
    seen: set[str] = set()
    errors: list[dict[str, Any]] = []
    for number, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            errors.append({"code": "invalid_json_line", "message": "this line is not valid JSON", "line": number, "param": None})
            continue
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str) or not isinstance(line.get("body"), dict):
            errors.append({"code": "invalid_request", "message": "a line needs custom_id, method, url and body", "line": number, "param": None})
        elif line["custom_id"] in seen:
            errors.append({"code": "duplicate_custom_id", "message": f"the custom_id {line['custom_id']} is used more than once", "line": number, "param": "custom_id"})
        elif line.get("url") != endpoint:
            errors.append({"code": "mismatched_endpoint", "message": f"url {line.get('url')!r} is not the batch's endpoint {endpoint}", "line": number, "param": "url"})
        else:
            seen.add(line["custom_id"])
            lines.append(line)
    if len(lines) > settings.batch_max_lines:
        errors.append({"code": "too_many_requests", "message": f"the input file has {len(lines)} requests, over the limit of {settings.batch_max_lines}", "line": None, "param": None})
    return lines, errors


def error_response(status: int, message: str, code: str, param: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """An error in OpenAI's shape (``{"error": {message, type, code, param}}``)."""
    return web.json_response(error_body(message, code, param), status=status, headers=headers)


def error_body(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "code": code, "param": param}}
