"""Model output folders (train sft/pit, merge) on the one folder contract, with real processes.

* a second process on a folder that a training run holds stops at once, naming the holder (the
  first process is held inside training by a callback and released through its stdin: the test
  waits on pipes, never on time);
* a process SIGKILLed while it saves (or publishes) its model leaves no folder that loads as a
  finished model, its manifest says ``running``, the next stage refuses the model, and the rerun
  completes;
* an output that overlaps an input is refused before anything is written (the bad-input table has
  a row per command and class; here the manifests and layouts are checked).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from tiny_models import build_tiny_phi3

from mediflow.cli import main
from mediflow.errors import MediflowError
from mediflow.folders import read_manifest
from mediflow.folders.model import check_model_input
from mediflow.records import rows_to_table, to_messages
from mediflow.train.align import run_sft
from mediflow.train.config import load_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

#: A training run held inside training: prints "training" when it holds the folder, waits for a line on stdin.
_HOLD = """
import sys
import threading
from transformers import TrainerCallback
from mediflow.train.align import run_sft
from mediflow.train.config import load_config

class Hold(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        print("training", flush=True)
        sys.stdin.readline()

run_sft(load_config(sys.argv[1], "sft"), callbacks=[Hold()])
print("done", flush=True)
"""

#: A command SIGKILLed at a chosen point of publishing its model: when the publish starts ("saving":
#: the staged model is complete, nothing moved yet) or after its first file moved ("publishing").
_KILL = """
import os, signal, sys
import mediflow.train.runtime as runtime
import mediflow.train.merge.output as merge_output
from mediflow.cli import main

module, point, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
target = runtime if module == "train" else merge_output
original, real_replace = target.publish_model, os.replace

def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def replace_then_die(src, dst):
    real_replace(src, dst)
    kill()

def publish(*args, **kwargs):
    if point == "saving":
        kill()
    os.replace = replace_then_die
    return original(*args, **kwargs)

target.publish_model = publish
sys.exit(main(argv))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model_folders")
    build_tiny_phi3(root / "base", seed=0)
    build_tiny_phi3(root / "expert", seed=1)
    instruction = "Extract the discharge diagnosis as JSON."
    records = [
        {
            "id": f"r{i}",
            "instruction": instruction,
            "input": f"Patient {i} has pneumonia.",
            "output": '{"diagnosis": "pneumonia"}',
            "task_type": "extraction",
            "output_format": "json",
            "messages": to_messages(instruction, f"Patient {i} has pneumonia.", '{"diagnosis": "pneumonia"}'),
        }
        for i in range(4)
    ]
    pq.write_table(rows_to_table(records), root / "records.parquet")
    return root


def _sft_config(root: Path, out: str, **train: Any) -> Path:
    path = root / f"{out}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": "base"},
                "data": {"train": "records.parquet", "max_length": 96},
                "output": {"dir": out, "logging_steps": 1, "save_steps": 1000},
                "train": {"batch_size": 2, "max_steps": 1, "learning_rate": 1e-3, **train},
            }
        )
    )
    return path


def _merge_config(root: Path) -> Path:
    path = root / "merge.yaml"
    path.write_text(yaml.safe_dump({"merge_method": "slerp", "base_model": str(root / "base"), "models": [{"model": str(root / "base")}, {"model": str(root / "expert")}], "parameters": {"t": 0.5}}))
    return path


def _line(process: subprocess.Popen[str], wanted: str) -> bool:
    """Read the child's stdout up to the line ``wanted`` (True) or its end (False)."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == wanted:
            return True
    return False


def _loads(folder: Path) -> bool:
    from transformers import AutoModelForCausalLM

    try:
        AutoModelForCausalLM.from_pretrained(folder)
    except (OSError, ValueError):
        return False
    return True


def test_a_second_process_on_a_training_folder_stops_naming_the_holder(world: Path) -> None:
    config = _sft_config(world, "held")
    script = world / "hold_sft.py"
    script.write_text(_HOLD)
    log = world / "hold_sft.log"
    with log.open("w") as stderr:  # a file, not a pipe: progress bars never fill a buffer nobody reads
        holder = subprocess.Popen([sys.executable, str(script), str(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=_env())
    guard = threading.Timer(600, holder.kill)  # a safety net against a hung child, not synchronisation
    guard.start()
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert _line(holder, "training"), log.read_text()
        before = sorted(p.name for p in (world / "held").iterdir())
        second = subprocess.run([sys.executable, "-m", "mediflow", "train", "sft", "--config", str(config)], capture_output=True, text=True, env=_env(), timeout=300)
        assert second.returncode == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in second.stderr
        assert "in use by another process" in errors[0] and f"pid {holder.pid}: hold_sft.py" in errors[0], errors[0]
        assert sorted(p.name for p in (world / "held").iterdir()) == before  # the second process wrote nothing
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert _line(holder, "done"), log.read_text()
        assert holder.wait(timeout=300) == 0
    finally:
        guard.cancel()
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    manifest = read_manifest(world / "held")
    assert manifest is not None and (manifest.kind, manifest.status) == ("sft", "finished")
    assert [ref.kind for ref in manifest.inputs] == ["model", "sft"] and all(len(ref.fingerprint) == 64 for ref in manifest.inputs)
    assert manifest.details["fingerprint"]["train.learning_rate"] == 1e-3 and _loads(world / "held" / "model")


@pytest.mark.parametrize("point", ["saving", "publishing"])
def test_a_training_run_killed_while_saving_leaves_no_finished_model_and_the_rerun_completes(world: Path, point: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = world / f"killed_{point}"
    config = _sft_config(world, out.name)
    killed = subprocess.run([sys.executable, "-c", _KILL, "train", point, "train", "sft", "--config", str(config)], capture_output=True, text=True, env=_env(), timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert not (out / "model" / "config.json").exists() and not _loads(out / "model")
    manifest = read_manifest(out)
    assert manifest is not None and manifest.status == "running"
    assert (out / ".tmp-model.partial" / "config.json").is_file()  # the staged model, complete, never published
    with pytest.raises(MediflowError, match="did not finish \\(status running\\)"):
        check_model_input(out / "model")

    model = run_sft(load_config(config, "sft"))  # the rerun completes, and cleans the killed run's staging
    assert model == out / "model" and _loads(model)
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert read_manifest(out).status == "finished"  # type: ignore[union-attr]
    check_model_input(model)
    capsys.readouterr()


def test_a_merge_killed_while_publishing_is_refused_downstream_and_the_rerun_completes(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = world / "merged"
    merge = ["merge", "--config", str(_merge_config(world)), "--output", str(out)]
    killed = subprocess.run([sys.executable, "-c", _KILL, "merge", "publishing", *merge], capture_output=True, text=True, env=_env(), timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert not (out / "config.json").exists() and not _loads(out)
    assert read_manifest(out).status == "running"  # type: ignore[union-attr]
    sft = _sft_config(world, "after_merge")
    assert main(["train", "sft", "--config", str(sft), "--model-name-or-path", str(out)]) == 2
    assert "did not finish (status running); rerun it first" in capsys.readouterr().err
    assert not (world / "after_merge").exists()

    assert main(merge) == 0  # the same merge again: it completes
    manifest = read_manifest(out)
    assert manifest is not None and (manifest.kind, manifest.status) == ("merge", "finished") and _loads(out)
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith((".json", ".safetensors", ".jinja"))) == [".lock", "merge_config.yaml"]


def test_outputs_overlapping_a_model_are_refused_before_anything_is_written(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sft = _sft_config(world, "refused")
    merge = ["merge", "--config", str(_merge_config(world))]
    before = sorted(str(p.relative_to(world)) for p in world.rglob("*"))
    assert main(["train", "sft", "--config", str(sft), "--output-dir", str(world / "base" / "sft")]) == 2
    assert "is inside the input" in capsys.readouterr().err
    assert main([*merge, "--output", str(world / "expert")]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main([*merge, "--output", str(world)]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert sorted(str(p.relative_to(world)) for p in world.rglob("*")) == before
