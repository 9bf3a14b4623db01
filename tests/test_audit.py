"""The audit checks' numbers on crafted folders with planted problems, the HTML report and the CLI."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest
from fixtures import CATEGORY_CODE, CODING_TASK, FAKE_CODE, demo_folder, record, write_output_folder

from mediflow.audit import (
    AuditFolder,
    coverage,
    funnel,
    icd_codes,
    json_validity,
    judge_scores,
    lengths,
    near_duplicates,
    ngrams,
    planned_cells,
    run_audit,
    run_config,
    samples,
    write_html,
)
from mediflow.audit.icd_codes import codes_in
from mediflow.audit.report import coding_tasks, task_schemas
from mediflow.cli import main
from mediflow.config import load_config
from mediflow.errors import MediflowError
from mediflow.pipeline.plan import build_plan
from mediflow.taxonomy import load_taxonomy
from mediflow.terminology import is_billable, is_valid


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("audit-demo")
    return root, demo_folder(root)


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy()


def _rng() -> random.Random:
    return random.Random(1)


def test_coverage_counts_planned_empty_below_plan_and_unplanned_cells(tmp_path: Path) -> None:
    rng = _rng()
    rows = [record("task_a", "doc_1", "x", "plain_text", rng) for _ in range(3)]
    rows += [record("task_a", "doc_2", "x", "plain_text", rng)]
    rows += [record("task_b", "doc_9", "x", "plain_text", rng)]  # not in the plan
    folder = AuditFolder.open(write_output_folder(tmp_path, rows))
    planned = pd.DataFrame([("task_a", "doc_1", 3), ("task_a", "doc_2", 2), ("task_b", "doc_1", 4)], columns=["task_type", "input_data", "planned"])
    result = coverage(folder, planned)
    assert result.numbers["planned_cells"] == 3
    assert result.numbers["planned_empty_cells"] == 1
    assert result.numbers["cells_below_plan"] == 1
    assert result.numbers["unplanned_cells"] == 1
    empty = result.tables["Planned cells with no record"]
    assert list(zip(empty["task_type"], empty["input_data"])) == [("task_b", "doc_1")]
    assert result.figure is not None


def test_coverage_plan_is_rebuilt_from_the_manifest_config(tmp_path: Path, taxonomy) -> None:
    task = CODING_TASK
    docs = taxonomy.document_types_for(task)[:2]
    rows = [record(task, docs[0], "x", "plain_text", _rng())]
    config = {"tasks": [task], "document_types": docs, "per_cell": 2}
    folder = AuditFolder.open(write_output_folder(tmp_path, rows, manifest={"config": config}))
    planned, source = planned_cells(folder, taxonomy)
    assert "plan" in source
    items = list(build_plan(load_config(config), taxonomy).items())  # what `generate` would have made
    assert sorted(zip(planned["input_data"], planned["planned"])) == sorted((d, sum(i.document_type == d for i in items)) for d in docs)
    result = coverage(folder, planned)
    assert result.numbers["planned_empty_cells"] == 1 and result.numbers["cells_below_plan"] == 1


def test_a_curated_folder_is_checked_against_the_plan_of_the_run_it_came_from(tmp_path: Path, taxonomy) -> None:
    docs = taxonomy.document_types_for(CODING_TASK)[:2]
    rows = [record(CODING_TASK, doc, "x", "plain_text", _rng()) for doc in docs for _ in range(2)]
    config = {"tasks": [CODING_TASK], "document_types": docs, "per_cell": 2}
    run = write_output_folder(tmp_path / "run", rows, manifest={"config": config, "input": str(tmp_path / "curated")})
    curate_manifest = {"stage": "curate", "input": str(run), "config": {"filters": {}, "dedup": {}}, "in": 4, "kept": 1}
    folder = AuditFolder.open(write_output_folder(tmp_path / "curated", rows[:1], manifest=curate_manifest))

    assert [path for path, _ in folder.lineage()] == [folder.path, run]  # and the cycle back to curated ends it
    assert run_config(folder) == config
    planned, source = planned_cells(folder, taxonomy)
    assert f"the manifest of its source {run}" in source
    assert sorted(zip(planned["input_data"], planned["planned"])) == sorted(planned_cells(AuditFolder.open(run), taxonomy)[0][["input_data", "planned"]].itertuples(index=False, name=None))
    result = coverage(folder, planned)
    assert result.numbers["cells_below_plan"] == 1 and result.numbers["planned_empty_cells"] == 1  # what curation removed

    (run / "manifest.json").unlink()  # the source run is gone: the curated folder is still audited
    assert [path for path, _ in folder.lineage()] == [folder.path] and run_config(folder) == {}


def test_coverage_without_manifest_plans_the_taxonomy_cells_of_the_tasks_present(tmp_path: Path, taxonomy) -> None:
    docs = taxonomy.document_types_for(CODING_TASK)
    rows = [record(CODING_TASK, docs[0], "x", "plain_text", _rng())]
    folder = AuditFolder.open(write_output_folder(tmp_path, rows))
    planned, source = planned_cells(folder, taxonomy)
    assert "taxonomy" in source and set(planned["task_type"]) == {CODING_TASK}
    result = coverage(folder, planned)
    assert result.numbers["planned_cells"] == len(docs)
    assert result.numbers["planned_empty_cells"] == len(docs) - 1
    assert result.numbers["unplanned_cells"] == 0 and result.numbers["cells_below_plan"] == 0


def test_lengths_are_word_counts_per_task_and_empties_are_counted(tmp_path: Path) -> None:
    rng = _rng()
    rows = [
        record("task_a", "doc", "one two three", "plain_text", rng, instruction="a b", input="w " * 10),
        record("task_a", "doc", "one", "plain_text", rng, instruction="a b c d", input="w " * 20),
        record("task_b", "doc", "", "plain_text", rng, instruction="a", input="w"),
    ]
    result = lengths(AuditFolder.open(write_output_folder(tmp_path, rows)))
    table = result.tables["Words per field and task"].set_index(["field", "task_type"])
    assert table.loc[("output", "task_a"), "max"] == 3
    assert table.loc[("input", "task_a"), "median"] == 15
    assert table.loc[("output", "task_b"), "empty"] == 1
    assert result.numbers["empty"] == {"instruction": 0, "input": 0, "output": 1}


def test_judge_scores_not_available_without_judge_columns_and_right_means_with_them(tmp_path: Path) -> None:
    rng = _rng()
    plain = [record("task_a", "doc", "x", "plain_text", rng)]
    missing = judge_scores(AuditFolder.open(write_output_folder(tmp_path / "plain", plain)))
    assert missing.unavailable and "no judge columns" in missing.summary and missing.figure is None
    judged = [
        record("task_a", "doc", "x", "plain_text", rng, quality=4.0, alignment=5.0),
        record("task_a", "doc", "y", "plain_text", rng, quality=2.0, alignment=3.0),
        record("task_b", "doc", "z", "plain_text", rng, quality=5.0, alignment=5.0),
    ]
    result = judge_scores(AuditFolder.open(write_output_folder(tmp_path / "judged", judged)))
    table = result.tables["Judge scores per task"].set_index("task_type")
    assert table.loc["task_a", "quality mean"] == 3.0 and table.loc["task_b", "alignment mean"] == 5.0
    assert result.numbers["judged"] == 3 and result.figure is not None


def test_funnel_from_rejects_orders_generation_stages_first_and_counts_rules(tmp_path: Path) -> None:
    rows = [record("task_a", "doc", "x", "plain_text", _rng()) for _ in range(10)]
    rejects = [
        {"stage": "dedup", "rule": "exact_duplicate", "reason": "same as abc"},
        {"stage": "response", "reason": "schema: 'codes' is a required property"},
        {"stage": "filter", "rule": "too_short", "reason": "2 words"},
        {"stage": "filter", "rule": "too_short", "reason": "1 word"},
        {"stage": "document", "reason": "teacher returned nothing"},
    ]
    result = funnel(AuditFolder.open(write_output_folder(tmp_path, rows, rejects=rejects)))
    stages = result.tables["Records per stage"]
    assert list(stages["stage"]) == ["document", "response", "dedup", "filter"]
    assert list(stages["in"]) == [15, 14, 13, 12] and list(stages["kept"]) == [14, 13, 12, 10]
    assert result.numbers["drops_per_rule"]["filter/too_short"] == 2
    assert result.numbers["drops_per_rule"]["response/schema: 'codes' is a required property"] == 1


def test_funnel_prefers_the_manifest_funnel(tmp_path: Path) -> None:
    rows = [record("task_a", "doc", "x", "plain_text", _rng())]
    manifest = {"funnel": [{"stage": "filter", "in": 100, "kept": 90}, {"stage": "dedup", "in": 90, "kept": 1}]}
    result = funnel(AuditFolder.open(write_output_folder(tmp_path, rows, manifest=manifest)))
    assert result.numbers["stages"] == [{"stage": "filter", "in": 100, "kept": 90}, {"stage": "dedup", "in": 90, "kept": 1}]
    nothing = funnel(AuditFolder.open(write_output_folder(tmp_path / "bare", rows)))
    assert nothing.unavailable


def test_json_validity_counts_planted_unparseable_and_schema_invalid_rows(tmp_path: Path, taxonomy) -> None:
    schemas = task_schemas(taxonomy)
    rng = _rng()
    valid = [record(name, "doc", json.dumps(task.example_output), "json", rng) for name, task in taxonomy.tasks.items()]
    planted = [
        record(CODING_TASK, "doc", '{"codes": [', "json", rng),
        record(CODING_TASK, "doc", '{"codes": []}', "json", rng),  # minItems 1
        record("clinical_inference", "doc", '"just a string"', "json", rng),
        record("not_a_task", "doc", "{}", "json", rng),
        record(CODING_TASK, "doc", "not json, but plain text is not checked", "plain_text", rng),
    ]
    result = json_validity(AuditFolder.open(write_output_folder(tmp_path, valid + planted)), schemas)
    table = result.tables["JSON validity per task"].set_index("task_type")
    assert result.numbers["json_records"] == len(valid) + 4
    assert result.numbers["invalid"] == 3
    assert table.loc[CODING_TASK, "json_records"] == 3 and table.loc[CODING_TASK, "parses"] == 2
    assert table.loc[CODING_TASK, "schema_valid"] == 1
    assert table.loc["clinical_inference", "schema_valid"] == 1 and table.loc["not_a_task", "no_schema"] == 1
    problems = set(result.tables["Failing records"]["problem"].str.split(":").str[0])
    assert problems == {"does not parse", "schema", "no schema for this task in the taxonomy"}


def test_icd_codes_counts_fake_and_category_codes(tmp_path: Path, taxonomy) -> None:
    rng = _rng()
    example = json.dumps(taxonomy.task(CODING_TASK).example_output)  # 4 real billable codes
    rows = [
        record(CODING_TASK, "doc", example, "json", rng),
        record(CODING_TASK, "doc", f"Codes: {FAKE_CODE} and {CATEGORY_CODE}; also I10.", "plain_text", rng),
        record("clinical_inference", "doc", f"{FAKE_CODE} in another task is not counted", "plain_text", rng),
    ]
    assert coding_tasks(taxonomy) == [CODING_TASK]
    result = icd_codes(AuditFolder.open(write_output_folder(tmp_path, rows)), coding_tasks(taxonomy), is_valid, is_billable)
    assert result.numbers["codes"] == 7 and result.numbers["valid"] == 6 and result.numbers["billable"] == 5
    assert result.numbers["invalid"] == 1
    flagged = result.tables["Codes that need a look"].set_index("code")["problem"]
    assert flagged[FAKE_CODE].startswith("invalid") and flagged[CATEGORY_CODE].startswith("valid but not billable")


def test_codes_in_reads_json_values_and_plain_text_tokens() -> None:
    assert list(codes_in('{"codes": [{"code": "E11.9", "description": "Type 2 diabetes E11"}]}', "json")) == ["E11.9"]
    assert list(codes_in("Assign E11.9, S72.001A and I10 (not HbA1c or T2DM).", "plain_text")) == ["E11.9", "S72.001A", "I10"]


def test_ngrams_count_instruction_openings(tmp_path: Path) -> None:
    rng = _rng()
    rows = [record("t", "d", "alpha beta gamma delta", "plain_text", rng, instruction="List the active problems now " + str(i)) for i in range(3)]
    rows.append(record("t", "d", "alpha beta gamma", "plain_text", rng, instruction="Summarise this note briefly please"))
    result = ngrams(AuditFolder.open(write_output_folder(tmp_path, rows)))
    assert result.numbers["top_openings"]["list the active problems"] == 3
    assert result.numbers["top_output_ngrams"]["alpha beta gamma"] == 4
    grams = result.tables["Output 3-grams"].set_index("3-gram")
    assert grams.loc["beta gamma delta", "share_of_outputs"] == 0.75


def test_near_duplicates_find_the_planted_cluster_and_exact_duplicates(demo) -> None:
    root, facts = demo
    result = near_duplicates(AuditFolder.open(root))
    clusters = result.tables["Largest near-duplicate clusters"]
    instruction_clusters = clusters[clusters["key"] == "instruction"]
    assert list(instruction_clusters["size"]) == [2]
    assert instruction_clusters["example"].iloc[0].startswith(facts["near_duplicate_instruction"][:40])
    assert result.numbers["near"] == {"instruction": 2, "input": 0, "pair": 0}
    outputs = [r["output"] for r in facts["rows"]]
    assert result.numbers["exact"]["output"] == len(outputs) - len(set(outputs)) > 0
    assert result.numbers["exact"]["pair"] == 0


def test_samples_returns_the_cell_and_names_an_unknown_one(demo) -> None:
    root, facts = demo
    folder = AuditFolder.open(root)
    task, doc = facts["cells"][0]
    rows = samples(folder, task, doc, n=2)
    assert len(rows) == 2 and set(rows["task_type"]) == {task} and set(rows["input_data"]) == {doc}
    assert {"instruction", "input", "output", "quality"} <= set(rows.columns)
    with pytest.raises(MediflowError, match="no record for task 'nope'"):
        samples(folder, "nope", doc)


def test_report_has_every_section_and_an_image_per_plotted_section(tmp_path: Path, demo) -> None:
    root, facts = demo
    report = run_audit(root)
    path = write_html(report, tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    for section in report.sections:
        assert f"<h2>{section.title}</h2>" in text
        block = text.split(f'<section id="{section.key}">')[1].split("</section>")[0]
        has_image = re.search(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', block) is not None
        assert has_image == (section.figure is not None), section.key
    plotted = {s.key for s in report.sections if s.figure is not None}
    assert plotted == {"coverage", "lengths", "judge_scores", "funnel", "json_validity", "icd_codes", "ngrams", "duplicates", "diversity"}
    assert report.section("case_mix").unavailable  # the demo records were made without cases
    assert report.section("coverage").numbers["planned_empty_cells"] == 1
    assert report.section("json_validity").numbers["invalid"] == 2
    assert report.section("icd_codes").numbers["invalid"] == 1
    assert report.section("funnel").numbers["drops_per_rule"]["filter/too_short"] == 2
    assert "http" not in re.sub(r'<a href="#[^"]*"', "", text).replace("http-equiv", "")  # self-contained


def test_cli_prints_a_summary_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [record("task_a", "doc", "plain answer", "plain_text", _rng()) for _ in range(3)]
    out = tmp_path / "nested" / "report.html"
    assert main(["audit", str(write_output_folder(tmp_path / "run", rows)), "--html", str(out), "--sample-size", "100"]) == 0
    printed = capsys.readouterr().out
    assert "audit of " in printed and "3 records" in printed and f"report written to {out}" in printed
    for title in ("Judge scores per task", "Filter and dedup funnel", "JSON validity per task"):
        assert f"{title}: not available: " in printed  # a missing part is said, not an error
    assert out.read_text().count('class="unavailable"') >= 3
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_cli_names_a_folder_without_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(tmp_path)]) == 2
    assert "no MediFlow manifest and no .parquet/.jsonl files" in capsys.readouterr().err


def test_funnel_of_a_generate_run_without_rejects_comes_from_its_counts(tmp_path: Path) -> None:
    rows = [record("task_a", "doc", "x", "plain_text", _rng()) for _ in range(2)]
    manifest = {"plan": {"items": 3}, "counts": {"records": 2, "rejects": 0}}
    result = funnel(AuditFolder.open(write_output_folder(tmp_path, rows, manifest=manifest)))
    assert result.numbers["stages"] == [{"stage": "generate", "in": 3, "kept": 2}]
