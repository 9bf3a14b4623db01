"""The quality stages' settings: one :class:`~mediflow.configuration.Config` section per stage.

Every field has a default, so ``mediflow filter IN OUT`` works with no config at all; a curate
config only names what it changes. Validation, "did you mean" hints and the CLI flags come from
:mod:`mediflow.configuration`, so unknown keys are errors (a typo must not silently fall back to a
default) and each message names the key. A rule or stage section set to ``false`` is switched off;
``true`` switches it on with its defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from mediflow.batch.config import BatchConfig, Mode, check_mode, mode_option
from mediflow.configuration import Config, option, read_config_file
from mediflow.engine.config import LimitsConfig
from mediflow.errors import ConfigError
from mediflow.quality.clinical import Lexicon
from mediflow.scale.config import EngineKind, RayConfig
from mediflow.teachers.config import TeacherConfig, teacher_aliases

TEXT_COLUMNS = ("instruction", "input", "output")
TextColumn = Literal["instruction", "input", "output"]
#: ``auto``: the tasks whose taxonomy entry lists the check in ``quality_checks``; else task names.
TaskChoice = Literal["auto"] | list[str]


@dataclass(frozen=True)
class LengthLimits(Config):
    """Word tokens one column may have."""

    min_tokens: int = option(1, "fewest word tokens", minimum=0)
    max_tokens: int | None = option(None, "most word tokens (none: no upper bound)", minimum=1)


@dataclass(frozen=True)
class RefusalOptions(Config):
    """Refusals and AI self-talk in the output ("As an AI...", "I cannot help...")."""

    extra_patterns: list[str] = option([], "more regular expressions counted as refusals")


@dataclass(frozen=True)
class TemplateResidueOptions(Config):
    """Unfilled {{ slots }}, prompt scaffolding and the instruction echoed in the output."""

    extra_patterns: list[str] = option([], "more regular expressions counted as unfilled placeholders")
    prompt_echo_min_tokens: int = option(8, "shortest instruction (in tokens) whose echo in the output counts", minimum=1)


@dataclass(frozen=True)
class JsonOptions(Config):
    """JSON outputs must validate against their task's output_schema."""

    unknown_task: Literal["keep", "drop"] = option("keep", "a JSON record of a task the taxonomy does not know")


@dataclass(frozen=True)
class LanguageOptions(Config):
    """English, by a stop-word heuristic."""

    min_share: float = option(0.5, "least share of English stop words among a column's stop words", minimum=0, maximum=1)
    columns: list[TextColumn] = option(list(TEXT_COLUMNS), "columns checked")


@dataclass(frozen=True)
class Icd10Options(Config):
    """ICD-10-CM codes in the output must exist (and be billable)."""

    tasks: TaskChoice = option("auto", "auto (the tasks whose taxonomy entry asks for it) or a list of task names")
    require_billable: bool = option(True, "a valid but non-billable (category) code is a failure too")


@dataclass(frozen=True)
class VerbatimCopyOptions(Config):
    """Extraction-style outputs that copy the document wholesale."""

    tasks: TaskChoice = option("auto", "auto (the tasks whose taxonomy entry asks for it) or a list of task names")
    ngram: int = option(8, "word n-gram length compared with the document", minimum=1)
    max_copied: float = option(0.8, "most share of the output's n-grams found in the document", minimum=0, maximum=1)


@dataclass(frozen=True)
class CaseMentionOptions(Config):
    """The document must mention its clinical case's primary condition (names, synonyms, lay terms or the code; not negated, hedged, hypothetical or a relative's)."""


@dataclass(frozen=True)
class CaseCodesOptions(Config):
    """A coding task's gold codes must share a three-character category with the record's clinical case."""

    tasks: TaskChoice = option("auto", "auto (the tasks that ask for the icd10_codes check) or a list of task names")


@dataclass(frozen=True)
class FilterConfig(Config):
    """Which rules run and their options; a rule set to ``false`` is switched off."""

    length: dict[str, LengthLimits] | None = option(
        {"instruction": LengthLimits(3, 1024), "input": LengthLimits(5, 8192), "output": LengthLimits(1, 4096)},
        "word tokens per column; a column left out is not checked",
        propertyNames={"enum": list(TEXT_COLUMNS)},
    )
    refusal: RefusalOptions | None = option(RefusalOptions(), RefusalOptions.__doc__ or "")
    template_residue: TemplateResidueOptions | None = option(TemplateResidueOptions(), TemplateResidueOptions.__doc__ or "")
    json: JsonOptions | None = option(JsonOptions(), JsonOptions.__doc__ or "")
    language: LanguageOptions | None = option(LanguageOptions(), LanguageOptions.__doc__ or "")
    icd10_codes: Icd10Options | None = option(Icd10Options(), Icd10Options.__doc__ or "")
    verbatim_copy: VerbatimCopyOptions | None = option(VerbatimCopyOptions(), VerbatimCopyOptions.__doc__ or "")
    case_mentions: CaseMentionOptions | None = option(CaseMentionOptions(), CaseMentionOptions.__doc__ or "")
    case_codes: CaseCodesOptions | None = option(CaseCodesOptions(), CaseCodesOptions.__doc__ or "")
    taxonomy: str | None = option(None, "a user taxonomy folder merged over the built-in one")


@dataclass(frozen=True)
class JudgeConfig(Config):
    """The LLM judge: its teacher and limits, how many samples, how they aggregate, the thresholds."""

    ALIASES: ClassVar[dict[str, str]] = {**teacher_aliases(), "concurrency": "limits.concurrency"}

    teacher: TeacherConfig | None = option(None, "the judge's teacher (required to run the judge)")
    limits: LimitsConfig = option(LimitsConfig(concurrency=32), "the judge engine's limits (as a run config's limits:)")
    samples: int = option(5, "judge samples per record (self-consistency), aggregated per criterion", minimum=1)
    aggregate: Literal["mean", "median"] = option("mean", "how the samples' scores combine, per criterion")
    temperature: float = option(0.7, "> 0 so that the samples can disagree (their spread is judge_spread)", minimum=0, maximum=2)
    max_tokens: int = option(400, "longest judge answer in tokens", minimum=1)
    max_corrections: int = option(2, "correction turns for an answer that fails the schema", minimum=0)
    thresholds: dict[str, float] = option(
        {"quality": 3.0, "alignment": 3.0, "coherence": 3.0, "realism": 3.0},
        "drop a record whose aggregated score is below any of these (criterion: minimum)",
    )
    on_failure: Literal["drop", "keep"] = option("drop", "a record none of whose samples gave a valid answer")
    rejudge: bool = option(False, "re-score records that already carry judge scores")
    batch_records: int = option(256, "records being judged at once, a sliding window (limits.concurrency bounds requests)", minimum=1)
    cache: str | None = option(None, "the judge's answer cache (default: OUT/cache.sqlite)")
    rubric: str | None = option(None, "a prompts folder holding your own judge.yaml")
    progress: bool = option(True, "show a progress bar")
    engine: EngineKind = option("local", "local: one asyncio process; ray: Ray Data actors (see the ray section)")
    ray: RayConfig = option(RayConfig(), "the Ray engine (engine: ray)")
    mode: Mode = mode_option()
    batch: BatchConfig = option(BatchConfig(), "batch mode: file limits, batches in flight, polling (mode: batch)")

    def check(self) -> None:
        check_mode(self.mode, self.teacher.spec if self.teacher else None, self.engine, "")


DedupKey = Literal["instruction", "input", "pair"]


@dataclass(frozen=True)
class DedupConfig(Config):
    """Exact and MinHash-LSH near-duplicate removal; defaults tuned on benchmarks/dedup.py."""

    exact: bool = option(True, "drop exact duplicates (normalised text)")
    near: bool = option(True, "drop near duplicates: MinHash-LSH candidates confirmed with rapidfuzz")
    keys: tuple[DedupKey, ...] = option(("pair",), "what is compared: instruction, input, pair (instruction + input)", minItems=1)
    scope: Literal["within_task", "across_tasks"] = option("within_task", "compare records of the same task only, or all")
    shingle_size: int = option(3, "word n-grams per shingle", minimum=1)
    num_perm: int = option(192, "MinHash permutations", minimum=1)
    bands: int = option(48, "LSH bands (4 rows a band: candidates from shingle Jaccard ~0.4 up; paraphrased short notes sit near 0.45)", minimum=1)
    min_signature_jaccard: float = option(0.4, "candidates whose signatures agree less are dropped before rapidfuzz", minimum=0, maximum=1)
    threshold: float = option(
        0.8,
        "rapidfuzz similarity (0-1) a candidate needs; the clinical check keeps same-template siblings apart (docs/dedup.md)",
        exclusiveMinimum=0,
        maximum=1,
    )
    scorer: Literal["ratio", "token_sort_ratio", "token_set_ratio", "partial_ratio"] = option("token_sort_ratio", "the rapidfuzz.fuzz scorer")
    clinical: bool = option(True, "a near duplicate must also agree on values, ages, sexes, sides, negations, doses, drugs, organs, labs, codes")
    values: Literal["strict", "lenient"] = option("strict", "strict: a changed digit is another case (a value, dose, age, code); lenient: one edit in a value is a typo (docs/dedup.md)")
    clinical_tokens: str | None = option(None, "a lexicon YAML used instead of taxonomies/clinical_tokens.yaml (docs/dedup.md)")
    max_bucket: int = option(100, "LSH buckets above this size only pair neighbours (see minhash.bucket_pairs)", minimum=2)
    window: int = option(20, "neighbours paired in an oversized bucket", minimum=1)
    chunk_records: int = option(50_000, "records signed per chunk (bounds memory)", minimum=1)
    workers: int = option(0, "processes that sign the chunks and run the clinical word check (forked on Linux; 0: one per core, 1: this process only)", minimum=0)
    seed: int = option(1, "seed of the MinHash permutations", minimum=0)

    def check(self) -> None:
        if self.num_perm % self.bands:
            raise ConfigError(f"bands: {self.bands} does not divide num_perm {self.num_perm}")
        Lexicon.load(self.clinical_tokens)  # the lexicon and its canonical forms (used with or without the check), read before any output


@dataclass(frozen=True)
class EvalSet(Config):
    """One evaluation set: a Parquet or JSONL file or a ``datasets.save_to_disk`` folder."""

    path: str = option("", "the file or folder", minLength=1)
    fields: tuple[str, ...] = option(("text",), "its text fields", minItems=1)
    id_field: str | None = option(None, "reported as the matched item's id (default: its row index)")


@dataclass(frozen=True)
class DecontamConfig(Config):
    """N-gram overlap against evaluation sets (13-grams of normalised words by default)."""

    eval: tuple[EvalSet, ...] = option((), "evaluation sets")
    ngram: int = option(13, "shared word n-grams that make a record contaminated", minimum=1)
    columns: tuple[str, ...] = option(TEXT_COLUMNS, "record columns compared")


@dataclass(frozen=True)
class CurateConfig(Config):
    """The whole curate run: stages in order filters -> judge -> dedup -> decontaminate."""

    ALIASES: ClassVar[dict[str, str]] = teacher_aliases("judge")

    filters: FilterConfig | None = option(FilterConfig(), "rule filters (default on)")
    judge: JudgeConfig | None = option(None, "the LLM judge (off unless given: it costs teacher calls)")
    dedup: DedupConfig | None = option(DedupConfig(), "deduplication (default on)")
    decontaminate: DecontamConfig | None = option(None, "decontamination against evaluation sets (off unless given)")


#: A stage's section in a curate config.
StageConfig = TypeVar("StageConfig", FilterConfig, JudgeConfig, DedupConfig, DecontamConfig)
SECTION_OF: dict[type[Config], str] = {FilterConfig: "filters", JudgeConfig: "judge", DedupConfig: "dedup", DecontamConfig: "decontaminate"}


def load_stage_config(cls: type[StageConfig], source: StageConfig | Mapping[str, Any] | str | Path | None, /, **overrides: Any) -> StageConfig:
    """A stage's config from its own file, dict or config, or from its section of a curate config.

    A file or dict holding any curate section (``filters``, ``judge``, ``dedup``, ``decontaminate``)
    is a curate config, and this stage uses its own section of it (absent: the defaults), so one
    file describes a whole curation and each stage can still be run alone.
    """
    data = read_config_file(source) if isinstance(source, (str, Path)) else source
    if isinstance(data, Mapping) and set(data) & set(SECTION_OF.values()):
        return cls.load(data, section=SECTION_OF[cls], **overrides)
    return cls.load(data, **overrides)
