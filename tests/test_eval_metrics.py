"""Evaluation metrics on crafted predictions, and the eval hook end to end on a tiny model."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import build_tiny_phi3

from mediflow.errors import MediflowError
from mediflow.records import rows_to_table, to_messages
from mediflow.train.config import config_from_dict
from mediflow.train.eval import compare_reports, format_reports, make_evaluator, objective, read_eval_rows, run_eval, score_rows
from mediflow.train.metrics import (
    TaskMetric,
    aggregate,
    bootstrap,
    exact_match,
    extract_json,
    field_f1,
    flatten_json,
    icd10_codes,
    load_task_metrics,
    measure,
    parse_json,
    rouge_l,
    task_metrics,
    token_f1,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REFERENCE = '{"diagnosis": "Pneumonia", "medications": [{"name": "amoxicillin", "dose": "500 mg"}, {"name": "aspirin", "dose": "81 mg"}]}'
METRICS = load_task_metrics()


def _judgements(*labels: str) -> str:
    return json.dumps({"judgements": [{"hypothesis": "h", "label": label, "evidence": [], "rationale": "r"} for label in labels]})


def test_exact_match_compares_parsed_json_and_normalized_text() -> None:
    reordered = '{"medications": [{"dose": "500 mg", "name": "amoxicillin"}, {"name": "aspirin", "dose": "81 mg"}], "diagnosis": "Pneumonia"}'
    assert exact_match(reordered, REFERENCE)
    assert not exact_match('{"diagnosis": "Pneumonia"}', REFERENCE)
    assert exact_match("  The patient has PNEUMONIA. ", "patient has pneumonia")
    assert not exact_match("asthma", "pneumonia")


def test_strict_and_lenient_json_are_told_apart() -> None:
    chatty = 'Here is the JSON:\n{"diagnosis": "x"}\nHope this helps.'
    assert parse_json(chatty) == (False, None)
    assert extract_json(chatty) == (True, {"diagnosis": "x"})
    assert parse_json('```json\n{"diagnosis": "x"}\n```') == (True, {"diagnosis": "x"})  # one fence is still strict JSON
    assert parse_json("[1, 2]") == (True, [1, 2]) and extract_json("{") == (False, None)
    rows = [{"task": "t", "metric": None, "json": True, "reference": '{"diagnosis": "x"}', "prediction": p} for p in (chatty, '{"diagnosis": "x"}', "no")]
    scores = score_rows(rows, {"t": {"type": "object", "required": ["diagnosis"]}}, {}, resamples=50)["t"]
    assert scores["json_strict"] == pytest.approx(1 / 3) and scores["json_lenient"] == pytest.approx(2 / 3)
    assert scores["exact_match"] == pytest.approx(2 / 3)  # the chatty answer scores on its content
    assert [r["scores"]["json_lenient"] for r in rows] == [True, True, False]


def test_classification_exact_match_and_macro_f1_by_hand() -> None:
    # gold a b a c / predicted a a a c: F1(a) = 2*2/(2*2+1+0) = 0.8, F1(b) = 0, F1(c) = 1 -> macro 0.6.
    pairs = [
        (_judgements("entailment"), _judgements("entailment")),
        ("Answer: " + _judgements("entailment"), _judgements("contradiction")),
        (_judgements("entailment"), _judgements("entailment")),
        (_judgements("neutral"), _judgements("neutral")),
    ]
    scores = task_metrics(METRICS["clinical_inference"], pairs)
    assert scores["macro_f1"] == pytest.approx(0.6) and scores["exact_match"] == pytest.approx(0.75) and scores["score"] == scores["macro_f1"]


def test_rouge_l_is_google_rouge_score_and_ours_is_a_named_variant() -> None:
    """ROUGE-L as published numbers compute it (rouge-score), not after SQuAD normalisation (issue 22, item 6)."""
    from rouge_score import rouge_scorer

    # "patient has pneumonia" vs "patient has severe pneumonia": LCS 3, P = 1, R = 3/4.
    assert rouge_l("patient has pneumonia", "patient has severe pneumonia") == pytest.approx(2 * 0.75 / 1.75)
    pair = ('{"summary_question": "The patient has pneumonia?"}', '{"summary_question": "Patient has severe pneumonia?"}')
    standard = rouge_scorer.RougeScorer(["rougeL"]).score("Patient has severe pneumonia?", "The patient has pneumonia?")["rougeL"].fmeasure
    scores = task_metrics(METRICS["question_summarization"], [pair])
    assert scores["rouge_l"] == pytest.approx(standard) == pytest.approx(0.75)  # "the" counts: LCS 3 of 4 and 4
    squad = task_metrics(TaskMetric("rouge_l_squad", "summary_question"), [pair])
    assert squad["rouge_l_squad"] == pytest.approx(2 * 0.75 / 1.75)  # 0.857: the article dropped, not comparable


def test_icd10_code_precision_recall_f1_by_hand() -> None:
    assert icd10_codes("E119 and I10; s72.001a") == {"E11.9", "I10", "S72.001A"}
    pairs = [
        ('{"codes": [{"code": "E11.9"}, {"code": "I10"}]}', '{"codes": [{"code": "E11.9"}, {"code": "N18.31"}]}'),
        ("Codes: E119, I10", '{"codes": [{"code": "E11.9"}]}'),
    ]
    # tp = 1 + 1, predicted 2 + 2, reference 2 + 1: P = 1/2, R = 2/3.
    scores = task_metrics(METRICS["icd10cm_coding"], pairs)
    assert (scores["precision"], scores["recall"]) == (pytest.approx(0.5), pytest.approx(2 / 3))
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_span_f1_for_deidentification_and_relations_by_hand() -> None:
    def phi(*texts: str) -> str:
        return json.dumps({"phi": [{"text": t, "category": "name", "start": 0, "end": 1} for t in texts], "deidentified_text": ""})

    scores = task_metrics(METRICS["deidentification"], [(phi("Harlan Voss", "555-0142"), phi("Harlan Voss", "00483921", "555-0142"))])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (1.0, pytest.approx(2 / 3), pytest.approx(0.8))
    relation = TaskMetric("spans", "relations[]", ("head", "relation", "tail"))
    gold = json.dumps({"relations": [{"head": "amoxicillin", "relation": "treats", "tail": "pneumonia", "evidence": "e"}]})
    wrong = json.dumps({"relations": [{"head": "amoxicillin", "relation": "causes", "tail": "pneumonia", "evidence": "e"}]})
    assert task_metrics(relation, [(gold, gold)])["f1"] == 1.0 and task_metrics(relation, [(wrong, gold)])["f1"] == 0.0


def test_bootstrap_intervals_bracket_the_estimate_and_are_seeded() -> None:
    metric = TaskMetric("rouge_l")
    examples = [measure(metric, p, r) for p, r in [("a b c", "a b c"), ("a", "a b c d"), ("x", "y"), ("a b", "a b")] * 5]
    point = aggregate("rouge_l", examples)["rouge_l"]
    low, high = bootstrap("rouge_l", examples, resamples=300)["rouge_l"]
    assert 0 <= low < point < high <= 1
    assert bootstrap("rouge_l", examples, resamples=300) == bootstrap("rouge_l", examples, resamples=300)


def test_field_f1_counts_matching_leaves() -> None:
    assert flatten_json({"a": {"b": [1, "X"]}}) == ["a.b[]=1", "a.b[]=x"]
    assert field_f1(REFERENCE, REFERENCE) == 1.0
    # 2 of the 5 reference leaves, and 2 of 3 predicted leaves: P = 2/3, R = 2/5.
    partial = '{"diagnosis": "pneumonia", "medications": [{"name": "amoxicillin", "dose": "1 g"}]}'
    assert field_f1(partial, REFERENCE) == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert field_f1("not json", REFERENCE) == 0.0
    assert token_f1("amoxicillin 500 mg", "amoxicillin 250 mg") == pytest.approx(2 / 3)
    assert objective({"tasks": {"a": {"score": 0.5}, "b": {"score": 0.8}}, "perplexity": {}}) == pytest.approx(0.65)
    assert objective({"tasks": {}, "perplexity": {"a": {"perplexity": math.e}}}) == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    build_tiny_phi3(root / "model")
    (root / "notes.jsonl").write_text("".join(json.dumps({"text": f"Patient {i} admitted with pneumonia, treated with amoxicillin."}) + "\n" for i in range(3)))
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


def test_eval_hook_writes_a_report_with_finite_perplexity(eval_setup: Path) -> None:
    config = config_from_dict(
        {
            "model": {"name_or_path": "model"},
            "data": {"documents": {"notes": "notes.jsonl"}, "records": "heldout.parquet", "max_length": 64},
            "eval": {"max_new_tokens": 6, "eval_batch_size": 2},
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
    assert extraction["n"] == 3 and extraction["metric"] == "fields" and 0.0 <= extraction["f1"] <= 1.0
    lines = (eval_setup / "eval_base" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3 and set(json.loads(lines[0])) == {"id", "task", "prompt", "reference", "prediction", "scores"}
    assert report["path"] == str(eval_setup / "eval_base" / "eval_report.json")
    assert "ppl notes" in format_reports([report])  # the library returns the report; the CLI prints the table
    assert extraction["ci95_warning"].startswith("n=3 < 30") and "interval over fewer than 30 examples" in format_reports([report])
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


def test_a_plain_prompt_reference_file_is_scored_with_its_metric(eval_setup: Path) -> None:
    rows = [
        {"id": "q1", "prompt": "Code: type 2 diabetes", "reference": "E11.9", "task": "coding", "metric": "icd10_codes"},
        {"id": "q2", "prompt": [{"role": "user", "content": "Summarize: stable."}], "reference": "stable", "task": "summary", "metric": "rouge_l"},
    ]
    (eval_setup / "plain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    pq.write_table(pa.Table.from_pylist(rows[1:]), eval_setup / "plain.parquet")
    for name in ("plain.jsonl", "plain.parquet"):
        config = config_from_dict(
            {"model": {"name_or_path": "model"}, "data": {"records": name}, "eval": {"max_new_tokens": 4, "eval_batch_size": 2}, "output": {"dir": f"eval_{name}"}},
            "eval",
            root=eval_setup,
        )
        report = run_eval(config)
        (task,) = report["tasks"].values()
        assert task["metric"] in ("icd10_codes", "rouge_l") and task["n"] == 1
        assert len((eval_setup / f"eval_{name}" / "predictions.jsonl").read_text().splitlines()) == 1


def test_an_export_root_is_read_from_test_once_per_record(tmp_path: Path) -> None:
    def record(i: int) -> dict[str, str]:
        return {"id": f"r{i}", "instruction": "Summarize.", "input": f"Note {i}.", "output": f"Summary {i}.", "task_type": "question_summarization", "output_format": "plain_text"}

    # The export's configs (sft, dpo, one per task) share split names: only sft's test split is read.
    for config, split, ids in [("sft", "train", range(5)), ("sft", "validation", [5]), ("sft", "test", [6, 7]), ("dpo", "test", [6, 7]), ("question_summarization", "test", [6, 7])]:
        folder = tmp_path / "export" / "data" / config
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows_to_table([record(i) for i in ids]), folder / f"{split}-00000-of-00001.parquet")
    config = config_from_dict({"model": {"name_or_path": "m"}, "data": {"records": "export"}, "output": {"dir": "e"}}, "eval", root=tmp_path)
    assert [row["id"] for row in read_eval_rows(config)] == ["r6", "r7"]
    assert [row["id"] for row in read_eval_rows(config, "validation")] == ["r5"]
    with pytest.raises(MediflowError, match="no 'dev' split here"):
        read_eval_rows(config, "dev")


def test_the_evaluators_fingerprint_follows_the_eval_data(eval_setup: Path, tmp_path: Path) -> None:
    def hook(records: Path, split: str | None = None) -> Any:
        config = config_from_dict({"model": {"name_or_path": "m"}, "data": {"records": str(records)}, "output": {"dir": "e"}}, "eval", root=tmp_path)
        return make_evaluator(config, split)

    copy = tmp_path / "heldout.parquet"
    copy.write_bytes((eval_setup / "heldout.parquet").read_bytes())
    first = hook(copy).fingerprint
    assert hook(copy).fingerprint == first and hook(copy, "validation").fingerprint != first
    pq.write_table(pq.read_table(copy).slice(0, 1), copy)  # the same path, another eval set
    assert hook(copy).fingerprint != first
