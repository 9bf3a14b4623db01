"""Where batch files go: a provider's Files + Batch API through the ``openai`` SDK, or vLLM's ``run_batch``.

:class:`BatchAPI` is what the batch runner needs from a provider: turn a request into a line,
upload a file, create / retrieve / cancel / find a batch, download a result file. A teacher
offers one through :meth:`~mediflow.teachers.base.Teacher.batch_api`:

- :class:`OpenAIBatchAPI`: the ``openai`` SDK's ``files`` and ``batches`` clients on the teacher's
  own client (``AsyncOpenAI``, or ``AsyncAzureOpenAI`` for ``azure:``), so the base URL, key and
  Azure routing are the teacher's. OpenAI, Azure OpenAI and the OpenAI-style batch services
  (Together, Groq, Fireworks, OpenRouter, ...) and the test teacher speak it. A transient failure
  of one of these calls (a 429, a 5xx, a dropped connection) is retried with backoff (tenacity,
  classified by :func:`mediflow.engine.failures.classify`); anything else is one error line.
- :class:`VLLMRunBatch`: the same JSONL through vLLM's offline batch entry point,
  ``python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model PATH``, as a subprocess on
  this (GPU) machine. Not run in this project's CI (no GPU): the tests check its files and its
  command line, and run the whole path with a stand-in ``run_batch`` module.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import openai
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from mediflow.batch.config import BatchConfig
from mediflow.engine.failures import classify
from mediflow.errors import MediflowError, TeacherError, TeacherUnavailable
from mediflow.folders.atomic import commit, temp_path
from mediflow.teachers.base import ChatRequest, Teacher
from mediflow.teachers.negotiation import Negotiation, wire_of

T = TypeVar("T")
#: Statuses after which a batch changes no more.
TERMINAL = ("completed", "failed", "expired", "cancelled")
#: Attempts of one provider call (upload, create, retrieve, download) before the run stops.
_CALL_ATTEMPTS = 5


@dataclass(frozen=True)
class BatchInfo:
    """A batch as the provider reports it."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: Why a batch failed validation (one line each), as the provider words it.
    errors: tuple[str, ...] = ()
    created_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class BatchAPI(ABC):
    """One provider's batch service, for one teacher (see the module docstring)."""

    #: ``openai``, ``azure`` or ``vllm``: how ``mediflow batches`` names it.
    provider: str
    #: Whether batches carry the metadata we create them with (a remote provider: checked on every resume).
    keeps_metadata: bool = True
    #: How request bodies are built for this server (the teacher's own, so what a refusal teaches sticks).
    negotiation: Negotiation | None = None

    @abstractmethod
    def line(self, key: str, request: ChatRequest) -> dict[str, Any]:
        """The input line for ``request`` under ``custom_id`` ``key``: the body the teacher would send online."""

    @abstractmethod
    def describe(self) -> str:
        """Where the batches go, for error lines (never a key)."""

    async def check(self) -> None:
        """Before anything is written: the provider has a batch service (raises :class:`TeacherUnavailable`)."""
        return None

    @abstractmethod
    async def upload(self, path: Path) -> str:
        """Upload an input file; its file id."""

    @abstractmethod
    async def create(self, input_file_id: str, metadata: Mapping[str, str], completion_window: str) -> BatchInfo:
        """Start a batch over an uploaded file."""

    @abstractmethod
    async def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch's current state."""

    @abstractmethod
    async def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the provider to stop the batch (its finished lines stay in its output file)."""

    @abstractmethod
    async def download(self, file_id: str, path: Path) -> None:
        """Write a result file to ``path`` (atomically)."""

    async def find(self, metadata: Mapping[str, str], since: float) -> BatchInfo | None:
        """A batch created since ``since`` (epoch seconds) carrying ``metadata``: one a killed run created, unrecorded."""
        return None

    def learn(self, body: Mapping[str, Any], status: int, error: Mapping[str, Any] | None) -> bool:
        """A line refused for a parameter or a response format this server does not take: step past it
        (:meth:`Negotiation.learn`); True when the request should simply be asked again, built the new way."""
        if self.negotiation is None:
            return False
        message = str((error or {}).get("error", {}).get("message", "")) if isinstance((error or {}).get("error"), dict) else ""
        return self.negotiation.learn(wire_of(body), status_error(status, message, error))

    async def aclose(self) -> None:
        """Stop what this API started (a vLLM subprocess)."""
        return None


class OpenAIBatchAPI(BatchAPI):
    """The Files + Batch API of an OpenAI-compatible provider, through the teacher's SDK client."""

    negotiation: Negotiation

    def __init__(self, client: openai.AsyncOpenAI, negotiation: Negotiation, provider: str, where: str, purpose: str = "batch") -> None:
        self.client = client
        #: The ``purpose`` of an uploaded input file: ``batch`` at OpenAI, ``batch-api`` at Together (``batch.file_purpose``).
        self.purpose = purpose
        self.negotiation = negotiation
        self.provider = provider
        self.where = where
        #: The line's URL and the batch's endpoint: OpenAI's versioned path; Azure's deployment-relative one.
        self.endpoint = "/chat/completions" if provider == "azure" else "/v1/chat/completions"

    def describe(self) -> str:
        return self.where

    def line(self, key: str, request: ChatRequest) -> dict[str, Any]:
        return {"custom_id": key, "method": "POST", "url": self.endpoint, "body": self.negotiation.wire(request).body}

    async def check(self) -> None:
        try:
            await self.client.batches.list(limit=1)
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise TeacherUnavailable(f"teacher at {self.where} refused the credentials (HTTP {exc.status_code})") from None
            raise TeacherUnavailable(f"teacher at {self.where} has no batch API (GET /batches answered HTTP {exc.status_code}); run this stage online (mode: online)") from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise TeacherUnavailable(f"cannot connect to the teacher at {self.where}: {classify(exc).message}") from None

    async def upload(self, path: Path) -> str:
        purpose = cast(Any, self.purpose)  # the SDK's Literal lists OpenAI's purposes; Together's is batch-api
        try:
            uploaded = await self._call(f"uploading {path.name}", lambda: self.client.files.create(file=path, purpose=purpose))
        except TeacherError as exc:
            if "purpose" not in str(exc):
                raise
            raise TeacherError(f"{exc} (files were uploaded with purpose {self.purpose!r}: set batch.file_purpose to the provider's, e.g. batch-api for Together)") from None
        return uploaded.id

    async def create(self, input_file_id: str, metadata: Mapping[str, str], completion_window: str) -> BatchInfo:
        endpoint = cast(Any, self.endpoint)  # the SDK's Literal lists OpenAI's paths; Azure's is deployment-relative
        window = cast(Any, completion_window)
        batch = await self._call(
            f"creating a batch over {input_file_id}",
            lambda: self.client.batches.create(input_file_id=input_file_id, endpoint=endpoint, completion_window=window, metadata=dict(metadata)),
        )
        return _info(batch)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return _info(await self._call(f"looking at batch {batch_id}", lambda: self.client.batches.retrieve(batch_id)))

    async def cancel(self, batch_id: str) -> BatchInfo:
        return _info(await self._call(f"cancelling batch {batch_id}", lambda: self.client.batches.cancel(batch_id)))

    async def find(self, metadata: Mapping[str, str], since: float) -> BatchInfo | None:
        async def search() -> BatchInfo | None:
            async for batch in self.client.batches.list(limit=100):  # newest first
                if batch.created_at < since:
                    return None
                if all((batch.metadata or {}).get(name) == value for name, value in metadata.items()):
                    return _info(batch)
            return None

        return await self._call("listing batches", search)

    async def download(self, file_id: str, path: Path) -> None:
        async def fetch() -> None:
            tmp = temp_path(path)
            try:
                async with self.client.files.with_streaming_response.content(file_id) as response:
                    await response.stream_to_file(tmp)
                commit(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

        await self._call(f"downloading {file_id}", fetch)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, retried with backoff while it fails transiently; otherwise one :class:`TeacherError` line."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(_CALL_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.5, max=30),
            retry=retry_if_exception(lambda exc: isinstance(exc, (openai.APIError, httpx.HTTPError)) and classify(exc).retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await call()
        except (openai.APIError, httpx.HTTPError) as exc:
            raise TeacherError(f"teacher at {self.where}: {what}: {classify(exc).message}") from None
        raise AssertionError("unreachable: tenacity either returns or re-raises")


def batch_api_of(teacher: Teacher, options: BatchConfig, where: str) -> BatchAPI:
    """The teacher's batch service; one error line naming the role when it has none."""
    api = teacher.batch_api(options)
    if api is None:
        raise MediflowError(f"{where}: mode: batch: the teacher {teacher.name!r} has no batch API; use openai:MODEL, azure:DEPLOYMENT or vllm:PATH, or mode: online")
    return api


def status_error(status: int | None, message: str, body: object | None) -> openai.APIStatusError:
    """A refused batch line as the SDK's status error: what :func:`classify` (the one error map) and the negotiation read."""
    response = httpx.Response(status or 500, request=httpx.Request("POST", "https://batch.invalid/v1/chat/completions"))
    return openai.APIStatusError(message, response=response, body=body)


def _info(batch: Any) -> BatchInfo:
    counts = batch.request_counts
    errors = tuple(" ".join(f"{'line ' + str(error.line) + ': ' if error.line else ''}{error.message or error.code}".split()) for error in ((batch.errors.data or []) if batch.errors is not None else []))
    return BatchInfo(
        id=batch.id,
        status=batch.status,
        input_file_id=batch.input_file_id,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        total=counts.total if counts is not None else 0,
        completed=counts.completed if counts is not None else 0,
        failed=counts.failed if counts is not None else 0,
        metadata=dict(batch.metadata or {}),
        errors=errors,
        created_at=float(batch.created_at or 0),
    )


#: A vLLM batch's id: its input file's path after this prefix.
_VLLM_ID = "vllm-run-batch:"
#: vLLM's offline batch entry point (the OpenAI batch format in, the same format out).
VLLM_RUN_BATCH = "vllm.entrypoints.openai.run_batch"


def run_batch_command(model: str, input_path: Path, output_path: Path, extra: Sequence[str] = ()) -> list[str]:
    """The command that answers ``input_path`` into ``output_path`` with vLLM on this machine."""
    return [sys.executable, "-m", VLLM_RUN_BATCH, "-i", str(input_path), "-o", str(output_path), "--model", model, *extra]


class VLLMRunBatch(BatchAPI):
    """A ``vllm:PATH`` teacher in batch mode: each input file is one ``run_batch`` subprocess on this machine.

    There is nothing to upload: a file id is the input file's path, a batch id names the process, the
    output file sits beside the input. A batch of an earlier, killed session has no process any
    more: it reads as cancelled, with whatever output it wrote, and its missing lines go again.
    """

    provider = "vllm"
    keeps_metadata = False
    negotiation: Negotiation

    def __init__(self, model: str, extra_args: Sequence[str] = ()) -> None:
        self.model = model
        self.extra_args = list(extra_args)
        self.negotiation = Negotiation(model)  # vLLM's server takes strict json_schema: the top level
        self._processes: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}

    def describe(self) -> str:
        return f"vLLM run_batch with model {self.model}"

    def line(self, key: str, request: ChatRequest) -> dict[str, Any]:
        return {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": self.negotiation.wire(request).body}

    async def check(self) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise TeacherUnavailable(f"vllm:{self.model} with mode: batch runs vLLM's run_batch on this machine, and vLLM is not installed: pip install 'mediflow[vllm]' on a GPU node")

    async def upload(self, path: Path) -> str:
        return str(path)

    @staticmethod
    def _output_of(input_path: Path) -> Path:
        return input_path.with_name(input_path.stem + ".vllm-output.jsonl")

    async def create(self, input_file_id: str, metadata: Mapping[str, str], completion_window: str) -> BatchInfo:
        input_path = Path(input_file_id)
        output = self._output_of(input_path)
        output.unlink(missing_ok=True)
        log = open(input_path.with_suffix(".vllm.log"), "wb")
        try:
            process = await asyncio.create_subprocess_exec(*run_batch_command(self.model, input_path, output, self.extra_args), stdout=log, stderr=asyncio.subprocess.STDOUT)
        finally:
            log.close()
        batch_id = f"{_VLLM_ID}{input_path}"
        self._processes[batch_id] = (process, input_path)
        return BatchInfo(batch_id, "in_progress", input_file_id, created_at=time.time())

    async def retrieve(self, batch_id: str) -> BatchInfo:
        running = self._processes.get(batch_id)
        input_path = Path(batch_id.removeprefix(_VLLM_ID))
        if running is None:  # an earlier session's process: gone with it
            return self._finished(batch_id, input_path, "cancelled", ("the run_batch process of an earlier session is gone",))
        process = running[0]
        if process.returncode is None:
            return BatchInfo(batch_id, "in_progress", str(input_path))
        if process.returncode == 0:
            return self._finished(batch_id, input_path, "completed", ())
        log = input_path.with_suffix(".vllm.log")
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:] if log.is_file() else []
        return self._finished(batch_id, input_path, "failed", (f"run_batch exited with status {process.returncode}: {' | '.join(tail)}",))

    def _finished(self, batch_id: str, input_path: Path, status: str, errors: tuple[str, ...]) -> BatchInfo:
        output = self._output_of(input_path)
        found = output.is_file() and status != "failed"
        return BatchInfo(batch_id, status, str(input_path), str(output) if found else None, errors=errors)

    async def cancel(self, batch_id: str) -> BatchInfo:
        running = self._processes.get(batch_id)
        if running is not None and running[0].returncode is None:
            running[0].terminate()
            await running[0].wait()
        return await self.retrieve(batch_id)

    async def download(self, file_id: str, path: Path) -> None:
        shutil.copyfile(file_id, temp_path(path))
        commit(temp_path(path), path)

    async def aclose(self) -> None:
        for process, _ in self._processes.values():
            if process.returncode is None:
                process.terminate()
                await process.wait()
