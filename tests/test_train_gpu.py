"""What only a CUDA GPU can show: bf16 mixed precision is chosen from the hardware, the stages train
and evaluate on the device, and a merged model generates there. Skipped without CUDA."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny_phi3

from mediflow.records import to_messages
from mediflow.train.align import build_sft_trainer
from mediflow.train.config import config_from_dict
from mediflow.train.eval import run_eval
from mediflow.train.merge import parse_merge_config, run_merge
from mediflow.train.models import load_causal_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu")
    build_tiny_phi3(root / "base", seed=0)
    build_tiny_phi3(root / "other", seed=1)
    records = [to_messages("Extract the diagnosis as JSON.", f"Patient {i} has pneumonia.", '{"diagnosis": "pneumonia"}') for i in range(8)]
    (root / "records.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in records))
    (root / "notes.jsonl").write_text(json.dumps({"text": "Patient admitted with pneumonia, treated with amoxicillin."}) + "\n")
    return root


def test_sft_trains_on_the_gpu_in_bf16_chosen_from_the_hardware(root: Path) -> None:
    config = config_from_dict(
        {
            "model": {"name_or_path": "base"},
            "data": {"train": "records.jsonl", "max_length": 128},
            "output": {"dir": "sft", "logging_steps": 1, "save_steps": 1000},
            "train": {"batch_size": 4, "max_steps": 3, "learning_rate": 1e-3},
        },
        "sft",
        root=root,
    )
    trainer = build_sft_trainer(config)
    assert trainer.args.bf16 == torch.cuda.is_bf16_supported() and not trainer.args.use_cpu
    result = trainer.train()
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert math.isfinite(result.training_loss)


def test_eval_and_a_merged_model_run_on_the_gpu(root: Path) -> None:
    raw = {"merge_method": "slerp", "base_model": str(root / "base"), "models": [{"model": str(root / "base")}, {"model": str(root / "other")}],
           "parameters": {"t": 0.5}, "dtype": "bfloat16"}
    merged = run_merge(parse_merge_config(raw), root / "merged")
    model = load_causal_lm(merged, "auto", for_training=False).to("cuda")
    assert model.dtype == torch.bfloat16  # inference on a bf16 GPU loads in bf16
    config = config_from_dict(
        {"model": {"name_or_path": "merged"}, "data": {"documents": "notes.jsonl", "max_length": 64}, "output": {"dir": "eval"}},
        "eval",
        root=root,
    )
    report = run_eval(config)
    assert math.isfinite(report["perplexity"]["documents"]["perplexity"])
