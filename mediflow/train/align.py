"""Alignment on MediFlow output: SFT on the ``messages`` view, then DPO on preference pairs.

SFT trains on every assistant turn, and only on them. How their tokens are found is
:func:`mediflow.train.templates.plan_chat_template`'s decision: the template's ``{% generation %}``
markers when a marked template renders exactly like the model's own, else each turn's rendered
prefix (:mod:`.masking`: TRL's completion-only rule applied to every turn); a template that cannot
be masked per turn is refused with one line. Rows reach TRL tokenized, with their loss mask, and the
manifest says how many rows and turns of each kind were trained. The model's native template is
what is saved, with the end-of-turn tokens it writes as the generation config's ``eos_token_id``.

DPO's reference model is one of three, by ``dpo.reference``:
``full`` (a frozen copy, reloaded from the model folder), ``precomputed`` (reference log-probs
computed once before training, so no second model sits in memory), or ``adapter`` (LoRA only: the
policy with its adapter switched off).

Both stages: the eval set is the export's ``validation`` split (or ``data.eval``), never the
training split, and it is evaluated (``eval_strategy``); training and eval rows are measured against
``data.max_length`` before training and counted alike (:mod:`.lengths`; an eval set emptied by
length is an error); every setting is checked (TRL's arguments, DPO's loss type against TRL's own
list, PEFT, QLoRA's GPU, the attention kernel) before a model loads or the folder opens; the eval
set is checked for overlap with the training rows (:mod:`.overlap`); and ``output.dir`` is a contract folder (kind ``sft``/``dpo``, see
:mod:`mediflow.folders.model`) whose identity is a fingerprint of every input (:mod:`.fingerprint`):
a rerun with the same inputs reuses the finished model (or resumes its checkpoints), one with other
inputs stops with a line naming what changed (``--overwrite`` retrains), a second process on the
same folder stops naming the first, and ``OUT/model`` appears only once it is complete.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediflow.folders import InputRef
from mediflow.folders.model import MODEL_DIR
from mediflow.train.config import StageConfig
from mediflow.train.data import load_messages, load_preferences, splits_of
from mediflow.train.fingerprint import model_fingerprint, rows_hash, training_inputs, value_hash
from mediflow.train.lengths import LengthReport, fit_preferences, fit_tokenized, require_rows
from mediflow.train.masking import MaskingReport, tokenize_conversation
from mediflow.train.models import load_tokenizer
from mediflow.train.overlap import check_overlap, conversation_text
from mediflow.train.provenance import training_entry
from mediflow.train.runtime import (
    TrainingSetup,
    finished_model,
    model_dir,
    open_model_output,
    resume_checkpoint,
    training_setup,
)
from mediflow.train.templates import TemplatePlan, plan_chat_template

logger = logging.getLogger(__name__)


@dataclass
class AlignmentInputs:
    """Everything one SFT/DPO run is built from, measured, checked and fingerprinted before any model loads."""

    model_path: Path
    tokenizer: Any
    plan: TemplatePlan
    #: What the trainer trains on: tokenized rows with their loss mask (SFT), conversational pairs (DPO).
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    lengths: LengthReport
    eval_lengths: LengthReport | None
    masking: dict[str, Any]
    overlap: dict[str, Any]
    fingerprint: dict[str, Any]
    inputs: list[InputRef]
    setup: TrainingSetup


def _eval_source(config: StageConfig, config_name: str) -> tuple[Path, str] | None:
    """Where the selection set comes from: ``data.eval``, else the train export's ``eval_split``."""
    if config.data.eval:
        return config.path(config.data.eval), config.data.read_split(config.stage)
    train = config.path(config.data.train)
    if config.data.eval_split in splits_of(train, "sft" if config_name == "sft" else "preferences"):
        return train, config.data.eval_split
    return None


def _texts(rows: list[dict[str, Any]]) -> list[str]:
    """The text of each source row (conversation or pair) the overlap check compares."""
    return [conversation_text(r.get("messages") or (r["prompt"] + r.get("chosen", []))) for r in rows]


def _sft_rows(config: StageConfig, tokenizer: Any, plan: TemplatePlan, rows: list[dict[str, Any]], stage: str, masking: MaskingReport | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], LengthReport]:
    """Conversations tokenized with every assistant turn masked in, fitted to ``data.max_length``: (trainer rows, source rows kept, counts)."""
    kwargs = config.model.chat_template_kwargs
    where = "data.train" if masking is not None else "eval"
    tokenized = [tokenize_conversation(tokenizer, row["messages"], plan.masking, kwargs, where=f"{where} row {index}") for index, row in enumerate(rows)]
    kept, lengths = fit_tokenized(tokenized, config.data.max_length, config.data.overlong, stage)
    if masking is not None:
        for index in kept:
            masking.count(tokenized[index])
    return [tokenized[index].as_row() for index in kept], [rows[index] for index in kept], lengths


def _with_template_kwargs(rows: list[dict[str, Any]], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """DPO pairs carrying ``chat_template_kwargs`` (TRL renders each row with them)."""
    return [{**row, "chat_template_kwargs": kwargs} for row in rows] if kwargs else rows


def prepare_inputs(config: StageConfig, kind: str) -> AlignmentInputs:
    """Read, measure, check and fingerprint one SFT (``kind='sft'``) or DPO run's inputs; nothing is written, no model loads.

    The data is read (and checked by the input reader) first: a broken input fails before anything else.
    """
    data = config.data
    reader = load_messages if kind == "sft" else load_preferences
    rows = reader(config.path(data.train), data.read_split(config.stage), data.max_samples)
    source = _eval_source(config, kind)
    eval_source = reader(source[0], source[1], data.max_samples) if source else []
    model_path = model_dir(config)
    tokenizer = load_tokenizer(model_path)
    plan = plan_chat_template(tokenizer, config.model.chat_template)
    tokenizer.chat_template = plan.training_template
    kwargs = config.model.chat_template_kwargs
    eval_lengths: LengthReport | None = None
    if kind == "sft":
        report = MaskingReport(plan.masking, plan.reason)
        train_rows, kept, lengths = _sft_rows(config, tokenizer, plan, rows, "sft", report)
        eval_rows, eval_kept, eval_lengths = _sft_rows(config, tokenizer, plan, eval_source, "sft eval", None) if eval_source else ([], [], None)
        masking = report.as_dict()
    else:
        kept, lengths = fit_preferences(rows, tokenizer, data.max_length, data.overlong, "dpo", kwargs)
        eval_kept, eval_lengths = fit_preferences(eval_source, tokenizer, data.max_length, data.overlong, "dpo eval", kwargs) if eval_source else ([], None)
        train_rows, eval_rows = _with_template_kwargs(kept, kwargs), _with_template_kwargs(eval_kept, kwargs)
        masking = {
            "masking": "dpo",
            "loss_on": "the chosen and rejected answers after the prompt (TRL's DPO; a multi-turn prompt is context)",
            "rows": {"pairs": {"rows": len(kept), "multi_turn_prompts": sum(1 for r in kept if sum(m["role"] == "assistant" for m in r["prompt"]))}},
        }
    require_rows(lengths, "rows" if kind == "sft" else "preference pairs")
    if eval_lengths is not None:
        require_rows(eval_lengths, "eval rows" if kind == "sft" else "eval preference pairs")
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.sft_config import SFTConfig

    output = config.path(config.output.dir)
    has_eval = bool(eval_rows)
    if kind == "sft":
        setup = training_setup(SFTConfig, config, output, has_eval=has_eval, assistant_only_loss=False, completion_only_loss=True, packing=data.packing)
    else:
        dpo = config.dpo
        setup = training_setup(DPOConfig, config, output, has_eval=has_eval, beta=dpo.beta, loss_type=[dpo.loss_type], precompute_ref_log_probs=dpo.reference == "precomputed")
    fingerprint = {
        "stage": kind,
        "model weights": model_fingerprint(model_path),
        "data.train rows": rows_hash(train_rows),
        "data.eval rows": rows_hash(eval_rows),
        "chat template": value_hash([plan.training_template, plan.saved_template, plan.masking]),
        **training_inputs(config, has_eval=has_eval),
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
        eval_lengths=eval_lengths,
        masking=masking,
        overlap=check_overlap(kind, _texts(kept), _texts(eval_kept)),
        fingerprint=fingerprint,
        inputs=refs,
        setup=setup,
    )


def build_sft_trainer(config: StageConfig, callbacks: list[Any] | None = None, inputs: AlignmentInputs | None = None) -> Any:
    """An ``SFTTrainer`` over the tokenized MediFlow conversations, loss on every assistant turn only."""
    from datasets import Dataset
    from trl.trainer.sft_trainer import SFTTrainer

    inputs = inputs or prepare_inputs(config, "sft")
    return SFTTrainer(
        model=inputs.setup.load_model(config, inputs.model_path),
        args=inputs.setup.args,
        train_dataset=Dataset.from_list(inputs.train_rows),
        eval_dataset=Dataset.from_list(inputs.eval_rows) if inputs.eval_rows else None,
        processing_class=inputs.tokenizer,
        peft_config=inputs.setup.peft,
        callbacks=callbacks,
    )


def build_dpo_trainer(config: StageConfig, callbacks: list[Any] | None = None, inputs: AlignmentInputs | None = None) -> Any:
    """A ``DPOTrainer`` over conversational prompt/chosen/rejected pairs, with the configured reference."""
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DPOTrainer

    inputs = inputs or prepare_inputs(config, "dpo")
    setup = inputs.setup
    # A LoRA policy with reference 'full' needs an explicit frozen copy; otherwise TRL either reloads
    # the policy's folder (full fine-tuning) or disables the adapter (reference 'adapter').
    reference = setup.load_model(config, inputs.model_path) if setup.peft is not None and config.dpo.reference == "full" else None
    return DPOTrainer(
        model=setup.load_model(config, inputs.model_path),
        ref_model=reference,
        args=setup.args,
        train_dataset=Dataset.from_list(inputs.train_rows),
        eval_dataset=Dataset.from_list(inputs.eval_rows) if inputs.eval_rows else None,
        processing_class=inputs.tokenizer,
        peft_config=setup.peft,
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
    if inputs.eval_lengths is not None:
        inputs.eval_lengths.announce(config.data.warn_fraction)
    folder = open_model_output(config, inputs.fingerprint, inputs.inputs, overwrite=overwrite)
    with folder or contextlib.nullcontext():
        if (target / "config.json").is_file():  # kept by the open: this same run's complete model
            if folder is not None:
                previous = folder.previous
                folder.finish(previous.counts if previous else {}, previous.details if previous else {})
            logger.info("%s: %s was trained from these exact inputs; reused (--overwrite retrains)", kind, target)
            return target
        checkpoint = resume_checkpoint(config, output)
        trainer = build(config, callbacks, inputs)
        trainer.train(resume_from_checkpoint=checkpoint)
        history = trainer.state.log_history
        record = {
            "stage": kind,
            "model": str(target),
            "init_from": str(inputs.model_path),
            "chat_template": {"masking": inputs.plan.masking, "reason": inputs.plan.reason},
            "masking": inputs.masking,
            "lengths": inputs.lengths.as_dict(),
            "eval_lengths": inputs.eval_lengths.as_dict() if inputs.eval_lengths is not None else None,
            "eval_rows": len(inputs.eval_rows),
            "overlap": inputs.overlap,
            "trained_on": [training_entry(config.path(config.data.train), "sft" if kind == "sft" else "preferences", split=config.data.read_split(kind))],
            "resumed_from": checkpoint,
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
        finished_model(trainer, trainer.processing_class, target, inputs.plan.saved_template, init_from=inputs.model_path, template_kwargs=config.model.chat_template_kwargs)
        if folder is not None:
            folder.finish(counts)
    return target
