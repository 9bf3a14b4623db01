"""Resume after a real kill (issue 22, item 1): ``kill -9`` of a real ``mediflow train sft`` at several points of a checkpoint save.

Unattended jobs (Slurm preemption, spot instances) die in the middle of a checkpoint save. Each run
below is the real command line in its own process; to kill it at a known point of a save, the
process is started through a few lines of test code that make one transformers/safetensors
function first write a marker file and then wait (the save is frozen exactly there); the test sees
the marker and sends SIGKILL. Nothing in the library knows about it. Points, in the order
transformers writes a checkpoint:

* ``config_only``: ``checkpoint-N/`` holds ``config.json`` (and the generation config), no weights;
* ``weights_only``: the weights and tokenizer are written, the optimizer, scheduler, RNG and trainer
  state are not;
* ``complete``: the whole checkpoint is written (``trainer_state.json`` last).

Each rerun with ``--resume`` skips the newest incomplete checkpoint (saying which and why), resumes
from the newest complete one, and the last rerun ends with a model bit-identical to an
uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import build_tiny_phi3

from mediflow.train.align import run_sft
from mediflow.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]

#: Runs the real CLI, after making the ``at``-th call of one save step write ``marker`` and wait to be killed.
BOOTSTRAP = """
import sys, time, pathlib
point, at, marker, argv = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4:]

def frozen(original, after=False):
    calls = [0]
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at and not after:
            marker.write_text(point); time.sleep(600)
        result = original(*args, **kwargs)
        if calls[0] == at and after:
            marker.write_text(point); time.sleep(600)
        return result
    return wrapper

import transformers.modeling_utils as modeling_utils
from transformers import Trainer
if point == "config_only":  # save_pretrained writes config.json, then the weights: freeze before the weights
    modeling_utils.safe_save_file = frozen(modeling_utils.safe_save_file)
elif point == "weights_only":  # the checkpoint's weights are written; freeze before optimizer/scheduler/RNG/trainer state
    Trainer._save_optimizer_and_scheduler = frozen(Trainer._save_optimizer_and_scheduler)
elif point == "complete":  # freeze once the whole checkpoint (trainer_state.json last) is written
    Trainer._save_checkpoint = frozen(Trainer._save_checkpoint, after=True)
from mediflow.cli import main
sys.exit(main(argv))
"""

CONFIG = {
    "model": {"name_or_path": "base"},
    "data": {"train": "rows.jsonl", "max_length": 64},
    "output": {"dir": "OUT", "logging_steps": 1, "save_steps": 1, "save_total_limit": 2},
    "train": {"batch_size": 2, "max_steps": 4, "learning_rate": 1e-3, "seed": 7},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    build_tiny_phi3(root / "base")
    rows = [{"messages": [{"role": "user", "content": f"Patient {i}: what was given?"}, {"role": "assistant", "content": f"Amoxicillin {250 * (i % 3 + 1)} mg."}]} for i in range(6)]
    (root / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    for name in ("killed", "straight"):
        (root / f"{name}.yaml").write_text(json.dumps({**CONFIG, "output": {**CONFIG["output"], "dir": name}}), encoding="utf-8")
    return root


def _run(root: Path, point: str, at: int, *flags: str) -> subprocess.CompletedProcess[str]:
    """``mediflow train sft`` on killed.yaml in its own process; with a point, SIGKILL it once frozen there."""
    marker = root / "frozen"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-c", BOOTSTRAP, point, str(at), str(marker), "train", "sft", "--config", str(root / "killed.yaml"), *flags]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if point != "none":
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run never reached the save point"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # kill -9: no handler runs, nothing is cleaned up
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def _files(checkpoint: Path) -> set[str]:
    return {p.name for p in checkpoint.iterdir()} if checkpoint.is_dir() else set()


def test_resume_after_kill_9_at_every_point_of_a_checkpoint_save_is_bit_identical(setup: Path) -> None:
    out = setup / "killed"
    # 1. Killed while checkpoint-2 is being saved: only its config is written.
    assert _run(setup, "config_only", 2).returncode == -signal.SIGKILL
    assert "config.json" in _files(out / "checkpoint-2") and "model.safetensors" not in _files(out / "checkpoint-2")
    assert "trainer_state.json" in _files(out / "checkpoint-1")
    # 2. --resume: checkpoint-2 is skipped (said why), checkpoint-1 resumed; killed while checkpoint-3 has weights only.
    second = _run(setup, "weights_only", 2, "--resume")
    assert second.returncode == -signal.SIGKILL
    assert "resume: skipping checkpoint-2: it holds only config.json" in second.stderr + second.stdout
    assert f"resume: from {out / 'checkpoint-1'} (step 1)" in second.stdout
    assert "model.safetensors" in _files(out / "checkpoint-3") and not {"optimizer.pt", "trainer_state.json"} & _files(out / "checkpoint-3")
    # 3. --resume: checkpoint-3 skipped, checkpoint-2 (complete now) resumed; killed right after checkpoint-3 is complete.
    third = _run(setup, "complete", 1, "--resume")
    assert third.returncode == -signal.SIGKILL
    assert "resume: skipping checkpoint-3: it has weights but no trainer state" in third.stderr + third.stdout
    assert f"resume: from {out / 'checkpoint-2'} (step 2)" in third.stdout
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= _files(out / "checkpoint-3")
    # 4. --resume from the complete checkpoint-3 to the end.
    last = _run(setup, "none", 0, "--resume")
    assert last.returncode == 0, last.stderr[-3000:]
    assert f"resume: from {out / 'checkpoint-3'} (step 3)" in last.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["steps"] == 4 and manifest["resumed_from"] == str(out / "checkpoint-3")
    # The same training without a kill: the same bytes.
    straight = run_sft(load_config(setup / "straight.yaml", "sft"))
    assert (out / "model" / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
