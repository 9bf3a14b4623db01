"""Audit: the case mix and the text diversity sections, on a real generate run and on records without cases."""

from __future__ import annotations

import random
from pathlib import Path

from fixtures import record, small_run_config, words, write_output_folder

from mediflow import generate, terminology
from mediflow.audit import (
    AuditFolder,
    case_mix,
    document_type_cases,
    drugs_by_condition,
    rule_violations,
    run_audit,
    sex_by_condition,
    text_diversity,
    write_html,
)
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
    types = report.section("case_document_types")
    assert types.numbers["document_types"] == 3 and int(types.tables["Cases per document type"]["cases"].sum()) == records
    assert types.numbers["primary_mentioned"] == 1.0  # the test teacher names the primary
    assert report.section("case_rules").numbers["broken"] == 0  # the sampler's cases hold every rule
    assert int(report.section("case_sex").tables["Female share per primary condition category"]["cases"].sum()) == records
    assert report.section("case_drugs").numbers["cases"] == records
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


def _case(age: int, sex: str, codes: list[str], drugs: list[str], setting: str = "clinic", treats: str = "") -> dict[str, object]:
    """A case row: with ``treats``, its drugs as medications for that code (the current column), else as older rows' bare drug names."""
    roles = ["primary"] + ["comorbidity"] * (len(codes) - 1)
    conditions = [{"code": code, "description": terminology.description(code), "role": role} for code, role in zip(codes, roles)]
    row: dict[str, object] = {"profile": "test", "age": age, "sex": sex, "setting": setting, "acuity": "routine", "conditions": conditions}
    if treats:
        return {**row, "medications": [{"name": drug, "indication": treats, "role": "treatment"} for drug in drugs]}
    return {**row, "drugs": drugs}


def test_case_panels_count_planted_problems(tmp_path: Path) -> None:
    rng = random.Random(2)
    planted = [
        ("prenatal_visit_note", _case(34, "male", ["Z34.82"], []), "Routine prenatal visit at 24 weeks; doing well."),  # a pregnant man
        ("mammography_report", _case(61, "male", ["C50.911", "C50.912"], ["letrozole", "anastrozole"]), "Screening mammogram, BI-RADS 1."),  # two codes of one category
        ("discharge_summary", _case(70, "female", ["I50.23", "E11.9"], ["furosemide"]), "Admitted for acute on chronic systolic heart failure."),
        ("discharge_summary", _case(66, "male", ["I50.23"], ["furosemide", "metoprolol"]), "Decompensated HFrEF, diuresed."),
        ("well_child_visit_note", _case(4, "female", ["Z00.129"], []), "No concerns; mother has asthma."),
        # the ICD-10-CM guideline and prescribing rules the case rules API reports: I10 with CKD is I12; an NSAID with an anticoagulant
        ("progress_note", _case(68, "male", ["I10", "N18.30"], ["lisinopril"], treats="I10"), "HTN and CKD stage 3, BP at goal on lisinopril."),
        ("progress_note", _case(72, "female", ["I48.91"], ["apixaban", "ibuprofen"], treats="I48.91"), "Atrial fibrillation, rate controlled."),
    ]
    rows = [record("clinical_inference", doc_type, "ok", "plain_text", rng, input=text, case=case) for doc_type, case, text in planted]
    folder = AuditFolder.open(write_output_folder(tmp_path / "run", rows))

    rules = rule_violations(folder)
    assert rules.numbers["cases"] == 7 and rules.numbers["broken"] == 4
    by_rule = rules.numbers["by_rule"]  # cases per rule name, whatever rules Rules.broken reports
    assert by_rule["one_per_category"] == 1 and by_rule["prescribing_duplicate_class"] == 1  # two C50 codes; letrozole with anastrozole
    assert by_rule["hypertension_combination"] == 1 and by_rule["prescribing_interaction"] == 1 and by_rule["prescribing_indication"] == 1
    assert by_rule["pregnancy_childbirth_puerperium"] == 1  # the pregnant man
    assert set(rules.tables["Cases breaking each rule"]["rule"]) == set(by_rule) and rules.figure is not None
    per_type = rules.tables["Rule violations per document type"].set_index("document_type")
    assert per_type.loc["progress_note", "cases_breaking"] == 2 and per_type.loc["progress_note", "prescribing_interaction"] == 1
    assert "discharge_summary" not in per_type.index and "well_child_visit_note" not in per_type.index
    examples = rules.tables["Examples"].set_index("document_type")
    assert "Z34.82 needs a female patient" in examples.loc["prenatal_visit_note", "broken"]
    assert "I10 with N18.30 is I11/I12/I13" in " ".join(examples.loc["progress_note", "broken"])

    types = document_type_cases(folder).tables["Cases per document type"].set_index("document_type")
    assert types.loc["discharge_summary", "cases"] == 2 and types.loc["discharge_summary", "female"] == 0.5
    assert types.loc["well_child_visit_note", "under_18"] == 1.0 and types.loc["mammography_report", "with_drugs"] == 1.0
    assert types.loc["discharge_summary", "primary_mentioned"] == 1.0  # both name heart failure
    assert types.loc["mammography_report", "primary_mentioned"] == 0.0  # a screening report names no cancer

    sexes = sex_by_condition(folder).tables["Female share per primary condition category"].set_index("category")
    assert sexes.loc["I50", "cases"] == 2 and sexes.loc["I50", "female_share"] == 0.5 and sexes.loc["C50", "male"] == 1

    drugs = drugs_by_condition(folder)
    table = drugs.tables["Drugs per primary condition category"].set_index("category")
    assert table.loc["I50", "drugs_a_case"] == 1.5 and table.loc["I50", "top_drugs"] == "furosemide (2), metoprolol (1)"
    assert table.loc["Z34", "with_drugs"] == 0 and table.loc["I48", "top_drugs"] == "apixaban (1), ibuprofen (1)"
    assert drugs.numbers["distinct_drugs"] == 7 and drugs.numbers["cases"] == 7 and drugs.numbers["with_drugs"] == 5

    html = write_html(run_audit(folder.path), tmp_path / "report.html").read_text()
    assert all(f'id="{key}"' in html for key in ("case_document_types", "case_rules", "case_sex", "case_drugs"))


def test_case_panels_without_cases_are_not_available(tmp_path: Path) -> None:
    rng = random.Random(3)
    folder = AuditFolder.open(write_output_folder(tmp_path / "run", [record("clinical_inference", "discharge_summary", "ok", "plain_text", rng)]))
    for section in (document_type_cases(folder), rule_violations(folder), sex_by_condition(folder), drugs_by_condition(folder)):
        assert section.unavailable and "carry no clinical case" in section.summary
