"""Evaluation metrics on crafted predictions, and the eval hook end to end on a tiny model."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mediflow.records import rows_to_table, to_messages
from mediflow.train.config import config_from_dict
from mediflow.train.eval import (
    compare_reports,
    exact_match,
    field_f1,
    flatten_json,
    json_valid,
    make_evaluator,
    objective,
    parse_json,
    run_eval,
    score_records,
    token_f1,
)
from tiny_models import build_tiny_phi3

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REFERENCE = '{"diagnosis": "Pneumonia", "medications": [{"name": "amoxicillin", "dose": "500 mg"}, {"name": "aspirin", "dose": "81 mg"}]}'


def test_exact_match_compares_parsed_json_and_normalized_text() -> None:
    reordered = '{"medications": [{"dose": "500 mg", "name": "amoxicillin"}, {"name": "aspirin", "dose": "81 mg"}], "diagnosis": "Pneumonia"}'
    assert exact_match(reordered, REFERENCE, "json")
    assert not exact_match('{"diagnosis": "Pneumonia"}', REFERENCE, "json")
    assert exact_match("  The patient has PNEUMONIA. ", "patient has pneumonia", "plain_text")
    assert not exact_match("asthma", "pneumonia", "plain_text")


def test_json_validity_checks_the_schema() -> None:
    schema = {"type": "object", "properties": {"diagnosis": {"type": "string"}}, "required": ["diagnosis"]}
    assert json_valid('{"diagnosis": "x"}', schema)
    assert json_valid('```json\n{"diagnosis": "x"}\n```', schema)  # one surrounding fence is tolerated
    assert not json_valid('{"diagnosis": 3}', schema)
    assert not json_valid('{"diagnosis": "x"', schema)
    assert json_valid('{"anything": 1}', None)


def test_field_f1_counts_matching_leaves() -> None:
    assert flatten_json({"a": {"b": [1, "X"]}}) == ["a.b[]=1", "a.b[]=x"]
    assert field_f1(REFERENCE, REFERENCE) == 1.0
    # 2 of the 5 reference leaves, and 2 of 3 predicted leaves: P = 2/3, R = 2/5.
    partial = '{"diagnosis": "pneumonia", "medications": [{"name": "amoxicillin", "dose": "1 g"}]}'
    assert field_f1(partial, REFERENCE) == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert field_f1("not json", REFERENCE) == 0.0
    assert token_f1("amoxicillin 500 mg", "amoxicillin 250 mg") == pytest.approx(2 / 3)


def test_score_records_groups_by_task() -> None:
    rows = [
        {"task_type": "extraction", "output_format": "json", "output": REFERENCE, "prediction": REFERENCE},
        {"task_type": "extraction", "output_format": "json", "output": REFERENCE, "prediction": "oops"},
        {"task_type": "summary", "output_format": "plain_text", "output": "stable, discharged home", "prediction": "discharged home"},
    ]
    scores = score_records(rows, {"extraction": {"type": "object"}, "summary": None})
    assert scores["extraction"]["exact_match"] == 0.5
    assert scores["extraction"]["json_valid"] == 0.5
    assert scores["extraction"]["field_f1"] == 0.5
    assert scores["extraction"]["token_f1"] is None
    assert scores["summary"]["token_f1"] == pytest.approx(0.8)
    assert objective({"tasks": scores, "perplexity": {}}) == pytest.approx((0.5 + 0.8) / 2)
    assert objective({"tasks": {}, "perplexity": {"a": {"perplexity": math.e}}}) == pytest.approx(-1.0)


def test_parse_json_rejects_garbage() -> None:
    assert parse_json("[1, 2]") == (True, [1, 2])
    assert parse_json("{") == (False, None)


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    build_tiny_phi3(root / "model")
    (root / "notes.jsonl").write_text(
        "".join(json.dumps({"text": f"Patient {i} admitted with pneumonia, treated with amoxicillin."}) + "\n" for i in range(3))
    )
    records = [
        {
            "id": str(i),
            "instruction": "Extract the diagnosis as JSON.",
            "input": f"Patient {i} has pneumonia.",
            "output": '{"diagnosis": "pneumonia"}',
            "task_type": "extraction",
            "output_format": "json",
            "messages": to_messages("Extract the diagnosis as JSON.", f"Patient {i} has pneumonia.", '{"diagnosis": "pneumonia"}'),
        }
        for i in range(3)
    ]
    pq.write_table(rows_to_table(records), root / "heldout.parquet")
    return root


def test_eval_hook_writes_a_report_with_finite_perplexity(eval_setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_from_dict(
        {
            "model": {"name_or_path": "model"},
            "data": {"documents": {"notes": "notes.jsonl"}, "records": "heldout.parquet", "max_length": 64},
            "method": {"max_new_tokens": 6, "eval_batch_size": 2},
            "output": {"dir": "eval_base"},
        },
        "eval",
        root=eval_setup,
    )
    report = run_eval(config)
    saved = json.loads((eval_setup / "eval_base" / "eval_report.json").read_text())
    assert saved["perplexity"] == report["perplexity"]
    notes = report["perplexity"]["notes"]
    assert math.isfinite(notes["perplexity"]) and notes["perplexity"] > 1 and notes["documents"] == 3
    extraction = report["tasks"]["extraction"]
    assert extraction["n"] == 3 and 0.0 <= extraction["field_f1"] <= 1.0
    assert "ppl notes" in capsys.readouterr().out
    table = compare_reports([eval_setup / "eval_base" / "eval_report.json"] * 2)
    assert table.splitlines()[0].split() == ["eval_base", "eval_base"]
    # The merge search's hook: the same measurement as one number (perplexity only here).
    ppl_only = config_from_dict(
        {"model": {"name_or_path": "model"}, "data": {"documents": "notes.jsonl", "max_length": 64}, "output": {"dir": "e"}},
        "eval",
        root=eval_setup,
    )
    score = make_evaluator(ppl_only)(eval_setup / "model")
    assert score == pytest.approx(-math.log(notes["perplexity"]), rel=1e-4)
