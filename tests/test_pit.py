"""Pre-instruction tuning on a tiny local Phi-3: stage order, label masking, chaining, every weight moves."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny_phi3
from transformers import TrainerCallback

from mediflow.cli import main
from mediflow.errors import MediflowError
from mediflow.train.config import PitStageSection, StageConfig, config_from_dict
from mediflow.train.data import load_documents, load_task_rows
from mediflow.train.lengths import LengthReport, chunk_documents
from mediflow.train.models import load_tokenizer
from mediflow.train.pit import build_stage_trainer, run_pit, stage_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOCUMENTS = [
    {"id": "d1", "text": "Patient admitted with community-acquired pneumonia. Treated with amoxicillin 500 mg three times daily."},
    {"id": "d2", "text": "CT chest without contrast shows a 4 mm nodule in the right upper lobe. Follow-up imaging in 12 months."},
]
TASKS = [
    {"prompt": "Question: What was the pneumonia treated with?\nAnswer:", "completion": " amoxicillin 500 mg"},
    {"prompt": "Question: Where is the lung nodule?\nAnswer:", "completion": " the right upper lobe"},
    {"question": "How big is the nodule?", "answer": "4 mm"},
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pit")
    build_tiny_phi3(root / "base")
    (root / "docs").mkdir()
    for doc in DOCUMENTS:
        (root / "docs" / f"{doc['id']}.txt").write_text(doc["text"], encoding="utf-8")
    (root / "tasks.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TASKS), encoding="utf-8")
    return root


def _config(root: Path, output: str, **method: Any) -> StageConfig:
    return config_from_dict(
        {
            "model": {"name_or_path": "base"},
            "method": method,
            "data": {"documents": "docs", "task_data": "tasks.jsonl", "max_length": 64},
            "output": {"dir": output, "logging_steps": 1, "save_steps": 1000},
            "train": {"batch_size": 2, "max_steps": 2},
        },
        "pit",
        root=root,
    )


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


class _SnapshotAtStart(TrainerCallback):
    """Copies the weights each stage's trainer starts from."""

    def __init__(self) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.starts.append({name: p.detach().clone() for name, p in model.state_dict().items()})


def test_task_data_loads_both_layouts_and_documents_get_an_empty_prompt(corpus: Path) -> None:
    tasks = load_task_rows(corpus / "tasks.jsonl")
    assert tasks[2] == {"prompt": "Question: How big is the nodule?\nAnswer:", "completion": " 4 mm"}
    docs = load_documents(corpus / "docs")
    assert [d["id"] for d in docs] == ["d1", "d2"]
    stage = PitStageSection(name="s", data=["documents", "task"])
    rows = stage_rows(stage, tasks, [d["text"] for d in docs])
    assert rows[0] == {"prompt": "", "completion": DOCUMENTS[0]["text"]}
    assert rows[2:] == tasks  # the stage's data order is kept


def test_labels_mask_prompts_and_keep_documents(corpus: Path) -> None:
    config = _config(corpus, "mask")
    stage = PitStageSection(name="mixed", data=["task", "documents"], order="as_listed")
    rows = stage_rows(stage, load_task_rows(corpus / "tasks.jsonl"), [d["text"] for d in load_documents(corpus / "docs")])
    trainer = build_stage_trainer(config, stage, corpus / "base", rows, corpus / "mask")
    tokenizer = trainer.processing_class
    dataset = trainer.train_dataset
    for index, row in enumerate(rows):
        batch = trainer.data_collator([dataset[index]])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        trained = labels != -100
        prompt_length = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
        assert not trained[:prompt_length].any(), "prompt tokens must be labelled -100"
        assert trained[prompt_length:].all(), "every completion / document token carries loss"
        assert torch.equal(labels[trained], ids[trained])
        assert tokenizer.decode(ids[trained]).startswith(row["completion"][:20])
    assert trainer.args.train_sampling_strategy == "sequential"


def test_schedule_chains_stages_and_moves_every_weight(corpus: Path) -> None:
    snapshots = _SnapshotAtStart()
    final = run_pit(_config(corpus, "expert"), callbacks=[snapshots])
    manifest = json.loads((corpus / "expert" / "manifest.json").read_text())
    stage1, stage2 = manifest["stages"]
    assert [stage1["name"], stage2["name"]] == ["task", "task_and_documents"]
    assert (stage1["data"], stage2["data"]) == (["task"], ["task", "documents"])
    assert (stage1["rows"], stage2["rows"]) == (3, 5)
    assert stage1["init_from"] == str(corpus / "base")
    assert stage2["init_from"] == stage1["model"] and manifest["final"] == str(final) == stage2["model"]
    assert all(torch.isfinite(torch.tensor(s["losses"])).all() for s in (stage1, stage2))

    base, after1, after2 = _weights(corpus / "base"), _weights(Path(stage1["model"])), _weights(final)
    # Stage 2 started from exactly what stage 1 saved, not from the base.
    assert len(snapshots.starts) == 2
    for name, tensor in after1.items():
        assert torch.equal(snapshots.starts[1][name], tensor), name
    # Full fine-tuning: every trainable tensor moved in each stage.
    for name in base:
        assert not torch.equal(base[name], after1[name]), f"{name} did not move in stage 1"
        assert not torch.equal(after1[name], after2[name]), f"{name} did not move in stage 2"

    # A stage finished from the same inputs is not re-run, and the manifest still describes it.
    again = _SnapshotAtStart()
    run_pit(_config(corpus, "expert"), callbacks=[again])
    assert again.starts == []
    assert json.loads((corpus / "expert" / "manifest.json").read_text())["stages"] == manifest["stages"]

    # Another stage-2 learning rate: one line naming the change, nothing retrained; --overwrite retrains
    # only stage 2 (stage 1's weights, rows and settings are unchanged: it is reused, byte for byte).
    changed = _config(corpus, "expert")
    schedule = [*changed.pit.schedule[:1], dataclasses.replace(changed.pit.schedule[1], learning_rate=5e-3), *changed.pit.schedule[2:]]
    changed = dataclasses.replace(changed, pit=dataclasses.replace(changed.pit, schedule=schedule))  # configs are frozen: a new one
    with pytest.raises(MediflowError, match=r"another config \(changed: schedule.2.learning_rate 0.0003 -> 0.005\).*--overwrite"):
        run_pit(changed, callbacks=[again])
    assert again.starts == []
    stage1_bytes = (Path(stage1["model"]) / "model.safetensors").read_bytes()
    run_pit(changed, callbacks=[again], overwrite=True)
    assert len(again.starts) == 1  # stage 2 only
    for name, tensor in after1.items():
        assert torch.equal(again.starts[0][name], tensor), name  # it started from the reused stage 1
    assert (Path(stage1["model"]) / "model.safetensors").read_bytes() == stage1_bytes
    redone = json.loads((corpus / "expert" / "manifest.json").read_text())
    assert redone["stages"][0] == stage1 and redone["stages"][1]["learning_rate"] == 5e-3


def test_lora_stages_end_in_full_model_folders(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = corpus / "lora.yaml"
    config.write_text(
        "model: {name_or_path: base}\nmethod: {finetuning: lora, lora: {r: 4, alpha: 8}}\ndata: {documents: docs, task_data: tasks.jsonl, max_length: 64}\noutput: {dir: lora_expert}\ntrain: {batch_size: 2}\n",
        encoding="utf-8",
    )
    assert main(["train", "pit", "--config", str(config), "--train-max-steps", "1", "--train-learning-rate", "1e-2"]) == 0
    final = corpus / "lora_expert" / "stage2-task_and_documents" / "model"
    assert capsys.readouterr().out.strip().endswith(f"expert: {final}")
    assert not (final / "adapter_config.json").exists()
    base, merged = _weights(corpus / "base"), _weights(final)
    assert set(merged) == set(base)  # a plain model: the adapter is merged into the weights
    moved = [name for name in base if not torch.equal(base[name], merged[name])]
    assert moved and all("proj" in name for name in moved)  # only the LoRA-targeted linear layers changed


def test_long_documents_are_chunked_with_overlap_and_counted(corpus: Path) -> None:
    tokenizer = load_tokenizer(corpus / "base")
    long_text = " ".join(doc["text"] for doc in DOCUMENTS * 6)
    tokens = len(tokenizer(long_text, add_special_tokens=False)["input_ids"])
    report = LengthReport("pit", 64)
    chunks = chunk_documents([long_text, DOCUMENTS[0]["text"]], tokenizer, 64, 16, report)
    assert report.documents_chunked == 1 and report.rows == 2 and report.tokens_lost == 0
    assert chunks[-1] == DOCUMENTS[0]["text"]  # a short document stays whole
    pieces = chunks[:-1]
    assert len(pieces) == report.chunks > 1
    assert all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= 64 for p in pieces)
    assert pieces[0] == long_text[: len(pieces[0])] and long_text.endswith(pieces[-1])  # exact text, nothing re-spelled
    assert sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in pieces) >= tokens  # overlap, no loss
    assert pieces[0][-20:] in pieces[1]  # consecutive chunks overlap


def test_truncation_counts_reach_the_manifest(corpus: Path) -> None:
    config = _config(corpus, "counted")
    # the task rows' prompts alone are longer than 16 tokens
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, max_length=16), pit=dataclasses.replace(config.pit, schedule=config.pit.schedule[1:]))
    with pytest.warns(UserWarning, match="rows do not fit data.max_length=16"):
        run_pit(config)
    lengths = json.loads((corpus / "counted" / "manifest.json").read_text())["lengths"]
    assert lengths["max_length"] == 16 and lengths["dropped"] == 3 and lengths["tokens_lost"] > 0
    assert lengths["documents_chunked"] == 2 and lengths["chunks"] >= 4
