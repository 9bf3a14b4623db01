"""Alignment on MediFlow output: SFT on the ``messages`` view, then DPO on preference pairs.

SFT trains on the assistant turns only (TRL's ``assistant_only_loss``): the system turn (the task
instruction) and the user turn (the clinical document) are context, not targets. TRL finds the
assistant tokens through ``{% generation %}`` markers in the chat template, which most released
templates lack; :func:`mediflow.train.models.load_tokenizer` substitutes our marked-up copy.

DPO's reference model is one of three, by ``method.reference``:
``full`` (a frozen copy, reloaded from the model folder), ``precomputed`` (reference log-probs
computed once before training, so no second model sits in memory), or ``adapter`` (LoRA only: the
policy with its adapter switched off).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mediflow.train.config import StageConfig
from mediflow.train.data import load_messages, load_preferences
from mediflow.train.models import load_causal_lm, load_tokenizer
from mediflow.train.runtime import finished_model, lora_config, model_dir, resume_checkpoint, trl_arguments


def build_sft_trainer(config: StageConfig, callbacks: list[Any] | None = None) -> Any:
    """An ``SFTTrainer`` over the MediFlow ``messages`` records, loss on the assistant turns only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model_path = model_dir(config)
    tokenizer = load_tokenizer(model_path, config.model.chat_template, need_generation_markers=True)
    output = config.path(config.output.dir)
    args = trl_arguments(SFTConfig, config, output, assistant_only_loss=True, packing=False)
    split, limit = config.data.split, config.data.max_samples
    train_rows = load_messages(config.path(config.data.train), split, limit)
    eval_rows = load_messages(config.path(config.data.eval), split, limit) if config.data.eval else None
    trainer = SFTTrainer(
        model=load_causal_lm(model_path, config.model.dtype),
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=callbacks,
    )
    # TRL truncates to max_length and then drops, without a word, every record whose assistant turn
    # was cut off entirely; long clinical documents make that common, so say how many went.
    dropped = len(train_rows) - len(trainer.train_dataset)
    if dropped:
        warnings.warn(
            f"sft: {dropped} of {len(train_rows)} records lost their whole answer to truncation at "
            f"data.max_length={config.data.max_length} and are not trained on; raise data.max_length",
            stacklevel=2,
        )
    return trainer


def build_dpo_trainer(config: StageConfig, callbacks: list[Any] | None = None) -> Any:
    """A ``DPOTrainer`` over conversational prompt/chosen/rejected pairs, with the configured reference."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model_path = model_dir(config)
    tokenizer = load_tokenizer(model_path, config.model.chat_template, need_generation_markers=True)
    output = config.path(config.output.dir)
    method = config.method
    args = trl_arguments(
        DPOConfig,
        config,
        output,
        beta=method.beta,
        loss_type=[method.loss_type],
        precompute_ref_log_probs=method.reference == "precomputed",
    )
    split, limit = config.data.split, config.data.max_samples
    train_rows = load_preferences(config.path(config.data.train), split, limit)
    eval_rows = load_preferences(config.path(config.data.eval), split, limit) if config.data.eval else None
    peft = lora_config(config)
    # A LoRA policy with reference 'full' needs an explicit frozen copy; otherwise TRL either reloads
    # the policy's folder (full fine-tuning) or disables the adapter (reference 'adapter').
    reference = load_causal_lm(model_path, config.model.dtype) if peft is not None and method.reference == "full" else None
    return DPOTrainer(
        model=load_causal_lm(model_path, config.model.dtype),
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=callbacks,
    )


def run_sft(config: StageConfig, callbacks: list[Any] | None = None) -> Path:
    """Train SFT; return the finished model folder ``<output.dir>/model``."""
    return _train(build_sft_trainer(config, callbacks), config)


def run_dpo(config: StageConfig, callbacks: list[Any] | None = None) -> Path:
    """Train DPO; return the finished model folder ``<output.dir>/model``."""
    return _train(build_dpo_trainer(config, callbacks), config)


def _train(trainer: Any, config: StageConfig) -> Path:
    output = config.path(config.output.dir)
    trainer.train(resume_from_checkpoint=resume_checkpoint(config, output))
    return finished_model(trainer, trainer.processing_class, output / "model")
