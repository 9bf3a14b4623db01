"""Settings of ``mediflow pairs`` / :func:`mediflow.preference.build_pairs`: one :class:`~mediflow.configuration.Config`.

Every default is the reference method's: error injection on the best-judged records, a comparative
judge that must prefer the original by at least ``min_margin`` points on its 1-10 scale. Loadable
from YAML (``mediflow pairs --config pairs.yaml``); each role (the pair teacher, the pair judge,
each candidate source) has its own ``teacher:`` section, so each may name its own model, server and
key variable; one ``limits:`` section applies to every engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from mediflow.batch.config import BatchConfig, Mode, check_mode, mode_option
from mediflow.configuration import Config, option
from mediflow.engine.config import LimitsConfig
from mediflow.errors import ConfigError
from mediflow.scale.config import EngineKind, RayConfig
from mediflow.teachers.config import TeacherConfig, teacher_aliases

METHODS: tuple[str, ...] = ("inject", "candidates")


@dataclass(frozen=True)
class CandidateSource(Config):
    """Where an alternative answer comes from: a teacher (e.g. the student) at a temperature."""

    teacher: TeacherConfig = option(TeacherConfig(), "the source's teacher")
    temperature: float = option(0.7, "its sampling temperature", minimum=0, maximum=2)

    @property
    def name(self) -> str:
        """The ``rejected_source`` / ``chosen_source`` label of its answers."""
        return f"{self.teacher.spec}@t={self.temperature:g}"


@dataclass(frozen=True)
class PairsConfig(Config):
    """How preference pairs are built."""

    ALIASES: ClassVar[dict[str, str]] = {
        **teacher_aliases(),
        "judge_teacher": "judge_teacher.spec",
        "judge_base_url": "judge_teacher.base_url",
        "concurrency": "limits.concurrency",
    }

    method: Literal["inject", "candidates"] = option(
        "inject",
        "inject: the teacher rewrites a best-judged answer with one named error (the reference method); candidates: other sources answer too, and the judge's best and worst make the pair",
    )
    teacher: TeacherConfig = option(TeacherConfig(), "the teacher that injects errors (and, in candidates, samples hot)")
    judge_teacher: TeacherConfig | None = option(None, "the pair judge's teacher (default: the teacher)")
    limits: LimitsConfig = option(LimitsConfig(concurrency=16), "limits of every engine (per teacher)")
    judge_samples: int = option(1, "judge samples per comparison (self-consistency, each with its own shuffled order and seed), averaged", minimum=1)
    judge_temperature: float = option(0.0, "the pair judge's sampling temperature", minimum=0, maximum=2)
    min_margin: float = option(2.0, "keep a pair only when chosen - rejected judge score >= this (1-10 scale; > 0: ties are never pairs)", exclusiveMinimum=0)
    min_score: float | None = option(None, "chosen candidates: records with mean judge score >= this")
    top_fraction: float = option(1.0, "take the best-judged fraction of the records", exclusiveMinimum=0, maximum=1)
    max_records: int | None = option(None, "try at most this many records (after selection)", minimum=1)
    candidate_sources: tuple[CandidateSource, ...] = option((), "candidates method: other answer sources")
    hot_samples: int = option(0, "candidates method: samples of the teacher at hot_temperature", minimum=0)
    hot_temperature: float = option(1.2, "temperature of the hot samples", minimum=0, maximum=2)
    seed: int = option(0, "seeds the error kind per record and the candidate order shown to the judge", minimum=0)
    error_kinds_path: Path | None = option(None, "a user error_kinds.yaml (default: the built-in prompts/error_kinds.yaml)")
    prompts_path: Path | None = option(None, "a user prompts folder searched first (to override pair_judge / error_injection)")
    taxonomy_path: Path | None = option(None, "a user taxonomy folder (the tasks' JSON schemas used by the hard checks)")
    max_corrections: int = option(2, "correction turns for a JSON answer that fails its schema", minimum=0)
    max_tokens: int = option(2048, "longest rewrite / candidate answer in tokens", minimum=1)
    progress: bool = option(True, "show a progress bar")
    engine: EngineKind = option("local", "local: one asyncio process; ray: Ray Data actors (see the ray section)")
    ray: RayConfig = option(RayConfig(), "the Ray engine (engine: ray)")
    mode: Mode = mode_option()
    batch: BatchConfig = option(BatchConfig(), "batch mode: file limits, batches in flight, polling (mode: batch)")

    def check(self) -> None:
        if self.method == "candidates" and not self.candidate_sources and self.hot_samples < 1:
            raise ConfigError("method 'candidates' needs at least one candidate source or hot_samples >= 1")
        for section in (self.teacher, self.judge, *(source.teacher for source in self.candidate_sources)):
            check_mode(self.mode, section.spec, self.engine, "")

    @property
    def judge(self) -> TeacherConfig:
        """The pair judge's teacher section."""
        return self.judge_teacher or self.teacher
