"""The ``case`` column: written by generate, kept through curate -> pairs -> export; the checks that read it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from fixtures import TEST_TEACHER, small_run_config

from mediflow import generate
from mediflow.cases import load_case_book
from mediflow.cases.mentions import MentionMatcher
from mediflow.export import ExportConfig, export_dataset
from mediflow.preference import PairsConfig, build_pairs
from mediflow.quality import CurateConfig, curate
from mediflow.quality.config import FilterConfig
from mediflow.quality.filters import CaseCodesRule, CaseMentionRule
from mediflow.testing import TeacherServerURL


def _rows(folder: Path) -> list[dict]:
    return [row for path in sorted((folder / "data").rglob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def test_the_case_survives_curate_pairs_and_export(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(small_run_config(teacher_server, run))
    generated = _rows(run)
    assert generated and all(row["case"]["conditions"][0]["role"] == "primary" for row in generated)
    cases = {row["id"]: row["case"] for row in generated}

    curated = tmp_path / "curated"
    curate(run, curated, CurateConfig(filters=FilterConfig(), dedup=None))
    kept = _rows(curated)
    assert kept and all(row["case"] == cases[row["id"]] for row in kept)  # the test teacher names the primary: all kept

    pairs = tmp_path / "pairs"
    build_pairs(curated, pairs, PairsConfig.load(None, teacher=TEST_TEACHER, base_url=teacher_server, min_margin=1, top_fraction=1.0, progress=False))
    paired = _rows(pairs)
    assert paired and all(pair["case"] == cases[pair["id"]] for pair in paired)

    out = tmp_path / "export"
    export_dataset(curated, out, ExportConfig.load(None, pairs=str(pairs), split={"train": 1.0, "validation": 0.0, "test": 0.0}))
    records = [row for path in (out / "data" / "records").glob("*.parquet") for row in pq.read_table(path).to_pylist()]
    assert sorted(row["id"] for row in records) == sorted(row["id"] for row in kept)
    assert all(row["case"] == cases[row["id"]] for row in records)
    for config in ("sft", "dpo"):  # the model-facing configs do not carry it
        assert all("case" not in pq.read_schema(path).names for path in (out / "data" / config).glob("*.parquet"))
    assert "`records`: every record with all its columns, including `case`" in (out / "README.md").read_text()


def _record(document: str, conditions: list[tuple[str, str]], task: str = "clinical_inference", output: str = "ok") -> dict:
    return {
        "input": document,
        "output": output,
        "output_format": "plain_text",
        "task_type": task,
        "case": {"conditions": [{"code": code, "description": description, "role": "primary"} for code, description in conditions]},
    }


def test_the_mention_filter_keeps_a_synonym_and_rejects_a_document_without_the_primary() -> None:
    rule = CaseMentionRule(MentionMatcher(load_case_book()).find)
    heart_failure = [("I50.23", "Acute on chronic systolic (congestive) heart failure"), ("E11.9", "Type 2 diabetes mellitus without complications")]
    assert rule.check(_record("Admitted with an HFrEF exacerbation; diuresed with IV furosemide.", heart_failure)).keep
    assert rule.check(_record("Coded I50.23 on discharge.", heart_failure)).keep  # the code itself
    comorbidity = rule.check(_record("Known diabetic, sugars controlled on metformin.", heart_failure))  # names only the comorbidity
    assert not comorbidity.keep and comorbidity.score == 0.5 and "mentions only E11.9" in comorbidity.reason
    verdict = rule.check(_record("Seen for a sprained ankle; ice and rest advised.", heart_failure))
    assert not verdict.keep and "does not mention its primary condition (I50.23" in verdict.reason and verdict.score == 0
    assert rule.check({"input": "anything", "case": None}).reason == "not applicable"  # released data: no case


def test_coding_records_whose_gold_codes_share_nothing_with_the_case_are_flagged() -> None:
    rule = CaseCodesRule(frozenset({"icd10cm_coding"}))
    case = [("I50.23", "Acute on chronic systolic (congestive) heart failure")]
    assert rule.check(_record("...", case, "icd10cm_coding", "I50.23, I10")).keep
    flagged = rule.check(_record("...", case, "icd10cm_coding", "J18.9"))
    assert not flagged.keep and "share nothing with the case" in flagged.reason
    assert rule.check(_record("...", case, "clinical_inference", "J18.9")).keep  # other tasks: not applicable


def test_curate_reports_the_mention_filter_drops(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(small_run_config(teacher_server, run, document_types=1))
    rows = pq.read_table(sorted((run / "data").glob("*.parquet")))
    first = rows.to_pylist()[0]
    first["input"] = "Short note about nothing in particular, with enough words to pass the length rule."
    table = rows.slice(1).to_pylist() + [first]
    broken = tmp_path / "broken"
    (broken / "data").mkdir(parents=True)
    pq.write_table(rows.schema.empty_table().from_pylist(table, schema=rows.schema), broken / "data" / "shard-00000.parquet")
    (broken / "manifest.json").write_text((run / "manifest.json").read_text())
    manifest = curate(broken, tmp_path / "curated", CurateConfig(filters=FilterConfig(), dedup=None))
    assert manifest["dropped_by_rule"].get("filter/case_mentions") == 1
    rejects = pq.read_table(tmp_path / "curated" / "rejects.parquet").to_pylist()
    assert [r["id"] for r in rejects if r["rule"] == "case_mentions"] == [first["id"]]
    assert json.loads((tmp_path / "curated" / "manifest.json").read_text())["kept"] == len(table) - 1
