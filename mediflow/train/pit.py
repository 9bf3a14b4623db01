"""Pre-instruction tuning (PIT) of one expert: task data first, then task data with the documents.

Jiang et al. (2024) found that a model absorbs new documents best when it first learns how the
knowledge will be asked for (QA about the documents, loss on the answers only) and then trains on
the QA and the documents together; MediPhi applied this per clinical corpus with summaries, entity
lists and relations alongside the QA (stage 1: 1 epoch at LR 1e-4; stage 2: 2 epochs at 3e-4).

The schedule is data (``pit.schedule``), so that ablations such as documents-then-QA are config
edits. Every row is a TRL prompt/completion pair: task rows carry the question as the prompt (its
tokens labelled -100), documents carry an empty prompt (full loss on the document); a document
longer than ``data.max_length`` is split into overlapping chunks rather than cut. Each stage
starts from the model folder the previous stage saved, and a stage finished from the same inputs is
not re-run, which makes a crashed schedule resumable.

``output.dir`` is a contract folder of kind ``pit`` (:mod:`mediflow.folders.model`): its identity
is the base model's weights, the task rows, the document chunks, the schedule and the settings that
can change a result, so a rerun of another schedule or over other data is refused naming what
changed. ``--overwrite`` then retrains only what changed: a stage folder is kept when the weights it
started from, its rows and its settings are unchanged (its ``stage_manifest.json``), so a new
stage-2 learning rate retrains stage 2 and reuses stage 1. A second process stops naming the first;
each stage's model appears only once complete, and the manifest says ``finished`` only when the
last stage is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import typing
from pathlib import Path
from typing import Any

from mediflow.folders import InputRef
from mediflow.folders.manifest import flatten
from mediflow.folders.model import MODEL_DIR
from mediflow.train.config import PitStageSection, StageConfig
from mediflow.train.data import load_documents, load_task_rows
from mediflow.train.fingerprint import model_fingerprint, rows_hash, training_inputs, write_json
from mediflow.train.lengths import LengthReport, chunk_documents, fit_completions
from mediflow.train.models import load_tokenizer
from mediflow.train.provenance import training_entry
from mediflow.train.runtime import (
    finished_model,
    is_main_process,
    model_dir,
    open_model_output,
    resume_checkpoint,
    training_setup,
)

logger = logging.getLogger(__name__)

#: Each stage folder's own record of what its model was trained from (the folder's manifest collects them).
STAGE_RECORD = "stage_manifest.json"
#: What carries loss in each kind of PIT row (the manifest says it).
MASKING = {
    "task": "completion only: the prompt's tokens are labelled -100, the answer and its end-of-sequence carry loss (TRL's completion_only_loss)",
    "documents": "every token: a document (or chunk) is a completion with an empty prompt",
}


def stage_rows(stage: PitStageSection, task_rows: list[dict[str, str]], chunks: list[str]) -> list[dict[str, str]]:
    """The rows one stage trains on, in ``stage.data``'s order: task rows, and document chunks as
    empty-prompt completions (so the whole document carries loss)."""
    parts = {
        "task": task_rows,
        "documents": [{"prompt": "", "completion": chunk} for chunk in chunks],
    }
    return [row for part in stage.data for row in parts[part]]


def build_stage_trainer(
    config: StageConfig,
    stage: PitStageSection,
    init_from: Path,
    rows: list[dict[str, str]],
    output_dir: Path,
    callbacks: list[Any] | None = None,
) -> Any:
    """An ``SFTTrainer`` for one PIT stage, starting from the model folder ``init_from``."""
    from datasets import Dataset
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    tokenizer = load_tokenizer(init_from)
    max_steps = stage.max_steps if stage.max_steps > 0 else config.train.max_steps
    setup = training_setup(
        SFTConfig,
        config,
        output_dir,
        num_train_epochs=stage.epochs,
        learning_rate=stage.learning_rate,
        max_steps=max_steps,
        completion_only_loss=True,
        packing=config.data.packing,
        train_sampling_strategy="random" if stage.order == "shuffled" else "sequential",
    )
    return SFTTrainer(
        model=setup.load_model(config, init_from),
        args=setup.args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=setup.peft,
        callbacks=callbacks,
    )


def fitted_inputs(config: StageConfig, tokenizer: Any) -> tuple[list[dict[str, str]], list[str], LengthReport]:
    """Task rows that fit ``data.max_length`` and the documents as overlapping chunks, with the counts."""
    data = config.data
    task_rows = load_task_rows(config.path(data.task_data))
    documents = load_documents(config.path(typing.cast(str, data.documents)), data.text_field)  # one path: checked for pit
    if data.max_samples:
        task_rows, documents = task_rows[: data.max_samples], documents[: data.max_samples]
    report = LengthReport("pit", data.max_length)
    task_rows = fit_completions(task_rows, tokenizer, data.max_length, data.overlong, report)
    chunks = chunk_documents([doc["text"] for doc in documents], tokenizer, data.max_length, data.overlap(), report)
    return task_rows, chunks, report


def run_pit(config: StageConfig, callbacks: list[Any] | None = None, *, overwrite: bool = False) -> Path:
    """Run the whole schedule; return the final expert's model folder.

    Writes ``<output.dir>/stage<i>-<name>/model`` per stage. A stage is skipped when its folder
    holds a model trained from exactly the same inputs (the weights it started from, its rows, its
    settings: its ``stage_manifest.json``); a stage whose record does not match is trained again.
    The folder's ``manifest.json`` collects the stage records when the last stage is done.
    """
    from trl.trainer.sft_config import SFTConfig

    base = model_dir(config)
    tokenizer = load_tokenizer(base)
    task_rows, chunks, lengths = fitted_inputs(config, tokenizer)
    training_setup(SFTConfig, config, config.path(config.output.dir), completion_only_loss=True, packing=config.data.packing)  # every setting checked before a model loads
    lengths.announce(config.data.warn_fraction)
    base_weights = model_fingerprint(base)
    identity = flatten(
        {
            "base weights": base_weights,
            "task rows": rows_hash(task_rows),
            "document chunks": rows_hash(chunks),
            "schedule": {str(index): dataclasses.asdict(stage) for index, stage in enumerate(config.pit.schedule, start=1)},
            **training_inputs(config),
        }
    )
    inputs = [
        InputRef(str(base), "model", base_weights),
        InputRef(str(config.path(config.data.task_data)), "task_data", identity["task rows"]),
        InputRef(str(config.path(typing.cast(str, config.data.documents))), "documents", identity["document chunks"]),
    ]
    # This schedule's stage folders survive --overwrite like a cache: each is reused only when its own record matches.
    names = [f"stage{index}-{stage.name}" for index, stage in enumerate(config.pit.schedule, start=1)]
    folder = open_model_output(config, identity, inputs, overwrite=overwrite, entries=("stage*",), caches=names)
    output = config.path(config.output.dir)
    records: list[dict[str, Any]] = []
    current = base
    with folder or contextlib.nullcontext():
        for index, stage in enumerate(config.pit.schedule, start=1):
            stage_dir = output / f"stage{index}-{stage.name}"
            rows = stage_rows(stage, task_rows, chunks)
            fingerprint = flatten({"stage": dataclasses.asdict(stage), "init weights": model_fingerprint(current), "rows": rows_hash(rows), **training_inputs(config)})
            record = _finished_stage(stage_dir, fingerprint)
            if record is not None:
                logger.info("pit stage %d (%s): already trained from these exact inputs; reused", index, stage.name)
            else:
                record = _train_stage(config, stage, current, rows, stage_dir, fingerprint, callbacks)
            records.append(record)
            current = stage_dir / MODEL_DIR
        if folder is not None:
            trained_on = [
                training_entry(config.path(config.data.task_data), "task_data"),
                training_entry(config.path(typing.cast(str, config.data.documents)), "documents", text_field=config.data.text_field),
            ]
            details = {"base": str(base), "lengths": lengths.as_dict(), "masking": MASKING, "trained_on": trained_on, "stages": records, "final": str(current)}
            folder.finish({"stages": len(records), "rows": sum(r["rows"] for r in records)}, details)
    return current


def _recorded_fingerprint(record_path: Path) -> Any:
    """The fingerprint a stage folder's record names (``None`` without a readable record)."""
    try:
        return json.loads(record_path.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _finished_stage(stage_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The stage's record when its folder holds a complete model trained from exactly ``fingerprint``."""
    record_path = stage_dir / STAGE_RECORD
    if not (stage_dir / MODEL_DIR / "config.json").is_file() or not record_path.is_file():
        return None
    record: dict[str, Any] = json.loads(record_path.read_text(encoding="utf-8"))
    return record if record.get("fingerprint") == fingerprint else None


def _train_stage(config: StageConfig, stage: PitStageSection, init_from: Path, rows: list[dict[str, str]], stage_dir: Path, fingerprint: dict[str, Any], callbacks: list[Any] | None) -> dict[str, Any]:
    """Train one stage into ``stage_dir/model``; its checkpoints resume only under the same fingerprint.

    The stage's record is written with ``status: training`` before its first checkpoint, so the
    checkpoints of a killed stage are resumed only by a run with the same fingerprint; anything else
    in the folder (another fingerprint, or no record at all) is cleared first.
    """
    record_path = stage_dir / STAGE_RECORD
    if is_main_process():
        if stage_dir.exists() and _recorded_fingerprint(record_path) != fingerprint:
            shutil.rmtree(stage_dir)  # trained from other weights or settings (an earlier stage was redone): start it again
        if not record_path.is_file():
            write_json(record_path, {"status": "training", "fingerprint": fingerprint})
    from accelerate import PartialState

    PartialState().wait_for_everyone()
    trainer = build_stage_trainer(config, stage, init_from, rows, stage_dir, callbacks)
    trainer.train(resume_from_checkpoint=resume_checkpoint(config, stage_dir))
    history = trainer.state.log_history
    record = {
        **dataclasses.asdict(stage),
        "init_from": str(init_from),
        "model": str(stage_dir / MODEL_DIR),
        "rows": len(rows),
        "steps": trainer.state.global_step,
        "losses": [entry["loss"] for entry in history if "loss" in entry],
        "train_loss": next((e["train_loss"] for e in history if "train_loss" in e), None),
        "fingerprint": fingerprint,
        "status": "trained",
    }
    if is_main_process():
        write_json(record_path, record)  # before the model appears: a kill after it leaves a reusable stage
    finished_model(trainer, trainer.processing_class, stage_dir / MODEL_DIR, trainer.processing_class.chat_template, init_from=init_from)
    return record
