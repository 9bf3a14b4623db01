"""An independent review of clinical cases: the yardstick the case sampler is measured on.

Nothing here comes from ``mediflow.cases``: the rules are written from public text (the ICD-10-CM
Official Guidelines for Coding and Reporting, the tabular list's own "code first", "use additional
code" and Excludes1 notes as the installed ``simple-icd-10-cm`` carries them, the CMS Medicare Code
Editor's age and sex categories, FDA labels) and the tables are ``case_review.yaml``, written before
the sampler's prescribing model and guideline rules and then frozen. It reads a case as the ``case``
column stores it (``Case.to_row()``): ``age``, ``sex``, ``setting``, ``acuity``, ``conditions``
[``code``, ``role``], ``drugs`` and, where the sampler says which condition a drug treats,
``medications`` [``name``, ``indication``, ``role``].

    reviewer = Reviewer()
    reviewer.review(case_row, document_type)   # [Finding(kind, rule, detail), ...]

Kinds: ``drug`` (indication, duplicate class, contraindication, age, pregnancy, setting), ``coding``
(guideline violations; those of a pregnancy also have ``pregnancy`` in the rule), ``age_sex``,
``fit`` (the document type, the setting and the acuity).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import simple_icd_10_cm as icd

TABLES = Path(__file__).with_name("case_review.yaml")
_REFERENCE = re.compile(r"\b([A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?)(?:\s*-\s*([A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?))?")
_CONDITIONAL = ("if applicable", "if known", "such as", "any associated", "if present", ", if", "any ")


@dataclass(frozen=True)
class Finding:
    kind: str  # drug | coding | age_sex | fit
    rule: str
    detail: str


# --- code specs ------------------------------------------------------------------------------------


def _intent(code: str) -> str | None:
    """The 6th character of a T36-T65 drug or toxic-effect code (1-4 poisoning, 5 adverse effect, 6 underdosing)."""
    if code[:1] == "T" and "T36" <= code[:3] <= "T65" and len(code) >= 7:
        return code[6]
    return None


def covers(spec: str, code: str) -> bool:
    """Prefix or equal-length prefix range; a T36-T65 spec never matches an underdosing code."""
    if spec.startswith("T") and _intent(code) == "6":
        return False
    first, _, last = spec.partition("-")
    if not last:
        return code.startswith(first)
    return first <= code[: len(first)] <= last


def any_covers(specs: Iterable[str], code: str) -> bool:
    return any(covers(spec, code) for spec in specs)


@cache
def description(code: str) -> str:
    return str(icd.get_description(code)) if icd.is_valid_item(code) else ""


@cache
def _family(code: str) -> tuple[str, ...]:
    """The code and its ancestors up to the three-character category (where tabular notes sit)."""
    if not icd.is_valid_item(code):
        return (code,)
    return (code, *(item for item in icd.get_ancestors(code) if icd.is_category_or_subcategory(item)))


def _references(note: str) -> list[str]:
    specs = []
    for first, last in _REFERENCE.findall(note):
        specs.append(f"{first}-{last}" if last else first)
    return [spec.rstrip(".") for spec in specs]


@cache
def code_first(code: str) -> tuple[tuple[str, bool], ...]:
    """Each "code first" note of the code and its category: (reference, mandatory) pairs."""
    found = []
    for item in _family(code):
        note = icd.get_code_first(item)
        if not note:
            continue
        # one underlying condition, named without "if applicable" / "such as": it must be in the case
        mandatory = "\n" not in note.strip() and not any(mark in note.lower() for mark in _CONDITIONAL)
        found += [(spec, mandatory) for spec in _references(note)]
    return tuple(found)


@cache
def excludes1(code: str) -> tuple[str, ...]:
    found = []
    for item in (code, *(icd.get_ancestors(code) if icd.is_valid_item(code) else ())):
        for note in icd.get_excludes1(item):
            found += _references(note)
    return tuple(found)


def _is_manifestation(code: str) -> bool:
    return "in diseases classified elsewhere" in description(code).lower()


@cache
def _trimesters() -> list[tuple[str, int, int]]:
    """The trimester definitions of chapter 15's own note: (name, first week, last week)."""
    note = icd.get_notes("15")
    found = {"1st": (0, 13), "2nd": (14, 27), "3rd": (28, 45)}
    weeks = {key: [int(n) for n in re.findall(r"(\d+) weeks", line)] for key in found for line in note.splitlines() if line.strip().startswith(key)}
    if weeks.get("1st") == [14] and weeks.get("2nd") == [14, 28] and weeks.get("3rd") == [28]:
        return [("first trimester", 0, 13), ("second trimester", 14, 27), ("third trimester", 28, 45)]
    raise RuntimeError(f"chapter 15's trimester note changed: {note!r}")


def _weeks(codes: Iterable[str]) -> tuple[int, int] | None:
    for code in codes:
        if code.startswith("Z3A.") and code != "Z3A.00":
            weeks = int(code[4:])
            return (0, 7) if weeks == 1 else (42, 45) if weeks == 49 else (weeks, weeks)
    return None


# --- the reviewer ------------------------------------------------------------------------------------


class Reviewer:
    def __init__(self, path: Path = TABLES) -> None:
        tables = yaml.safe_load(path.read_text(encoding="utf-8"))
        self.tables = tables
        self.groups: dict[str, list[str]] = tables["groups"]
        self.settings: dict[str, dict[str, Any]] = tables["settings"]
        self.drugs: dict[str, dict[str, Any]] = {name.lower(): entry for name, entry in tables["drugs"].items()}
        for entry in self.drugs.values():
            entry["treats"] = [spec for item in entry["treats"] for spec in (self.groups[item[6:]] if str(item).startswith("group:") else [str(item)])]
        self.combinations = {frozenset(pair["drugs"]) for pair in tables["combinations"]}
        self.condition_contra = tables["contraindications"]["condition"]
        self.drug_contra = tables["contraindications"]["drug"]
        self.t_codes: dict[str, list[str]] = tables["t_codes"]
        self.coding = tables["coding"]
        self.age_sex = tables["age_sex"]
        self.documents = tables["documents"]
        self.population = set(self.documents["population"])

    # --- helpers -----------------------------------------------------------------------------------

    def setting_kind(self, setting: str) -> str:
        return self.settings.get(setting, {}).get("kind", "other")

    def t_classes(self, code: str) -> list[str]:
        """Drug classes an adverse-effect or poisoning code can be caused by (longest prefix)."""
        best = ""
        for prefix in self.t_codes:
            if code.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return self.t_codes.get(best, [])

    def suspect(self, drug: str, codes: list[str]) -> bool:
        """Whether ``drug`` is the cause of a poisoning or adverse effect coded in the case."""
        entry = self.drugs.get(drug)
        if entry is None:
            return False
        return any(_intent(code) in ("1", "2", "3", "4", "5") and entry["class"] in self.t_classes(code) for code in codes)

    # --- review -----------------------------------------------------------------------------------

    def review(self, case: dict[str, Any], document_type: str) -> list[Finding]:
        codes = [c["code"] for c in case["conditions"]]
        findings = self.fit(case, document_type, codes)
        findings += self.coding_findings(case, document_type, codes)
        if case.get("age") is not None:
            findings += self.age_sex_findings(case, codes)
        if case.get("drugs"):
            findings += self.drug_findings(case, codes)
        return findings

    # fit: population documents, the document type's primary, setting and acuity
    def fit(self, case: dict[str, Any], document_type: str, codes: list[str]) -> list[Finding]:
        out = []
        if document_type in self.population and case.get("age") is not None:
            out.append(Finding("fit", "population_document_with_a_patient", f"{document_type} about one {case['age']}y {case['sex']}"))
        rule = self.documents["fit"].get(document_type)
        primary = codes[0] if codes else ""
        if rule:
            if "primary_in" in rule and not any_covers(rule["primary_in"], primary):
                out.append(Finding("fit", f"{document_type}_primary", f"{primary} {description(primary)}: {rule['why']}"))
            if "primary_not_in" in rule and any_covers(rule["primary_not_in"], primary):
                out.append(Finding("fit", f"{document_type}_primary", f"{primary} {description(primary)}: {rule['why']}"))
            if rule.get("no_underdosing_or_adverse_effect") and _intent(primary) in ("5", "6"):
                out.append(Finding("fit", f"{document_type}_primary", f"{primary} is an adverse effect or underdosing: {rule['why']}"))
            age = case.get("age")
            if age is not None and (age < rule.get("min_age", 0) or age > rule.get("max_age", 200)):
                out.append(Finding("fit", f"{document_type}_age", f"age {age}: {rule['why']}"))
            if rule.get("needs_pregnancy") and not any(c.startswith(("O", "Z34", "Z3A", "Z33")) for c in codes):
                out.append(Finding("fit", f"{document_type}_pregnancy", "no pregnancy code"))
            if rule.get("needs_delivery") and not any(c.startswith(("O80", "O81", "O82", "Z37")) for c in codes):
                out.append(Finding("fit", f"{document_type}_delivery", "no delivery code"))
        setting = self.settings.get(case.get("setting") or "")
        if setting and case.get("acuity") is not None and case["acuity"] not in setting["acuities"]:
            out.append(Finding("fit", "setting_acuity", f"{case['acuity']} in {case['setting']}"))
        return out

    # coding guidelines
    def coding_findings(self, case: dict[str, Any], document_type: str, codes: list[str]) -> list[Finding]:
        out: list[Finding] = []
        coding = self.coding

        def add(rule: str, detail: str) -> None:
            out.append(Finding("coding", rule, detail))

        if len(set(codes)) < len(codes):
            add("duplicate_code", ", ".join(codes))
        primary = codes[0] if codes else ""
        # never first-listed
        for entry in coding["never_first"]:
            if any_covers(entry["codes"], primary):
                add("never_first_listed", f"{primary}: {entry['why']}")
        if _is_manifestation(primary):
            add("never_first_listed", f"{primary} is a manifestation code 'in diseases classified elsewhere' (OCG I.A.13)")
        if _intent(primary) == "5" and primary[:3] <= "T50":
            add("never_first_listed", f"{primary}: the nature of the adverse effect is coded first (OCG I.C.19.e.5.a)")
        if _intent(primary) == "6":
            add("never_first_listed", f"{primary}: underdosing codes are never first-listed (OCG I.C.19.e.5.c)")
        for code in codes[1:]:
            if any_covers(coding["first_only"], code):
                add("first_listed_only", f"{code} may only be first-listed (OCG I.C.21.c.16)")
        # code first / manifestation pairs (tabular notes)
        for position, code in enumerate(codes):
            notes = code_first(code)
            if not notes:
                continue
            referenced = [i for i, other in enumerate(codes) if i != position and any(covers(spec, other) for spec, _ in notes)]
            if any(i > position for i in referenced):
                add("code_first_order", f"{code} is listed before the code its 'code first' note names ({', '.join(codes[i] for i in referenced)})")
            mandatory = [spec for spec, required in notes if required]
            if all(spec.startswith("O") for spec in mandatory) and not any(c.startswith(("O", "Z3A")) and c != code for c in codes):
                mandatory = []  # a note naming only chapter 15 codes applies in a pregnancy
            if code.startswith("Z3A") and any(c.startswith("Z34") for c in codes):
                mandatory = []  # reviewer's reading: weeks of gestation accompany a routine prenatal visit (Z34) too
            if mandatory and not referenced:
                add("code_first_missing", f"{code} needs its underlying condition ({', '.join(mandatory)})")
        # Excludes1
        for code, other in combinations(codes, 2):
            if any(covers(spec, other) for spec in excludes1(code)) or any(covers(spec, code) for spec in excludes1(other)):
                add("excludes1", f"{code} and {other}")
        # hypertension (OCG I.C.9.a)
        heart = [c for c in codes if any_covers(coding["heart_involvement"], c)]
        ckd = [c for c in codes if c.startswith("N18")]
        pregnant = any(c.startswith(("O", "Z34", "Z3A")) for c in codes)
        if not pregnant:
            if "I10" in codes and heart:
                add("hypertension_heart", f"I10 with {heart[0]}: hypertensive heart disease is I11 (OCG I.C.9.a.1)")
            if "I10" in codes and ckd:
                add("hypertension_ckd", f"I10 with {ckd[0]}: hypertensive CKD is I12 (OCG I.C.9.a.2)")
            for code in codes:
                if code == "I11.9" and heart:
                    add("hypertension_heart", f"I11.9 'without heart failure' with {heart[0]}")
                if code.startswith("I11") and ckd:
                    add("hypertension_heart_ckd", f"{code} with {ckd[0]}: I13 (OCG I.C.9.a.3)")
                if code.startswith("I12") and any(c.startswith("I50") for c in codes):
                    add("hypertension_heart_ckd", f"{code} with heart failure: I13 (OCG I.C.9.a.3)")
                if code == "I11.0" and not any(c.startswith("I50") for c in codes):
                    add("use_additional_code", "I11.0 without the type of heart failure (I50.-)")
                if code.startswith(("I12", "I13")) and not ckd:
                    add("use_additional_code", f"{code} without the stage of CKD (N18.-)")
                if code in ("I13.0", "I13.2") and not any(c.startswith("I50") for c in codes):
                    add("use_additional_code", f"{code} without the type of heart failure (I50.-)")
                late = any(c in ("N18.5", "N18.6") for c in ckd)
                if code in ("I12.9", "I13.0", "I13.10") and late:
                    add("hypertension_ckd_stage", f"{code} (CKD 1-4) with {ckd}")
                if code in ("I12.0", "I13.11", "I13.2") and ckd and not late:
                    add("hypertension_ckd_stage", f"{code} (CKD 5/ESRD) with {ckd}")
        # diabetes (OCG I.C.4.a, the "with" convention)
        diabetes = [c for c in codes if c[:3] in ("E08", "E09", "E10", "E11", "E13")]
        if diabetes:
            kinds = {c[:3] for c in diabetes}
            for code in diabetes:
                if code.endswith(".9") and len([c for c in diabetes if c[:3] == code[:3]]) > 1:
                    add("diabetes_without_complications", f"{code} 'without complications' with another {code[:3]} code")
                if code.endswith(".22") and not ckd:
                    add("use_additional_code", f"{code} without the stage of CKD (N18.-)")
            for entry in coding["diabetes_with"]:
                linked = [c for c in codes if any_covers(entry["codes"], c)]
                if linked and not any(c[3:].startswith(tuple(entry["needs"])) for c in diabetes):
                    add("diabetes_with", f"{'/'.join(sorted(kinds))} with {linked[0]}: {entry['why']} (OCG I.C.4.a)")
            if "E10" in kinds and "Z79.4" in codes:
                add("diabetes_insulin_code", "Z79.4 is not assigned for type 1 diabetes (OCG I.C.4.a.3)")
            drugs = [d.lower() for d in case.get("drugs") or []]
            insulin = [d for d in drugs if self.drugs.get(d, {}).get("class") in ("short-acting insulin", "basal insulin")]
            if kinds & {"E11", "E13"} and insulin and "Z79.4" not in codes and not pregnant:
                add("diabetes_insulin_code", f"type 2 diabetes treated with {insulin[0]} without Z79.4 (OCG I.C.4.a.3)")
        if coding["ashd_with_angina"]["ashd"][0] in codes and any(c.startswith("I20") for c in codes):
            add("ashd_with_angina", "I25.10 with I20: coronary disease with angina is I25.11- (OCG I.C.9.b)")
        # sepsis (OCG I.C.1.d)
        infections = ["A00-B99", "J09-J18", "J85", "J86", "N10", "N39.0", "N30", "L02", "L03", "K35", "K57", "K65", "K81", "K83.0", "M00", "M86", "I33", "G00-G04"]
        infections += ["T80.2", "T81.4", "T82.6", "T82.7", "T83.5", "T84.5", "O85", "O86", "U07.1", "P36"]
        if any(c.startswith(("R65.1", "R65.2")) for c in codes) and not any(any_covers(infections, c) for c in codes):
            add("sepsis_without_infection", "R65.1-/R65.2- without the underlying infection (OCG I.C.1.d.4)")
        # injuries: the 7th character and the setting (OCG I.C.19.a)
        kind = self.setting_kind(case.get("setting") or "")
        seventh = primary[-1] if primary[:1] in ("S", "T") and len(primary) == 8 else None
        if seventh in ("D", "S") and kind == "emergency":
            add("injury_encounter", f"{primary} (7th character {seventh}) in {case.get('setting')}: active treatment is 'A'")
        if seventh == "A" and case.get("setting") in ("outpatient rehabilitation", "rehabilitation facility"):
            add("injury_encounter", f"{primary} (7th character A) in rehabilitation: the healing phase is 'D'")
        out += self.pregnancy_findings(case, document_type, codes)
        return out

    def pregnancy_findings(self, case: dict[str, Any], document_type: str, codes: list[str]) -> list[Finding]:
        """OCG I.C.15 on cases with a pregnancy (any chapter 15 code, Z34, Z3A, Z37)."""
        if not any(c.startswith(("O", "Z34", "Z3A", "Z37")) for c in codes):
            return []
        out: list[Finding] = []

        def add(rule: str, detail: str) -> None:
            out.append(Finding("coding", f"pregnancy_{rule}", detail))

        primary = codes[0]
        obstetric = [c for c in codes if c.startswith("O")]
        delivered = any(c.startswith(("O80", "O81", "O82", "Z37")) for c in codes) or document_type == "delivery_note"
        if not (primary.startswith(("O", "Z34", "Z33", "Z39", "Z32"))):
            add("sequencing", f"{primary} first-listed in a pregnancy: chapter 15 codes have sequencing priority (OCG I.C.15.a.1)")
        if any(c.startswith("Z34") for c in codes):
            others = [c for c in codes if not c.startswith(("Z34", "Z3A"))]
            if others:
                add("z34_not_normal", f"Z34 (normal pregnancy) with {', '.join(others)} (OCG I.C.15.b.1)")
        # conditions outside chapter 15 need their obstetric code (OCG I.C.15.a.1, d, g; O99 notes)
        wrappers = [
            (("I10", "I11", "I12", "I13", "I15", "I16"), ("O10", "O11", "O16")),
            (("E10",), ("O24.0",)),
            (("E11",), ("O24.1",)),
            (("E08", "E09", "E13"), ("O24.3", "O24.8")),
            (("D50", "D51", "D52", "D53", "D55", "D56", "D57", "D58", "D59", "D60", "D61", "D62", "D63", "D64"), ("O99.0",)),
            (("D65", "D66", "D67", "D68", "D69", "D7", "D8"), ("O99.1",)),
            (("E66",), ("O99.21",)),
            (("E",), ("O99.28", "O25", "O99.2")),
            (("F10",), ("O99.31",)),
            (("F11", "F12", "F13", "F14", "F15", "F16", "F18", "F19"), ("O99.32",)),
            (("F17",), ("O99.33",)),
            (("F",), ("O99.34",)),
            (("G",), ("O99.35",)),
            (("I",), ("O99.4", "O22", "O87")),
            (("J",), ("O99.5",)),
            (("K",), ("O99.6", "O26.6", "O26.61")),
            (("L",), ("O99.7",)),
            (("N39", "N30", "N10", "N11", "N12", "N13", "N15", "N34"), ("O23",)),
            (("N18", "N17", "N0", "N1", "N2"), ("O26.83", "O10.2", "O10.3", "O10.4", "O90.49")),
            (("A", "B", "U07"), ("O98",)),
            (("C", "D0", "D1", "D2", "D3", "D4"), ("O9A.1",)),
            (("S", "T0", "T1", "T2", "T3"), ("O9A.2",)),
            (("R73",), ("O99.81",)),
            (("M", "N", "H", "Q", "R"), ("O99.89", "O26", "O99.8")),
        ]
        for code in codes:
            if code.startswith(("O", "Z", "V", "W", "X", "Y")):
                continue
            for prefixes, needed in wrappers:
                if code.startswith(prefixes):
                    if not any(o.startswith(needed) for o in obstetric):
                        add("missing_obstetric_code", f"{code} in a pregnancy without {'/'.join(needed)} (OCG I.C.15.a.1)")
                    break
        if "I10" in codes:
            add("hypertension", "I10 in a pregnancy: pre-existing hypertension is O10.0- (OCG I.C.15.d)")
        if any(c.startswith("O24.4") for c in codes) and any(c[:3] in ("E10", "E11", "E13") for c in codes):
            add("gestational_diabetes", "gestational diabetes O24.4- with pre-existing diabetes (OCG I.C.15.i)")
        # the weeks: trimester, pre-eclampsia from 20 weeks, term
        weeks = _weeks(codes)
        for code in obstetric:
            text = description(code).lower()
            for name, low, high in _trimesters():
                if name in text and weeks and (weeks[1] < low or weeks[0] > high):
                    add("trimester_weeks", f"{code} ({name}) at {weeks[0]} weeks (chapter 15 note)")
            if code[:3] in ("O11", "O13", "O14", "O15") and ("first trimester" in text or (weeks and weeks[1] < 20)):
                add("preeclampsia_before_20_weeks", f"{code} before 20 weeks (ACOG: gestational hypertension and pre-eclampsia arise from 20 weeks)")
            if code.startswith("O80") and weeks and (weeks[0] < 37 or weeks[1] > 41):
                add("o80_term", f"O80 (full-term uncomplicated delivery) at {weeks[0]} weeks (OCG I.C.15.b.4)")
            if code.startswith("O60.1") and weeks and weeks[0] >= 37:
                add("preterm_weeks", f"{code} (preterm) at {weeks[0]} weeks")
            if code.startswith("O48") and weeks and weeks[1] < 40:
                add("late_pregnancy_weeks", f"{code} (late pregnancy) at {weeks[0]} weeks")
        if any(c.startswith("O80") for c in codes):
            other_o = [c for c in obstetric if not c.startswith("O80")]
            if other_o:
                add("o80_with_complication", f"O80 with {', '.join(other_o)} (OCG I.C.15.b.4)")
            if any(c.startswith("Z37") and c != "Z37.0" for c in codes):
                add("o80_outcome", "O80 is for a single liveborn (Z37.0) (OCG I.C.15.b.4)")
        if delivered:
            if not any(c.startswith("Z37") for c in codes):
                add("missing_outcome", "a delivery without its outcome (Z37) (OCG I.C.15.b.5)")
            for code in obstetric:
                text = description(code).lower()
                if code.startswith("O09") or code.startswith("Z34"):
                    add("prenatal_code_at_delivery", f"{code} is for the prenatal period only (OCG I.C.15.b.2)")
                if "trimester" in text and icd.is_valid_item(code):
                    parent = icd.get_parent(code)
                    siblings = icd.get_children(parent) if parent else []
                    if parent and any("childbirth" in description(s).lower() for s in [parent, *siblings, *icd.get_children(icd.get_parent(parent) or parent)]):
                        add("childbirth_option", f"{code} at a delivery: the 'in childbirth' code applies (OCG I.C.15.a.3)")
        else:
            for code in codes:
                text = description(code).lower()
                if code.startswith(("O80", "O81", "O82", "Z37", "Z39")) or "childbirth" in text or "puerperium" in text or "postpartum" in text:
                    add("childbirth_code_before_delivery", f"{code} {description(code)} in an antenatal case")
        return out

    # age and sex edits
    def age_sex_findings(self, case: dict[str, Any], codes: list[str]) -> list[Finding]:
        out = []
        age, sex = case["age"], case["sex"]
        words = self.age_sex
        for code in codes:
            text = description(code).lower()
            tokens = set(re.findall(r"[a-z]+", text))
            if sex == "male" and tokens & set(words["female_words"]):
                out.append(Finding("age_sex", "sex_words", f"{code} {description(code)} in a man"))
            if sex == "female" and tokens & set(words["male_words"]):
                out.append(Finding("age_sex", "sex_words", f"{code} {description(code)} in a woman"))
            for phrase, oldest in words["childhood_words"].items():
                if re.search(rf"\b{phrase}\b", text) and age > oldest:
                    out.append(Finding("age_sex", "childhood_only", f"{code} {description(code)} at age {age}"))
            for entry in words["codes"]:
                if any_covers(entry["codes"], code):
                    if entry.get("sex") and sex != entry["sex"]:
                        out.append(Finding("age_sex", "sex_edit", f"{code} in a {sex} patient: {entry['why']}"))
                    if age < entry.get("min_age", 0) or age > entry.get("max_age", 200):
                        out.append(Finding("age_sex", "age_edit", f"{code} at age {age}: {entry['why']}"))
        return out

    # prescribing
    def drug_findings(self, case: dict[str, Any], codes: list[str]) -> list[Finding]:
        out: list[Finding] = []

        def add(rule: str, detail: str) -> None:
            out.append(Finding("drug", rule, detail))

        drugs = [d.lower() for d in case["drugs"]]
        linked = {m["name"].lower(): (m.get("indication") or "", m.get("role") or "") for m in case.get("medications") or []}
        setting = case.get("setting") or ""
        kind = self.setting_kind(setting)
        age = case.get("age")
        classes = {d: self.drugs[d]["class"] for d in drugs if d in self.drugs}
        suspects = {d for d in drugs if self.suspect(d, codes)}
        for drug in drugs:
            entry = self.drugs.get(drug)
            if entry is None:
                add("unknown_drug", f"{drug}: not in the reviewer's table")
                continue
            if drug not in suspects and not self._indicated(drug, entry, codes, linked.get(drug), kind, setting, classes):
                shown = f" (for {linked[drug][0]})" if linked.get(drug, ("", ""))[0] else ""
                add("indication", f"{drug}{shown}: no indication among {', '.join(codes)}")
            if age is not None and age < entry.get("min_age", 0) and not (drug == "aspirin" and "M30.3" in codes):
                add("age", f"{drug} at age {age} (from {entry['min_age']}: FDA label)")
            if entry.get("hospital_only") and kind in ("outpatient", "infusion") and not any(any_covers(entry.get("outpatient_for", []), c) for c in codes):
                add("setting", f"{drug} (hospital only) in {setting}")
            if drug not in suspects:
                for rule in self.condition_contra:
                    if drug in rule["drugs"]:
                        hit = [c for c in codes if any_covers(rule["codes"], c)]
                        if hit:
                            add("contraindication", f"{drug} with {hit[0]}: {rule['why']}")
        # pregnancy
        antepartum = any(c.startswith(("O", "Z34", "Z3A", "Z33")) for c in codes) and not any(c.startswith(("O80", "O81", "O82", "Z37", "O72", "O70", "O75")) for c in codes)
        weeks = _weeks(codes)
        if antepartum:
            late = (weeks and weeks[1] >= 20) or any("second trimester" in description(c).lower() or "third trimester" in description(c).lower() for c in codes)
            for drug in drugs:
                rule = self.drugs.get(drug, {}).get("pregnancy")
                if rule in ("avoid", "avoid_antepartum") and not (drug == "methotrexate" and any(c.startswith("O00") for c in codes)):
                    add("pregnancy", f"{drug} in pregnancy ({rule})")
                if rule == "avoid_from_20_weeks" and late:
                    add("pregnancy", f"{drug} from 20 weeks of pregnancy (FDA 2020)")
        # duplicates and interactions
        for first, second in combinations(drugs, 2):
            if first in classes and classes.get(first) == classes.get(second) and frozenset((first, second)) not in self.combinations:
                add("duplicate_class", f"{first} and {second} ({classes[first]})")
            if first in suspects or second in suspects:
                continue
            for rule in self.drug_contra:
                if (first in rule["first"] and second in rule["second"]) or (second in rule["first"] and first in rule["second"]):
                    if "procedural sedation" in rule["why"] and kind in ("icu", "procedure") or ("palliative" in rule["why"] and (setting == "hospice" or any(c.startswith(("Z51.5", "C")) for c in codes))):
                        continue
                    add("interaction", f"{first} with {second}: {rule['why']}")
        return out

    def _indicated(self, drug: str, entry: dict[str, Any], codes: list[str], link: tuple[str, str] | None, kind: str, setting: str, classes: dict[str, str]) -> bool:
        treats = entry["treats"]
        if link and link[0]:
            if link[0] in codes and any_covers(treats, link[0]):
                return True
        elif any(any_covers(treats, code) for code in codes):
            return True
        if set(entry.get("with_class", [])) & {c for d, c in classes.items() if d != drug}:
            return True
        prophylaxis = entry.get("inpatient_prophylaxis")
        if prophylaxis is True and kind in ("inpatient", "icu", "procedure"):
            return True
        if prophylaxis == "icu" and kind == "icu":
            return True
        return setting in entry.get("settings_prophylaxis", [])


def is_pregnancy_case(case: dict[str, Any]) -> bool:
    return any(c["code"].startswith(("O", "Z34", "Z3A", "Z37")) for c in case["conditions"])
