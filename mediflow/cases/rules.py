"""The rules a case must keep (data in ``taxonomies/cases/``), checked by code: the one place to ask
"which rules does this case break".

``Rules(book).broken(case)`` (or ``sampler.rules.broken(case)``; a case read back from the ``case``
column with ``Case.from_row(row)`` works the same) returns one line per broken rule, each starting
with the rule's name (``age_sex rule name:``, ``excludes1:``, ``gestation:``, ``never_first_listed:``,
``hypertension_combination:``, ``pregnancy_obstetric_code:``, ``prescribing_indication:``, ...):

- demographic: a code that requires an age range or a sex the patient does not have (the age/sex
  table of rules.yaml, the sex words of its description such as "male breast", the age floor and
  ceiling of conditions.yaml);
- pairs: two codes related by an ICD-10-CM Excludes1 note (read from the installed code table for
  the codes and all their ancestors) or listed as never together, two codes of one three-character
  category (except where the guidelines want several), weeks of gestation (Z3A) that contradict the
  trimester or term a pregnancy code names;
- the ICD-10-CM guidelines (:mod:`mediflow.cases.guidelines`): combination codes, sequencing,
  pregnancy, drug-therapy codes;
- prescribing (:mod:`mediflow.cases.prescribing`): every drug for a condition of the case, no two of
  one class, no contraindication, age, pregnancy or setting limit broken;
- setting: an acuity the case's setting does not see (an ICU admission at routine acuity).

The sampler redraws a case that breaks one; the audit reports them on real records. What a code
requires is worked out once per code and kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations

from mediflow import terminology
from mediflow.cases.book import CaseBook
from mediflow.cases.case import Case
from mediflow.cases.guidelines import Coder, weeks_of
from mediflow.cases.prescribing import Prescriber


@dataclass(frozen=True)
class _Needs:
    """What one code requires of the patient: (rule name, sex or None, (low, high) ages or None) each."""

    demands: tuple[tuple[str, str | None, tuple[int, int] | None], ...]
    weeks: tuple[tuple[str, tuple[int, int]], ...]  # what the code says about weeks of gestation


def gestation_weeks(code: str) -> tuple[int, int] | None:
    """The weeks of gestation a Z3A code states (``Z3A.32`` -> (32, 32), ``Z3A.01`` -> (0, 7)); None otherwise."""
    if not code.startswith("Z3A.") or code == "Z3A.00":
        return None
    weeks = int(code[4:])
    return (0, 7) if weeks == 1 else (43, 45) if weeks == 49 else (weeks, weeks)


class Rules:
    """The rules of one :class:`CaseBook`, with what each code requires cached."""

    def __init__(self, book: CaseBook) -> None:
        self.book = book
        self.coder = Coder(book)
        self.prescriber = Prescriber(book)
        self._needs: dict[str, _Needs] = {}
        self._impossible: dict[str, bool] = {}
        self._never_together_letters = frozenset(spec[:1] for pair in book.never_together for spec in pair)
        self._pairs: dict[tuple[str, str], tuple[str, ...]] = {}

    def _epidemiology(self, code: str) -> tuple[str, str | None, tuple[int, int] | None] | None:
        """The age floor and ceiling (and a single sex) of the most specific conditions.yaml entry covering ``code``."""
        found = [(len(terminology.ancestors(spec)), e) for e in self.book.epidemiology for spec in e.specs if terminology.covers(spec, code)]
        if not found:
            return None
        entry = max(found, key=lambda item: item[0])[1]
        sex = "female" if entry.female == 1.0 else "male" if entry.female == 0.0 else None
        ages = (entry.min_age, entry.max_age) if (entry.min_age, entry.max_age) != (0, 120) else None
        return ("epidemiology", sex, ages) if sex or ages else None

    def needs(self, code: str) -> _Needs:
        found = self._needs.get(code)
        if found is None:
            book = self.book
            demands: list[tuple[str, str | None, tuple[int, int] | None]] = [(rule.name, rule.sex, rule.ages) for rule in book.rules if any(terminology.covers(s, code) for s in rule.codes)]
            description = terminology.description(code).lower()
            words = set(re.findall(r"[a-z]+", description))
            demands += [("sex_words", sex, None) for sex, needed in book.sex_words.items() if needed & words]
            demands += [("age_words", None, ages) for phrase, ages in book.age_words.items() if re.search(rf"(?<!not of )\b{phrase}\b", description)]
            floor = self._epidemiology(code)
            if floor is not None:
                demands.append(floor)
            weeks = [(phrase, span) for phrase, span in book.trimesters.items() if phrase in description]
            weeks += [(spec, span) for specs, span in book.term_rules for spec in specs if terminology.covers(spec, code)]
            found = self._needs[code] = _Needs(tuple(demands), tuple(weeks))
        return found

    def demographic_breaks(self, code: str, age: int, sex: str) -> list[str]:
        """The age/sex rules ``code`` breaks for a patient of ``age`` and ``sex``."""
        broken = []
        for name, needed_sex, ages in self.needs(code).demands:
            if needed_sex is not None and sex != needed_sex:
                broken.append(f"{name}: {code} needs a {needed_sex} patient, not {sex}")
            elif ages is not None and not ages[0] <= age <= ages[1]:
                broken.append(f"{name}: {code} needs age {ages[0]}-{ages[1]}, not {age}")
        return broken

    def fits_patient(self, code: str, age: int, sex: str) -> bool:
        """Whether ``code`` fits a patient of ``age`` and ``sex`` (:meth:`demographic_breaks` is empty), without naming why."""
        for _, needed_sex, ages in self.needs(code).demands:
            if (needed_sex is not None and sex != needed_sex) or (ages is not None and not ages[0] <= age <= ages[1]):
                return False
        return True

    def impossible(self, code: str) -> bool:
        """Whether a code's own words and term contradict each other (gestational hypertension "first trimester":
        gestational hypertension arises from 20 weeks)."""
        found = self._impossible.get(code)
        if found is None:
            spans = [span for _, span in self.needs(code).weeks]
            found = self._impossible[code] = any(a[1] < b[0] or b[1] < a[0] for a, b in combinations(spans, 2))
        return found

    def sex_breaks(self, code: str, sex: str) -> bool:
        """Whether ``code`` requires the other sex."""
        return any(needed is not None and needed != sex for _, needed, _ in self.needs(code).demands)

    def pair_breaks(self, code: str, other: str) -> tuple[str, ...]:
        """The rules two codes of one case break together (Excludes1, never together, one per category, gestation)."""
        key = (code, other) if code <= other else (other, code)
        found = self._pairs.get(key)
        if found is None:
            found = self._pairs[key] = tuple(self._pair(*key))
        return found

    def _pair(self, code: str, other: str) -> list[str]:
        book = self.book
        broken = []
        category = code[:3]  # codes of a case are normalised: the category is the first three characters
        if book.one_per_category and category == other[:3] and category not in book.one_per_category_except:
            broken.append(f"one_per_category: {code} and {other}")
        if code == other:
            broken.append(f"duplicate_code: {code}")
        if book.excludes1 and (terminology.excludes1(code, other) or terminology.excludes1(other, code)):
            broken.append(f"excludes1: {code} and {other}")
        if code[:1] in self._never_together_letters and other[:1] in self._never_together_letters:
            for first, second in book.never_together:
                if (terminology.covers(first, code) and terminology.covers(second, other)) or (terminology.covers(first, other) and terminology.covers(second, code)):
                    broken.append(f"never_together: {code} and {other}")
        for weeks_code, pregnancy_code in ((code, other), (other, code)):
            if not weeks_code.startswith("Z3A."):
                continue
            weeks = gestation_weeks(weeks_code)
            if weeks is None:
                continue
            for what, (low, high) in self.needs(pregnancy_code).weeks:
                if weeks[1] < low or weeks[0] > high:
                    broken.append(f"gestation: {weeks_code} contradicts {pregnancy_code} ({what}: weeks {low}-{high})")
        return broken

    def broken(self, case: Case, prescribing: bool = True, trusted: frozenset[str] = frozenset()) -> list[str]:
        """Every rule ``case`` breaks, one line each; empty for a coherent case.

        The sampler's redraw loop leaves out what it has already checked while drawing: the prescribing
        rules (``prescribing=False``: every drug its prescriber adds passes them) and the age/sex and
        pair rules among the ``trusted`` codes (each was checked against the patient and the codes
        before it).
        """
        codes = case.codes
        broken = [f"impossible_code: {code} contradicts itself (its trimester and term)" for code in codes if self.impossible(code)]
        if case.age is not None and case.sex is not None:
            age, sex = case.age, case.sex
            broken += [line for code in codes if code not in trusted and not self.fits_patient(code, age, sex) for line in self.demographic_breaks(code, age, sex)]
        for code, other in combinations(codes, 2):
            if code not in trusted or other not in trusted:
                broken += self.pair_breaks(code, other)
        drugs = self.book.prescribing.drugs
        known = [m for m in case.medications if m.name in drugs]
        stage = "delivery" if case.profile in self.book.profiles and self.book.profiles[case.profile].obstetric == "delivery" else None
        broken += self.coder.breaks(list(codes), stage, [drugs[m.name].classes for m in known], [m.name for m in known])
        if case.medications and prescribing:
            pregnant = any(terminology.chapter_of(code) == "15" or code.startswith(("Z34", "Z3A")) for code in codes)
            delivered = any(code.startswith(("O80", "O81", "O82", "Z37")) for code in codes)
            age = case.age if case.age is not None else 18
            patient = self.prescriber.patient(age, codes, case.setting, pregnant and not delivered, weeks_of(codes))
            broken += self.prescriber.breaks(case.medications, patient)
        seen = self.book.settings.get(case.setting)
        if seen is not None and case.acuity is not None and seen.acuities.get(case.acuity, 0.0) == 0.0:
            broken.append(f"setting_acuity: {case.setting} does not see {case.acuity} cases")
        return broken
