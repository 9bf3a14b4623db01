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
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from mediflow.train.config import PitStageSection, StageConfig
from mediflow.train.data import load_documents, load_task_rows
from mediflow.train.fingerprint import claim_output, flatten, model_fingerprint, training_inputs, value_hash, write_json
from mediflow.train.lengths import LengthReport, chunk_documents, fit_completions
from mediflow.train.models import load_causal_lm, load_tokenizer
from mediflow.train.runtime import (
    finished_model,
    is_main_process,
    lora_config,
    model_dir,
    resume_checkpoint,
    trl_arguments,
)

MANIFEST_NAME = "pit_manifest.json"
#: Each stage folder's own record of what its model was trained from (the pit manifest collects them).
STAGE_RECORD = "stage_manifest.json"


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
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(init_from)
    model = load_causal_lm(init_from, config.model.dtype)
    max_steps = stage.max_steps if stage.max_steps > 0 else config.train.max_steps
    args = trl_arguments(
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
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(config),
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

    Writes ``<output.dir>/stage<i>-<name>/model`` per stage. A stage is skipped only when its folder
    holds a model trained from exactly the same inputs (the weights it started from, its rows, its
    settings); other inputs stop the run with a line naming what changed (``overwrite`` retrains).
    ``pit_manifest.json`` is assembled from each stage folder's own record, so it always describes
    the models on disk.
    """
    base = model_dir(config)
    tokenizer = load_tokenizer(base)
    task_rows, chunks, lengths = fitted_inputs(config, tokenizer)
    lengths.announce(config.data.warn_fraction)
    output = config.path(config.output.dir)
    output.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"base": str(base), "lengths": lengths.as_dict(), "stages": []}
    current = base
    for index, stage in enumerate(config.pit.schedule, start=1):
        stage_dir = output / f"stage{index}-{stage.name}"
        stage_model = stage_dir / "model"
        rows = stage_rows(stage, task_rows, chunks)
        fingerprint = {
            "stage": dataclasses.asdict(stage),
            "init weights": model_fingerprint(current),
            "rows": value_hash(rows),
            **training_inputs(config),
        }
        fingerprint = flatten(fingerprint)
        if claim_output(stage_dir, fingerprint, what=f"pit stage {index} ({stage.name})", overwrite=overwrite, finished=stage_model):
            print(f"pit stage {index} ({stage.name}): already trained from these exact inputs; reused", flush=True)
        else:
            trainer = build_stage_trainer(config, stage, current, rows, stage_dir, callbacks)
            trainer.train(resume_from_checkpoint=resume_checkpoint(config, stage_dir))
            finished_model(trainer, trainer.processing_class, stage_model, trainer.processing_class.chat_template)
            history = trainer.state.log_history
            record = {
                **dataclasses.asdict(stage),
                "init_from": str(current),
                "model": str(stage_model),
                "rows": len(rows),
                "steps": trainer.state.global_step,
                "losses": [entry["loss"] for entry in history if "loss" in entry],
                "train_loss": next((e["train_loss"] for e in history if "train_loss" in e), None),
                "fingerprint": fingerprint,
            }
            if is_main_process():
                write_json(stage_dir / STAGE_RECORD, record)
        if is_main_process():
            manifest["stages"].append(json.loads((stage_dir / STAGE_RECORD).read_text(encoding="utf-8")))
        current = stage_model
    manifest["final"] = str(current)
    if is_main_process():
        write_json(output / MANIFEST_NAME, manifest)
    return current
