"""Every folder made with a teacher records, per role, what that role's teacher negotiated with its server.

The test teacher plays llama-cpp-python's server (``json_schema`` answered with HTTP 500 naming
``response_format``), so every JSON-asking role steps down to ``json_object`` with the schema; the
manifest's ``teacher_capabilities`` must say so for the judge, curate, each pair role and PIT QA,
in the shape ``generate`` writes (``tests/test_negotiation.py``), and keep saying it on a rerun
answered from the cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fixtures import TEST_TEACHER, make_records, unjudged, write_output_folder

from mediflow.cli import main
from mediflow.folders import Manifest
from mediflow.preference import PairsConfig, build_pairs
from mediflow.preference.config import CandidateSource
from mediflow.quality import CurateConfig, JudgeConfig, curate, run_judge
from mediflow.teachers.factory import TeacherConfig
from mediflow.teachers.negotiation import combine
from mediflow.testing import TeacherServerURL

#: What llama-cpp-python's server does: text and json_object only, anything else is an HTTP 500.
LLAMA_CPP_PYTHON = {"response_formats": ["text", "json_object"], "refusal_status": 500}


def manifest_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def assert_stepped_down(capabilities: dict[str, Any], server: str) -> None:
    """The shape generate writes, for a role whose server refused json_schema."""
    assert capabilities["base_url"] == server
    assert capabilities["structured_output"] == "json_object_schema"
    assert capabilities["token_limit_field"] == "max_tokens" and capabilities["dropped_parameters"] == []
    assert capabilities["refusals"]["json_schema"].startswith("HTTP 500: response_format.type: Input should be")


def test_the_judge_manifest_records_the_judge_teachers_level_also_after_a_rerun(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(**LLAMA_CPP_PYTHON)
    source = write_output_folder(tmp_path / "in", unjudged(documents=3))
    config = JudgeConfig.load(None, teacher=TEST_TEACHER, base_url=teacher_server, progress=False, samples=1, thresholds={})
    run_judge(source, tmp_path / "judged", config)
    negotiated = manifest_of(tmp_path / "judged")["teacher_capabilities"]
    assert list(negotiated) == ["judge.teacher"]
    assert_stepped_down(negotiated["judge.teacher"], teacher_server)

    served = teacher_server.stats()["requests"]
    run_judge(source, tmp_path / "judged", config)  # answered from the cache: nothing is negotiated again
    assert teacher_server.stats()["requests"] == served
    assert manifest_of(tmp_path / "judged")["teacher_capabilities"] == negotiated


def test_curate_records_the_judge_teachers_level_beside_its_funnel(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(**LLAMA_CPP_PYTHON)
    source = write_output_folder(tmp_path / "in", unjudged(documents=3))
    config = {"judge": {"teacher": {"spec": TEST_TEACHER, "base_url": str(teacher_server)}, "samples": 1, "thresholds": {}, "progress": False}}
    manifest = curate(source, tmp_path / "curated", CurateConfig.load(config))
    assert_stepped_down(manifest["teacher_capabilities"]["judge.teacher"], teacher_server)
    judge_folder = next(step["folder"] for step in manifest["funnel"] if step["stage"] == "judge")
    assert manifest_of(tmp_path / "curated" / judge_folder)["teacher_capabilities"] == manifest["teacher_capabilities"]


def test_pairs_record_every_role_each_with_its_own_teacher(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(**LLAMA_CPP_PYTHON)
    records = make_records(documents=3)
    for record in records:  # JSON answers, so that the candidate source asks for JSON too
        record["output_format"], record["output"] = "json", json.dumps({"answer": record["output"]})
    source = write_output_folder(tmp_path / "in", records)
    config = PairsConfig.load(
        None,
        method="candidates",
        teacher=TEST_TEACHER,
        base_url=teacher_server,
        judge_teacher={"spec": "openai:judge-model", "base_url": str(teacher_server)},
        candidate_sources=(CandidateSource(TeacherConfig("openai:student-model", str(teacher_server)), 0.9),),
        max_records=4,
        progress=False,
    )
    build_pairs(source, tmp_path / "pairs", config)
    negotiated = manifest_of(tmp_path / "pairs")["teacher_capabilities"]
    assert list(negotiated) == ["teacher", "judge_teacher", "candidate_sources[0].teacher"]
    assert_stepped_down(negotiated["judge_teacher"], teacher_server)  # the pair judge always answers in JSON
    # the teacher (no hot samples) sent nothing here: its entry says so rather than borrowing another role's
    assert negotiated["teacher"]["structured_output"] is None and negotiated["teacher"]["refusals"] == {}
    assert_stepped_down(negotiated["candidate_sources[0].teacher"], teacher_server)


def test_pit_qa_records_the_qa_teachers_level(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(**LLAMA_CPP_PYTHON)
    (tmp_path / "docs.jsonl").write_text(json.dumps({"id": "n1", "text": "Discharge summary. Pneumonia; amoxicillin 500 mg."}) + "\n")
    config = tmp_path / "qa.yaml"
    config.write_text(f"qa: {{teacher: {{spec: '{TEST_TEACHER}', base_url: '{teacher_server}'}}, tasks: [qa], qa_pairs: 2}}\ndata: {{documents: docs.jsonl}}\noutput: {{dir: task_data}}\n")
    assert main(["train", "qa", "--config", str(config)]) == 0
    assert_stepped_down(manifest_of(tmp_path / "task_data")["teacher_capabilities"]["qa.teacher"], teacher_server)


def test_capabilities_combine_to_the_lowest_level_and_every_refusal() -> None:
    """Ray actors each negotiate for themselves; a rerun's cached answers were got the earlier way."""
    first = {"base_url": "u", "models_check": None, "structured_output": None, "token_limit_field": "max_tokens", "dropped_parameters": [], "refusals": {}}
    second = {**first, "models_check": "served", "structured_output": "json_schema", "dropped_parameters": ["seed"], "refusals": {"seed": "HTTP 400: a"}}
    third = {**first, "structured_output": "json_object", "token_limit_field": "max_completion_tokens", "refusals": {"json_schema": "HTTP 500: b"}}
    assert combine([None, first, second, third]) == {
        "base_url": "u",
        "models_check": "served",
        "structured_output": "json_object",
        "token_limit_field": "max_completion_tokens",
        "dropped_parameters": ["seed"],
        "refusals": {"seed": "HTTP 400: a", "json_schema": "HTTP 500: b"},
    }
    assert combine([None, {}]) is None


def test_the_manifest_type_carries_them_and_writes_them_only_when_there_are_some(tmp_path: Path) -> None:
    entry = {"base_url": "https://user:pw@host/v1", "structured_output": "json_schema", "token_limit_field": "max_tokens", "dropped_parameters": [], "refusals": {}}
    manifest = Manifest(kind="judge", config={}, config_fingerprint="f", teacher_capabilities={"judge.teacher": entry})
    written = manifest.to_dict()
    assert written["teacher_capabilities"]["judge.teacher"]["base_url"] == "https://***@host/v1"  # no credentials
    read = Manifest.from_dict(written, tmp_path / "manifest.json")
    assert read.teacher_capabilities["judge.teacher"]["structured_output"] == "json_schema" and "teacher_capabilities" not in read.details
    assert "teacher_capabilities" not in Manifest(kind="filter", config={}, config_fingerprint="f").to_dict()
