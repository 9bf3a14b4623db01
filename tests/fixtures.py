"""The tests' shared helpers, in one module: output folders, records, and small run configs.

- Small MediFlow-shaped output folders with planted problems of known counts (the audit, export,
  judge and pairs tests). Records use the real built-in taxonomy's task and document-type names and
  its tasks' example outputs (which are schema-valid), so the stages see what ``mediflow generate``
  would write. Texts are random words from a seeded generator, so that no two of them are near
  duplicates except the ones planted on purpose.
- :func:`make_records`: documents answered by one to three tasks each, judged.
- :func:`small_run_config`: a small ``generate`` run config against the test teacher. Its cells
  are picked from the taxonomy (tasks given, or its first two; document types they all share),
  never hard-coded, so the tests follow the taxonomy when it grows.

The tiny torch models and training-stage configs live in ``tiny_models.py`` / ``train_stages.py``:
they import torch, which the data tests should not pay for.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mediflow.folders import Manifest
from mediflow.records import FULL_SCHEMA, GENERATION_SCHEMA, record_id, rows_to_table
from mediflow.taxonomy import load_taxonomy

VOCABULARY = (
    "patient denies chest pain dyspnea fever cough nausea vomiting abdominal tenderness edema rash "
    "hypertension diabetes kidney liver cardiac pulmonary renal hepatic neurologic acute chronic stable "
    "improving worsening admitted discharged follow clinic imaging laboratory sodium potassium creatinine "
    "glucose insulin metformin lisinopril aspirin heparin warfarin ultrasound radiograph computed tomography "
    "lesion nodule effusion fracture wound infection sepsis pneumonia culture biopsy margin tumour benign"
).split()
OPENINGS = ("please list the main", "summarise the key findings", "identify every clinically relevant", "answer the question using")
CODING_TASK = "icd10cm_coding"
#: Real ICD-10-CM codes: billable, a category (valid, not billable), and a made-up one.
BILLABLE_CODES = ("E11.22", "I12.9", "Z79.4")
CATEGORY_CODE = "N18.3"
FAKE_CODE = "E11.2Z"


def words(rng: random.Random, n: int) -> str:
    """``n`` random vocabulary words."""
    return " ".join(rng.choice(VOCABULARY) for _ in range(n))


def record(task: str, document_type: str, output: str, output_format: str, rng: random.Random, **extra: Any) -> dict[str, Any]:
    """One record in the generation schema (plus any judge columns passed in ``extra``)."""
    instruction = extra.pop("instruction", None) or f"{rng.choice(OPENINGS)} {words(rng, 14)}"
    document = extra.pop("input", None) or words(rng, 60)
    return {
        "id": record_id(instruction, document, output, task, output_format),
        "instruction": instruction,
        "input": document,
        "output": output,
        "task_type": task,
        "input_data": document_type,
        "output_format": output_format,
        "difficulty_level": extra.pop("difficulty_level", "basic"),
        "document_id": f"doc-{rng.getrandbits(40):x}",
        "instruction_id": f"ins-{rng.getrandbits(40):x}",
        **extra,
    }


def write_output_folder(
    root: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    manifest: Mapping[str, Any] | None = None,
    rejects: Sequence[Mapping[str, Any]] | None = None,
    shards: int = 2,
) -> Path:
    """Write ``rows`` as ``data/part-*.parquet`` (split over ``shards`` files), plus manifest and rejects."""
    has_judge = any("quality" in row for row in rows)
    schema = FULL_SCHEMA if has_judge else GENERATION_SCHEMA
    (root / "data").mkdir(parents=True, exist_ok=True)
    size = max(1, -(-len(rows) // shards))
    for index in range(shards):
        part = list(rows[index * size : (index + 1) * size])
        if part or index == 0:
            pq.write_table(rows_to_table(part, schema), root / "data" / f"part-{index:05d}.parquet")
    if manifest is not None:
        (root / "manifest.json").write_text(json.dumps(typed_manifest(manifest), indent=2), encoding="utf-8")
    if rejects is not None:
        pq.write_table(rows_to_table(list(rejects), _reject_schema()), root / "rejects.parquet")
    return root


def typed_manifest(details: Mapping[str, Any], kind: str | None = None) -> dict[str, Any]:
    """``details`` as a finished folder's manifest (the typed keys of :class:`mediflow.folders.Manifest` added)."""
    if kind is None:
        kind = "curate" if "stages" in details else "pairs" if "pairs" in details else str(details.get("stage") or "generate")
    config = dict(details.get("config") or {})
    counts = dict(details.get("counts") or {})
    holds = "pairs" if kind == "pairs" else "records"
    return Manifest(kind=kind, holds=holds, config=config, config_fingerprint="fixture", status="finished", counts=counts, details=dict(details)).to_dict()


def _reject_schema() -> pa.Schema:
    return pa.schema([pa.field(name, pa.string()) for name in ("id", "stage", "rule", "reason", "task_type", "input_data")])


def demo_folder(root: Path, *, judged: bool = True) -> dict[str, Any]:
    """A realistic small folder: 3 tasks x 2 document types, JSON and plain text, with planted problems.

    Returns the planted facts the tests check against.
    """
    taxonomy = load_taxonomy()
    rng = random.Random(7)
    other_tasks = [name for name in taxonomy.tasks if name != CODING_TASK][:2]
    tasks = [CODING_TASK, *other_tasks]
    cells = [(task, doc) for task in tasks for doc in taxonomy.document_types_for(task)[:2]]
    rows: list[dict[str, Any]] = []
    for task, doc in cells:
        example = json.dumps(taxonomy.task(task).example_output)
        for index in range(4):
            fmt = "json" if index % 2 == 0 else "plain_text"
            output = example if fmt == "json" else f"{words(rng, 25)}"
            scores = _scores(rng) if judged else {}
            rows.append(record(task, doc, output, fmt, rng, **scores))
    # Planted: one unparseable and one schema-invalid JSON output in the second task.
    broken_task, broken_doc = cells[2]
    rows.append(record(broken_task, broken_doc, '{"judgements": [', "json", rng))
    rows.append(record(broken_task, broken_doc, '{"unexpected": 1}', "json", rng))
    # Planted: a coding answer with a made-up code and a category code, in plain text.
    rows.append(record(CODING_TASK, cells[0][1], f"Principal: {FAKE_CODE} diabetes. Secondary: {CATEGORY_CODE} chronic kidney disease.", "plain_text", rng))
    # Planted: two near-identical instructions (one word changed).
    base = f"{OPENINGS[0]} {words(rng, 20)}"
    rows.append(record(tasks[1], cells[2][1], words(rng, 20), "plain_text", rng, instruction=base))
    rows.append(record(tasks[1], cells[2][1], words(rng, 20), "plain_text", rng, instruction=base + " today"))
    planned_empty = (tasks[2], taxonomy.document_types_for(tasks[2])[2])
    manifest = {
        "counts": {
            "records": len(rows),
            "cells": {
                **{f"{t}/{d}/basic/json": {"records": 2} for t, d in cells},
                **{f"{t}/{d}/basic/plain_text": {"records": 2} for t, d in cells},
                f"{planned_empty[0]}/{planned_empty[1]}/basic/json": {"rejects": 1},
            },
        }
    }
    rejects = [
        {"stage": "response", "reason": "schema: codes is a required property", "task_type": planned_empty[0], "input_data": planned_empty[1]},
        {"stage": "filter", "rule": "too_short", "reason": "output has 2 words"},
        {"stage": "filter", "rule": "too_short", "reason": "output has 1 word"},
        {"stage": "filter", "rule": "refusal", "reason": "starts with 'As an AI'"},
        {"stage": "dedup", "rule": "near_duplicate", "reason": "ratio 97 with abc"},
    ]
    write_output_folder(root, rows, manifest=manifest, rejects=rejects)
    return {
        "rows": rows,
        "cells": cells,
        "tasks": tasks,
        "planned_empty": planned_empty,
        "broken_task": broken_task,
        "near_duplicate_instruction": base,
    }


def _scores(rng: random.Random) -> dict[str, float]:
    return {name: float(rng.randint(1, 5)) for name in ("quality", "alignment", "coherence", "realism", "difficulty")} | {"judge_spread": rng.random()}


TASKS = ("clinical_inference", "medication_qa", "icd10cm_coding")
DOCUMENT_TYPES = ("discharge_summary", "progress_note")


def make_records(documents: int = 40, seed: int = 3) -> list[dict]:
    """``documents`` synthetic documents, each answered by 1-3 records (tasks), some judged."""
    rng = random.Random(seed)
    rows = []
    for index in range(documents):
        document, document_id = words(rng, 40), f"doc-{index:03d}"
        document_type = DOCUMENT_TYPES[index % len(DOCUMENT_TYPES)]
        for task in rng.sample(TASKS, rng.randint(1, 3)):
            rows.append(record(task, document_type, words(rng, 12), "plain_text", rng, input=document, document_id=document_id, teacher="openai:gpt-4o", quality=4.0))
    return rows


def unjudged(documents: int = 6) -> list[dict]:
    """:func:`make_records` without judge scores (what the judge stage gets)."""
    records = make_records(documents=documents)
    for record in records:
        del record["quality"]
    return records


TEST_TEACHER = "openai:mediflow-test-teacher"


def small_run_config(base_url: str | None, out: Path, *, tasks: list[str] | None = None, document_types: int = 2, **extra: Any) -> dict[str, Any]:
    """Tasks x ``document_types`` shared document types x the easiest difficulty, 2 records a cell, half JSON."""
    taxonomy = load_taxonomy()
    tasks = tasks or list(taxonomy.tasks)[:2]
    shared = [d for d in taxonomy.document_types_for(tasks[0]) if all(d in taxonomy.document_types_for(t) for t in tasks)]
    easiest = min(taxonomy.difficulty_levels, key=lambda level: level.rank).name
    config: dict[str, Any] = {
        "teacher": {"spec": TEST_TEACHER, "base_url": str(base_url) if base_url else None},
        "tasks": tasks,
        "document_types": shared[:document_types],
        "difficulty_levels": [easiest],
        "per_cell": 2,
        "json_share": 0.5,
        "progress": False,
        "output": {"dir": str(out)},
    }
    config.update(extra)
    return config


def pin_kernel(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin notebook kernels named ``name`` to this interpreter through a throw-away kernelspec first on ``JUPYTER_PATH``.

    So a test never picks up some other Python's ``python3`` kernel on a CI machine; Jupyter's and
    IPython's runtime folders go to the temp dir so a read-only home does not matter.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
