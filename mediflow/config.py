"""The run config of ``mediflow generate``: one documented schema, validated, with one-line errors.

A tree of :class:`~mediflow.configuration.Config` dataclasses (the single source of truth:
defaults, types and the help text of every key live on the fields); validation, loading from
YAML / JSON / dicts, the "did you mean" hints and the CLI flags all come from
:mod:`mediflow.configuration` (``sampling.response.temperature: -1 is less than the minimum of 0``).
Which task / document type / difficulty names exist is the taxonomy's business and is checked when
the plan is built (:mod:`mediflow.pipeline.plan`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from mediflow.batch.config import BatchConfig, Mode, check_mode, mode_option
from mediflow.configuration import Config, option
from mediflow.engine.config import LimitsConfig, PricesConfig
from mediflow.errors import ConfigError
from mediflow.pipeline.share import Share
from mediflow.scale.config import EngineKind, RayConfig
from mediflow.teachers.config import TeacherConfig, teacher_aliases

#: The generation stages, in the order a record goes through them.
Stage = Literal["document", "instruction", "response"]
STAGES: tuple[Stage, ...] = ("document", "instruction", "response")


@dataclass
class SamplingConfig(Config):
    """Sampling parameters of one stage's teacher calls."""

    temperature: float = option(0.7, "sampling temperature", minimum=0, maximum=2)
    top_p: float = option(1.0, "nucleus sampling mass", exclusiveMinimum=0, maximum=1)
    max_tokens: int = option(1024, "upper bound on the answer's length in tokens", minimum=1)
    retry_max_tokens: int | None = option(None, "response stage: a plain-text answer cut at max_tokens is retried once with this budget (default: twice max_tokens); still cut, it is rejected as truncated", minimum=1)


@dataclass
class StageSampling(Config):
    """Sampling per stage: documents want variety, responses want precision. Correction turns use ``response``."""

    document: SamplingConfig = option(SamplingConfig(temperature=0.9, top_p=0.95, max_tokens=1024), "document stage")
    instruction: SamplingConfig = option(SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=256), "instruction stage")
    response: SamplingConfig = option(SamplingConfig(temperature=0.3, top_p=1.0, max_tokens=1024), "response stage")


@dataclass
class OutputConfig(Config):
    """Where and how the run's output directory is written."""

    dir: str = option("mediflow-out/run", "output directory (shards, rejects, manifest, teacher cache)")
    shard_size: int = option(1000, "plan items per Parquet shard (a shard holds at most this many records)", minimum=1)


#: The generator's role in the manifest's ``teacher_capabilities``: the config key of its teacher section.
TEACHER_ROLE = "teacher"


@dataclass
class RunConfig(Config):
    """Everything ``mediflow generate`` needs; every key has a default, so ``{}`` is a valid config."""

    teacher: TeacherConfig = option(TeacherConfig(), "the teacher LLM")
    stages: list[Stage] = option(list(STAGES), "stages to run, a prefix of document, instruction, response")
    tasks: list[str] | None = option(None, "task names to generate (default: all in the taxonomy)")
    document_types: list[str] | None = option(None, "document type names (default: all compatible with each task)")
    difficulty_levels: list[str] | None = option(None, "difficulty level names (default: all)")
    per_cell: int = option(1, "records per (task, document type, difficulty) stratum, x the difficulty's weight; split over formats", minimum=1)
    json_share: float = option(0.5, "share of records asked for in JSON (the rest plain text)", minimum=0, maximum=1)
    documents_per_instruction: int = option(1, "documents that share one instruction (the released set: ~3.6, 2.5M rows / 700k instructions)", minimum=1)
    max_records: int | None = option(None, "stop the plan after this many records (a seeded, stratified prefix)", minimum=1)
    seed: int = option(0, "seed of the plan, the seed facts and the teacher's sampling", minimum=0)
    max_corrections: int = option(2, "correction turns for a JSON answer that fails its schema", minimum=0)
    records_in_flight: int | None = option(None, "records being worked on at once (default: 2 x concurrency)", minimum=1)
    sampling: StageSampling = option(StageSampling(), "sampling parameters per stage")
    limits: LimitsConfig = option(LimitsConfig(), "request limits")
    prices: PricesConfig = option(PricesConfig(), "token prices")
    taxonomy: str | None = option(None, "a taxonomy folder merged over the built-in one")
    prompts: str | None = option(None, "a prompts folder used instead of the built-in one")
    output: OutputConfig = option(OutputConfig(), "the output directory")
    progress: bool = option(True, "show a progress bar")
    engine: EngineKind = option("local", "local: one asyncio process; ray: Ray Data actors (see the ray section)")
    ray: RayConfig = option(RayConfig(), "the Ray engine (engine: ray)")
    shard: str | None = option(None, "K/N: make only the K-th of N deterministic shares of the plan (then mediflow join)")
    mode: Mode = mode_option()
    batch: BatchConfig = option(BatchConfig(), "batch mode: file limits, batches in flight, polling (mode: batch)")

    ALIASES: ClassVar[dict[str, str]] = {
        **teacher_aliases(),
        "concurrency": "limits.concurrency",
        "rpm": "limits.rpm",
        "tpm": "limits.tpm",
        "out": "output.dir",
        "shard_size": "output.shard_size",
        "difficulty": "difficulty_levels",
        "actors": "ray.actors",
    }

    def check(self) -> None:
        if not self.stages or list(self.stages) != list(STAGES[: len(self.stages)]):
            raise ConfigError(f"stages: {self.stages} must be a non-empty prefix of {list(STAGES)}")
        if self.shard is not None:
            Share.parse(self.shard)
        check_mode(self.mode, self.teacher.spec, self.engine, "")


def load_config(source: RunConfig | Mapping[str, Any] | str | Path | None = None, /, **overrides: Any) -> RunConfig:
    """Build a validated :class:`RunConfig` from a file path, a dict or a config, plus keyword overrides.

    Overrides are top-level keys (``per_cell=2``), aliases (``teacher="openai:gpt-4o"``,
    ``concurrency=128``, ``out="runs/a"``; see :attr:`RunConfig.ALIASES`) or dotted keys given as a
    dict (``**{"sampling.response.max_tokens": 512}``). ``None`` overrides are ignored.
    """
    return RunConfig.load(source, **overrides)
