"""The coherence rules of a case (data in ``taxonomies/cases/rules.yaml``), checked by code.

A case breaks a rule when one of its codes requires an age range or a sex the patient does not
have (by the age/sex table, or by words of its description such as "male breast"), when two of its
codes are related by an ICD-10-CM Excludes1 note (read from the installed code table for the codes
and all their ancestors) or are listed as never together, when two codes share a three-character
category, or when its weeks of gestation (Z3A) contradict the trimester or term its pregnancy codes
name. :meth:`Rules.broken` names every rule a case breaks; the sampler redraws such a case and the
benchmark counts them. What a code requires is worked out once per code and kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations

from mediflow import terminology
from mediflow.cases.book import CaseBook
from mediflow.cases.case import Case


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
        self._needs: dict[str, _Needs] = {}
        self._pairs: dict[tuple[str, str], tuple[str, ...]] = {}

    def needs(self, code: str) -> _Needs:
        found = self._needs.get(code)
        if found is None:
            book = self.book
            demands: list[tuple[str, str | None, tuple[int, int] | None]] = [
                (rule.name, rule.sex, rule.ages) for rule in book.rules if any(terminology.covers(s, code) for s in rule.codes)
            ]
            description = terminology.description(code).lower()
            words = set(re.findall(r"[a-z]+", description))
            demands += [("sex_words", sex, None) for sex, needed in book.sex_words.items() if needed & words]
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
        if book.one_per_category and terminology.category_of(code) == terminology.category_of(other):
            broken.append(f"one_per_category: {code} and {other}")
        if book.excludes1 and (terminology.excludes1(code, other) or terminology.excludes1(other, code)):
            broken.append(f"excludes1: {code} and {other}")
        for first, second in book.never_together:
            if (terminology.covers(first, code) and terminology.covers(second, other)) or (
                terminology.covers(first, other) and terminology.covers(second, code)
            ):
                broken.append(f"never_together: {code} and {other}")
        for weeks_code, pregnancy_code in ((code, other), (other, code)):
            weeks = gestation_weeks(weeks_code)
            if weeks is None:
                continue
            for what, (low, high) in self.needs(pregnancy_code).weeks:
                if weeks[1] < low or weeks[0] > high:
                    broken.append(f"gestation: {weeks_code} contradicts {pregnancy_code} ({what}: weeks {low}-{high})")
        return broken

    def broken(self, case: Case) -> list[str]:
        """Every rule ``case`` breaks, one line each; empty for a coherent case."""
        broken = [line for code in case.codes for line in self.demographic_breaks(code, case.age, case.sex)]
        for code, other in combinations(case.codes, 2):
            broken += self.pair_breaks(code, other)
        return broken
