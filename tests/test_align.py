"""SFT (assistant-only loss) and DPO (three reference kinds) on MediFlow-shaped data and a tiny Phi-3."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import build_tiny_phi3
from train_stages import finite_logs, tiny_stage_config

from mediflow.records import FULL_SCHEMA, rows_to_table, to_messages
from mediflow.train.align import build_sft_trainer, run_dpo, run_sft
from mediflow.train.data import load_messages, load_preferences
from mediflow.train.models import load_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INSTRUCTION = "Extract the discharge diagnosis as JSON."


def _record(i: int, rejected: str | None = None) -> dict[str, Any]:
    document = f"Patient {i} admitted with pneumonia, treated with amoxicillin."
    output = '{"diagnosis": "pneumonia"}'
    return {
        "id": f"r{i}",
        "instruction": INSTRUCTION,
        "input": document,
        "output": output,
        "task_type": "extraction",
        "output_format": "json",
        "messages": to_messages(INSTRUCTION, document, output),
        "rejected_output": rejected,
        "error_type": "factual_error" if rejected else None,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("align")
    build_tiny_phi3(root / "base")
    # The Hub-layout export: data/<config>/<split>-*.parquet; only the asked-for split is read.
    hub = root / "export" / "data" / "default"
    hub.mkdir(parents=True)
    pq.write_table(rows_to_table([_record(i) for i in range(6)]), hub / "train-00000-of-00001.parquet")
    pq.write_table(rows_to_table([_record(100)]), hub / "test-00000-of-00001.parquet")
    pairs = [
        {
            "prompt": to_messages(INSTRUCTION, f"Patient {i} admitted with pneumonia."),
            "chosen": [{"role": "assistant", "content": '{"diagnosis": "pneumonia"}'}],
            "rejected": [{"role": "assistant", "content": '{"diagnosis": "asthma"}'}],
        }
        for i in range(4)
    ]
    pq.write_table(pa.Table.from_pylist(pairs), root / "pairs.parquet")
    return root


def test_readers_accept_exports_and_released_dpo_layout(data: Path, tmp_path: Path) -> None:
    rows = load_messages(data / "export", split="train")
    assert len(rows) == 6 and [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert len(load_messages(data / "export", split="test")) == 1
    table = rows_to_table([_record(1, rejected='{"diagnosis": "asthma"}'), _record(2)], FULL_SCHEMA)
    pq.write_table(table, tmp_path / "dpo_records.parquet")
    pairs = load_preferences(tmp_path / "dpo_records.parquet")
    assert len(pairs) == 1  # the record without a rejected output is not a pair
    assert pairs[0]["prompt"][0] == {"role": "system", "content": INSTRUCTION}
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": '{"diagnosis": "asthma"}'}]


def test_template_without_generation_markers_gets_the_marked_copy(data: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(data / "base")
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    tokenizer.save_pretrained(tmp_path)
    marked = load_tokenizer(tmp_path, need_generation_markers=True)
    assert "{% generation %}" in marked.chat_template
    messages = to_messages("S", "U", "A")
    assert marked.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_sft_trains_only_on_assistant_turns(data: Path) -> None:
    config = tiny_stage_config(data, "sft", model="base", train="export", output="sft", max_length=96)
    trainer = build_sft_trainer(config)
    example = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = example["input_ids"][0], example["labels"][0]
    trained = trainer.processing_class.decode(ids[labels != -100])
    assert trained == '{"diagnosis": "pneumonia"}<|end|>\n'
    model = run_sft(config)
    assert (model / "model.safetensors").is_file() and (model / "chat_template.jinja").is_file()
    finite_logs(data / "sft", "loss")


@pytest.mark.parametrize(
    ("reference", "method"),
    [("full", {}), ("precomputed", {}), ("adapter", {"finetuning": "lora", "lora": {"r": 4, "alpha": 8}})],
)
def test_dpo_logs_finite_losses_and_reward_margins(data: Path, reference: str, method: dict[str, Any]) -> None:
    config = tiny_stage_config(data, "dpo", model="base", train="pairs.parquet", output=f"dpo_{reference}", max_length=96, reference=reference, beta=0.1, **method)
    model = run_dpo(config)
    assert (model / "model.safetensors").is_file()
    finite_logs(data / f"dpo_{reference}", "loss")
    margins = finite_logs(data / f"dpo_{reference}", "rewards/margins")
    assert len(margins) == 2
