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
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mediflow.errors import ConfigError
from mediflow.folders import InputRef, OutputFolder
from mediflow.folders.model import CHECKPOINTS, HOLDS_MODEL, MODEL_DIR, check_model_input, publish_model, staging_for
from mediflow.train.config import StageConfig
from mediflow.train.fingerprint import value_hash
from mediflow.train.models import resolve_model, set_end_of_turn


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def model_dir(config: StageConfig) -> Path:
    """The model folder ``model.name_or_path`` names: relative to the config file, or a packaged model."""
    cache = config.path(config.model.cache_dir) if config.model.cache_dir else None
    spec = config.model.name_or_path
    local = config.path(spec)
    if local.is_dir():
        check_model_input(local)  # a model another run is still writing (or never finished) is refused
    return resolve_model(local if (local / "config.json").is_file() else spec, cache, inputs=stage_paths(config))


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
) -> OutputFolder | None:
    """Open ``output.dir`` for this stage on the main process: every guard, the lock, ``status: running``.

    The folder's identity is ``fingerprint`` (the stage's settings and the content of its inputs,
    see :mod:`.fingerprint`): the same one resumes (checkpoints, finished models are reused),
    another one is refused naming what changed, unless ``overwrite`` (which clears the folder).
    The other processes of a multi-GPU run wait until the folder is ready and write none of it.
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
    bf16 = train.bf16 if train.bf16 is not None else bool(on_gpu and _bf16_supported())
    # A GPU without bf16 (V100, T4) gets fp16 mixed precision rather than fp32.
    fp16 = train.fp16 if train.fp16 is not None else bool(on_gpu and not bf16)
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
    try:
        return args_cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"train: {args_cls.__name__} rejected the settings ({str(exc).splitlines()[0]})") from None


def _bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


def lora_config(config: StageConfig) -> Any | None:
    """The PEFT ``LoraConfig`` when ``method.finetuning`` is ``lora``, else ``None`` (full fine-tuning)."""
    if config.method.finetuning != "lora":
        return None
    from peft import LoraConfig

    lora = config.method.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def resume_checkpoint(config: StageConfig, output_dir: Path) -> str | bool | None:
    """``train.resume_from_checkpoint`` as the trainer wants it: ``True`` only when a checkpoint exists."""
    value = config.train.resume_from_checkpoint
    if value is True:
        return True if any(output_dir.glob("checkpoint-*")) else None
    if isinstance(value, str):
        checkpoint = config.path(value)
        if not checkpoint.is_dir():
            raise ConfigError(f"train.resume_from_checkpoint: {checkpoint} is not a checkpoint folder")
        return str(checkpoint)
    return None


def finished_model(trainer: Any, tokenizer: Any, target: Path, saved_template: str | None) -> Path:
    """Save the trained model as a full Hugging Face folder; LoRA adapters are merged into the weights.

    Every stage hands the next one a plain model folder (the merge reads safetensors, DPO reloads
    its reference from a path). ``trainer.save_model`` gathers FSDP / DeepSpeed shards on every
    backend, so a LoRA run saves its adapter that way first and the main process then merges it into
    a fresh copy of the base (``merge_and_unload`` on a sharded in-memory model would merge shards).
    The saved tokenizer carries ``saved_template`` (the model's native chat template), and the
    generation config stops at the end of a turn. The model is saved to a ``.tmp-*`` staging folder
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
    if hasattr(model, "peft_config"):
        trainer.save_model(str(adapter))
        if accelerator.is_main_process:
            merged = _merge_adapter(adapter, model)
            set_end_of_turn(merged, tokenizer, saved_template)
            merged.save_pretrained(staging)
            shutil.rmtree(adapter, ignore_errors=True)
    else:
        set_end_of_turn(model, tokenizer, saved_template)
        trainer.save_model(str(staging))
    if accelerator.is_main_process:
        tokenizer.chat_template = saved_template
        tokenizer.save_pretrained(staging)
        publish_model(staging, target)
    accelerator.wait_for_everyone()
    return target


def _merge_adapter(adapter: Path, model: Any) -> Any:
    """A fresh full-precision copy of the base with the saved adapter merged in."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = model.peft_config["default"].base_model_name_or_path
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).merge_and_unload()
