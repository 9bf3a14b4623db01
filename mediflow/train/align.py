"""Alignment on MediFlow output: SFT on the ``messages`` view, then DPO on preference pairs.

SFT trains on the assistant turns only. How the answer's tokens are found is
:func:`mediflow.train.templates.plan_chat_template`'s decision: the template's ``{% generation %}``
markers when a marked template renders exactly like the model's own, else the loss starts where the
rendered prompt ends (conversational prompt/completion rows, TRL's completion-only loss). The
model's native template is what is saved.

DPO's reference model is one of three, by ``dpo.reference``:
``full`` (a frozen copy, reloaded from the model folder), ``precomputed`` (reference log-probs
computed once before training, so no second model sits in memory), or ``adapter`` (LoRA only: the
policy with its adapter switched off).

Both stages: the eval set is the export's ``validation`` split (or ``data.eval``), never the
training split, and it is evaluated (``eval_strategy``); rows are measured against
``data.max_length`` before training (:mod:`.lengths`); the eval set is checked for overlap with the
training rows (:mod:`.overlap`); and ``output.dir`` is a contract folder (kind ``sft``/``dpo``, see
:mod:`mediflow.folders.model`) whose identity is a fingerprint of every input (:mod:`.fingerprint`):
a rerun with the same inputs reuses the finished model (or resumes its checkpoints), one with other
inputs stops with a line naming what changed (``--overwrite`` retrains), a second process on the
same folder stops naming the first, and ``OUT/model`` appears only once it is complete.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediflow.folders import InputRef
from mediflow.folders.model import MODEL_DIR
from mediflow.train.config import StageConfig
from mediflow.train.data import load_messages, load_preferences, splits_of
from mediflow.train.fingerprint import model_fingerprint, training_inputs, value_hash
from mediflow.train.lengths import LengthReport, fit_conversations, fit_preferences
from mediflow.train.models import load_causal_lm, load_tokenizer
from mediflow.train.overlap import check_overlap, conversation_text
from mediflow.train.runtime import (
    finished_model,
    lora_config,
    model_dir,
    open_model_output,
    resume_checkpoint,
    trl_arguments,
)
from mediflow.train.templates import ASSISTANT_ONLY, TemplatePlan, plan_chat_template


@dataclass
class AlignmentInputs:
    """Everything one SFT/DPO run is built from, measured and fingerprinted before any training."""

    model_path: Path
    tokenizer: Any
    plan: TemplatePlan
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    lengths: LengthReport
    overlap: dict[str, Any]
    fingerprint: dict[str, Any]
    inputs: list[InputRef]


def _eval_source(config: StageConfig, config_name: str) -> tuple[Path, str] | None:
    """Where the selection set comes from: ``data.eval``, else the train export's ``eval_split``."""
    if config.data.eval:
        return config.path(config.data.eval), config.data.read_split(config.stage)
    train = config.path(config.data.train)
    if config.data.eval_split in splits_of(train, "sft" if config_name == "sft" else "preferences"):
        return train, config.data.eval_split
    return None


def prepare_inputs(config: StageConfig, kind: str) -> AlignmentInputs:
    """Read, measure and fingerprint one SFT (``kind='sft'``) or DPO run's inputs; nothing is written.

    The data is read (and checked by the input reader) first: a broken input fails before a model loads.
    """
    data = config.data
    reader = load_messages if kind == "sft" else load_preferences
    rows = reader(config.path(data.train), data.read_split(config.stage), data.max_samples)
    source = _eval_source(config, kind)
    eval_rows = reader(source[0], source[1], data.max_samples) if source else []
    model_path = model_dir(config)
    tokenizer = load_tokenizer(model_path)
    plan = plan_chat_template(tokenizer, config.model.chat_template)
    tokenizer.chat_template = plan.training_template
    if kind == "sft":
        train_rows, lengths = fit_conversations(rows, tokenizer, data.max_length, data.overlong)
        eval_rows, _ = fit_conversations(eval_rows, tokenizer, data.max_length, data.overlong, stage="sft eval")
    else:
        train_rows, lengths = fit_preferences(rows, tokenizer, data.max_length, data.overlong)
        eval_rows = fit_preferences(eval_rows, tokenizer, data.max_length, data.overlong, "dpo eval", required=False)[0]
    if kind == "sft" and plan.masking != ASSISTANT_ONLY:
        train_rows, eval_rows = [_as_prompt_completion(r) for r in train_rows], [_as_prompt_completion(r) for r in eval_rows]

    def texts(rows: list[dict[str, Any]]) -> list[str]:
        return [conversation_text(r.get("messages") or (r["prompt"] + r.get("completion", r.get("chosen", [])))) for r in rows]

    fingerprint = {
        "stage": kind,
        "model weights": model_fingerprint(model_path),
        "data.train rows": value_hash(train_rows),
        "data.eval rows": value_hash(eval_rows),
        "chat template": value_hash([plan.training_template, plan.masking]),
        **training_inputs(config),
    }
    family = "sft" if kind == "sft" else "preferences"
    refs = [
        InputRef(str(model_path), "model", fingerprint["model weights"]),
        InputRef(str(config.path(data.train)), family, fingerprint["data.train rows"]),
    ]
    if source is not None and source[0] != config.path(data.train):
        refs.append(InputRef(str(source[0]), family, fingerprint["data.eval rows"]))
    return AlignmentInputs(
        model_path=model_path,
        tokenizer=tokenizer,
        plan=plan,
        train_rows=train_rows,
        eval_rows=eval_rows,
        lengths=lengths,
        overlap=check_overlap(kind, texts(train_rows), texts(eval_rows)),
        fingerprint=fingerprint,
        inputs=refs,
    )


def _as_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    """A conversation as conversational prompt/completion: the loss starts after the rendered prompt."""
    messages = row["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def build_sft_trainer(config: StageConfig, callbacks: list[Any] | None = None, inputs: AlignmentInputs | None = None) -> Any:
    """An ``SFTTrainer`` over the MediFlow ``messages`` records, loss on the assistant turns only."""
    from datasets import Dataset
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    inputs = inputs or prepare_inputs(config, "sft")
    output = config.path(config.output.dir)
    assistant_only = inputs.plan.masking == ASSISTANT_ONLY
    args = trl_arguments(
        SFTConfig,
        config,
        output,
        has_eval=bool(inputs.eval_rows),
        assistant_only_loss=assistant_only,
        completion_only_loss=None if assistant_only else True,
        packing=config.data.packing,
    )
    return SFTTrainer(
        model=load_causal_lm(inputs.model_path, config.model.dtype),
        args=args,
        train_dataset=Dataset.from_list(inputs.train_rows),
        eval_dataset=Dataset.from_list(inputs.eval_rows) if inputs.eval_rows else None,
        processing_class=inputs.tokenizer,
        peft_config=lora_config(config),
        callbacks=callbacks,
    )


def build_dpo_trainer(config: StageConfig, callbacks: list[Any] | None = None, inputs: AlignmentInputs | None = None) -> Any:
    """A ``DPOTrainer`` over conversational prompt/chosen/rejected pairs, with the configured reference."""
    from datasets import Dataset
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    inputs = inputs or prepare_inputs(config, "dpo")
    output = config.path(config.output.dir)
    dpo = config.dpo
    args = trl_arguments(
        DPOConfig,
        config,
        output,
        has_eval=bool(inputs.eval_rows),
        beta=dpo.beta,
        loss_type=[dpo.loss_type],
        precompute_ref_log_probs=dpo.reference == "precomputed",
    )
    peft = lora_config(config)
    # A LoRA policy with reference 'full' needs an explicit frozen copy; otherwise TRL either reloads
    # the policy's folder (full fine-tuning) or disables the adapter (reference 'adapter').
    reference = load_causal_lm(inputs.model_path, config.model.dtype) if peft is not None and dpo.reference == "full" else None
    return DPOTrainer(
        model=load_causal_lm(inputs.model_path, config.model.dtype),
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(inputs.train_rows),
        eval_dataset=Dataset.from_list(inputs.eval_rows) if inputs.eval_rows else None,
        processing_class=inputs.tokenizer,
        peft_config=peft,
        callbacks=callbacks,
    )


def run_sft(config: StageConfig, callbacks: list[Any] | None = None, *, overwrite: bool = False) -> Path:
    """Train SFT (or reuse the finished model trained from the same inputs); return ``<output.dir>/model``."""
    return _run(config, "sft", build_sft_trainer, callbacks, overwrite)


def run_dpo(config: StageConfig, callbacks: list[Any] | None = None, *, overwrite: bool = False) -> Path:
    """Train DPO (or reuse the finished model trained from the same inputs); return ``<output.dir>/model``."""
    return _run(config, "dpo", build_dpo_trainer, callbacks, overwrite)


def _run(config: StageConfig, kind: str, build: Any, callbacks: list[Any] | None, overwrite: bool) -> Path:
    """Train ``kind`` into ``<output.dir>/model`` under the folder contract (see the module docstring)."""
    output = config.path(config.output.dir)
    target = output / MODEL_DIR
    inputs = prepare_inputs(config, kind)
    inputs.lengths.announce(config.data.warn_fraction)
    folder = open_model_output(config, inputs.fingerprint, inputs.inputs, overwrite=overwrite)
    with folder or contextlib.nullcontext():
        if (target / "config.json").is_file():  # kept by the open: this same run's complete model
            if folder is not None:
                previous = folder.previous
                folder.finish(previous.counts if previous else {}, previous.details if previous else {})
            print(f"{kind}: {target} was trained from these exact inputs; reused (--overwrite retrains)", flush=True)
            return target
        trainer = build(config, callbacks, inputs)
        trainer.train(resume_from_checkpoint=resume_checkpoint(config, output))
        history = trainer.state.log_history
        record = {
            "stage": kind,
            "model": str(target),
            "init_from": str(inputs.model_path),
            "chat_template": {"masking": inputs.plan.masking, "reason": inputs.plan.reason},
            "lengths": inputs.lengths.as_dict(),
            "eval_rows": len(inputs.eval_rows),
            "overlap": inputs.overlap,
            "steps": trainer.state.global_step,
            "losses": [entry["loss"] for entry in history if "loss" in entry],
            "eval_losses": [entry["eval_loss"] for entry in history if "eval_loss" in entry],
            "train_loss": next((e["train_loss"] for e in history if "train_loss" in e), None),
        }
        counts = {"rows": len(inputs.train_rows), "eval_rows": len(inputs.eval_rows), "steps": trainer.state.global_step}
        if folder is not None:  # the record is in the manifest before the model appears (a rerun reusing it keeps it)
            folder.manifest.details.update(record)
            folder.manifest.counts = counts
            folder.manifest.write(folder.root)
        finished_model(trainer, trainer.processing_class, target, inputs.plan.saved_template)
        if folder is not None:
            folder.finish(counts)
    return target
