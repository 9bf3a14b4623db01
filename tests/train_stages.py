"""A two-step training stage config for the tiny models, and the finite-loss check, shared by the SFT/DPO tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mediflow.train.config import StageConfig, config_from_dict


def tiny_stage_config(root: Path, stage: str, *, model: str, train: str, output: str, max_length: int, dpo: dict[str, Any] | None = None, **method: Any) -> StageConfig:
    """``stage`` (sft, dpo) on ``train`` under ``root``: 2 steps of batch 2 at LR 1e-3, logged every step.

    ``method`` keys go to the shared ``method:`` section, ``dpo`` to the dpo stage's own section.
    """
    return config_from_dict(
        {
            "model": {"name_or_path": model},
            "method": method,
            **({"dpo": dpo} if dpo else {}),
            "data": {"train": train, "max_length": max_length},
            "output": {"dir": output, "logging_steps": 1, "save_steps": 1000},
            "train": {"batch_size": 2, "max_steps": 2, "learning_rate": 1e-3},
        },
        stage,
        root=root,
    )


def finite_logs(trainer_dir: Path, key: str) -> list[float]:
    """Every logged value of ``key`` from the final checkpoint's trainer state; all must be finite."""
    state = json.loads(sorted(trainer_dir.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    values = [entry[key] for entry in state["log_history"] if key in entry]
    assert values and all(math.isfinite(v) for v in values), (key, values)
    return values
