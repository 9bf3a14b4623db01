"""The mention matcher and the case_mentions filter: names in context (negation, hedges, relatives, ambiguity).

The sentences here are the tests' own, not the benchmark's labelled notes (benchmarks/data/mentions/),
which stay a yardstick the tests do not tune to; the last test checks that set is intact.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import pytest
import yaml

from mediflow import terminology
from mediflow.cases import load_case_book
from mediflow.cases.mentions import MentionContext, MentionMatcher, context_path
from mediflow.errors import TaxonomyError
from mediflow.quality.filters import CaseMentionRule
from mediflow.resources import taxonomies_dir

MENTIONS = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "mentions"


@cache
def matcher() -> MentionMatcher:
    return MentionMatcher(load_case_book())


def mentioned(text: str, *codes: str) -> list[str]:
    return matcher().mentioned(text, list(codes))


@pytest.mark.parametrize(
    ("text", "code", "expected"),
    [
        ("Assessment: acute exacerbation of congestive heart failure.", "I50.23", True),
        ("Denies any history of heart failure.", "I50.23", False),
        ("Denies EtOH abuse.", "F10.10", False),
        ("Hx EtOH abuse, sober two years.", "F10.10", True),
        ("No evidence of pneumonia on today's film.", "J18.9", False),
        ("Pneumonia was ruled out.", "J18.9", False),
        ("Chest film negative for pneumonia; mild atelectasis.", "J18.9", False),
        ("No fever today, but the pneumonia is slow to clear.", "J18.9", True),  # the negation ends with its clause
        ("Denies cough. Pneumonia on the right, improving.", "J18.9", True),  # ... and with its sentence
        ("Breathless, no\nwheeze, known asthma.", "J45.909", True),  # a wrapped line is not a sentence end
        ("Assess for possible pulmonary embolism.", "I26.99", False),
        ("?PE - CT angiogram requested.", "I26.99", False),
        ("Any chest pain?", "R07.9", False),
        ("Rule out appendicitis; surgical review.", "K35.80", False),
        ("Her sister has type 2 diabetes.", "E11.9", False),
        ("FHx: father with stroke at 61.", "I63.9", False),
        ("Aspirin to reduce the risk of stroke.", "I63.9", False),
        ("DVT prophylaxis: enoxaparin 40 mg daily.", "I82.401", False),
        ("Saturating 99% on RA at rest.", "M06.9", False),
        ("Long-standing seropositive RA, on methotrexate.", "M06.9", True),
        ("PE: abdomen soft, non-tender.", "I26.99", False),
        ("CT angiogram shows a saddle PE.", "I26.99", True),
        ("ECG: LV hypertrophy by voltage criteria.", "I10", False),
        ("Known pulmonary hypertension, on sildenafil.", "I10", False),
        ("Borderline A1c, prediabetes; lifestyle advice.", "E11.9", False),
        ("He had a heart attack two years ago.", "I21.9", True),
        ("Her high blood pressure is better on amlodipine.", "I10", True),
        ("Your sugar was high at the last visit.", "E11.9", True),
        ("Cut down on added sugar and salt.", "E11.9", False),
        ("Admitted with community aquired pnuemonia.", "J18.9", True),  # misspelt
        ("Hypotension after induction, treated with fluids.", "I10", False),  # a real word one letter away
        ("Severe anaemia, transfused two units.", "D64.9", True),  # British spelling
        ("Sigmoid diverticulosis, no diverticulitis.", "K57.32", False),
        ("Coded J18.9 at discharge.", "J18.9", True),
        ("Assessment: fever, source unclear.", "R50.9", True),  # a one-word description names its code
        ("Left knee pain for three weeks, worse on stairs.", "M25.562", True),  # "Pain in left knee": pain with its part
        ("Grade 2 laceration; kidney injury managed conservatively.", "S37.092A", True),
        ("AKI on CKD: acute kidney injury, prerenal.", "S37.092A", False),  # inside another condition's name
        ("Pain well controlled on paracetamol.", "R52", False),  # "pain" alone names no part
        ("Kidney function stable.", "N18.9", False),  # an organ alone is no condition
    ],
)
def test_a_name_counts_only_where_the_text_asserts_it_of_the_patient(text: str, code: str, expected: bool) -> None:
    assert (code in mentioned(text, code)) is expected, matcher().find(text, [code])[code]


def test_a_family_history_code_is_named_by_a_relatives_condition() -> None:
    assert mentioned("Mother diagnosed with breast cancer at 48.", "Z80.3") == ["Z80.3"]
    assert mentioned("Breast cancer, left, on letrozole.", "Z80.3") == []  # the patient's own
    assert mentioned("No family history of breast cancer.", "Z80.3") == []


def test_weeks_of_gestation_are_read_in_their_usual_forms() -> None:
    assert mentioned("G3P2 at 28w4d, reactive NST.", "Z3A.28") == ["Z3A.28"]
    assert mentioned("Seen at 31+2 weeks with headache.", "Z3A.31") == ["Z3A.31"]
    assert mentioned("Seen at 31 weeks with headache.", "Z3A.28") == []


def test_the_finding_says_why_a_name_is_not_a_mention() -> None:
    finding = matcher().find("Vitals: BP 120/70, SpO2 97% RA.", ["M06.9"])["M06.9"]
    assert not finding.mentioned and "'RA' means something else here" in finding.explain() and "SpO2 97% RA" in finding.explain()
    assert finding.occurrences and finding.occurrences[0].why_not == finding.explain()
    negated = matcher().find("Denies chest pain.", ["R07.9"])["R07.9"].explain()
    assert negated.startswith("negated: ") and "Denies chest pain" in negated
    assert matcher().find("Stable angina.", ["K35.80"])["K35.80"].explain() == "none of its names is in the text"


def _record(document: str, conditions: list[tuple[str, str]]) -> dict[str, object]:
    roles = ["primary"] + ["comorbidity"] * (len(conditions) - 1)
    return {"input": document, "case": {"conditions": [{"code": c, "description": d, "role": r} for (c, d), r in zip(conditions, roles)]}}


def test_the_filter_keeps_only_documents_that_mention_the_primary() -> None:
    rule = CaseMentionRule(matcher().find)
    case = [("I26.99", "Other pulmonary embolism without acute cor pulmonale"), ("E11.9", "Type 2 diabetes mellitus without complications")]
    kept = rule.check(_record("CTPA: bilateral segmental PE. Type 2 diabetes on metformin.", case))
    assert kept.keep and kept.score == 1.0
    dropped = rule.check(_record("PE: lungs clear. T2DM, A1c 7.1.", case))  # PE is the exam header; only the comorbidity is named
    assert not dropped.keep and dropped.score == 0.5
    assert "does not mention its primary condition (I26.99" in dropped.reason and "section header" in dropped.reason and "mentions only E11.9" in dropped.reason
    assert rule.check({"input": "anything", "case": None}).reason == "not applicable"


def test_a_broken_context_file_is_one_taxonomy_error() -> None:
    data = yaml.safe_load(context_path().read_text(encoding="utf-8"))
    with pytest.raises(TaxonomyError, match="False is not a phrase; write it in quotes"):
        MentionContext.load({**data, "pseudo": [False]})  # what YAML makes of a bare `no`
    with pytest.raises(TaxonomyError, match="unknown trigger kind or direction 'rumoured.before'"):
        MentionContext.load({**data, "triggers": {"rumoured": {"before": ["they say"]}}})
    with pytest.raises(TaxonomyError, match="malformed rules"):
        MentionContext.load({"short": []})


def test_the_context_rules_are_taxonomy_data_a_user_folder_replaces(tmp_path: Path) -> None:
    """The built-in rules are taxonomies/cases/context.yaml; a user taxonomy folder's cases/context.yaml replaces them."""
    assert context_path() == taxonomies_dir() / "cases" / "context.yaml" and context_path(tmp_path) == context_path()
    text = "Reportedly pneumonia last winter."
    assert MentionMatcher.for_taxonomy(tmp_path).mentioned(text, ["J18.9"]) == ["J18.9"]
    rules = yaml.safe_load(context_path().read_text(encoding="utf-8"))
    rules["triggers"]["hedged"]["before"].append("reportedly")
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "context.yaml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    assert context_path(tmp_path) == tmp_path / "cases" / "context.yaml"
    finding = MentionMatcher.for_taxonomy(tmp_path).find(text, ["J18.9"])["J18.9"]
    assert not finding.mentioned and finding.explain().startswith("hedged: 'Reportedly pneumonia")
    broken = tmp_path / "broken" / "cases"
    broken.mkdir(parents=True)
    (broken / "context.yaml").write_text("triggers: [unclosed\n", encoding="utf-8")
    with pytest.raises(TaxonomyError, match="context.yaml"):
        MentionMatcher.for_taxonomy(broken.parent)


def test_the_labelled_notes_are_intact_and_split_as_frozen() -> None:
    """The benchmark's yardstick: real billable codes, labels among the case codes, the held-out ids as the README's hash rule gives."""
    notes = yaml.safe_load((MENTIONS / "notes.yaml").read_text(encoding="utf-8"))["notes"]
    assert len(notes) >= 100 and len({n["id"] for n in notes}) == len(notes)
    for note in notes:
        assert all(terminology.is_billable(code) for code in note["codes"]) and set(note["mentioned"]) <= set(note["codes"]), note["id"]
    held_out = {n["id"] for n in notes if int(hashlib.sha256(("mediflow-mentions-v1:" + n["id"]).encode()).hexdigest()[:8], 16) < 0.3 * 16**8}
    frozen = {line for line in (MENTIONS / "split.txt").read_text().splitlines() if line and not line.startswith("#")}
    assert held_out == frozen and 0.25 < len(held_out) / len(notes) < 0.4
