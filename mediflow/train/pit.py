"""Pre-instruction tuning (PIT) of one expert: task data first, then task data with the documents.

Jiang et al. (2024) found that a model absorbs new documents best when it first learns how the
knowledge will be asked for (QA about the documents, loss on the answers only) and then trains on
the QA and the documents together; MediPhi applied this per clinical corpus with summaries, entity
lists and relations alongside the QA (stage 1: 1 epoch at LR 1e-4; stage 2: 2 epochs at 3e-4).

The schedule is data (``method.schedule``), so that ablations such as documents-then-QA are config
edits. Every row is a TRL prompt/completion pair: task rows carry the question as the prompt (its
tokens labelled -100), documents carry an empty prompt (full loss on the document). Each stage
starts from the model folder the previous stage saved, and a finished stage is not re-run, which
makes a crashed schedule resumable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mediflow.train.config import PitStageSection, StageConfig
from mediflow.train.data import load_documents, load_task_rows
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


def stage_rows(stage: PitStageSection, task_rows: list[dict[str, str]], documents: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows one stage trains on, in ``stage.data``'s order: task rows, and documents as
    empty-prompt completions (so the whole document carries loss)."""
    parts = {
        "task": task_rows,
        "documents": [{"prompt": "", "completion": doc["text"]} for doc in documents],
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

    tokenizer = load_tokenizer(init_from, config.model.chat_template)
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
        packing=False,
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


def run_pit(config: StageConfig, callbacks: list[Any] | None = None) -> Path:
    """Run the whole schedule; return the final expert's model folder.

    Writes ``<output.dir>/stage<i>-<name>/model`` per stage and ``pit_manifest.json`` recording, for
    each stage, the folder it started from, its data and its logged losses.
    """
    base = model_dir(config)
    task_rows = load_task_rows(config.path(config.data.task_data))
    documents = load_documents(config.path(config.data.documents), config.data.text_field)
    if config.data.max_samples:
        task_rows, documents = task_rows[: config.data.max_samples], documents[: config.data.max_samples]
    output = config.path(config.output.dir)
    output.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"base": str(base), "stages": []}
    current = base
    for index, stage in enumerate(config.method.schedule, start=1):
        stage_dir = output / f"stage{index}-{stage.name}"
        stage_model = stage_dir / "model"
        record: dict[str, Any] = {
            "name": stage.name,
            "data": stage.data,
            "order": stage.order,
            "epochs": stage.epochs,
            "learning_rate": stage.learning_rate,
            "init_from": str(current),
            "model": str(stage_model),
        }
        if (stage_model / "config.json").is_file():
            record["skipped"] = "already finished (delete the folder to retrain)"
        else:
            rows = stage_rows(stage, task_rows, documents)
            trainer = build_stage_trainer(config, stage, current, rows, stage_dir, callbacks)
            trainer.train(resume_from_checkpoint=resume_checkpoint(config, stage_dir))
            finished_model(trainer, trainer.processing_class, stage_model)
            record["rows"] = len(rows)
            record["losses"] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
            record["train_loss"] = next((e["train_loss"] for e in trainer.state.log_history if "train_loss" in e), None)
        manifest["stages"].append(record)
        current = stage_model
    manifest["final"] = str(current)
    if is_main_process():
        _write_json(output / MANIFEST_NAME, manifest)
    return current


def _write_json(path: Path, value: Any) -> None:
    staging = path.with_suffix(path.suffix + ".tmp")
    staging.write_text(json.dumps(value, indent=2), encoding="utf-8")
    os.replace(staging, path)
