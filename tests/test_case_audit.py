"""Audit: the case mix and the text diversity sections, on a real generate run and on records without cases."""

from __future__ import annotations

import random
from pathlib import Path

from fixtures import record, small_run_config, words, write_output_folder

from mediflow import generate
from mediflow.audit import AuditFolder, case_mix, run_audit, text_diversity, write_html
from mediflow.testing import TeacherServerURL


def test_case_mix_and_diversity_of_a_generate_run(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(small_run_config(teacher_server, run, document_types=3))
    report = run_audit(run)
    mix = report.section("case_mix")
    assert mix.unavailable is None and mix.figure is not None
    records = report.records
    assert mix.numbers["cases"] == records and sum(mix.numbers["profiles"].values()) == records
    pyramid = mix.tables["Age/sex pyramid"]
    assert int(pyramid["female"].sum() + pyramid["male"].sum()) == records
    chapters = mix.tables["ICD-10-CM chapter of the primary condition per document category (share)"].set_index("document_category")
    assert all(abs(total - 1) < 0.01 for total in chapters.sum(axis=1))
    profiles = mix.tables["Cases per profile against the plan"]
    assert abs(profiles["planned_share"].sum() - 1) < 1e-6 and abs(profiles["share"].sum() - 1) < 1e-6

    diversity = report.section("diversity")
    table = diversity.tables["Diversity per task"]
    assert set(table["task_type"]) == set(AuditFolder.open(run).frame["task_type"])
    assert ((table["document_distinct_1"] > 0) & (table["document_distinct_1"] <= table["document_distinct_3"] + 1e-9)).all()
    assert (table["document_compression"] > 1).all() and table["near_duplicate_rate"].between(0, 1).all()
    html = write_html(report, tmp_path / "report.html").read_text()
    assert 'id="case_mix"' in html and 'id="diversity"' in html and "data:image/png;base64" in html


def test_near_duplicates_within_a_cell_and_no_case_column(tmp_path: Path) -> None:
    rng = random.Random(1)
    document = words(rng, 80)
    rows = [record("clinical_inference", "discharge_summary", words(rng, 10), "plain_text", rng, input=document + f" Seen on day {i}.") for i in range(4)]
    rows += [record("clinical_inference", "discharge_summary", words(rng, 10), "plain_text", rng, input=words(rng, 80)) for _ in range(4)]
    folder = AuditFolder.open(write_output_folder(tmp_path / "run", rows))
    result = text_diversity(folder)
    assert result.numbers["near_duplicate_rate"] == 0.5  # the four copies of one document, not the four others
    assert case_mix(folder).unavailable and "carry no clinical case" in case_mix(folder).summary
