"""The ``ray:`` section shared by every config that calls a teacher (``engine: ray``; see docs/scaling.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mediflow.configuration import Config, option

#: ``local``: one asyncio process; ``ray``: Ray Data actors, each running our Engine.
EngineKind = Literal["local", "ray"]


@dataclass
class VllmProcessorConfig(Config):
    """The GPU path of ``engine: ray`` with a ``vllm:PATH`` teacher: ray.data.llm's vLLM engine processor."""

    replicas: int = option(1, "vLLM engine replicas (each holds the model on tensor_parallel_size GPUs)", minimum=1)
    tensor_parallel_size: int = option(1, "GPUs per replica", minimum=1)
    batch_size: int = option(64, "requests per batch handed to a replica", minimum=1)
    max_model_len: int | None = option(None, "context length the engine reserves (default: the model's)", minimum=1)


@dataclass
class RayConfig(Config):
    """Where and how wide ``engine: ray`` runs."""

    address: str | None = option(None, "Ray cluster address (auto, ray://HOST:10001); none: start a local Ray on this machine")
    actors: int = option(2, "engine actors; each runs our Engine with 1/actors of the concurrency, all drawing on the run's rpm and tpm", minimum=1)
    batch_size: int = option(8, "units (instruction groups or records) per batch handed to an actor", minimum=1)
    num_cpus: float = option(0.5, "CPUs Ray reserves per actor (an actor mostly waits on the network)", exclusiveMinimum=0)
    resource_timeout: float = option(120.0, "seconds the cluster may have no room for one actor (at the start, or after losing nodes) before the run stops with an error", exclusiveMinimum=0)
    vllm: VllmProcessorConfig = option(VllmProcessorConfig(), "the vLLM engine processor (vllm:PATH teachers)")
