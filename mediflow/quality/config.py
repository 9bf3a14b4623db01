"""The quality stages' settings: one dataclass per stage, read from a curate YAML with clear errors.

Every field has a default, so ``mediflow filter IN OUT`` works with no config at all; a curate
config only names what it changes. Unknown keys are errors (a typo must not silently fall back to
a default), and each message names the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mediflow.errors import ConfigError

TEXT_COLUMNS = ("instruction", "input", "output")


def _check_keys(section: str, given: dict[str, Any], allowed: set[str]) -> None:
    if not isinstance(given, dict):
        raise ConfigError(f"{section}: expected a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")


def _from_mapping(cls: type, section: str, given: dict[str, Any] | None) -> Any:
    given = given or {}
    _check_keys(section, given, {f.name for f in dataclasses.fields(cls)})
    try:
        return cls(**given)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}: {exc}") from exc


@dataclass(frozen=True)
class LengthLimits:
    min_tokens: int = 1
    max_tokens: int | None = None


@dataclass(frozen=True)
class FilterConfig:
    """Which rules run and their thresholds; a rule set to ``false`` in YAML is switched off."""

    length: dict[str, LengthLimits] | None = field(
        default_factory=lambda: {
            "instruction": LengthLimits(3, 1024),
            "input": LengthLimits(5, 8192),
            "output": LengthLimits(1, 4096),
        }
    )
    refusal: dict[str, Any] | None = field(default_factory=dict)  # extra_patterns
    template_residue: dict[str, Any] | None = field(default_factory=dict)  # extra_patterns, prompt_echo_min_tokens
    json: dict[str, Any] | None = field(default_factory=dict)  # unknown_task: keep | drop
    language: dict[str, Any] | None = field(default_factory=dict)  # min_share, columns
    icd10_codes: dict[str, Any] | None = field(default_factory=dict)  # tasks, require_billable
    verbatim_copy: dict[str, Any] | None = field(default_factory=dict)  # tasks, ngram, max_copied
    case_mentions: dict[str, Any] | None = field(default_factory=dict)  # no options: the document names a case condition
    case_codes: dict[str, Any] | None = field(default_factory=dict)  # tasks (default: the icd10_codes tasks)
    taxonomy: str | None = None  # a user taxonomy folder merged over the built-in one

    @classmethod
    def from_mapping(cls, given: dict[str, Any] | None) -> FilterConfig:
        given = dict(given or {})
        _check_keys("filters", given, {f.name for f in dataclasses.fields(cls)})
        if "length" in given and given["length"] not in (None, False):
            _check_keys("filters.length", given["length"], set(TEXT_COLUMNS))
            given["length"] = {
                column: _from_mapping(LengthLimits, f"filters.length.{column}", limits)
                for column, limits in given["length"].items()
            }
        for name, value in list(given.items()):
            if value is False:
                given[name] = None
            elif value is True:
                given[name] = {} if name != "length" else cls().length
        return cls(**given)


@dataclass(frozen=True)
class JudgeConfig:
    """The LLM judge: which teacher, how many samples, how they aggregate, the thresholds, the limits.

    The limits (``concurrency``, ``rpm``, ``tpm``, ``max_retries``, ``request_timeout``) mean what
    they mean for generation (``limits:`` in a run config): the judge runs on the same engine.
    """

    teacher: str | None = None  # e.g. openai:gpt-4o-mini; required to run the judge
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # Python API only; never in a manifest (configs name api_key_env)
    api_key_env: str | None = None  # the environment variable holding the key (default: the SDK's)
    samples: int = 5
    aggregate: str = "mean"  # mean | median
    temperature: float = 0.7
    max_tokens: int = 400
    max_corrections: int = 2
    thresholds: dict[str, float] = field(default_factory=lambda: {"quality": 3.0, "alignment": 3.0, "coherence": 3.0, "realism": 3.0})
    on_failure: str = "drop"  # drop | keep: a record whose judge samples all failed
    rejudge: bool = False  # re-score records that already carry judge scores
    concurrency: int = 32
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 6
    request_timeout: float = 120.0
    batch_records: int = 256  # records being judged at once, a sliding window (no barrier); concurrency bounds requests
    cache: str | None = None  # default: OUT/judge-cache.sqlite
    rubric: str | None = None  # a prompts folder holding judge.yaml (default: the built-in one)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError("judge.samples: must be at least 1")
        if self.aggregate not in ("mean", "median"):
            raise ConfigError(f"judge.aggregate: {self.aggregate!r} is not one of mean, median")
        if self.on_failure not in ("drop", "keep"):
            raise ConfigError(f"judge.on_failure: {self.on_failure!r} is not one of drop, keep")
        if self.batch_records < 1:
            raise ConfigError("judge.batch_records: must be at least 1")
        if self.max_corrections < 0:
            raise ConfigError("judge.max_corrections: must be at least 0")
        thresholds = self.thresholds or {}
        if not isinstance(thresholds, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in thresholds.values()):
            raise ConfigError(f"judge.thresholds: expected a mapping of criterion name to a number, got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", {str(k): float(v) for k, v in thresholds.items()})


@dataclass(frozen=True)
class DedupConfig:
    """Exact and MinHash-LSH near-duplicate removal; defaults tuned on benchmarks/dedup.py."""

    exact: bool = True
    near: bool = True
    keys: tuple[str, ...] = ("pair",)  # any of instruction, input, pair (instruction + input)
    scope: str = "within_task"  # within_task | across_tasks
    shingle_size: int = 3  # word n-grams
    num_perm: int = 192
    bands: int = 48  # 4 rows a band: candidates from shingle Jaccard ~0.4 up (paraphrased short notes sit near 0.45)
    min_signature_jaccard: float = 0.4  # candidates whose signatures agree less are dropped before rapidfuzz
    threshold: float = 0.9  # rapidfuzz similarity (0-1) to count as duplicates; same-template notes about other patients reach 0.89
    scorer: str = "token_sort_ratio"  # a rapidfuzz.fuzz scorer: ratio, token_sort_ratio, token_set_ratio
    max_bucket: int = 100  # LSH buckets above this size only pair neighbours (see minhash.bucket_pairs)
    window: int = 20
    chunk_records: int = 50_000
    seed: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        bad = [k for k in self.keys if k not in ("instruction", "input", "pair")]
        if bad or not self.keys:
            raise ConfigError(f"dedup.keys: {bad or self.keys} not among instruction, input, pair")
        if self.scope not in ("within_task", "across_tasks"):
            raise ConfigError(f"dedup.scope: {self.scope!r} is not one of within_task, across_tasks")
        if self.num_perm % self.bands:
            raise ConfigError(f"dedup.bands: {self.bands} does not divide num_perm {self.num_perm}")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"dedup.threshold: {self.threshold} is not in (0, 1]")
        if self.scorer not in ("ratio", "token_sort_ratio", "token_set_ratio", "partial_ratio"):
            raise ConfigError(f"dedup.scorer: {self.scorer!r} is not a supported rapidfuzz.fuzz scorer")


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: a Parquet or JSONL file or a ``datasets.save_to_disk`` folder."""

    path: str
    fields: tuple[str, ...] = ("text",)
    id_field: str | None = None  # reported as the matched item's id (default: its row index)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))


@dataclass(frozen=True)
class DecontamConfig:
    """N-gram overlap against evaluation sets (13-grams of normalised words by default)."""

    eval: tuple[EvalSet, ...] = ()
    ngram: int = 13
    columns: tuple[str, ...] = TEXT_COLUMNS

    @classmethod
    def from_mapping(cls, given: dict[str, Any] | None) -> DecontamConfig:
        given = dict(given or {})
        _check_keys("decontaminate", given, {"eval", "ngram", "columns"})
        sets = []
        for i, entry in enumerate(given.pop("eval", []) or []):
            entry = {"path": entry} if isinstance(entry, str) else entry
            sets.append(_from_mapping(EvalSet, f"decontaminate.eval[{i}]", entry))
        if "columns" in given:
            given["columns"] = tuple(given["columns"])
        config = cls(eval=tuple(sets), **given)
        if config.ngram < 1:
            raise ConfigError("decontaminate.ngram: must be at least 1")
        return config


@dataclass(frozen=True)
class CurateConfig:
    """The whole curate run: stages in order filters -> judge -> dedup -> decontaminate."""

    filters: FilterConfig | None = field(default_factory=FilterConfig)
    judge: JudgeConfig | None = None
    dedup: DedupConfig | None = field(default_factory=DedupConfig)
    decontaminate: DecontamConfig | None = None

    @classmethod
    def from_mapping(cls, given: dict[str, Any] | None) -> CurateConfig:
        given = given or {}
        _check_keys("curate config", given, {"filters", "judge", "dedup", "decontaminate"})

        def section(name: str, build: Any, default_on: bool) -> Any:
            value = given.get(name, {} if default_on else None)
            if value is None or value is False:
                return None
            return build({} if value is True else value)

        return cls(
            filters=section("filters", FilterConfig.from_mapping, True),
            judge=section("judge", lambda v: _from_mapping(JudgeConfig, "judge", v), False),
            dedup=section("dedup", lambda v: _from_mapping(DedupConfig, "dedup", v), True),
            decontaminate=section("decontaminate", DecontamConfig.from_mapping, False),
        )

    @classmethod
    def load(cls, path: Path) -> CurateConfig:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the curate config ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        return cls.from_mapping(data)


def as_plain(value: Any) -> Any:
    """A config as JSON-able data, for the manifest."""
    if dataclasses.is_dataclass(value):
        return {f.name: as_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "api_key"}
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value
