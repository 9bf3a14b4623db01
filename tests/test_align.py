"""SFT (assistant-only loss) and DPO (three reference kinds) on MediFlow-shaped data and a tiny Phi-3."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import PHI4_STYLE, TINY_CHAT_TEMPLATE, build_tiny_phi3, with_template
from train_stages import finite_logs, tiny_stage_config

from mediflow.cli import main
from mediflow.errors import MediflowError
from mediflow.records import FULL_SCHEMA, rows_to_table, to_messages
from mediflow.train.align import build_sft_trainer, prepare_inputs, run_dpo, run_sft
from mediflow.train.data import load_messages, load_preferences
from mediflow.train.models import load_tokenizer
from mediflow.train.templates import ASSISTANT_ONLY, COMPLETION_ONLY, plan_chat_template, strip_generation_markers

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
    pq.write_table(rows_to_table([_record(200), _record(201)]), hub / "validation-00000-of-00001.parquet")
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


def _with_template(data: Path, folder: Path, template: str | None) -> Path:
    return with_template(data / "base", folder, template)


def test_template_plan_uses_a_marked_copy_only_when_it_renders_the_same(data: Path, tmp_path: Path) -> None:
    unmarked = strip_generation_markers(TINY_CHAT_TEMPLATE)
    same = plan_chat_template(load_tokenizer(_with_template(data, tmp_path / "same", unmarked)), None)
    assert (same.masking, same.saved_template) == (ASSISTANT_ONLY, unmarked)
    assert "{% generation %}" in same.training_template
    other = plan_chat_template(load_tokenizer(_with_template(data, tmp_path / "other", PHI4_STYLE)), None)
    assert (other.masking, other.training_template, other.saved_template) == (COMPLETION_ONLY, PHI4_STYLE, PHI4_STYLE)
    none = plan_chat_template(load_tokenizer(_with_template(data, tmp_path / "none", None)), None)
    assert none.masking == ASSISTANT_ONLY and "{% generation %}" not in none.saved_template  # phi3 layout from the vocabulary


def test_native_template_is_kept_byte_for_byte_and_only_the_answer_is_trained(data: Path, tmp_path: Path) -> None:
    _with_template(data, tmp_path / "phi4", PHI4_STYLE)
    native = (tmp_path / "phi4" / "chat_template.jinja").read_bytes()
    config = tiny_stage_config(tmp_path, "sft", model="phi4", train=str(data / "export"), output="sft", max_length=96)
    trainer = build_sft_trainer(config)
    example = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = example["input_ids"][0], example["labels"][0]
    assert trainer.processing_class.decode(ids[labels != -100]) == '{"diagnosis": "pneumonia"}<|end|>'
    model = run_sft(config)
    assert (model / "chat_template.jinja").read_bytes() == native
    assert json.loads((tmp_path / "sft" / "manifest.json").read_text())["chat_template"]["masking"] == COMPLETION_ONLY


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
    config = tiny_stage_config(data, "dpo", model="base", train="pairs.parquet", output=f"dpo_{reference}", max_length=96, dpo={"reference": reference, "beta": 0.1}, **method)
    model = run_dpo(config)
    assert (model / "model.safetensors").is_file()
    finite_logs(data / f"dpo_{reference}", "loss")
    margins = finite_logs(data / f"dpo_{reference}", "rewards/margins")
    assert len(margins) == 2


def test_sft_evaluates_on_the_validation_split_and_counts_lengths(data: Path) -> None:
    config = tiny_stage_config(data, "sft", model="base", train="export", output="sft_val", max_length=96)
    model = run_sft(config)
    manifest = json.loads((data / "sft_val" / "manifest.json").read_text())
    assert manifest["eval_rows"] == 2 and manifest["eval_losses"]  # eval_strategy is wired: it was evaluated
    assert manifest["lengths"] == {**manifest["lengths"], "rows": 6, "kept": 6, "dropped": 0, "cut": 0, "tokens_lost": 0}
    assert manifest["overlap"]["contaminated"] == 0
    generation = json.loads((model / "generation_config.json").read_text())
    tokenizer = load_tokenizer(model)
    assert tokenizer.convert_tokens_to_ids("<|end|>") in (generation["eos_token_id"] if isinstance(generation["eos_token_id"], list) else [generation["eos_token_id"]])


def test_sft_rerun_reuses_refuses_or_retrains(data: Path) -> None:
    config = tiny_stage_config(data, "sft", model="base", train="export", output="sft_rerun", max_length=96)
    model = run_sft(config)
    weights = (model / "model.safetensors").read_bytes()
    assert run_sft(config) == model and (model / "model.safetensors").read_bytes() == weights  # same inputs: reused
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, learning_rate=5e-3))  # configs are frozen: a new one
    with pytest.raises(MediflowError, match=r"another config \(changed: train.learning_rate 0.001 -> 0.005\).*--overwrite"):
        run_sft(config)
    assert (model / "model.safetensors").read_bytes() == weights  # nothing touched
    run_sft(config, overwrite=True)
    assert (model / "model.safetensors").read_bytes() != weights
    manifest = json.loads((data / "sft_rerun" / "manifest.json").read_text())
    assert manifest["fingerprint"]["train.learning_rate"] == 5e-3 and manifest["status"] == "finished"  # the manifest describes the model on disk


def test_sft_truncation_is_counted_and_an_emptied_set_is_an_error(data: Path) -> None:
    config = tiny_stage_config(data, "sft", model="base", train="export", output="sft_short", max_length=24)
    with pytest.raises(MediflowError, match=r"^sft: none of the 6 rows fits data.max_length=24"):
        prepare_inputs(config, "sft")  # nothing left to train on: one line before any model loads
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, overlong="cut", max_length=56))  # prompts ~52 tokens, records ~61
    inputs = prepare_inputs(config, "sft")
    cut = inputs.lengths
    assert (cut.cut, cut.kept, cut.dropped) == (6, 6, 0) and 0 < cut.tokens_lost < cut.tokens
    with pytest.warns(UserWarning, match="6 of 6 rows do not fit"):
        cut.announce(config.data.warn_fraction)


def test_all_dropped_dpo_set_is_one_error_line(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = data / "dpo_short.yaml"
    config.write_text(
        "model: {name_or_path: base}\ndata: {train: pairs.parquet, max_length: 8}\noutput: {dir: dpo_short}\ntrain: {max_steps: 1}\n",
        encoding="utf-8",
    )
    assert main(["train", "dpo", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dpo: none of the 4 preference pairs fits data.max_length=8") and len(err.splitlines()) == 1
    assert not (data / "dpo_short").exists()  # refused before anything was written
