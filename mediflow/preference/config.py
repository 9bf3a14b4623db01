"""Settings of ``mediflow pairs`` / :func:`mediflow.preference.build_pairs`, one documented dataclass.

Every default is the reference method's: error injection on the best-judged records, a comparative
judge that must prefer the original by at least ``min_margin`` points on its 1-10 scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mediflow.errors import ConfigError

METHODS: tuple[str, ...] = ("inject", "candidates")


@dataclass(frozen=True)
class CandidateSource:
    """Where an alternative answer comes from: a teacher spec (e.g. the student) at a temperature."""

    spec: str
    temperature: float = 0.7
    base_url: str | None = None

    @property
    def name(self) -> str:
        """The ``rejected_source`` / ``chosen_source`` label of its answers."""
        return f"{self.spec}@t={self.temperature:g}"


@dataclass(frozen=True)
class PairsConfig:
    """How preference pairs are built. Teachers are specs for :func:`mediflow.teachers.make_teacher`."""

    #: ``inject``: the teacher rewrites a best-judged answer with one named error (the reference method);
    #: ``candidates``: other sources answer too, and the judge's best and worst make the pair.
    method: str = "inject"
    #: The teacher that injects errors (and, in ``candidates``, samples at ``hot_temperature``).
    teacher: str = "local"
    base_url: str | None = None
    #: The judge's teacher; None = the same as ``teacher``.
    judge_teacher: str | None = None
    judge_base_url: str | None = None
    #: Judge samples per comparison (self-consistency, each with its own shuffled order); scores are averaged.
    judge_samples: int = 1
    judge_temperature: float = 0.0
    #: Keep a pair only when chosen_score - rejected_score >= this (judge scale 1-10). Must be > 0.
    min_margin: float = 2.0
    #: Chosen candidates: records with mean answer score >= min_score, in the top ``top_fraction``.
    min_score: float | None = None
    top_fraction: float = 1.0
    #: At most this many records are tried (after selection; None = all).
    max_records: int | None = None
    #: ``candidates`` method: other answer sources, and how many hot samples of ``teacher`` to add.
    candidate_sources: tuple[CandidateSource, ...] = ()
    hot_samples: int = 0
    hot_temperature: float = 1.2
    #: Seeds the error kind per record and the candidate order shown to the judge.
    seed: int = 0
    #: A user ``error_kinds.yaml`` (default: the built-in ``prompts/error_kinds.yaml``).
    error_kinds_path: Path | None = None
    #: A user prompts folder searched before the built-in one (to override ``pair_judge`` / ``error_injection``).
    prompts_path: Path | None = None
    #: A user taxonomy folder (for the tasks' JSON schemas used by the hard checks).
    taxonomy_path: Path | None = None
    max_corrections: int = 2
    max_tokens: int = 2048
    concurrency: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"pairs.method: unknown method '{self.method}' (known: {', '.join(METHODS)})")
        if self.min_margin <= 0:
            raise ConfigError(f"pairs.min_margin must be > 0 (a zero margin would keep ties), got {self.min_margin}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"pairs.top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.judge_samples < 1:
            raise ConfigError(f"pairs.judge_samples must be >= 1, got {self.judge_samples}")
        if self.max_records is not None and self.max_records < 1:
            raise ConfigError(f"pairs.max_records must be >= 1, got {self.max_records}")
        if self.method == "candidates" and not self.candidate_sources and self.hot_samples < 1:
            raise ConfigError("pairs.method 'candidates' needs at least one candidate source or hot_samples >= 1")
