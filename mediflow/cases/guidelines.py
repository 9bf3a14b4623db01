"""The ICD-10-CM Official Guidelines for Coding and Reporting as rules: how a case's codes are written.

The data (which codes, which obstetric code carries which condition) is ``rules.yaml``
``guidelines``; this module applies it. :meth:`Coder.apply` turns the conditions a sampler drew into
correctly coded ones, and :meth:`Coder.breaks` names what a case still breaks (the sampler redraws
such a case; the audit reports it):

- combination codes: hypertension with heart involvement or chronic kidney disease is I11/I12/I13
  (OCG I.C.9.a.1-3), the stage of CKD agreeing with I12.0/I12.9; diabetes with a condition the "with"
  convention links to it is the diabetes complication code (I.A.15, I.C.4.a), and a diabetes code
  "without complications" never stands beside another code of its category;
- "use additional code" / "code first": the codes a combination needs (I11.0 the type of heart
  failure, I12/I13 and E1x.22 the stage of CKD, D63.1 its CKD) are added; a code whose own note
  requires an underlying condition the case lacks is dropped; a code named by another's "code first"
  note is sequenced before it (I.A.12/13);
- never first-listed: external causes (I.C.20), manifestation codes (I.A.13), adverse-effect and
  underdosing codes (I.C.19.e.5), R65.1/R65.2 (I.C.1.d), Z3A, Z37, Z15-Z18, Z68, Z79; and Z codes that
  may only be first-listed are never secondary (I.C.21.c.16);
- pregnancy (I.C.15): a condition in a pregnancy is coded with its chapter 15 code first (O10 for
  hypertension, O24 for diabetes, O99/O98/O9A by chapter), with the trimester its weeks give or the
  "in childbirth" code at a delivery; Z34 and O80 carry no other condition; no childbirth or
  puerperium code before a delivery; no supervision code (O09, Z34) at one; every delivery has its
  outcome (Z37);
- drug therapy: a type 2 diabetic on insulin has Z79.4, on oral agents Z79.84, on injectable
  non-insulin agents Z79.85 (I.C.4.a.3); never Z79.4 for type 1 diabetes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

from mediflow import terminology
from mediflow.cases.book import CaseBook

#: Conditions as the coder handles them: (code, role) in listed order, the primary first.
Coded = list[tuple[str, str]]
DIABETES = ("E08", "E09", "E10", "E11", "E13")
_HYPERTENSION = "I10"
_LATE_CKD = ("N18.5", "N18.6")
_STAGE_WORDS = ("childbirth", "puerperium", "postpartum", "delivery")
#: Drug classes (drugs.yaml) behind the long-term drug therapy codes of a diabetic (OCG I.C.4.a.3).
INSULIN_CLASSES = ("short-acting insulin", "basal insulin")
ORAL_DIABETES_CLASSES = ("biguanide", "sulfonylurea", "thiazolidinedione", "SGLT2 inhibitor")
INJECTABLE_NON_INSULIN = ("semaglutide", "liraglutide", "dulaglutide")


@cache
def _billable(code: str) -> bool:
    return terminology.is_billable(code)


@cache
def _description(code: str) -> str:
    return terminology.description(code).lower()


def is_pregnancy_code(code: str) -> bool:
    return terminology.chapter_of(code) == "15" or code.startswith(("Z34", "Z3A", "Z37", "Z33", "Z39"))


def is_delivery_code(code: str) -> bool:
    return code.startswith(("O80", "O81", "O82", "Z37"))


def weeks_of(codes: Sequence[str]) -> int | None:
    """The weeks of gestation a Z3A code states (Z3A.01: under 8 weeks, taken as 6)."""
    for code in codes:
        if code.startswith("Z3A.") and code != "Z3A.00":
            weeks = int(code[4:])
            return 6 if weeks == 1 else 43 if weeks == 49 else weeks
    return None


def trimester_phrase(weeks: int | None) -> str | None:
    """The trimester the weeks fall in (chapter 15's note: under 14 weeks, 14 to under 28, from 28)."""
    if weeks is None:
        return None
    return "first trimester" if weeks < 14 else "second trimester" if weeks < 28 else "third trimester"


class Coder:
    """The guideline rules of one :class:`CaseBook`."""

    def __init__(self, book: CaseBook) -> None:
        self.book = book
        self.data = book.guidelines

    # --- what may be first-listed ------------------------------------------------------------------

    @cache  # noqa: B019 - one Coder per case data version, kept for the process
    def never_first(self, code: str) -> bool:
        """Whether the guidelines forbid ``code`` as the first-listed condition."""
        if any(terminology.covers(spec, code) for spec in self.data.never_first):
            return True
        if terminology.is_manifestation(code):
            return True
        if _intent(code) in ("5", "6") and code[:3] <= "T50":
            return True
        return any(required and not ref.startswith("O") for ref, required in terminology.code_first(code))  # an obstetric-only note applies in a pregnancy

    @cache  # noqa: B019
    def first_only(self, code: str) -> bool:
        return any(terminology.covers(spec, code) for spec in self.data.first_only)

    def required_first(self, code: str, codes: Sequence[str], pregnant: bool) -> list[str]:
        """The conditions a "code first" note of ``code`` requires in the case (obstetric ones only in a pregnancy;
        none for weeks of gestation at a routine prenatal visit, Z34, where the weeks are recorded all the same)."""
        required = [ref for ref, needed in terminology.code_first(code) if needed and (pregnant or not ref.startswith("O"))]
        if code.startswith("Z3A") and any(other.startswith("Z34") for other in codes):
            return []
        return required

    @cache  # noqa: B019
    def heart_involvement(self, code: str) -> bool:
        return any(terminology.covers(spec, code) for spec in self.data.heart_involvement)

    @cache  # noqa: B019
    def complications(self, code: str) -> tuple[int, ...]:
        """The diabetes_with entries (indices) whose conditions cover ``code``."""
        return tuple(i for i, (specs, _) in enumerate(self.data.diabetes_with) if any(terminology.covers(spec, code) for spec in specs))

    @cache  # noqa: B019
    def uncomplicated(self, code: str) -> bool:
        return any(terminology.covers(spec, code) for spec in self.data.uncomplicated)

    @cache  # noqa: B019
    def features(self, code: str) -> frozenset[str]:
        """What the guideline rules look at in ``code``, worked out once: the passes skip codes none of them concerns."""
        found = set()
        if code[:3] in DIABETES:
            found.add("diabetes")
        if code == _HYPERTENSION or code[:3] in ("I11", "I12", "I13") or code.startswith("N18") or self.heart_involvement(code):
            found.add("hypertension")
        if self.complications(code):
            found.add("complication")
        if any(code in combination for combination, _ in self.data.companions_needed):
            found.add("combination")
        if terminology.code_first(code):
            found.add("code_first")
        if is_pregnancy_code(code):
            found.add("pregnancy")
        if self.first_only(code):
            found.add("first_only")
        return frozenset(found)

    def _features(self, codes: Sequence[str]) -> frozenset[str]:
        return frozenset().union(*map(self.features, codes))

    # --- the coding pass ---------------------------------------------------------------------------

    def apply(self, coded: Coded, draw: Callable[[str], str | None], stage: str | None = None) -> Coded:
        """``coded`` written by the guidelines; ``draw(spec)`` gives a billable code for a spec (added companions)."""
        coded = list(coded)
        for _ in range(3):  # a companion a combination needs (CKD for E11.22) can call for another combination (I12 for I10)
            before = len(coded)
            present = self._features([code for code, _ in coded])
            if "diabetes" in present and "complication" in present or sum(code[:3] in DIABETES for code, _ in coded) > 1:
                coded = self._diabetes(coded)
            if "hypertension" in present:
                coded = self._hypertension(coded)
            present = self._features([code for code, _ in coded])
            if "combination" in present:
                coded = self._companions(coded, draw)
                present = self._features([code for code, _ in coded])
            if len(coded) == before:
                break
        if "code_first" in present:
            coded = self._code_first(coded)
        if "pregnancy" in present:
            coded = self._pregnancy(coded, stage)
        return coded

    def _diabetes(self, coded: Coded) -> Coded:
        linked = {i for code, _ in coded for i in self.complications(code)}
        for i, (_, suffixes) in enumerate(self.data.diabetes_with):
            if i not in linked:
                continue
            for category in {code[:3] for code, _ in coded if code[:3] in DIABETES}:
                if any(code[:3] == category and code[3:].startswith(suffixes) for code, _ in coded):
                    continue
                combined = next((category + suffix for suffix in suffixes if _billable(category + suffix)), None)
                if combined is None:
                    continue
                plain = next((i for i, (code, _) in enumerate(coded) if code == f"{category}.9"), None)
                if plain is not None:
                    coded[plain] = (combined, coded[plain][1])
                else:
                    at = next(i for i, (code, _) in enumerate(coded) if code[:3] == category)
                    coded.insert(at + 1, (combined, "companion"))
        for category in {code[:3] for code, _ in coded if code[:3] in DIABETES}:
            same = [i for i, (code, _) in enumerate(coded) if code[:3] == category]
            unspecified = [i for i in same if coded[i][0] == f"{category}.9"]
            if unspecified and len(same) > 1:
                keep = [i for i in same if i not in unspecified][0]
                if unspecified[0] < keep:  # the unspecified code held the better position: the specific code takes it
                    coded[unspecified[0]] = (coded[keep][0], coded[unspecified[0]][1])
                    del coded[keep]
                else:
                    del coded[unspecified[0]]
        return coded

    def _hypertension(self, coded: Coded) -> Coded:
        codes = [code for code, _ in coded]
        heart = any(self.heart_involvement(code) for code in codes)
        ckd = [code for code in codes if code.startswith("N18")]
        late = any(code.startswith(_LATE_CKD) for code in ckd)
        for i, (code, role) in enumerate(coded):
            new = code
            if code == _HYPERTENSION or code[:3] in ("I11", "I12", "I13"):
                kind = code[:3] if code != _HYPERTENSION else None
                has_heart = heart or code == "I11.0" or code in ("I13.0", "I13.2")
                has_ckd = bool(ckd) or (kind in ("I12", "I13"))
                if kind is None and not (heart or ckd):
                    continue
                if has_heart and has_ckd:
                    new = "I13.2" if late or code in ("I13.2", "I12.0", "I13.11") else "I13.0"
                elif has_heart:
                    new = "I11.0"
                elif has_ckd:
                    new = "I12.0" if late or code == "I12.0" else "I12.9"
            coded[i] = (new, role)
        return coded

    def _companions(self, coded: Coded, draw: Callable[[str], str | None]) -> Coded:
        for combination, needs in self.data.companions_needed:
            for code, _ in list(coded):
                if code not in combination:
                    continue
                family = needs[:3]
                present = [c for c, _ in coded if c.startswith(family)]
                if needs.startswith("N18") and present:
                    late = needs == "N18.6"
                    if any(c.startswith(_LATE_CKD) for c in present) == late or code.startswith(("E", "D63")):
                        continue
                    for j, (c, r) in enumerate(coded):  # the stage the combination code says wins
                        if c.startswith("N18"):
                            coded[j] = (draw(needs) or c, r)
                    continue
                if present:
                    continue
                added = draw(needs)
                if added is not None:
                    at = next(j for j, (c, _) in enumerate(coded) if c == code)
                    coded.insert(at + 1, (added, "companion"))
        return coded

    def _code_first(self, coded: Coded) -> Coded:
        kept: Coded = []
        codes = [code for code, _ in coded]
        pregnant = any(is_pregnancy_code(code) and not code.startswith("Z3A") for code in codes)
        for position, (code, role) in enumerate(coded):
            required = self.required_first(code, codes, pregnant)
            if position and required and not any(terminology.in_reference(other, ref) for ref in required for other in codes if other != code):
                continue
            kept.append((code, role))
        moved = True
        rounds = 0
        while moved and rounds < 5:  # each "code first" reference before the code that names it
            moved = False
            rounds += 1
            for position, (code, role) in enumerate(kept):
                refs = [ref for ref, _ in terminology.code_first(code)]
                later = [j for j in range(position + 1, len(kept)) if any(terminology.in_reference(kept[j][0], ref) for ref in refs)]
                if later:
                    j = later[0]
                    other, other_role = kept.pop(j)
                    if role == "primary":
                        kept[position] = (code, "companion" if other_role == "primary" else other_role)
                        kept.insert(position, (other, "primary"))
                    else:
                        kept.insert(position, (other, other_role))
                    moved = True
                    break
        return kept

    def _pregnancy(self, coded: Coded, stage: str | None) -> Coded:
        codes = [code for code, _ in coded]
        delivered = stage == "delivery" or any(is_delivery_code(code) for code in codes)
        phrase = "childbirth" if delivered else trimester_phrase(weeks_of(codes))
        if phrase is None:
            phrase = next((p for p in ("first trimester", "second trimester", "third trimester") for c in codes if c.startswith("O") and p in _description(c)), None)
        out: Coded = []
        for code, role in coded:
            if is_pregnancy_code(code) or code[:1] in ("Z", "V", "W", "X", "Y"):
                out.append((code, role))
                continue
            wrapper = self._wrapper(code)
            if wrapper is None:
                out.append((code, role))
                continue
            spec, replaces = wrapper
            obstetric = _stage_code(spec, phrase, delivered)
            if obstetric is None:
                out.append((code, role))
                continue
            if not any(c == obstetric for c, _ in out):
                out.append((obstetric, role if replaces else "obstetric"))
            if not replaces:
                out.append((code, role))
        return out

    @cache  # noqa: B019
    def _wrapper(self, code: str) -> tuple[str, bool] | None:
        for specs, obstetric, replaces in self.data.pregnancy_wrappers:
            if any(terminology.covers(spec, code) for spec in specs):
                return obstetric, replaces
        return None

    def drug_codes(self, coded: Coded, drug_classes: Sequence[tuple[str, ...]], drug_names: Sequence[str]) -> Coded:
        """The long-term drug therapy codes a diabetic's drugs call for (OCG I.C.4.a.3), added as companions."""
        codes = [code for code, _ in coded]
        type2 = any(code[:3] in ("E11", "E13") or code.startswith(("O24.1", "O24.4", "O24.8")) for code in codes)
        if not type2 or any(code[:3] == "E10" for code in codes):
            return coded
        insulin = any(set(classes) & set(INSULIN_CLASSES) for classes in drug_classes)
        oral = any(set(classes) & set(ORAL_DIABETES_CLASSES) for classes in drug_classes) or "sitagliptin" in drug_names
        injectable = any(name in INJECTABLE_NON_INSULIN for name in drug_names)
        wanted = [code for code, present in (("Z79.4", insulin), ("Z79.84", oral), ("Z79.85", injectable)) if present and code not in codes]
        return coded + [(code, "companion") for code in wanted]

    # --- what a case breaks ------------------------------------------------------------------------

    def breaks(self, codes: Sequence[str], stage: str | None = None, drug_classes: Sequence[tuple[str, ...]] = (), drug_names: Sequence[str] = ()) -> list[str]:
        """The guideline rules ``codes`` (primary first) break, one line each."""
        out: list[str] = []
        if not codes:
            return out
        primary = codes[0]
        if self.never_first(primary):
            out.append(f"never_first_listed: {primary} may not be the first-listed condition")
        present = self._features(codes)
        if "first_only" in present and any(self.first_only(code) for code in codes[1:]):
            out += [f"first_listed_only: {code} may only be first-listed (OCG I.C.21.c.16)" for code in codes[1:] if self.first_only(code)]
        if not present & {"diabetes", "hypertension", "combination", "code_first", "pregnancy"} and "Z79.4" not in codes:
            return out
        pregnant = "pregnancy" in present
        if "hypertension" in present:
            out += self._hypertension_breaks(codes, pregnant)
        if "combination" in present:
            for combination, needs in self.data.companions_needed:
                for code in codes:
                    if code in combination and not any(c.startswith(needs[:3]) for c in codes):
                        out.append(f"use_additional_code: {code} without {needs[:3]}")
        if "diabetes" in present:
            for i, (_, suffixes) in enumerate(self.data.diabetes_with):
                linked = [c for c in codes if i in self.complications(c)]
                for category in {c[:3] for c in codes if c[:3] in DIABETES}:
                    if linked and not any(c[:3] == category and c[3:].startswith(suffixes) for c in codes):
                        out.append(f"diabetes_with: {category} with {linked[0]} needs {category}{suffixes[0]} (OCG I.C.4.a)")
            for category in {c[:3] for c in codes if c[:3] in DIABETES}:
                if f"{category}.9" in codes and sum(c[:3] == category for c in codes) > 1:
                    out.append(f"diabetes_without_complications: {category}.9 beside another {category} code")
        if "code_first" in present:
            pregnant_case = any(is_pregnancy_code(code) and not code.startswith("Z3A") for code in codes)
            for position, code in enumerate(codes):
                if "code_first" not in self.features(code):
                    continue
                required = self.required_first(code, codes, pregnant_case)
                if required and not any(terminology.in_reference(other, ref) for ref in required for other in codes if other != code):
                    out.append(f"code_first: {code} without its underlying condition ({', '.join(required)})")
                refs = [ref for ref, _ in terminology.code_first(code)]
                if any(terminology.in_reference(other, ref) for ref in refs for other in codes[position + 1 :]):
                    out.append(f"code_first_order: {code} is listed before the condition its note says to code first")
        if pregnant:
            out += self._pregnancy_breaks(codes, stage)
        names = list(drug_names)
        if names and any(c[:3] in ("E11", "E13") for c in codes) and not pregnant:
            if any(set(classes) & set(INSULIN_CLASSES) for classes in drug_classes) and "Z79.4" not in codes:
                out.append("drug_therapy_code: type 2 diabetes treated with insulin without Z79.4 (OCG I.C.4.a.3)")
        if "Z79.4" in codes and any(c[:3] == "E10" for c in codes):
            out.append("drug_therapy_code: Z79.4 is not assigned for type 1 diabetes (OCG I.C.4.a.3)")
        return out

    def _hypertension_breaks(self, codes: Sequence[str], pregnant: bool) -> list[str]:
        out = []
        heart = [c for c in codes if self.heart_involvement(c)]
        ckd = [c for c in codes if c.startswith("N18")]
        if _HYPERTENSION in codes and (heart or ckd) and not pregnant:
            out.append(f"hypertension_combination: I10 with {(heart + ckd)[0]} is I11/I12/I13 (OCG I.C.9.a)")
        late = any(c.startswith(_LATE_CKD) for c in ckd)
        for code in codes:
            if code[:3] not in ("I11", "I12", "I13"):
                continue
            if code == "I11.9" and heart:
                out.append(f"hypertension_combination: I11.9 with {heart[0]} (OCG I.C.9.a.1)")
            if code[:3] in ("I11", "I12") and heart and ckd:
                out.append(f"hypertension_combination: {code} with heart failure and CKD is I13 (OCG I.C.9.a.3)")
            if code in ("I12.9", "I13.0", "I13.10") and late:
                out.append(f"hypertension_ckd_stage: {code} with end-stage CKD")
            if code in ("I12.0", "I13.11", "I13.2") and ckd and not late:
                out.append(f"hypertension_ckd_stage: {code} without stage 5 CKD or ESRD")
        return out

    def _pregnancy_breaks(self, codes: Sequence[str], stage: str | None) -> list[str]:
        out = []
        delivered = stage == "delivery" or any(is_delivery_code(code) for code in codes)
        if not is_pregnancy_code(codes[0]):
            out.append(f"pregnancy_sequencing: {codes[0]} first-listed in a pregnancy (OCG I.C.15.a.1)")
        if any(self.uncomplicated(code) for code in codes) and any(not (code.startswith(("Z3A", "Z37", "Z34", "O80")) or self.uncomplicated(code)) for code in codes):
            out.append("pregnancy_uncomplicated: Z34/O80 with another condition (OCG I.C.15.b.1, b.4)")
        for code in codes:
            if is_pregnancy_code(code) or code[:1] in ("Z", "V", "W", "X", "Y"):
                continue
            wrapper = self._wrapper(code)
            if wrapper and not any(c.startswith(wrapper[0]) for c in codes):
                out.append(f"pregnancy_obstetric_code: {code} in a pregnancy without {wrapper[0]} (OCG I.C.15.a.1)")
            if wrapper and wrapper[1]:
                out.append(f"pregnancy_obstetric_code: {code} is included in {wrapper[0]}")
        for code in codes:
            words = _description(code)
            if not delivered and (is_delivery_code(code) or code.startswith("Z39") or any(word in words for word in _STAGE_WORDS[:3])):
                out.append(f"pregnancy_stage: {code} (childbirth or puerperium) before a delivery")
            if delivered and code.startswith(("O09", "Z34")):
                out.append(f"pregnancy_stage: {code} is for the prenatal period (OCG I.C.15.b.2)")
        if delivered and not any(code.startswith("Z37") for code in codes):
            out.append("pregnancy_outcome: a delivery without its outcome Z37 (OCG I.C.15.b.5)")
        return out


def _intent(code: str) -> str | None:
    """The 6th character of a T36-T65 code: 1-4 poisoning, 5 adverse effect, 6 underdosing."""
    if code[:1] == "T" and "T36" <= code[:3] <= "T65" and len(code) >= 7:
        return code[6]
    return None


intent = _intent


@cache
def _stage_code(spec: str, phrase: str | None, delivered: bool) -> str | None:
    """The billable code under ``spec`` for the stage: the trimester phrase, "childbirth", else unspecified."""
    candidates = [code for code in terminology.billable_codes(spec)]
    if not candidates:
        return None
    if phrase:
        found = [code for code in candidates if phrase in _description(code)]
        if found:
            return found[0]
    if delivered:
        found = [code for code in candidates if "childbirth" in _description(code)]
        if found:
            return found[0]
    antepartum = [code for code in candidates if not any(word in _description(code) for word in _STAGE_WORDS[:3])]
    unspecified = [code for code in antepartum if "unspecified trimester" in _description(code)]
    return (unspecified or antepartum or candidates)[0] if not delivered else (unspecified or candidates)[0]
