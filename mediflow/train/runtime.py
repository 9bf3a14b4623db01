"""What every trainer shares: TRL arguments, the output folder, and saving the finished model.

Kept in one place because the hardware defaults are easy to get wrong: TRL turns bf16 on by default
(which fails on a CPU) and gradient checkpointing on by default (slow for small models); we decide
both from the hardware unless the config says otherwise, and pass ``train.extra`` through after
checking every key against the TRL config class, so a typo is a one-line error and not a silent no-op.

Every stage's ``output.dir`` is a contract folder (:func:`open_model_output`, on
:class:`mediflow.folders.OutputFolder`) and a model is published only when complete
(:func:`finished_model`, on :func:`mediflow.folders.model.publish_model`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import logging
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediflow.errors import ConfigError
from mediflow.folders import InputRef, OutputFolder
from mediflow.folders.model import CHECKPOINTS, HOLDS_MODEL, MODEL_DIR, check_model_input, publish_model, staging_for
from mediflow.train.config import StageConfig
from mediflow.train.fingerprint import value_hash
from mediflow.train.models import PACKAGED_GGUF_MODELS, load_causal_lm, resolve_model, set_end_of_turn

logger = logging.getLogger(__name__)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def model_dir(config: StageConfig) -> Path:
    """The model folder ``model.name_or_path`` names: relative to the config file, a Hub id (the local
    Hugging Face cache), or a packaged model."""
    cache = config.path(config.model.cache_dir) if config.model.cache_dir else None
    spec = config.model.name_or_path
    local = config.path(spec)
    if local.is_dir():
        check_model_input(local)  # a model another run is still writing (or never finished) is refused
    if local.exists() and spec not in PACKAGED_GGUF_MODELS:
        return resolve_model(local, cache)
    return resolve_model(spec, cache, config.model.revision, inputs=stage_paths(config))


def is_main_process() -> bool:
    """True on the process that writes reports and manifests (the only one without a launcher)."""
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def open_model_output(
    config: StageConfig,
    fingerprint: dict[str, Any],
    inputs: Sequence[InputRef],
    *,
    overwrite: bool,
    entries: Iterable[str] = (),
    caches: Iterable[str] = (),
) -> OutputFolder | None:
    """Open ``output.dir`` for this stage on the main process: every guard, the lock, ``status: running``.

    The folder's identity is ``fingerprint`` (the stage's settings and the content of its inputs,
    see :mod:`.fingerprint`): the same one resumes (checkpoints, finished models are reused),
    another one is refused naming what changed, unless ``overwrite`` (which clears the folder).
    ``caches``: entries that survive ``overwrite`` (PIT's stage folders, each reused only when its own
    record matches). The other processes of a multi-GPU run wait until the folder is ready and write none of it.
    Returns the folder on the main process, ``None`` on the others.
    """
    from accelerate import PartialState

    folder = None
    if is_main_process():
        folder = OutputFolder.open(
            config.path(config.output.dir),
            kind=config.stage,
            holds=HOLDS_MODEL,
            config=config.to_dict(),
            fingerprint=value_hash(fingerprint),
            inputs=inputs,
            input_paths=[Path(ref.path) for ref in inputs] + stage_paths(config),
            overwrite=overwrite,
            staged=False,
            extra_entries=(MODEL_DIR, CHECKPOINTS, "runs", "README.md", *entries),
            caches=caches,
            details={"fingerprint": fingerprint},
        )
    PartialState().wait_for_everyone()
    return folder


def stage_paths(config: StageConfig) -> list[Path]:
    """Every path a stage config reads (data, model, prompts, taxonomy): none may overlap its output."""
    data = config.data
    paths = [config.path(value) for value in (data.train, data.eval, data.task_data, data.records, data.metrics, data.taxonomy, data.prompts) if value]
    paths += [config.path(path) for path in data.document_domains().values()]
    local = config.path(config.model.name_or_path) if config.model.name_or_path else None
    if local is not None and local.exists():
        paths.append(local)
    return paths


def trl_arguments(args_cls: type, config: StageConfig, output_dir: Path, *, has_eval: bool = False, **stage: Any) -> Any:
    """Build ``args_cls`` (``SFTConfig`` / ``DPOConfig``) from the config, ``stage`` values winning.

    ``has_eval``: an eval set is given, so it is evaluated (every ``train.eval_steps``, else every epoch).
    """
    train = config.train
    on_gpu = cuda_available() and not train.use_cpu
    bf16, fp16 = mixed_precision(train.bf16, train.fp16, on_gpu=on_gpu)
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": train.seed,
        "data_seed": train.seed,
        "per_device_train_batch_size": train.batch_size,
        "per_device_eval_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "num_train_epochs": train.epochs,
        "learning_rate": train.learning_rate,
        "max_steps": train.max_steps,
        "lr_scheduler_type": train.lr_scheduler_type,
        "warmup_steps": train.warmup_steps,
        "weight_decay": train.weight_decay,
        "activation_checkpointing": train.gradient_checkpointing,
        "bf16": bf16,
        "fp16": fp16,
        "use_cpu": not on_gpu,
        "logging_steps": config.output.logging_steps,
        "save_steps": config.output.save_steps,
        "save_total_limit": config.output.save_total_limit,
        "report_to": config.output.report_to,
        "max_length": config.data.max_length,
    }
    if has_eval:
        values["eval_strategy"] = "steps" if train.eval_steps else "epoch"
        if train.eval_steps:
            values["eval_steps"] = train.eval_steps
    values.update(stage)
    known = {f.name for f in dataclasses.fields(args_cls)}
    for key in train.extra:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"train.extra.{key}: not a {args_cls.__name__} field{hint}")
    values.update(train.extra)
    if "loss_type" in values:
        check_loss_types(values["loss_type"])
    try:
        return args_cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"train: {args_cls.__name__} rejected the settings ({str(exc).splitlines()[0]})") from None


def mixed_precision(bf16: bool | None, fp16: bool | None, *, on_gpu: bool) -> tuple[bool, bool]:
    """``(bf16, fp16)`` for the trainer: what the config says, else what the hardware has.

    Unset: bf16 on a GPU that has it, fp16 on a GPU without (V100, T4), fp32 on a CPU. An explicit
    ``bf16: false`` means fp32 (Gemma-3 overflows in fp16), unless ``fp16: true`` says otherwise.
    """
    use_bf16 = bf16 if bf16 is not None else bool(on_gpu and _bf16_supported())
    use_fp16 = fp16 if fp16 is not None else bool(on_gpu and bf16 is None and not use_bf16)
    return use_bf16, use_fp16


def trl_loss_types() -> tuple[str, ...]:
    """The DPO loss types TRL knows, read from its own ``DPOConfig.loss_type`` field (empty when it does not list them)."""
    from trl.trainer.dpo_config import DPOConfig

    field = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type")
    listed = str(field.metadata.get("help", "")).split("If multiple")[0]
    return tuple(re.findall(r"`'([A-Za-z0-9_]+)'`", listed))


def check_loss_types(loss_types: str | Sequence[str]) -> None:
    """Refuse a DPO ``loss_type`` TRL does not know, before any model loads (TRL itself says so mid-training)."""
    known = trl_loss_types()
    for name in [loss_types] if isinstance(loss_types, str) else loss_types:
        if known and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"dpo.loss_type: '{name}' is not one of TRL's loss types ({', '.join(known)}){hint}")


def _bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


def lora_config(config: StageConfig) -> Any | None:
    """The PEFT ``LoraConfig`` (LoRA, DoRA, rsLoRA, modules_to_save) for ``lora``/``qlora``, else ``None`` (full fine-tuning)."""
    if not config.method.adapters:
        return None
    from peft import LoraConfig

    lora = config.method.lora
    try:
        return LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            use_dora=lora.use_dora,
            use_rslora=lora.use_rslora,
            modules_to_save=lora.modules_to_save,
            task_type="CAUSAL_LM",
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"method.lora: PEFT rejected the settings ({str(exc).splitlines()[0]})") from None


def quantization_config(config: StageConfig) -> Any | None:
    """The bitsandbytes 4-bit config of ``method.finetuning: qlora`` (else ``None``), checked before any model loads.

    QLoRA keeps the base in 4 bits on a CUDA GPU through bitsandbytes; without a GPU (or the package)
    it is one error line here, not a failure inside ``from_pretrained``.
    """
    if config.method.finetuning != "qlora":
        return None
    if not cuda_available() or config.train.use_cpu:
        raise ConfigError("method.finetuning: qlora loads the base in 4 bits with bitsandbytes, which needs a CUDA GPU; none is available here (use lora)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method.finetuning: qlora needs the bitsandbytes package (pip install 'mediflow[qlora]')")
    import torch
    from transformers import BitsAndBytesConfig

    qlora = config.method.qlora
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]  # transformers leaves its __init__ unannotated
        load_in_4bit=True,
        bnb_4bit_quant_type=qlora.quant_type,
        bnb_4bit_use_double_quant=qlora.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, qlora.compute_dtype),
    )


def check_attention(config: StageConfig) -> None:
    """Refuse an ``attn_implementation`` whose kernel is not installed here, before any model loads."""
    kind = config.model.attn_implementation
    if kind in ("flash_attention_2", "flash_attention_3"):
        from transformers.utils.import_utils import is_flash_attn_2_available, is_flash_attn_3_available

        available = is_flash_attn_2_available() if kind == "flash_attention_2" else is_flash_attn_3_available()
        if not available:
            raise ConfigError(f"model.attn_implementation: {kind} needs the flash-attn package and a CUDA GPU; use sdpa (padding-free and packing work with it too)")


@dataclass(frozen=True)
class TrainingSetup:
    """What the trainer is built with, all checked before a model loads: TRL's arguments, PEFT, quantization."""

    args: Any
    peft: Any | None
    quantization: Any | None

    def load_model(self, config: StageConfig, path: Path) -> Any:
        """The model at ``path`` as this stage trains it (dtype, attention kernel, 4-bit base for QLoRA)."""
        return load_causal_lm(path, config.model.dtype, attn_implementation=config.model.attn_implementation, quantization=self.quantization)


def training_setup(args_cls: type, config: StageConfig, output_dir: Path, *, has_eval: bool = False, **stage: Any) -> TrainingSetup:
    """Every trainer setting of a stage, validated: a bad value is one line before any model loads or any folder opens."""
    check_attention(config)
    if isinstance(config.train.resume_from_checkpoint, str):
        resume_checkpoint(config, output_dir)  # a named checkpoint must be complete (``true`` is resolved once the folder is ours)
    return TrainingSetup(trl_arguments(args_cls, config, output_dir, has_eval=has_eval, **stage), lora_config(config), quantization_config(config))


#: What a checkpoint needs for the trainer to resume from it exactly: the trainer state (written last), and
#: before it the weights, and the optimizer and scheduler state (``save_only_model`` checkpoints have neither).
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
_TRAINER_STATE = "trainer_state.json"


def checkpoint_problem(checkpoint: Path, *, needs_optimizer: bool = True) -> str | None:
    """Why the trainer cannot resume from ``checkpoint`` exactly (a save killed half-way), or ``None`` when it can.

    transformers writes a checkpoint in this order: config and weights, optimizer and scheduler,
    RNG state, and ``trainer_state.json`` last; a kill leaves a prefix of that list.
    """
    if not (checkpoint / _TRAINER_STATE).is_file():
        present = sorted(p.name for p in checkpoint.iterdir()) if checkpoint.is_dir() else []
        if not any(name in present for name in _WEIGHTS) and not any(p.is_dir() and p.name.startswith("global_step") for p in checkpoint.glob("*")):
            held = f"only {', '.join(present[:3])}" if present else "nothing"
            return f"holds {held}: no weights, optimizer or trainer state (the save was killed)"
        return "has weights but no trainer state (the save was killed before the optimizer, scheduler and trainer state were written)"
    try:
        json.loads((checkpoint / _TRAINER_STATE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "has a cut-short trainer_state.json (the save was killed while writing it)"
    has_weights = any((checkpoint / name).is_file() for name in _WEIGHTS) or any(p.is_dir() and p.name.startswith("global_step") for p in checkpoint.glob("*"))
    if not has_weights:
        return "has a trainer state but no weights (partly deleted)"
    if needs_optimizer and not ((checkpoint / "optimizer.pt").is_file() or any(checkpoint.glob("optimizer*")) or any(checkpoint.glob("global_step*"))):
        return "has no optimizer state (partly deleted)"
    return None


def _step(checkpoint: Path) -> int:
    tail = checkpoint.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def latest_complete_checkpoint(output_dir: Path, *, needs_optimizer: bool = True) -> Path | None:
    """The newest checkpoint the trainer can resume from; every newer one is said to be skipped (and why) and removed.

    A checkpoint whose save was killed half-way is useless (the trainer refuses it, or resumes from a
    state that never existed): it is removed, so that a later save of that step starts clean.
    """
    for checkpoint in sorted((p for p in output_dir.glob(CHECKPOINTS) if p.is_dir() and _step(p) >= 0), key=_step, reverse=True):
        problem = checkpoint_problem(checkpoint, needs_optimizer=needs_optimizer)
        if problem is None:
            return checkpoint
        logger.warning("resume: skipping %s: it %s; removed", checkpoint.name, problem)
        if is_main_process():
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def resume_checkpoint(config: StageConfig, output_dir: Path) -> str | None:
    """``train.resume_from_checkpoint`` as the trainer wants it: the newest *complete* checkpoint (or the named one).

    ``true``: the newest checkpoint in ``output_dir`` that holds everything the trainer needs to
    continue exactly (see :func:`checkpoint_problem`); incomplete newer ones are skipped with a line
    saying why; with none, training starts from the beginning (said too). A named folder must be complete.
    """
    value = config.train.resume_from_checkpoint
    needs_optimizer = not bool(config.train.extra.get("save_only_model"))
    if value is True:
        checkpoint = latest_complete_checkpoint(output_dir, needs_optimizer=needs_optimizer)
        if checkpoint is None:
            logger.info("resume: no complete checkpoint in %s; training from the start", output_dir)
            return None
        logger.info("resume: from %s (step %d)", checkpoint, _step(checkpoint))
        return str(checkpoint)
    if isinstance(value, str):
        checkpoint = config.path(value)
        if not checkpoint.is_dir():
            raise ConfigError(f"train.resume_from_checkpoint: {checkpoint} is not a checkpoint folder")
        problem = checkpoint_problem(checkpoint, needs_optimizer=needs_optimizer)
        if problem is not None:
            raise ConfigError(f"train.resume_from_checkpoint: {checkpoint} {problem}; name a complete one, or set it to true (the newest complete one)")
        return str(checkpoint)
    return None


def finished_model(trainer: Any, tokenizer: Any, target: Path, saved_template: str | None, *, init_from: Path, template_kwargs: dict[str, Any] | None = None) -> Path:
    """Save the trained model as a full Hugging Face folder; LoRA adapters are merged into the weights.

    Every stage hands the next one a plain model folder (the merge reads safetensors, DPO reloads
    its reference from a path). ``trainer.save_model`` gathers FSDP / DeepSpeed shards on every
    backend, so a LoRA run saves its adapter that way first and the main process then merges it into
    a fresh copy of the base (``merge_and_unload`` on a sharded in-memory model would merge shards).
    The saved tokenizer carries ``saved_template`` (the model's native chat template), the
    generation config stops at the end of a turn as that template closes one, and ``use_cache`` is
    what the starting model (``init_from``) had: the trainer switches the KV cache off for training, and a
    published ``use_cache: false`` would make every later ``generate`` slow. The model is saved to a ``.tmp-*`` staging folder
    and published by :func:`~mediflow.folders.model.publish_model` (``config.json`` last), so a kill
    mid-save never leaves a folder that loads as a finished model.
    """
    staging = staging_for(target)
    adapter = staging.with_name(staging.name + "-adapter")
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    if accelerator.is_main_process:
        for leftover in (staging, adapter):
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    use_cache = _use_cache_of(init_from)
    if hasattr(model, "peft_config"):
        trainer.save_model(str(adapter))
        if accelerator.is_main_process:
            merged = _merge_adapter(adapter, model)
            set_end_of_turn(merged, tokenizer, saved_template, template_kwargs)
            merged.config.use_cache = use_cache
            merged.save_pretrained(staging)
            shutil.rmtree(adapter, ignore_errors=True)
    else:
        set_end_of_turn(model, tokenizer, saved_template, template_kwargs)
        model.config.use_cache = use_cache
        trainer.save_model(str(staging))
    if accelerator.is_main_process:
        tokenizer.chat_template = saved_template
        tokenizer.save_pretrained(staging)
        publish_model(staging, target)
    accelerator.wait_for_everyone()
    return target


def _use_cache_of(folder: Path) -> bool:
    """The ``use_cache`` a model folder's config has (transformers' default, true, when it says nothing)."""
    try:
        value = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("use_cache", True)
    except (OSError, json.JSONDecodeError):
        return True
    return bool(value) if value is not None else True


def _merge_adapter(adapter: Path, model: Any) -> Any:
    """A fresh full-precision copy of the base with the saved adapter merged in."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = model.peft_config["default"].base_model_name_or_path
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).merge_and_unload()
