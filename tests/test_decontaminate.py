"""Decontamination: a planted eval item is removed and nothing else; the report names it; loaders and errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mediflow.errors import MediflowError
from mediflow.quality.config import DecontamConfig
from mediflow.quality.decontaminate import run_decontaminate

EVAL_ITEMS = [
    {
        "qid": "medqa-17",
        "question": "A 54-year-old man presents with crushing substernal chest pain radiating to the left arm for forty minutes. Which of the following is the most appropriate next step in management?",
        "answer": "Obtain a 12-lead electrocardiogram",
    },
    {"qid": "medqa-18", "question": "A 23-year-old woman has had polyuria, polydipsia and a ten pound weight loss over three weeks. Her fingerstick glucose is 412. What is the most likely diagnosis?", "answer": "Type 1 diabetes mellitus"},
    {"qid": "short-1", "question": "Which antibiotic treats syphilis in a patient allergic to penicillin?", "answer": "Doxycycline"},
]

PLANTED = ("Answer the question.", "Case: a 54-year-old man presents with crushing substernal chest pain radiating to the LEFT ARM for forty minutes; which of the following is the most appropriate next step in management?")
RECORDS = [
    ("clean-1", "Summarize this note.", "A 54-year-old man presents with chest pain. ECG shows ST elevation in the inferior leads."),
    ("clean-2", "What is the most likely diagnosis?", "A 23-year-old woman has polyuria and polydipsia; glucose is 412 mg/dL."),
    ("clean-3", "List the medications.", "Home medications include doxycycline 100 mg twice daily and metformin."),
    ("planted", *PLANTED),
    ("clean-4", "Which antibiotic?", "The patient is allergic to penicillin; which antibiotic should be used for cellulitis?"),
    ("short-planted", "Which antibiotic treats syphilis in a patient allergic to penicillin?", "No document."),
    ("clean-5", "Is doxycycline safe in pregnancy?", "Doxycycline is avoided in pregnancy."),
]


def records(tmp_path: Path, extra: tuple[tuple[str, str, str], ...] = ()) -> Path:
    rows = [{"id": i, "instruction": inst, "input": doc, "output": "An answer.", "task_type": "clinical_qa"} for i, inst, doc in (*RECORDS, *extra)]
    path = tmp_path / "records.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def eval_file(tmp_path: Path, kind: str) -> Path:
    if kind == "jsonl":
        path = tmp_path / "eval.jsonl"
        path.write_text("".join(json.dumps(item) + "\n" for item in EVAL_ITEMS))
    elif kind == "parquet":
        path = tmp_path / "eval.parquet"
        pq.write_table(pa.Table.from_pylist(EVAL_ITEMS), path)
    elif kind == "datasets":
        path = tmp_path / "eval-dataset"
        datasets.Dataset.from_list(EVAL_ITEMS).save_to_disk(str(path))
    else:
        path = tmp_path / "eval-dict"
        datasets.DatasetDict({"test": datasets.Dataset.from_list(EVAL_ITEMS)}).save_to_disk(str(path))
    return path


def config(path: Path, **eval_options) -> DecontamConfig:
    return DecontamConfig.load({"eval": [{"path": str(path), "fields": ["question", "answer"], **eval_options}]})


def rejects(out: Path) -> dict[str, dict]:
    return {row["id"]: row for row in pq.read_table(out / "rejects.parquet").to_pylist()}


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "datasets", "datasets-dict"])
def test_planted_items_removed_and_nothing_else(tmp_path: Path, kind: str) -> None:
    path = eval_file(tmp_path, kind)
    report = run_decontaminate(records(tmp_path), tmp_path / "out", config(path, id_field="qid"))
    removed = rejects(tmp_path / "out")
    assert set(removed) == {"planted", "short-planted"}
    assert removed["planted"]["match"] == f"{path}#medqa-17"
    assert removed["short-planted"]["match"] == f"{path}#short-1"
    assert removed["planted"]["rule"] == "ngram_overlap:13" and removed["planted"]["stage"] == "decontaminate"
    assert f"{path}#medqa-17" in removed["planted"]["reason"] and "input" in removed["planted"]["reason"]
    assert report.details["removed_per_eval_item"] == {f"{path}#medqa-17": 1, f"{path}#short-1": 1}
    kept = pq.read_table(tmp_path / "out" / "data").column("id").to_pylist()
    assert sorted(kept) == sorted(i for i, *_ in RECORDS if i not in removed)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["report"]["dropped"] == 2 and manifest["report"]["details"]["eval_sets"][str(path)]["items"] == 3


def test_default_item_ids_are_row_numbers_and_splits(tmp_path: Path) -> None:
    path = eval_file(tmp_path, "datasets-dict")
    run_decontaminate(records(tmp_path), tmp_path / "out", config(path))
    assert rejects(tmp_path / "out")["planted"]["match"] == f"{path}#test/0"
    jsonl = eval_file(tmp_path, "jsonl")
    run_decontaminate(records(tmp_path), tmp_path / "out2", config(jsonl))
    assert rejects(tmp_path / "out2")["short-planted"]["match"] == f"{jsonl}#2"


def test_short_eval_texts_match_only_whole(tmp_path: Path) -> None:
    """ "Doxycycline" (one word) matches a column that is exactly it, not every record that mentions it."""
    path = eval_file(tmp_path, "jsonl")
    source = records(tmp_path, extra=(("answer-as-instruction", "Doxycycline.", "Which drug?"),))
    run_decontaminate(source, tmp_path / "out", config(path, id_field="qid"))
    removed = rejects(tmp_path / "out")
    assert set(removed) == {"planted", "short-planted", "answer-as-instruction"}  # clean-3 and clean-5 mention doxycycline
    assert removed["answer-as-instruction"]["match"] == f"{path}#short-1"


def test_a_smaller_ngram_catches_more(tmp_path: Path) -> None:
    path = eval_file(tmp_path, "jsonl")
    loose = DecontamConfig.load({"eval": [{"path": str(path), "fields": ["question"]}], "ngram": 5, "columns": ["input"]})
    run_decontaminate(records(tmp_path), tmp_path / "out", loose)
    assert {"planted", "clean-2"} <= set(rejects(tmp_path / "out"))


def test_rerun_is_idempotent(tmp_path: Path) -> None:
    path = eval_file(tmp_path, "parquet")
    first = run_decontaminate(records(tmp_path), tmp_path / "out", config(path))
    data = (tmp_path / "out" / "data" / "part-00000.parquet").read_bytes()
    run_decontaminate(records(tmp_path), tmp_path / "out", config(path))
    assert (tmp_path / "out" / "data" / "part-00000.parquet").read_bytes() == data
    assert run_decontaminate(tmp_path / "out", tmp_path / "out2", config(path)).dropped == 0 and first.dropped == 2


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda tmp: {"path": str(tmp / "missing.jsonl")}, "no such file or folder"),
        (lambda tmp: {"path": str(eval_file(tmp, "jsonl")), "fields": ["prompt"]}, "no field prompt (it has: answer, qid, question)"),
        (lambda tmp: {"path": str(eval_file(tmp, "parquet")), "fields": ["question"], "id_field": "uid"}, "no field uid"),
        (lambda tmp: {"path": str(eval_file(tmp, "datasets")), "fields": ["prompt"]}, "no field prompt"),
        (lambda tmp: {"path": str(_bad_jsonl(tmp))}, "line 2 is not JSON"),
        (lambda tmp: {"path": str(_touch(tmp / "eval.csv"))}, "unknown format"),
        (lambda tmp: {"path": str(_touch(tmp / "empty-folder" / "x.txt").parent)}, "not a datasets.save_to_disk folder"),
    ],
)
def test_eval_set_errors_are_one_line(tmp_path: Path, setup, message: str) -> None:
    with pytest.raises(MediflowError, match="eval set .*" + message.replace("(", r"\(").replace(")", r"\)")) as error:
        run_decontaminate(records(tmp_path), tmp_path / "out", DecontamConfig.load({"eval": [setup(tmp_path)]}))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_unknown_record_column_and_no_eval_sets(tmp_path: Path) -> None:
    path = eval_file(tmp_path, "jsonl")
    with pytest.raises(MediflowError, match="decontaminate.columns: answer not in the input"):
        run_decontaminate(records(tmp_path), tmp_path / "out", DecontamConfig.load({"eval": [{"path": str(path)}], "columns": ["answer"]}))
    with pytest.raises(MediflowError, match="decontaminate.eval: no evaluation sets given"):
        run_decontaminate(records(tmp_path), tmp_path / "out", DecontamConfig())


def _bad_jsonl(tmp: Path) -> Path:
    path = tmp / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken\n')
    return path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path
