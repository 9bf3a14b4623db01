"""The ICD-10-CM guideline pass, the prescribing model and ``Rules.broken`` on hand-made and drawn cases."""

from __future__ import annotations

from collections import Counter

import pytest

from mediflow import terminology
from mediflow.cases import Case, CaseSampler, Condition, Medication, Rules, load_case_book
from mediflow.cases.guidelines import Coder
from mediflow.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def book():
    return load_case_book()


@pytest.fixture(scope="module")
def coder(book) -> Coder:
    return Coder(book)


@pytest.fixture(scope="module")
def rules(book) -> Rules:
    return Rules(book)


@pytest.fixture(scope="module")
def sampler() -> CaseSampler:
    return CaseSampler(load_taxonomy())


def _draw(spec: str) -> str:
    return {"N18.3": "N18.31", "N18.6": "N18.6", "I50": "I50.9"}[spec]


def _codes(coded: list[tuple[str, str]]) -> list[str]:
    return [code for code, _ in coded]


def test_hypertension_with_heart_failure_or_ckd_is_a_combination_code(coder) -> None:
    assert _codes(coder.apply([("I50.22", "primary"), ("I10", "comorbidity")], _draw)) == ["I11.0", "I50.22"]  # I11.0 coded first (I50's note)
    assert _codes(coder.apply([("N18.31", "primary"), ("I10", "comorbidity")], _draw))[0] == "I12.9"
    assert "I12.0" in _codes(coder.apply([("N18.6", "primary"), ("I10", "comorbidity")], _draw))
    assert "I13.0" in _codes(coder.apply([("I50.9", "primary"), ("N18.4", "comorbidity"), ("I10", "comorbidity")], _draw))
    assert _codes(coder.apply([("I10", "primary"), ("E78.5", "comorbidity")], _draw)) == ["I10", "E78.5"]  # nothing to combine


def test_diabetes_with_a_linked_condition_takes_the_complication_code(coder) -> None:
    coded = _codes(coder.apply([("E11.9", "primary"), ("N18.31", "comorbidity")], _draw))
    assert coded[0] == "E11.22" and "N18.31" in coded and "E11.9" not in coded  # OCG I.C.4.a: the "with" convention
    coded = _codes(coder.apply([("E11.65", "primary"), ("N18.4", "comorbidity")], _draw))
    assert {"E11.65", "E11.22", "N18.4"} <= set(coded)  # as many E11 codes as needed


def test_combination_codes_get_the_codes_their_notes_ask_for(coder) -> None:
    assert "N18.31" in _codes(coder.apply([("D63.1", "comorbidity"), ("J18.9", "primary")][::-1], _draw))  # code first CKD
    assert "I50.9" in _codes(coder.apply([("I11.0", "primary")], _draw))  # use additional code: type of heart failure


def test_a_condition_in_a_pregnancy_is_coded_with_its_obstetric_code_and_trimester(coder) -> None:
    coded = coder.apply([("O09.892", "primary"), ("I10", "comorbidity"), ("J45.909", "comorbidity"), ("Z3A.24", "companion")], _draw, "antepartum")
    codes = _codes(coded)
    assert "I10" not in codes and "O10.012" in codes  # pre-existing hypertension, second trimester (24 weeks)
    assert codes.index("O99.512") < codes.index("J45.909")  # respiratory disease complicating pregnancy, before the asthma
    delivered = _codes(coder.apply([("O62.2", "primary"), ("E66.9", "comorbidity"), ("Z37.0", "companion")], _draw, "delivery"))
    assert "O99.214" in delivered  # obesity complicating childbirth


def test_rules_name_guideline_breaks_of_a_hand_made_case(rules) -> None:
    def case(*codes: str, age: int = 70, sex: str = "female", drugs: tuple[Medication, ...] = (), setting: str = "inpatient ward") -> Case:
        roles = ["primary"] + ["comorbidity"] * (len(codes) - 1)
        return Case("general_inpatient", age, sex, setting, "urgent", tuple(Condition(c, terminology.description(c), r) for c, r in zip(codes, roles)), drugs)

    assert any(line.startswith("hypertension_combination") for line in rules.broken(case("I50.9", "I10")))
    assert any(line.startswith("never_first_listed") for line in rules.broken(case("R65.20", "A41.9")))
    assert any(line.startswith("never_first_listed") for line in rules.broken(case("T45.515A", "D68.32")))
    assert any(line.startswith("diabetes_with") for line in rules.broken(case("E11.9", "N18.31")))
    assert any(line.startswith("pregnancy_obstetric_code") for line in rules.broken(case("Z34.82", "J45.909", "Z3A.30", age=30)))
    assert any(line.startswith("pregnancy_stage") for line in rules.broken(case("O99.214", "E66.9", "Z3A.30", age=30)))  # childbirth code before delivery
    assert any(line.startswith("sex_words") for line in rules.broken(case("N94.3", sex="male")))  # premenstrual tension in a man
    assert any(line.startswith("epidemiology") for line in rules.broken(case("I48.91", age=12)))  # AF below its floor
    assert rules.broken(case("I11.0", "I50.9", "E78.5")) == []


def test_rules_name_prescribing_breaks_of_a_hand_made_case(rules) -> None:
    def case(meds: list[tuple[str, str]], codes: tuple[str, ...] = ("I48.91", "I10"), age: int = 70, setting: str = "inpatient ward") -> Case:
        conditions = tuple(Condition(c, terminology.description(c), "primary" if i == 0 else "comorbidity") for i, c in enumerate(codes))
        return Case("general_inpatient", age, "female", setting, "urgent", conditions, tuple(Medication(n, i) for n, i in meds))

    def rules_of(c: Case) -> set[str]:
        return {line.split(":")[0] for line in rules.broken(c)}

    assert rules_of(case([("apixaban", "I48.91"), ("lisinopril", "I10")])) == set()
    assert "prescribing_indication" in rules_of(case([("metformin", "I10")]))
    assert "prescribing_duplicate_class" in rules_of(case([("apixaban", "I48.91"), ("warfarin", "I48.91")]))
    assert "prescribing_interaction" in rules_of(case([("apixaban", "I48.91"), ("ibuprofen", "M25.50")], ("I48.91", "M25.50")))
    assert "prescribing_contraindication" in rules_of(case([("loperamide", "R19.7")], ("K56.609", "R19.7")))
    assert "prescribing_age" in rules_of(case([("escitalopram", "F41.1")], ("F41.1",), age=2))
    assert "prescribing_setting" in rules_of(case([("vancomycin", "L03.115")], ("L03.115",), setting="primary care clinic"))
    pregnant = ("O10.012", "I10", "Z3A.20")
    assert "prescribing_pregnancy" in rules_of(case([("lisinopril", "O10.012")], pregnant, age=30))


def test_drawn_cases_keep_the_prescribing_model(sampler) -> None:
    t2dm = insulin = metformin = glp1 = 0
    for seed in range(300):
        case = sampler.case_for("chronic_disease_follow_up_note", seed)
        assert sampler.rules.broken(case) == []
        if any(code.startswith("E11") for code in case.codes) and case.drugs:
            t2dm += 1
            insulin += any(d.startswith("insulin") for d in case.drugs)
            metformin += "metformin" in case.drugs
            glp1 += any(d in ("semaglutide", "liraglutide", "dulaglutide") for d in case.drugs)
    assert t2dm > 40 and insulin > 0.1 * t2dm and metformin > glp1  # some type 2 diabetics on insulin; metformin first-line


def test_adverse_reactions_name_their_suspect_and_poisonings_their_antidote(sampler) -> None:
    for seed in range(60):
        case = sampler.case_for("adverse_drug_reaction_report", seed)
        causes = [c.code for c in case.conditions if c.role == "adverse_effect"]
        primary = case.primary.code
        assert causes and not ("T36" <= primary[:3] <= "T50" and primary[6:7] == "5")  # the effect first, the drug code after it
        assert any(m.role == "suspect" and m.indication == causes[0] for m in case.medications), case
    opioid = 0
    for seed in range(200):
        case = sampler.case_for("toxicology_consult_note", seed)
        code = case.primary.code
        assert not (code[:1] == "T" and len(code) >= 7 and code[6] in "56" and "T36" <= code[:3] <= "T50")  # no adverse effect or underdosing
        if code.startswith(("T40.0", "T40.1", "T40.2", "T40.3", "T40.4", "T40.6")) and code[6] in "1234":
            opioid += 1
            assert "naloxone" in case.drugs, case
    assert opioid > 5


def test_epidemiology_per_condition(sampler) -> None:
    sexes: Counter[str] = Counter()
    for seed in range(400):
        case = sampler.case_for("hematology_oncology_consult", seed)
        if case.primary.code.startswith("C50"):
            sexes[case.sex] += 1
        assert not any(c.code.startswith("I48") for c in case.conditions if case.age is not None and case.age < 30)
    assert sexes["female"] > 0.9 * sum(sexes.values()) and sum(sexes.values()) > 20  # about 1% of breast cancers are in men
    for seed in range(300):
        case = sampler.case_for("progress_note", seed)
        if case.age == 0:
            assert case.age_months is not None and 0 <= case.age_months < 12
            assert not any(c.code.startswith(("J30", "E66", "F41", "F90")) for c in case.conditions), case
    for seed in range(100):
        assert sampler.case_for("icu_progress_note", seed).acuity != "routine"


def test_children_where_children_are_seen_and_population_documents(sampler) -> None:
    children = sum(sampler.case_for("discharge_summary", seed).age < 18 for seed in range(300))
    assert 15 < children < 120  # paediatric and newborn stays are in the inpatient mix
    for seed in range(40):
        case = sampler.case_for("prescribing_information_excerpt", seed)
        assert case.population and case.age is None and case.sex is None and len(case.conditions) == 1
        assert all(m.indication == case.primary.code for m in case.medications)


@pytest.mark.parametrize(
    ("code", "wrong", "fine"),
    [
        ("F32.81", (30, "male"), (30, "female")),  # premenstrual dysphoric disorder
        ("G43.829", (30, "male"), (30, "female")),  # menstrual migraine
        ("S37.822A", (40, "female"), (40, "male")),  # injury of the prostate
        ("C79.63", (60, "male"), (60, "female")),  # secondary neoplasm of both ovaries
        ("G40.A09", (45, "female"), (8, "female")),  # childhood absence epilepsy in an adult
        ("G40.B09", (30, "male"), (14, "male")),  # juvenile myoclonic epilepsy, past its ceiling
        ("J84.848", (30, "female"), (3, "female")),  # interstitial lung disease of childhood
        ("F94.2", (64, "female"), (6, "female")),  # disinhibited attachment disorder of childhood
        ("M30.3", (30, "male"), (3, "male")),  # Kawasaki disease
    ],
)
def test_the_age_and_sex_edits_the_issue_names(rules, code, wrong, fine) -> None:
    assert rules.demographic_breaks(code, *wrong), (code, wrong)
    assert not rules.demographic_breaks(code, *fine), (code, fine)


def test_hip_fractures_take_their_own_sex_figures(sampler) -> None:
    sexes: Counter[str] = Counter()
    for seed in range(1500):
        case = sampler.case_for("trauma_activation_note", seed)
        if case.primary.code.startswith(("S72.0", "S72.1", "S72.2")):
            sexes[case.sex] += 1
    assert sum(sexes.values()) > 30 and sexes["female"] > 0.6 * sum(sexes.values())  # CDC: about three-quarters are women (chapter 19 alone gives 45%)
