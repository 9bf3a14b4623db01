"""The clinical case sampler: coherent, reproducible, on-profile cases; data errors are one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mediflow import terminology
from mediflow.cases import CaseSampler, load_case_book
from mediflow.cases.book import Assignment, Weighted
from mediflow.errors import TaxonomyError
from mediflow.resources import taxonomies_dir
from mediflow.taxonomy import load_taxonomy

SEEDS = range(40)


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy()


@pytest.fixture(scope="module")
def sampler(taxonomy) -> CaseSampler:
    return CaseSampler(taxonomy)


def test_rules_hold_for_every_document_type_over_many_seeds(taxonomy, sampler) -> None:
    for document_type in taxonomy.document_types:
        for seed in SEEDS:
            case = sampler.case_for(document_type, seed)
            assert sampler.rules.broken(case) == [], (document_type, seed, case)
            assert case.primary.role == "primary" and 0 <= len([c for c in case.conditions if c.role == "comorbidity"]) <= 3
            assert all(terminology.is_billable(code) for code in case.codes)
            assert terminology.chapter_of(case.primary.code) != "20"  # an external cause is never first-listed


def test_same_seed_same_case_other_seed_other_case(sampler) -> None:
    assert sampler.case_for("discharge_summary", 7) == sampler.case_for("discharge_summary", 7)
    cases = {sampler.case_for("discharge_summary", seed).codes for seed in range(30)}
    assert len(cases) > 25


def test_primary_conditions_come_from_the_document_types_profile(taxonomy, sampler) -> None:
    book = sampler.book
    for document_type in ("cardiology_consult", "psychiatry_consult", "mammography_report", "trauma_activation_note"):
        profile = book.profiles[sampler.profile_name(document_type)]
        for seed in SEEDS:
            primary = sampler.case_for(document_type, seed).primary.code
            assert any(terminology.covers(spec, primary) for spec in profile.primary.values), (document_type, primary)


def test_an_obstetric_type_never_draws_a_male_or_a_child(sampler) -> None:
    for document_type in ("prenatal_visit_note", "delivery_note"):
        for seed in range(150):
            case = sampler.case_for(document_type, seed)
            assert case.sex == "female" and case.age >= 12, case
            if document_type == "prenatal_visit_note":
                assert any(code.startswith("Z3A") for code in case.codes)  # weeks of gestation accompany the pregnancy
            else:
                assert any(code.startswith("Z37") for code in case.codes)  # every delivery has its outcome (OCG I.C.15.b.5)


def test_a_neonatal_type_never_draws_an_adult(tmp_path: Path) -> None:
    folder = tmp_path / "taxonomy"
    (folder / "document_types").mkdir(parents=True)
    (folder / "document_types" / "neonatal.yaml").write_text(
        "document_types:\n"
        "  - name: nicu_progress_note\n"
        "    category: inpatient_notes\n"
        "    description: A daily progress note in the neonatal intensive care unit.\n"
        "    sections: [Events, Respiratory, Feeding, Plan]\n"
        "    typical_length: {min_words: 200, max_words: 600}\n"
        "    specialties: [neonatology]\n"
        "    settings: [neonatal intensive care unit]\n",
        encoding="utf-8",
    )
    taxonomy = load_taxonomy(folder)
    book = load_case_book()
    book = dataclasses.replace(book, document_types={**book.document_types, "nicu_progress_note": Assignment(Weighted(("newborn",), (1.0,)), True)})
    sampler = CaseSampler(taxonomy, book)
    for seed in range(150):
        case = sampler.case_for("nicu_progress_note", seed)
        assert case.age == 0 and case.setting == "neonatal intensive care unit", case
        assert not any(code.startswith(("O", "Z3A", "Z37")) for code in case.codes)  # the mother's codes stay off


def test_injuries_carry_an_external_cause_and_comorbidities_are_chronic(sampler) -> None:
    injuries = 0
    for seed in range(80):
        case = sampler.case_for("trauma_activation_note", seed)
        roles = {c.role: c.code for c in case.conditions}
        if case.primary.code.startswith("S"):
            injuries += 1
            assert terminology.seventh_character(case.primary.code) == "A"  # the initial encounter in a trauma bay
            assert "external_cause" in roles and terminology.chapter_of(roles["external_cause"]) == "20"
        assert all(terminology.is_chronic(c.code) for c in case.conditions if c.role == "comorbidity")
    assert injuries > 60


def test_drugs_are_real_and_only_where_the_document_shows_medications(sampler) -> None:
    shown = 0
    for seed in SEEDS:
        with_drugs = sampler.case_for("discharge_summary", seed)
        shown += bool(with_drugs.drugs)
        assert len(with_drugs.drugs) <= sampler.book.prescribing.limit
        assert all(terminology.vocabulary_drug_name(drug) for drug in with_drugs.drugs)
        for medication in with_drugs.medications:  # each drug is for a condition of the case, or hospital prophylaxis
            assert medication.indication in with_drugs.codes or medication.role == "prophylaxis", (medication, with_drugs)
        assert sampler.case_for("ct_head_report", seed).drugs == ()
    assert shown > 30
    child = [sampler.case_for("well_child_visit_note", seed) for seed in range(60)]
    assert not any("aspirin" in case.drugs or "doxycycline" in case.drugs for case in child if case.age < 8)


def test_excludes1_pairs_break_a_case(sampler) -> None:
    assert any(line.startswith("excludes1") for line in sampler.rules.pair_breaks("E11.9", "E10.9"))
    assert sampler.rules.pair_breaks("E11.9", "I10") == ()
    assert any(line.startswith("gestation") for line in sampler.rules.pair_breaks("O24.410", "Z3A.08")) is False
    assert any(line.startswith("gestation") for line in sampler.rules.pair_breaks("Z34.03", "Z3A.12"))  # third trimester at 12 weeks


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("      I50: 7     # heart failure", "      I5O: 7", "profile 'cardiology': primary: 'I5O' is not an ICD-10-CM chapter, block or code (ICD-10-CM April 2026 tabular list (simple-icd-10-cm 1.5.0)); did you mean 'I50'?"),
        ('      "9": 2     # the rest of circulatory disease', '      "23": 2', "'23' is not an ICD-10-CM chapter, block or code"),
        ("      R07: 6     # chest pain", "      R00-R08: 6", "'R00-R08' is not an ICD-10-CM chapter, block or code"),
        ("    W19: 8     # unspecified fall", "    W19: -1", "weight of 'W19' must be a positive number"),
        (
            "    comorbidities: {pool: adult_chronic, child_pool: paediatric_chronic, counts: {0: 10, 1: 25, 2: 35, 3: 30}}\n    primary:\n      A41: 9",
            "    comorbidities: {pool: adult_chronics, counts: {0: 10}}\n    primary:\n      A41: 9",
            "unknown pool 'adult_chronics'; did you mean 'adult_chronic'?",
        ),
    ],
)
def test_profile_errors_are_one_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    text = (taxonomies_dir() / "cases" / "profiles.yaml").read_text(encoding="utf-8")
    assert old in text
    (cases / "profiles.yaml").write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(TaxonomyError) as caught:
        load_case_book(tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(cases / "profiles.yaml"))


def test_a_user_folder_replaces_one_case_file(tmp_path: Path) -> None:
    (tmp_path / "cases").mkdir()
    text = (taxonomies_dir() / "cases" / "synonyms.yaml").read_text(encoding="utf-8")
    (tmp_path / "cases" / "synonyms.yaml").write_text(text.replace("synonyms:\n", "synonyms:\n  R05: [tussis]\n", 1), encoding="utf-8")
    book = load_case_book(tmp_path)
    assert book.synonyms["R05"] == ("tussis",) and book.version != load_case_book().version
    assert book.profiles == load_case_book().profiles


def test_every_epidemiology_figure_is_in_the_docs_with_its_source() -> None:
    """docs/taxonomy.md lists each entry of conditions.yaml with its source (issue 18: sources per figure in the docs)."""
    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "taxonomy.md").read_text()
    entries = yaml.safe_load((root / "taxonomies" / "cases" / "conditions.yaml").read_text())["epidemiology"]
    for entry in entries:
        female = f"{entry['female']:.0%}" if "female" in entry else "-"
        row = f"| {', '.join(str(c) for c in entry['codes'])} | {female} |"
        assert row in docs and entry["source"].replace("|", "/") in docs, row
