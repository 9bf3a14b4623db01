"""The ``mode:`` key and the ``batch:`` section of every config that calls a teacher.

``mode: batch`` (flag ``--batch``) on ``generate``, ``judge``/``curate`` (``judge.mode``), ``pairs``
and ``train qa`` (``qa.mode``) buys the stage's teacher calls through the provider's batch API;
:class:`BatchConfig` says how the requests are packed into files, how many batches may be in flight
and how often they are looked at. Neither changes what a run produces, so both are runtime keys
(:data:`mediflow.folders.output.RUNTIME_KEYS`): a run started online resumes in batch mode and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mediflow.configuration import Config, option
from mediflow.engine.accounting import MODES, Mode
from mediflow.errors import ConfigError

__all__ = ["MODES", "BatchConfig", "Mode", "check_mode", "mode_option"]

#: Teacher specs whose provider has a batch API: OpenAI-compatible servers (OpenAI, Azure OpenAI,
#: Together, Groq, Fireworks, OpenRouter, ... in OpenAI's batch format) and vLLM's ``run_batch``.
BATCH_SPECS = ("openai:", "azure:", "vllm:")


def mode_option() -> Mode:
    """The ``mode`` field every teacher-calling config has (flags ``--mode {online,batch}`` and ``--batch``)."""
    mode: Mode = option(
        "online",
        "online: each request is one API call, answered now; batch: the requests go through the provider's batch API (about half the price, answered within its completion window), in rounds",
        switch="batch",
    )
    return mode


@dataclass(frozen=True)
class BatchConfig(Config):
    """How batch mode packs its requests into files, submits them and waits for them."""

    max_lines: int = option(50_000, "requests per batch file (OpenAI's limit: 50,000); a round with more is split", minimum=1)
    max_bytes: int = option(200_000_000, "bytes per batch file (OpenAI's limit: 200 MB); a round with more is split", minimum=4096)
    file_purpose: str = option("batch", "the purpose input files are uploaded with: batch (OpenAI, Azure OpenAI, Groq), batch-api (Together)")
    in_flight: int = option(8, "batches submitted and not finished at once (the provider also caps enqueued tokens)", minimum=1)
    poll_interval: float = option(30.0, "seconds between two looks at the batches in flight", exclusiveMinimum=0)
    completion_window: Literal["24h"] = option("24h", "the batch's completion window (OpenAI offers 24h)")
    line_attempts: int = option(3, "submissions of one request whose line failed (server error, expired or cancelled batch) before the run stops", minimum=1)
    vllm_args: list[str] = option([], "vllm:PATH teachers: extra arguments of vLLM's run_batch (e.g. --tensor-parallel-size 2)")


def check_mode(mode: Mode, spec: str | None, engine: str, where: str) -> None:
    """Refuse, before anything runs, batch mode with a teacher that has no batch API or with ``engine: ray``."""
    if mode != "batch":
        return
    if engine == "ray":
        raise ConfigError(f"{where}mode: batch runs on the local engine; engine: ray with mode: batch is not supported (the provider's batch service does the fanning out)")
    if spec is not None and not spec.startswith(BATCH_SPECS):
        raise ConfigError(f"{where}mode: batch: the teacher {spec!r} has no batch API; batch mode needs openai:MODEL, azure:DEPLOYMENT (any OpenAI-compatible server with /v1/files and /v1/batches) or vllm:PATH (vLLM's run_batch)")
