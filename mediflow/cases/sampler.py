"""Draw one clinical case per plan item, seeded by the item, from the data of ``taxonomies/cases/``.

For a document type the sampler takes its profile (``assignments.yaml``; a weighted mix for types
whose cases include children and newborns) and draws, from one ``random.Random`` seeded by the item:

1. the primary condition: an entry of the profile by weight, a three-character category of it
   uniformly, then - once the patient is known - a billable code of the category by the code weights of
   ``conditions.yaml`` (so "COPD" is mostly J44.9/J44.1, not bronchiolitis obliterans), never a code the
   guidelines forbid first-listing;
2. the patient: sex and age from the primary condition's epidemiology (``conditions.yaml``: share
   female, age bands, floors and ceilings; within the profile's age range), else from the profile;
   infants also get their age in months;
3. 0-3 comorbidities from the profile's pool for the patient's age (chronic conditions, checked
   against AHRQ's Chronic Condition Indicator), each weighed by how likely the patient's sex is to
   have it, by what comes with the primary (``associations``), never outside its age floor and ceiling;
4. the companions (weeks of gestation, outcome of delivery), an external cause for an injury, the
   drug code and suspect of an adverse reaction, the substance and antidote of a poisoning;
5. the ICD-10-CM guideline pass (:mod:`mediflow.cases.guidelines`): combination codes, the obstetric
   codes of a pregnancy, "code first" order and the codes a combination needs;
6. the setting (the document type's) and an acuity that setting sees; the medications
   (:mod:`mediflow.cases.prescribing`), each for one of the case's conditions, and the long-term drug
   therapy codes they call for.

Population-level documents (drug labels, guideline excerpts, abstracts, leaflets) get a topic (the
primary condition), its first-line drugs and a population instead of a patient. A case that breaks a
rule (:mod:`mediflow.cases.rules`) is redrawn, never returned; a profile that cannot give a coherent
case in :data:`MAX_ATTEMPTS` draws is a data error.
"""

from __future__ import annotations

import bisect
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from itertools import accumulate
from typing import Any

from mediflow import terminology
from mediflow.cases.book import EXTERNAL_CAUSE_CHAPTER, CaseBook, Epidemiology, Profile, Weighted, load_case_book
from mediflow.cases.case import Case, Condition, Medication
from mediflow.cases.guidelines import intent, weeks_of
from mediflow.cases.names import clinical_name
from mediflow.cases.prescribing import Patient
from mediflow.cases.rules import Rules
from mediflow.errors import TaxonomyError

#: Draws before a profile is declared unable to give a coherent case.
MAX_ATTEMPTS = 200
#: Injuries (S00-T34) take an external cause as a secondary code; poisonings and adverse effects
#: (T36-T65) carry their intent in the code itself.
_INJURY_BLOCKS = ("S00-S09", "S10-S19", "S20-S29", "S30-S39", "S40-S49", "S50-S59", "S60-S69", "S70-S79", "S80-S89", "S90-S99", "T07", "T14", "T15-T19", "T20-T32", "T33-T34")
_SEXES = ("female", "male")
#: Per case data version: the draws of each profile, the rules, built once per process.
_DRAWS: dict[str, dict[tuple[str, str], _CodeDraw]] = {}
_RULES: dict[str, Rules] = {}


def _rules(book: CaseBook) -> Rules:
    if book.version not in _RULES:
        _RULES[book.version] = Rules(book)
    return _RULES[book.version]


@dataclass
class _Group:
    """The billable codes of one category reachable from one profile entry, with their code weights."""

    codes: tuple[str, ...]
    weights: tuple[float, ...]
    by_sex: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = field(default_factory=dict)

    def pick(self, rng: random.Random, sex: str | None) -> str | None:
        codes, cumulative = self.by_sex[sex] if sex else (self.codes, tuple(accumulate(self.weights)))
        if not codes:
            return None
        return codes[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]


@dataclass
class _CodeDraw:
    """A weighted draw over groups of billable codes: a group by weight, then a code of it by its code weights."""

    groups: tuple[_Group, ...]
    weights: tuple[float, ...]
    categories: tuple[str, ...]
    cumulative: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.cumulative = tuple(accumulate(self.weights))

    def group(self, rng: random.Random, weights: list[float] | None = None) -> int | None:
        if weights is None:
            return bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])
        cumulative = list(accumulate(weights))
        if cumulative[-1] <= 0:
            return None
        return min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]), len(weights) - 1)


@cache
def _description(code: str) -> str:
    return terminology.description(code)


@cache
def _is_injury(code: str) -> bool:
    return any(terminology.covers(block, code) for block in _INJURY_BLOCKS)


def _depth(spec: str) -> int:
    return len(terminology.ancestors(spec))


class CaseSampler:
    """Cases for the document types of a taxonomy, from a :class:`CaseBook` (the built-in one by default)."""

    def __init__(self, taxonomy: Any, book: CaseBook | None = None) -> None:
        self.taxonomy = taxonomy
        self.book = book or load_case_book()
        self._categories = {name: doc.category for name, doc in taxonomy.document_types.items()}
        self.rules = _rules(self.book)
        self.coder = self.rules.coder
        self.prescriber = self.rules.prescriber
        self._check_names()
        self._draws = _DRAWS.setdefault(self.book.version, {})
        self._epidemiology: dict[str, Epidemiology | None] = {}
        self._associated: dict[str, tuple[int, ...]] = {}
        self._age_tables: dict[tuple[str, int], tuple[tuple[tuple[int, int], ...], tuple[float, ...]]] = {}
        self._acuities: dict[tuple[str, str], Weighted] = {}
        self._assignments: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._condition_cache: dict[tuple[str, str], Condition] = {}
        self._comorbidity_cumulative: dict[tuple[str, str, str, tuple[int, ...]], tuple[float, ...]] = {}
        self._names: dict[str, str] = {}
        self._drug_names = self._checked_drugs()
        self._adverse = {spec: entry for entry in self.book.prescribing.adverse_effects for spec in entry.effects}
        for document_type in self._categories:  # every data error now, before any request
            for profile in self.book.assignment(document_type, self._categories[document_type]).profiles.values:
                self._all_draws(self.book.profiles[profile])

    @property
    def version(self) -> str:
        """The case data's version: part of a run's fingerprint, since the cases shape every document."""
        return self.book.version

    def profile_name(self, document_type: str) -> str:
        """The document type's main profile."""
        return self.book.assignment(document_type, self._categories[document_type]).profile

    def case_for(self, document_type: str, seed: int) -> Case:
        """The case of the plan item of ``document_type`` seeded ``seed`` (the item's seed): always the same."""
        found = self._assignments.get(document_type)
        if found is None:
            assignment = self.book.assignment(document_type, self._categories[document_type])
            settings = assignment.settings or tuple(self.taxonomy.document_types[document_type].settings) or ("unspecified",)
            found = self._assignments[document_type] = (assignment, settings)
        assignment, settings = found
        rng = random.Random(seed * 7919 + 2_146_959_361)  # the item's seed, apart from the teacher's sampling seed
        profile = self.book.profiles[assignment.profiles.draw(rng)]
        for _ in range(MAX_ATTEMPTS):
            setting = rng.choice(settings)
            trusted: set[str] = set()
            if assignment.population:
                case = self._population(rng, profile, setting, assignment.drugs is not False)
            else:
                case = self._draw(rng, profile, setting, assignment.drugs is not False, trusted)
            if case is not None and not self.rules.broken(case, prescribing=False, trusted=frozenset(trusted)):
                return case
        raise TaxonomyError(f"case profile '{profile.name}' gave no coherent case for {document_type} in {MAX_ATTEMPTS} draws: its ages, sexes and conditions contradict the rules")

    # --- the patient ------------------------------------------------------------------------------

    def epidemiology(self, code: str) -> Epidemiology | None:
        """The most specific entry of conditions.yaml covering ``code``."""
        if code not in self._epidemiology:
            found = [(_depth(spec), entry) for entry in self.book.epidemiology for spec in entry.specs if terminology.covers(spec, code)]
            self._epidemiology[code] = max(found, key=lambda item: item[0])[1] if found else None
        return self._epidemiology[code]

    def _sex(self, rng: random.Random, profile: Profile, epidemiology: Epidemiology | None) -> str:
        if len(profile.sexes.values) == 1:
            return str(profile.sexes.values[0])
        if epidemiology is not None and epidemiology.female is not None:
            return "female" if rng.random() < epidemiology.female else "male"
        return str(profile.sexes.draw(rng))

    def _age(self, rng: random.Random, profile: Profile, epidemiology: Epidemiology | None) -> int | None:
        key = (profile.name, id(epidemiology))
        table = self._age_tables.get(key)
        if table is None:
            table = self._age_tables[key] = self._age_table(profile, epidemiology)
        if not table[0]:
            return None
        bands, cumulative = table
        a, b = bands[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]
        return a + int(rng.random() * (b - a + 1))

    def _age_table(self, profile: Profile, epidemiology: Epidemiology | None) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
        """The age bands a patient is drawn from: the condition's, clipped to the profile's range and the condition's floor and ceiling."""
        low = min(band[0] for band in profile.ages.values)
        high = max(band[1] for band in profile.ages.values)
        bands: list[tuple[int, int]] = list(profile.ages.values)
        weights: list[float] = list(profile.ages.weights)
        if epidemiology is not None:
            low, high = max(low, epidemiology.min_age), min(high, epidemiology.max_age)
            if epidemiology.ages is not None:
                bands, weights = list(epidemiology.ages.values), list(epidemiology.ages.weights)
        clipped = []
        for (band_low, band_high), weight in zip(bands, weights):
            a, b = max(band_low, low), min(band_high, high)
            if a <= b:
                clipped.append(((a, b), weight * (b - a + 1) / (band_high - band_low + 1)))
        return tuple(band for band, _ in clipped), tuple(accumulate(w for _, w in clipped))

    # --- one draw ---------------------------------------------------------------------------------

    def _draw(self, rng: random.Random, profile: Profile, setting: str, with_drugs: bool, trusted: set[str]) -> Case | None:
        """One case, or None when the draw fails; ``trusted`` gets the codes checked against the patient and each other while drawing."""
        draw = self._code_draw(profile, "primary")
        index = draw.group(rng)
        assert index is not None
        epidemiology = self.epidemiology(draw.categories[index])
        sex = self._sex(rng, profile, epidemiology)
        age = self._age(rng, profile, epidemiology)
        if age is None:
            return None
        primary = draw.groups[index].pick(rng, sex)
        if primary is None:
            return None
        specific = self.epidemiology(primary)
        if specific is not epidemiology:  # a subcategory with its own figures (hip fractures among the S72 femur fractures)
            sex, age = self._sex(rng, profile, specific), self._age(rng, profile, specific)
            if age is None:
                return None
        if not self.rules.fits_patient(primary, age, sex):
            return None
        codes: list[tuple[str, str]] = [(primary, "primary")]
        given: list[Medication] = []
        if not self.coder.uncomplicated(primary):
            pool = "comorbidity" if age >= 18 else "child_comorbidity"
            count = profile.comorbidity_counts.draw(rng)
            for _ in range(min(count, 2) if profile.adverse_effects else count):  # an adverse reaction adds what the drug was for
                self._add_comorbidity(rng, codes, profile, pool, age, sex)
        for pool_name in profile.companions:  # always there: a case that cannot have one is redrawn
            if not self._add(rng, codes, self._code_draw(profile, f"companion:{pool_name}"), "companion", age, sex, tries=40):
                return None
        if profile.external_causes and _is_injury(primary):
            self._add(rng, codes, self._code_draw(profile, "external_cause"), "external_cause", age, sex)
        if profile.adverse_effects and not self._adverse_effect(rng, codes, given, profile, age, sex, setting):
            return None
        if intent(primary) in ("1", "2", "3", "4"):
            self._poisoning(rng, primary, given, age, setting)
        stage = profile.obstetric
        trusted.update(code for code, role in codes if role != "adverse_effect")
        coded = self.coder.apply(codes, lambda spec: self._code_of(rng, spec, age, sex), stage)
        if len({code for code, _ in coded}) < len(coded):
            return None
        medications: tuple[Medication, ...] = ()
        if with_drugs:
            patient = self._patient(age, coded, setting)
            medications = self.prescriber.choose(rng, coded, patient, tuple(given))
            drugs = self.book.prescribing.drugs
            coded = self.coder.drug_codes(coded, [drugs[m.name].classes for m in medications], [m.name for m in medications])
        months = None
        if age < 2:
            newborn = terminology.chapter_of(primary) == "16" or primary.startswith(("Z38", "Z00.11"))
            months = 0 if newborn else age * 12 + int(rng.random() * 12)
        conditions = tuple(self._condition(code, role) for code, role in coded)
        renamed = tuple(self._vocabulary_named(m) for m in medications)
        return Case(profile.name, age, sex, setting, self._acuity(rng, profile, setting), conditions, renamed, "", months)

    def _patient(self, age: int, coded: list[tuple[str, str]], setting: str) -> Patient:
        codes = tuple(code for code, _ in coded)
        pregnant = any(terminology.chapter_of(code) == "15" or code.startswith(("Z34", "Z3A")) for code in codes)
        delivered = any(code.startswith(("O80", "O81", "O82", "Z37")) for code in codes)
        return self.prescriber.patient(age, codes, setting, pregnant and not delivered, weeks_of(codes))

    def _acuity(self, rng: random.Random, profile: Profile, setting: str) -> str:
        """The profile's acuity weighed by the acuities the setting sees (an ICU admission is never routine)."""
        key = (profile.name, setting)
        weighted = self._acuities.get(key)
        if weighted is None:
            seen = self.book.settings.get(setting)
            if seen is None:
                weighted = profile.acuities
            else:
                weights = tuple(w * seen.acuities.get(a, 0.0) for a, w in zip(profile.acuities.values, profile.acuities.weights))
                weighted = Weighted(profile.acuities.values, weights) if sum(weights) > 0 else Weighted(tuple(seen.acuities), tuple(seen.acuities.values()))
            self._acuities[key] = weighted
        return str(weighted.draw(rng))

    def _condition(self, code: str, role: str) -> Condition:
        found = self._condition_cache.get((code, role))
        if found is None:
            found = self._condition_cache[(code, role)] = Condition(code, _description(code), role, self._name(code))
        return found

    def _vocabulary_named(self, medication: Medication) -> Medication:
        """The medication under the vocabulary's name for its drug (the same object when that is its name already)."""
        name = self._drug_names.get(medication.name, medication.name)
        return medication if name == medication.name else Medication(name, medication.indication, medication.role, medication.why)

    def _name(self, code: str) -> str:
        if code not in self._names:
            self._names[code] = clinical_name(code, self.book.names)
        return self._names[code]

    def _add(self, rng: random.Random, codes: list[tuple[str, str]], draw: _CodeDraw, role: str, age: int, sex: str, tries: int = 8) -> bool:
        """Add one code of ``draw`` that fits the patient and the codes so far; False when ``tries`` draws found none."""
        for _ in range(tries):
            index = draw.group(rng)
            code = draw.groups[index].pick(rng, sex) if index is not None else None
            if code and self._fits(code, codes, age, sex):
                codes.append((code, role))
                return True
        return False

    def _fits(self, code: str, codes: list[tuple[str, str]], age: int, sex: str) -> bool:
        rules = self.rules
        return rules.fits_patient(code, age, sex) and not any(rules.pair_breaks(code, other) for other, _ in codes)

    def _add_comorbidity(self, rng: random.Random, codes: list[tuple[str, str]], profile: Profile, part: str, age: int, sex: str) -> None:
        """A comorbidity weighed by the patient's sex, its age floor and ceiling, and what comes with the primary."""
        draw = self._code_draw(profile, part)
        primary = codes[0][0]
        associated = self._associated.get(primary)
        if associated is None:
            associated = self._associated[primary] = tuple(i for i, (specs, _) in enumerate(self.book.associations) if any(terminology.covers(spec, primary) for spec in specs))
        key = (profile.name, part, sex, associated)
        cumulative = self._comorbidity_cumulative.get(key)
        if cumulative is None:
            weights = self._comorbidity_weights(draw, sex)
            if associated:
                weights = [w * f for w, f in zip(weights, self._associations(draw, associated))]
            cumulative = self._comorbidity_cumulative[key] = tuple(accumulate(weights))
        if not cumulative or cumulative[-1] <= 0:
            return
        for _ in range(8):  # a code outside its age floor or ceiling is refused by _fits and drawn again
            index = min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)
            code = draw.groups[index].pick(rng, sex)
            if code and self._fits(code, codes, age, sex):
                codes.append((code, "comorbidity"))
                return

    def _comorbidity_weights(self, draw: _CodeDraw, sex: str) -> list[float]:
        """The pool's weights for a patient of ``sex``: more for the conditions that sex has more often."""
        weights = []
        for category, weight in zip(draw.categories, draw.weights):
            found = self.epidemiology(category)
            if found is not None and found.female is not None:
                weight *= 2 * (found.female if sex == "female" else 1 - found.female)
            weights.append(weight)
        return weights

    def _associations(self, draw: _CodeDraw, associated: tuple[int, ...]) -> list[float]:
        """The multipliers of what comes with the primary (the conditions.yaml associations it matches), per group of the pool."""
        more = [self.book.associations[i][1] for i in associated]
        factors = []
        for category, group in zip(draw.categories, draw.groups):
            factor = 1.0
            for multipliers in more:
                for spec, multiplier in multipliers.items():
                    if terminology.covers(spec, category) or terminology.covers(category, spec) or any(terminology.covers(spec, c) for c in group.codes[:1]):
                        factor *= multiplier
            factors.append(factor)
        return factors

    def _code_of(self, rng: random.Random, spec: str, age: int, sex: str) -> str | None:
        """A billable code under ``spec`` by its code weights, fit for the patient (a companion a combination needs)."""
        group = self._spec_group(spec)
        for _ in range(8):
            code = group.pick(rng, sex)
            if code and self.rules.fits_patient(code, age, sex):
                return code
        return None

    def _adverse_effect(self, rng: random.Random, codes: list[tuple[str, str]], given: list[Medication], profile: Profile, age: int, sex: str, setting: str) -> bool:
        """The drug code (T36-T50, 6th character 5), the suspect drug and what it was given for, after the effect."""
        primary = codes[0][0]
        entries = [entry for spec, entry in self._adverse.items() if terminology.covers(spec, primary)]
        if not entries:
            return False
        entry = rng.choice(entries)
        causes = [code for code in terminology.billable_codes(entry.cause) if (terminology.seventh_character(code) or "A") in profile.seventh_characters]
        if not causes:
            return False
        cause = rng.choice(causes)
        codes.append((cause, "adverse_effect"))
        given_for = self._code_of(rng, rng.choice(entry.given_for), age, sex)
        if given_for and given_for not in {c for c, _ in codes} and self._fits(given_for, codes, age, sex):
            codes.insert(1, (given_for, "comorbidity"))
        suspects = self.prescriber.suspects(cause)
        if suspects is None:
            return False
        if given_for:  # the suspect is a drug given for that condition where one is
            fitting = [(d, w) for d, w in zip(suspects.values, suspects.weights) if self.prescriber.treats(d, given_for)]
            if fitting:
                suspects = Weighted(tuple(d for d, _ in fitting), tuple(w for _, w in fitting))
        patient = self._patient(age, codes, setting)
        picked = self.prescriber.pick(rng, suspects, patient, given, suspect=True)
        if not picked:
            return False
        given.append(Medication(picked[0], cause, "suspect"))
        return True

    def _poisoning(self, rng: random.Random, primary: str, given: list[Medication], age: int, setting: str) -> None:
        """The substance of a drug poisoning (when it is a drug) and its antidote."""
        patient = self._patient(age, [(primary, "primary")], setting)
        suspects = self.prescriber.suspects(primary)
        if suspects is not None:
            for name in self.prescriber.pick(rng, suspects, patient, given, suspect=True):
                given.append(Medication(name, primary, "suspect"))
        antidotes = self.prescriber.antidotes(primary)
        if antidotes is not None:
            for name in self.prescriber.pick(rng, antidotes, patient, given):
                given.append(Medication(name, primary, "antidote"))

    # --- population-level documents ---------------------------------------------------------------

    def _population(self, rng: random.Random, profile: Profile, setting: str, with_drugs: bool) -> Case | None:
        """A topic (the primary condition), its first-line drugs and the population they are for."""
        draw = self._code_draw(profile, "primary")
        index = draw.group(rng)
        assert index is not None
        epidemiology = self.epidemiology(draw.categories[index])
        topic = draw.groups[index].pick(rng, None)
        if topic is None:
            return None
        low, high = _population_range(profile, epidemiology)
        sexes = {"female"} if epidemiology and epidemiology.female == 1.0 else {"male"} if epidemiology and epidemiology.female == 0.0 else set(_SEXES)
        if any(self.rules.demographic_breaks(topic, age, sex) for age in (low, high) for sex in sexes):
            return None
        medications: tuple[Medication, ...] = ()
        if with_drugs:
            patient = self.prescriber.patient(max(low, 18) if high >= 18 else low, (topic,), "outpatient clinic", False, None)
            treatment = self.prescriber.treatment(topic, "outpatient")
            if treatment is not None:  # the topic's first-line drug
                medications = tuple(Medication(name, topic, "treatment") for name in self.prescriber.pick(rng, treatment.drugs, patient, ()))
        name = self._name(topic)
        who = "women" if sexes == {"female"} else "men" if sexes == {"male"} else "people"
        if high < 18:
            people = f"children aged {low}-{high}" if who == "people" else f"{'girls' if who == 'women' else 'boys'} aged {low}-{high}"
        elif low >= 18:
            people = f"{'adults' if who == 'people' else who} aged {low} and older" if high >= 90 else f"{'adults' if who == 'people' else who} aged {low}-{high}"
        else:
            people = f"{who} of all ages" if high >= 90 and low == 0 else f"{who} aged {low}-{high}"
        renamed = tuple(self._vocabulary_named(m) for m in medications)
        condition = Condition(topic, _description(topic), "primary", name)
        return Case(profile.name, None, None, setting, None, (condition,), renamed, f"{people} with {name}", None)

    # --- the draws of a profile, built once -------------------------------------------------------

    def _all_draws(self, profile: Profile) -> None:
        parts = ["primary", "comorbidity", "child_comorbidity", *(f"companion:{pool}" for pool in profile.companions)]
        for part in parts + (["external_cause"] if profile.external_causes else []):
            self._code_draw(profile, part)

    def _code_draw(self, profile: Profile, part: str) -> _CodeDraw:
        key = (profile.name, part)
        if key not in self._draws:
            if part == "primary":
                source, keep = profile.primary, _primary_filter(profile, lambda code: self.coder.never_first(code) or self.rules.impossible(code), profile.adverse_effects)
            elif part == "comorbidity":
                source, keep = self.book.pools[profile.comorbidity_pool], _comorbidity_filter(profile.chronic_only)
            elif part == "child_comorbidity":
                source, keep = self.book.pools[profile.child_pool], _comorbidity_filter(profile.chronic_only)
            elif part == "external_cause":
                source, keep = self.book.pools[profile.external_causes or ""], _encounter_filter(profile.seventh_characters)
            else:
                source, keep = self.book.pools[part.partition(":")[2]], _encounter_filter(profile.seventh_characters)
            self._draws[key] = self._build_draw(profile, part, source, keep)
        return self._draws[key]

    def _spec_group(self, spec: str) -> _Group:
        key = ("(spec)", spec)
        if key not in self._draws:
            self._draws[key] = _CodeDraw((self._group(spec, terminology.billable_codes(spec)),), (1.0,), (terminology.category_of(spec),))
        return self._draws[key].groups[0]

    def _build_draw(self, profile: Profile, part: str, source: Weighted, keep: Callable[[str], bool]) -> _CodeDraw:
        groups: list[_Group] = []
        weights: list[float] = []
        categories: list[str] = []
        for spec, weight in zip(source.values, source.weights):
            by_category: dict[str, list[str]] = defaultdict(list)
            for code in terminology.billable_codes(spec):
                if keep(code):
                    by_category[terminology.category_of(code)].append(code)
            by_category = {category: codes for category, codes in by_category.items() if self._group(spec, codes).weights and sum(self._group(spec, codes).weights) > 0}
            if not by_category:
                raise TaxonomyError(f"taxonomies/cases: profile '{profile.name}': {part} entry '{spec}' has no billable code it may draw (check seventh_characters, intents, or that a comorbidity is a chronic condition)")
            for category, codes in by_category.items():
                groups.append(self._group(spec, codes))
                weights.append(weight / len(by_category))
                categories.append(category)
        return _CodeDraw(tuple(groups), tuple(weights), tuple(categories))

    def _group(self, spec: str, codes: list[str] | tuple[str, ...]) -> _Group:
        """The codes with their code weights (the most specific code_weights map over the entry's scope)."""
        cache_key = ("(group)", f"{spec}|{codes[0] if codes else ''}|{len(codes)}")
        cached = self._draws.get(cache_key)
        if cached is not None:
            return cached.groups[0]
        scope = spec if codes and _depth(spec) >= 2 and terminology.covers(spec, codes[0]) else (terminology.category_of(codes[0]) if codes else spec)
        maps = [(len(key), table) for key, table in self.book.code_weights.items() if terminology.covers(key, scope) or key == scope]
        weights: list[float]
        if maps:
            table = max(maps, key=lambda item: item[0])[1]
            keyed = {code: max((k for k in table if k != "rest" and terminology.covers(k, code)), key=len, default=None) for code in codes}
            counts: dict[str | None, int] = defaultdict(int)
            for key in keyed.values():
                counts[key] += 1
            weights = [(table[key] if key else table.get("rest", 0.0)) / counts[key] for key in keyed.values()]
        else:
            weights = [1.0] * len(codes)
        group = _Group(tuple(codes), tuple(weights))
        for sex in _SEXES:
            allowed = [(c, w) for c, w in zip(codes, weights) if w > 0 and not self.rules.sex_breaks(c, sex)]
            group.by_sex[sex] = (tuple(c for c, _ in allowed), tuple(accumulate(w for _, w in allowed)))
        self._draws[cache_key] = _CodeDraw((group,), (1.0,), ("",))
        return group

    def _check_names(self) -> None:
        known = set(self._categories)
        for name in self.book.document_types:
            if name not in known:
                raise TaxonomyError(f"taxonomies/cases/assignments.yaml: document type '{name}' is not in the taxonomy")

    def _checked_drugs(self) -> dict[str, str]:
        """Every drug name of drugs.yaml mapped to the vocabulary's name; one line for a name it lacks."""
        found = {}
        for name in sorted(self.book.prescribing.drugs):
            known = terminology.vocabulary_drug_name(name)
            if known is None:
                raise TaxonomyError(f"taxonomies/cases/drugs.yaml: '{name}' is not a drug of the installed vocabulary ({terminology.DRUG_VOCABULARY_RELEASE})")
            found[name] = known
        return found


def _population_range(profile: Profile, epidemiology: Epidemiology | None) -> tuple[int, int]:
    """The central age range of a condition's patients (its bands holding 90% of the weight), within the profile's range."""
    low = min(band[0] for band in profile.ages.values)
    high = max(band[1] for band in profile.ages.values)
    if epidemiology is None:
        return low, high
    low, high = max(low, epidemiology.min_age), min(high, epidemiology.max_age)
    if epidemiology.ages is not None:
        bands = sorted(zip(epidemiology.ages.values, epidemiology.ages.weights))
        total = sum(w for _, w in bands)
        kept = [band for band, w in bands if w / total >= 0.05] or [band for band, _ in bands]
        low, high = max(low, min(b[0] for b in kept)), min(high, max(b[1] for b in kept))
    return (low, high) if low <= high else (max(0, high), high)


def _primary_filter(profile: Profile, never_first: Callable[[str], bool], adverse_effects: bool) -> Callable[[str], bool]:
    encounter = _encounter_filter(profile.seventh_characters)
    intents = profile.intents
    obstetric = profile.obstetric

    def keep(code: str) -> bool:
        if not encounter(code) or terminology.chapter_of(code) == EXTERNAL_CAUSE_CHAPTER or never_first(code):
            return False
        code_intent = intent(code)
        if intents is not None and code_intent is not None and code_intent not in intents:
            return False
        return obstetric is None or _stage_fits(code, obstetric)

    return keep


@cache
def _stage_fits(code: str, stage: str) -> bool:
    """A prenatal visit has no childbirth or puerperium code; a delivery no trimester code where an "in childbirth" one exists."""
    text = terminology.description(code).lower()
    if stage == "antepartum":
        return not any(word in text for word in ("childbirth", "puerperium", "postpartum", "delivery")) and not code.startswith(("O80", "O81", "O82"))
    if "trimester" in text:
        parent = terminology.parent(code)
        family = terminology.billable_codes(terminology.parent(parent) or parent) if parent else ()
        return not any("childbirth" in terminology.description(other).lower() for other in family)
    return "puerperium" not in text


def _encounter_filter(seventh: str) -> Callable[[str], bool]:
    """Codes with a 7th-character extension only when it is one the profile allows."""

    def keep(code: str) -> bool:
        extension = terminology.seventh_character(code)
        return extension is None or extension in seventh

    return keep


def _comorbidity_filter(chronic_only: bool) -> Callable[[str], bool]:
    """Comorbidities: no 7th-character code, no manifestation code, chronic when the profile says so."""

    def keep(code: str) -> bool:
        if terminology.seventh_character(code) is not None or terminology.is_manifestation(code):
            return False
        return terminology.is_chronic(code) if chronic_only else True

    return keep
