"""The qa stage: PIT task data from documents through the real engine and the test teacher server."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mediflow.cli import main
from mediflow.prompts import load_prompts
from mediflow.train.data import load_task_rows
from mediflow.train.qa import training_rows

DOCUMENTS = [
    {"id": "n1", "text": "Discharge summary. Admitted with pneumonia; treated with amoxicillin 500 mg."},
    {"id": "n2", "text": "Radiology report. CT chest: 4 mm nodule in the right upper lobe."},
]


def test_answers_become_prompt_completion_rows() -> None:
    prompts = load_prompts()
    qa = training_rows(prompts.get("qa"), {"pairs": [{"question": "Dose?", "answer": "500 mg"}, {"question": "Drug?", "answer": "amoxicillin"}]}, "doc")
    assert qa == [
        {"prompt": "Question: Dose?\nAnswer:", "completion": " 500 mg"},
        {"prompt": "Question: Drug?\nAnswer:", "completion": " amoxicillin"},
    ]
    (summary,) = training_rows(prompts.get("pit_summary"), {"summary": "Pneumonia, treated."}, "THE DOC")
    assert "THE DOC" in summary["prompt"] and summary["completion"] == " Pneumonia, treated."
    (entities,) = training_rows(prompts.get("pit_entities"), {"entities": [{"text": "pneumonia", "type": "problem"}]}, "d")
    assert entities["completion"] == "\n- pneumonia (problem)"
    (relations,) = training_rows(prompts.get("pit_relations"), {"relations": [{"head": "amoxicillin", "relation": "treats", "tail": "pneumonia"}]}, "d")
    assert relations["completion"] == "\n- amoxicillin | treats | pneumonia"


def test_qa_stage_writes_task_data_for_every_document_and_prompt(tmp_path: Path, teacher_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TEST_TEACHER_KEY", "not-a-secret")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCUMENTS), encoding="utf-8")
    config = tmp_path / "qa.yaml"
    config.write_text(
        f"qa: {{teacher: {{spec: 'openai:mediflow-test-teacher', base_url: '{teacher_server}', api_key_env: TEST_TEACHER_KEY}},\n     qa_pairs: 2, limits: {{concurrency: 4}}}}\ndata: {{documents: docs.jsonl}}\noutput: {{dir: task_data}}\n",
        encoding="utf-8",
    )
    assert main(["train", "qa", "--config", str(config)]) == 0
    table = pq.read_table(sorted((tmp_path / "task_data" / "data").glob("*.parquet")))
    rows = table.to_pylist()
    assert {(r["document_id"], r["task"]) for r in rows} == {(doc["id"], task) for doc in DOCUMENTS for task in ("qa", "pit_summary", "pit_entities", "pit_relations")}
    assert all(r["prompt_version"] and r["completion"] is not None for r in rows)
    qa_rows = [r for r in rows if r["task"] == "qa"]
    assert all(r["prompt"].startswith("Question: ") and r["prompt"].endswith("\nAnswer:") for r in qa_rows)
    assert "task data:" in capsys.readouterr().out
    # What the pit stage reads.
    assert len(load_task_rows(tmp_path / "task_data")) == sum(1 for r in rows if r["completion"])
    # A rerun is answered from the engine's cache: the teacher sees no new request.
    served = teacher_server.stats()["requests"]
    assert main(["train", "qa", "--config", str(config)]) == 0
    assert teacher_server.stats()["requests"] == served
