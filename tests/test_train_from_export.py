"""SFT and DPO on what the data pipeline really produces: ``generate`` -> ``pairs`` -> ``export``.

The records and pairs come from the generation and preference stages talking to the test teacher
server, and are exported in the Hub layout; the training stages are pointed at the export root
(SFT reads its ``sft`` config, DPO its ``dpo``). A tiny local Phi-3 keeps it to seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tiny_models import build_tiny_phi3
from train_stages import finite_logs, tiny_stage_config

from mediflow import generate
from mediflow.errors import MediflowError
from mediflow.export import ExportConfig, export_dataset
from mediflow.preference import PairsConfig, build_pairs
from mediflow.taxonomy import load_taxonomy
from mediflow.testing import teacher_server
from mediflow.train.align import build_sft_trainer, prepare_inputs, run_dpo, run_sft
from mediflow.train.config import StageConfig
from mediflow.train.data import load_messages, load_preferences

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEACHER = "openai:mediflow-test-teacher"
MAX_LENGTH = 1024  # generated records are ~650-870 tokens here: no answer is truncated away


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``mediflow export`` of generated records and injected-error pairs, plus a tiny model."""
    root = tmp_path_factory.mktemp("from_export")
    taxonomy = load_taxonomy()
    first, second = list(taxonomy.tasks)[:2]
    document_types = [d for d in taxonomy.document_types_for(first) if d in taxonomy.document_types_for(second)][:2]
    with teacher_server() as url:
        generate(
            {
                "teacher": {"spec": TEACHER, "base_url": str(url)},
                "tasks": [first, second],
                "document_types": document_types,
                "difficulty_levels": [min(taxonomy.difficulty_levels, key=lambda level: level.rank).name],
                "per_cell": 2,
                "json_share": 0.5,
                "progress": False,
                "output": {"dir": str(root / "generated")},
            }
        )
        with pytest.warns(UserWarning, match="no judge scores"):
            build_pairs(root / "generated", root / "pairs", PairsConfig.load(None, teacher=TEACHER, base_url=url, min_margin=1, progress=False, seed=3))
    split = {"train": 1.0, "validation": 0.0, "test": 0.0}
    export_dataset(root / "generated", root / "export", ExportConfig.load(None, pairs=str(root / "pairs"), split=split, task_configs=False))
    build_tiny_phi3(root / "base")
    return root


def _config(root: Path, stage: str, output: str, max_length: int = MAX_LENGTH, **method: Any) -> StageConfig:
    return tiny_stage_config(root, stage, model="base", train="export", output=output, max_length=max_length, **method)


def test_the_export_root_reads_as_sft_records_and_dpo_pairs(export: Path) -> None:
    records = load_messages(export / "export")
    pairs = load_preferences(export / "export")
    assert len(records) == 8 and all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in records)
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    assert all([m["role"] for m in p["prompt"]] == ["system", "user"] for p in pairs)


def test_records_longer_than_max_length_are_counted_and_dropped(export: Path) -> None:
    lengths = sorted(len(row["input_ids"]) for row in prepare_inputs(_config(export, "sft", "sft_all"), "sft").train_rows)
    inputs = prepare_inputs(_config(export, "sft", "sft_short", max_length=lengths[3]), "sft")  # at least 4 of the 8 fit
    assert inputs.lengths.rows == 8 and inputs.lengths.dropped == 8 - len(inputs.train_rows) > 0 and len(inputs.train_rows) >= 4
    with pytest.warns(UserWarning, match=rf"sft: \d+ of 8 rows do not fit data.max_length={lengths[3]}"):
        inputs.lengths.announce(0.05)
    with pytest.raises(MediflowError, match="sft: none of the 8 rows fits data.max_length=128"):
        prepare_inputs(_config(export, "sft", "sft_none", max_length=128), "sft")


def test_sft_on_generated_records_trains_on_the_answers_and_logs_finite_losses(export: Path) -> None:
    config = _config(export, "sft", "sft")
    trainer = build_sft_trainer(config)
    assert len(trainer.train_dataset) == 8, "no generated record may lose its answer to truncation"
    answer = load_messages(export / "export")[0]["messages"][2]["content"]
    example = trainer.data_collator([trainer.train_dataset[0]])
    trained = trainer.processing_class.decode(example["input_ids"][0][example["labels"][0] != -100])
    assert trained == answer + "<|end|>\n"
    model = run_sft(config)
    assert (model / "model.safetensors").is_file()
    assert len(finite_logs(export / "sft", "loss")) == 2


def test_dpo_on_exported_pairs_logs_finite_losses_and_reward_margins(export: Path) -> None:
    model = run_dpo(_config(export, "dpo", "dpo", dpo={"reference": "precomputed", "beta": 0.1}))
    assert (model / "model.safetensors").is_file()
    assert len(finite_logs(export / "dpo", "loss")) == 2
    assert len(finite_logs(export / "dpo", "rewards/margins")) == 2
