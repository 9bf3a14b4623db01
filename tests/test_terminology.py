"""Real vocabularies: ICD-10-CM lookups on known real and fake codes, drug names, seeded samplers."""

from __future__ import annotations

import pytest

from mediflow import terminology
from mediflow.errors import MediflowError


@pytest.mark.parametrize(
    ("code", "valid", "billable"),
    [
        ("E11.9", True, True),  # type 2 diabetes without complications
        ("E119", True, True),  # without the dot
        (" e11.9 ", True, True),  # messy input
        ("N18.3", True, False),  # CKD stage 3: a heading since the 3a/3b split
        ("N18.31", True, True),
        ("S72.001A", True, True),  # seventh character
        ("S72.001", True, False),  # needs its seventh character
        ("U07.1", True, True),  # COVID-19
        ("E11", True, False),
        ("Z99.99X", False, False),  # well-formed but invented
        ("E11.99999", False, False),
        ("heart failure", False, False),
        ("", False, False),
    ],
)
def test_validity_and_billability(code: str, valid: bool, billable: bool) -> None:
    assert terminology.is_valid(code) is valid
    assert terminology.is_billable(code) is billable


def test_normalise_adds_the_dot_and_upper_cases() -> None:
    assert terminology.normalise("e119") == "E11.9"
    assert terminology.normalise("S72001A") == "S72.001A"
    assert terminology.normalise("I10") == "I10"


def test_descriptions_and_hierarchy() -> None:
    assert terminology.description("E11.9") == "Type 2 diabetes mellitus without complications"
    assert terminology.description("I10") == "Essential (primary) hypertension"
    assert terminology.parent("E11.9") == "E11"
    assert terminology.parent("E11") is None
    assert terminology.children("N18.3") == ["N18.30", "N18.31", "N18.32"]
    assert terminology.children("E11.9") == []
    assert terminology.siblings("N18.31") == ["N18.30", "N18.32"]


def test_fake_codes_are_errors_naming_the_code_and_release() -> None:
    with pytest.raises(MediflowError, match=r"'Z99.99X' is not an ICD-10-CM code \(ICD-10-CM April 2026"):
        terminology.description("Z99.99X")


def test_sampler_is_reproducible_real_billable_and_distinct() -> None:
    first = terminology.sample_billable_codes(25, seed=7)
    assert first == terminology.sample_billable_codes(25, seed=7)
    assert first != terminology.sample_billable_codes(25, seed=8)
    assert len({entry.code for entry in first}) == 25
    for entry in first:
        assert terminology.is_billable(entry.code)
        assert entry.description == terminology.description(entry.code)


def test_sampler_restricts_to_a_chapter_block_or_category() -> None:
    heart_failure = terminology.sample_billable_codes(5, seed=1, within="I50")
    assert all(entry.code.startswith("I50.") for entry in heart_failure)
    diabetes = terminology.sample_billable_codes(10, seed=1, within="E08-E13")
    assert all(entry.code[:3] in {"E08", "E09", "E10", "E11", "E13"} for entry in diabetes)
    with pytest.raises(MediflowError, match="cannot sample 99"):
        terminology.sample_billable_codes(99, seed=1, within="I10")
    with pytest.raises(MediflowError, match="not an ICD-10-CM chapter"):
        terminology.sample_billable_codes(1, seed=1, within="Q99.99X")


def test_release_is_recorded() -> None:
    assert "April 2026" in terminology.ICD10CM_RELEASE and "1.5.0" in terminology.ICD10CM_RELEASE
    assert "2.0.9" in terminology.DRUG_VOCABULARY_RELEASE


def test_drug_names() -> None:
    assert terminology.generic_drug_name("Lipitor") == "atorvastatin"
    assert terminology.generic_drug_name("METFORMIN") == "metformin"
    assert terminology.is_known_drug("glucophage")
    assert not terminology.is_known_drug("zorblatinib")
    assert "lipitor" in terminology.drug_synonyms("atorvastatin")
    assert terminology.drug_synonyms("zorblatinib") == []


def test_drug_sampler_is_reproducible_and_real() -> None:
    names = terminology.sample_drug_names(20, seed=3)
    assert names == terminology.sample_drug_names(20, seed=3)
    assert len(set(names)) == 20
    assert all(terminology.generic_drug_name(name) == name for name in names)
