"""What only a CUDA GPU can show: bf16 mixed precision is chosen from the hardware, the stages train
and evaluate on the device, and a merged model generates there. Skipped without CUDA."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny_phi3

from mediflow.records import to_messages
from mediflow.train.align import build_sft_trainer, run_sft
from mediflow.train.config import StageConfig, config_from_dict
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
    raw = {"merge_method": "slerp", "base_model": str(root / "base"), "models": [{"model": str(root / "base")}, {"model": str(root / "other")}], "parameters": {"t": 0.5}, "dtype": "bfloat16"}
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


def _sft_config(root: Path, output: str, **sections: dict[str, object]) -> StageConfig:
    raw: dict[str, dict[str, object]] = {
        "model": {"name_or_path": "base"},
        "data": {"train": "records.jsonl", "max_length": 128},
        "output": {"dir": output, "logging_steps": 1, "save_steps": 1000},
        "train": {"batch_size": 4, "max_steps": 2, "learning_rate": 1e-3},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw, "sft", root=root)


def test_explicit_bf16_false_trains_in_fp32_on_a_bf16_gpu(root: Path) -> None:
    """Issue 22 item 7: `train.bf16: false` used to turn fp16 on (Gemma-3 overflows in fp16)."""
    trainer = build_sft_trainer(_sft_config(root, "sft_fp32", train={"bf16": False}))
    assert (trainer.args.bf16, trainer.args.fp16) == (False, False)
    assert next(trainer.model.parameters()).dtype == torch.float32


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (pip install 'mediflow[qlora]')")
def test_qlora_trains_a_4bit_base_and_saves_a_full_model(root: Path) -> None:
    """QLoRA: the base loads in 4 bits, LoRA trains over it, and the saved folder is a plain full-precision model."""
    config = _sft_config(root, "sft_qlora", method={"finetuning": "qlora", "lora": {"r": 4, "alpha": 8}})
    trainer = build_sft_trainer(config)
    assert any(type(module).__name__ == "Linear4bit" for module in trainer.model.modules())
    model = run_sft(config)
    assert not (model / "adapter_config.json").exists()
    weights = load_file(str(model / "model.safetensors"))
    assert set(weights) == set(load_file(str(root / "base" / "model.safetensors")))
    assert all(torch.isfinite(tensor.float()).all() for tensor in weights.values())


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs the flash-attn package")
def test_flash_attention_2_with_padding_free_batches(root: Path) -> None:
    trainer = build_sft_trainer(_sft_config(root, "sft_fa2", model={"attn_implementation": "flash_attention_2", "dtype": "bfloat16"}, train={"extra": {"padding_free": True}}))
    assert trainer.model.config._attn_implementation == "flash_attention_2"
    assert math.isfinite(trainer.train().training_loss)
