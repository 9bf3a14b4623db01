"""Load and check the case data of ``taxonomies/cases/``: profiles, assignments, conditions, names, rules, drugs, synonyms.

Every code a file names (a chapter number, a block, a category or a subcategory) must exist in the
installed ICD-10-CM table; every weight must be positive; every pool and profile a file refers to
must be defined. A problem is one :class:`~mediflow.errors.TaxonomyError` line naming the file,
the entry and the value, with a "did you mean" where a close name exists. A user taxonomy folder
may hold its own ``cases/<file>.yaml``: it replaces the built-in file of that name. Drug names are
checked against the drug vocabulary by the sampler, which is the only user of them.
"""

from __future__ import annotations

import bisect
import difflib
import hashlib
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from itertools import accumulate
from pathlib import Path
from typing import Any

from mediflow import terminology
from mediflow.errors import TaxonomyError
from mediflow.resources import taxonomies_dir
from mediflow.textfiles import read_yaml

#: The files of ``taxonomies/cases/``.
FILES: tuple[str, ...] = ("profiles", "assignments", "conditions", "names", "rules", "drugs", "synonyms")
SEXES: tuple[str, ...] = ("female", "male")
ACUITIES: tuple[str, ...] = ("routine", "urgent", "emergent", "critical")
#: External causes (chapter 20) are never first-listed (ICD-10-CM guideline I.C.20).
EXTERNAL_CAUSE_CHAPTER = "20"
#: Kinds of setting (assignments.yaml ``settings``): where a drug may be given and what acuity a place sees.
SETTING_KINDS: tuple[str, ...] = ("inpatient", "icu", "emergency", "procedure", "outpatient", "infusion", "laboratory", "remote")
#: How a drug is avoided in pregnancy (drugs.yaml): always, from 20 weeks (NSAIDs), or only before delivery (uterotonics).
PREGNANCY_LIMITS: tuple[str, ...] = ("avoid", "avoid_from_20_weeks", "avoid_antepartum")


@dataclass(frozen=True)
class Weighted:
    """Values with relative weights (not necessarily summing to 1)."""

    values: tuple[Any, ...]
    weights: tuple[float, ...]
    cumulative: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cumulative", tuple(accumulate(self.weights)))

    def draw(self, rng: random.Random) -> Any:
        """One value, by weight."""
        return self.values[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]


@dataclass(frozen=True)
class Profile:
    """Who the patients of a kind of document are and what they have (see ``profiles.yaml``)."""

    name: str
    ages: Weighted  # of (low, high) bands, inclusive
    sexes: Weighted
    acuities: Weighted
    primary: Weighted  # of code specs
    comorbidity_pool: str
    child_pool: str  # the comorbidity pool of patients under 18
    chronic_only: bool  # comorbidities limited to codes AHRQ's Chronic Condition Indicator marks chronic
    comorbidity_counts: Weighted  # of ints
    companions: tuple[str, ...]
    external_causes: str | None
    seventh_characters: str
    intents: str | None = None  # T36-T65 codes only with these 6th characters (1-4 poisoning, 5 adverse effect, 6 underdosing)
    obstetric: str | None = None  # "antepartum" (no childbirth or puerperium codes) or "delivery" (the "in childbirth" codes)
    adverse_effects: bool = False  # the primary is the nature of an adverse drug effect; its T-code and suspect drug follow


@dataclass(frozen=True)
class Assignment:
    """The profiles a document type's cases come from, whether it shows medications, its settings override."""

    profiles: Weighted  # of profile names
    drugs: bool | None  # None: as the document type's category says
    settings: tuple[str, ...] = ()
    population: bool | None = None  # about a topic and a population, not one patient (None: as the category says)

    @property
    def profile(self) -> str:
        """The main profile (the heaviest)."""
        return str(self.profiles.values[self.profiles.weights.index(max(self.profiles.weights))])


@dataclass(frozen=True)
class Setting:
    """What kind of place a setting is and which acuities it sees (assignments.yaml ``settings``)."""

    kind: str
    acuities: dict[str, float]


@dataclass(frozen=True)
class Epidemiology:
    """Who has a condition (conditions.yaml): share female, age bands, hard floor and ceiling, and the source."""

    specs: tuple[str, ...]
    female: float | None
    ages: Weighted | None  # of (low, high) bands
    min_age: int
    max_age: int
    source: str


@dataclass(frozen=True)
class DrugFacts:
    """One drug of drugs.yaml: its classes, whether it is hospital-only, its youngest age and its pregnancy limit."""

    name: str
    classes: tuple[str, ...]
    hospital: bool
    min_age: int
    pregnancy: str | None


@dataclass(frozen=True)
class Treatment:
    """Agents for the conditions named, weighted by how often each is used, and how many a patient takes."""

    specs: tuple[str, ...]
    drugs: Weighted  # of names
    counts: Weighted  # of ints
    where: tuple[str, ...]  # setting kinds; empty: anywhere


@dataclass(frozen=True)
class Prophylaxis:
    """A drug a hospitalised (or operated) patient gets without a condition of its own."""

    why: str
    where: tuple[str, ...]  # setting kinds
    settings: tuple[str, ...]  # setting names
    min_age: int
    chance: float
    drugs: Weighted


@dataclass(frozen=True)
class AdverseEffect:
    """The nature of an adverse drug effect, the T36-T50 code of its drug, and what the drug was given for."""

    effects: tuple[str, ...]
    cause: str
    given_for: tuple[str, ...]


@dataclass(frozen=True)
class Contraindication:
    drugs: frozenset[str]
    specs: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Interaction:
    first: frozenset[str]
    second: frozenset[str]
    why: str
    allowed: tuple[str, ...] = ()  # setting kinds where the pair is acceptable


@dataclass(frozen=True)
class Prescribing:
    """The prescribing model of drugs.yaml, checked."""

    limit: int
    treated: float
    drugs: dict[str, DrugFacts]
    combinations: frozenset[frozenset[str]]
    adjuncts: dict[str, str]
    treatments: tuple[Treatment, ...]
    prophylaxis: tuple[Prophylaxis, ...]
    suspects: dict[str, Weighted]
    antidotes: dict[str, Weighted]
    adverse_effects: tuple[AdverseEffect, ...]
    contraindications: tuple[Contraindication, ...]
    interactions: tuple[Interaction, ...]


@dataclass(frozen=True)
class Guidelines:
    """The ICD-10-CM guideline data of rules.yaml ``guidelines`` (the logic is mediflow.cases.guidelines)."""

    never_first: tuple[str, ...]
    first_only: tuple[str, ...]
    heart_involvement: tuple[str, ...]
    pregnancy_wrappers: tuple[tuple[tuple[str, ...], str, bool], ...]  # (code specs, obstetric spec, the O code replaces them)
    diabetes_with: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (complication specs, diabetes subcategory suffixes)
    uncomplicated: tuple[str, ...]  # primaries that carry no other condition (Z34, O80)
    companions_needed: tuple[tuple[tuple[str, ...], str], ...]  # (combination codes, the spec a companion is drawn from)


@dataclass(frozen=True)
class AgeSexRule:
    """Codes that require an age range and/or a sex."""

    name: str
    why: str
    codes: tuple[str, ...]
    sex: str | None
    ages: tuple[int, int] | None


@dataclass(frozen=True)
class CaseBook:
    """Everything the case sampler, the rules and the mention filter read, checked."""

    profiles: dict[str, Profile]
    pools: dict[str, Weighted]
    default: Assignment
    categories: dict[str, Assignment]
    document_types: dict[str, Assignment]
    rules: tuple[AgeSexRule, ...]
    sex_words: dict[str, frozenset[str]]  # sex -> words of a description that require it
    trimesters: dict[str, tuple[int, int]]  # description phrase -> weeks of gestation it allows
    age_words: dict[str, tuple[int, int]]  # description phrase -> ages (years) it allows
    term_rules: tuple[tuple[tuple[str, ...], tuple[int, int]], ...]  # (code specs, weeks of gestation they allow)
    never_together: tuple[tuple[str, str], ...]  # clinical exclusions beyond Excludes1
    excludes1: bool
    one_per_category: bool
    one_per_category_except: tuple[str, ...]
    prescribing: Prescribing
    guidelines: Guidelines
    settings: dict[str, Setting]
    epidemiology: tuple[Epidemiology, ...]
    code_weights: dict[str, dict[str, float]]  # spec -> {code or sub-spec, or "rest": weight}
    associations: tuple[tuple[tuple[str, ...], dict[str, float]], ...]  # (primary specs, {comorbidity spec: multiplier})
    names: dict[str, str]  # code spec -> clinical name
    synonyms: dict[str, tuple[str, ...]]
    ignore_words: frozenset[str]  # description words that do not identify a condition (mention filter)
    version: str

    def assignment(self, document_type: str, category: str) -> Assignment:
        """The document type's own entry over its category's over the default, key by key."""
        broad = self.categories.get(category, self.default)
        own = self.document_types.get(document_type)
        if own is None:
            return Assignment(broad.profiles, broad.drugs if broad.drugs is not None else True, broad.settings, bool(broad.population))
        drugs = own.drugs if own.drugs is not None else broad.drugs
        population = own.population if own.population is not None else broad.population
        return Assignment(own.profiles, drugs if drugs is not None else True, own.settings or broad.settings, bool(population))


def load_case_book(taxonomy: Path | str | None = None) -> CaseBook:
    """The built-in case data, each file replaced by the user folder's ``cases/<file>.yaml`` where it has one."""
    return _load(str(Path(taxonomy).resolve()) if taxonomy else None)


@cache
def _load(user_folder: str | None) -> CaseBook:
    paths = {name: taxonomies_dir() / "cases" / f"{name}.yaml" for name in FILES}
    if user_folder is not None:
        for name in FILES:
            candidate = Path(user_folder) / "cases" / f"{name}.yaml"
            if candidate.is_file():
                paths[name] = candidate
    raw = {name: _read(path) for name, path in paths.items()}
    profiles_file = raw["profiles"]
    pools = {name: _weighted_codes(paths["profiles"], f"pool '{name}'", entries) for name, entries in _mapping(paths["profiles"], "pools", profiles_file.get("pools")).items()}
    profiles = {name: _profile(paths["profiles"], name, entry, pools) for name, entry in _mapping(paths["profiles"], "profiles", profiles_file.get("profiles")).items()}
    assignments = raw["assignments"]
    where = paths["assignments"]
    default = _assignment(where, "default", assignments.get("default"), profiles, True)
    categories = {name: _assignment(where, f"category '{name}'", entry, profiles, default.drugs) for name, entry in _mapping(where, "categories", assignments.get("categories") or {}).items()}
    document_types = {name: _assignment(where, f"document type '{name}'", entry, profiles, None) for name, entry in _mapping(where, "document_types", assignments.get("document_types") or {}).items()}
    rules_file = raw["rules"]
    rules = tuple(_rule(paths["rules"], position, entry) for position, entry in enumerate(rules_file.get("age_sex") or [], 1))
    sex_words = {_one_of(SEXES)(paths["rules"], "sex_words", sex): frozenset(str(w).lower() for w in _list(paths["rules"], f"sex_words: {sex}", words)) for sex, words in (rules_file.get("sex_words") or {}).items()}
    age_words = {str(phrase).lower(): _weeks_or_ages(paths["rules"], f"age_words: {phrase}", ages) for phrase, ages in (rules_file.get("age_words") or {}).items()}
    gestation = rules_file.get("gestation") or {}
    trimesters = {str(phrase).lower(): _weeks(paths["rules"], f"gestation: trimesters: {phrase}", weeks) for phrase, weeks in (gestation.get("trimesters") or {}).items()}
    term_rules = tuple(
        (
            tuple(_code(paths["rules"], f"gestation rule #{n}", spec) for spec in _list(paths["rules"], f"gestation rule #{n}: codes", entry.get("codes"))),
            _weeks(paths["rules"], f"gestation rule #{n}", entry.get("weeks")),
        )
        for n, entry in enumerate(gestation.get("codes") or [], 1)
    )
    conditions_file = raw["conditions"]
    where = paths["conditions"]
    epidemiology = tuple(_epidemiology(where, n, entry) for n, entry in enumerate(_list(where, "epidemiology", conditions_file.get("epidemiology")), 1))
    code_weights = {
        _code(where, "code_weights", spec): {
            ("rest" if str(key) == "rest" else _code(where, f"code_weights: {spec}", key)): _positive(where, f"code_weights: {spec}: {key}", weight, zero=True) for key, weight in _mapping(where, f"code_weights: {spec}", weights).items()
        }
        for spec, weights in (conditions_file.get("code_weights") or {}).items()
    }
    associations = tuple(
        (
            tuple(_code(where, f"association #{n}", spec) for spec in _list(where, f"association #{n}: primary", entry.get("primary"))),
            {_code(where, f"association #{n}", spec): _positive(where, f"association #{n}: {spec}", w) for spec, w in _mapping(where, f"association #{n}: more", entry.get("more")).items()},
        )
        for n, entry in enumerate(conditions_file.get("associations") or [], 1)
    )
    names = {_code(paths["names"], "names", spec): str(name) for spec, name in _mapping(paths["names"], "names", raw["names"].get("names")).items()}
    settings = {str(name): _setting(paths["assignments"], str(name), entry) for name, entry in _mapping(paths["assignments"], "settings", assignments.get("settings")).items()}
    synonyms = {_code(paths["synonyms"], "synonyms", spec): tuple(str(s) for s in _list(paths["synonyms"], f"synonyms of {spec}", names)) for spec, names in _mapping(paths["synonyms"], "synonyms", raw["synonyms"].get("synonyms")).items()}
    return CaseBook(
        profiles=profiles,
        pools=pools,
        default=default,
        categories=categories,
        document_types=document_types,
        rules=rules,
        sex_words=sex_words,
        trimesters=trimesters,
        age_words=age_words,
        term_rules=term_rules,
        never_together=tuple((_code(paths["rules"], "never_together", pair[0]), _code(paths["rules"], "never_together", pair[1])) for pair in _pairs(paths["rules"], rules_file.get("never_together") or [])),
        excludes1=bool(rules_file.get("excludes1", True)),
        one_per_category=bool(rules_file.get("one_per_category", True)),
        one_per_category_except=tuple(_code(paths["rules"], "one_per_category_except", c) for c in rules_file.get("one_per_category_except") or []),
        prescribing=_prescribing(paths["drugs"], raw["drugs"], settings),
        guidelines=_guidelines(paths["rules"], rules_file.get("guidelines") or {}),
        settings=settings,
        epidemiology=epidemiology,
        code_weights=code_weights,
        associations=associations,
        names=names,
        synonyms=synonyms,
        ignore_words=frozenset(str(w).lower() for w in raw["synonyms"].get("ignore_words") or []),
        version=hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:12],
    )


def _read(path: Path) -> dict[str, Any]:
    content = read_yaml(path, "case data file", TaxonomyError)
    if not isinstance(content, dict):
        raise TaxonomyError(f"{path}: expected a mapping at the top level")
    return content


def _mapping(path: Path, what: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise TaxonomyError(f"{path}: {what}: expected a non-empty mapping")
    return {str(key): item for key, item in value.items()}


def _list(path: Path, what: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise TaxonomyError(f"{path}: {what}: expected a non-empty list")
    return value


def _code(path: Path, what: str, spec: Any) -> str:
    """A chapter, block or code of the installed ICD-10-CM table, else one line with a suggestion."""
    text = str(spec).strip()
    if terminology.is_known_item(text):
        return text
    typed = text.upper()
    confusions = typed[:1] + typed[1:].replace("O", "0").replace("I", "1").replace("L", "1")  # letters typed for digits
    close = [confusions] if terminology.is_known_item(confusions) else difflib.get_close_matches(typed, _all_items(), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise TaxonomyError(f"{path}: {what}: '{text}' is not an ICD-10-CM chapter, block or code ({terminology.ICD10CM_RELEASE}){hint}")


@cache
def _all_items() -> list[str]:
    return list(terminology._icd().get_all_codes(True))


def _weighted(path: Path, what: str, value: Any, parse: Any) -> Weighted:
    entries = _mapping(path, what, value)
    values, weights = [], []
    for key, weight in entries.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise TaxonomyError(f"{path}: {what}: weight of '{key}' must be a positive number, got {weight!r}")
        values.append(parse(path, what, key))
        weights.append(float(weight))
    return Weighted(tuple(values), tuple(weights))


def _weighted_codes(path: Path, what: str, value: Any) -> Weighted:
    return _weighted(path, what, value, _code)


def _count(path: Path, what: str, key: str) -> int:
    if not key.isdigit() or not 0 <= int(key) <= 4:
        raise TaxonomyError(f"{path}: {what}: '{key}' is not a count from 0 to 4")
    return int(key)


def _one_of(known: Iterable[str]) -> Any:
    known = tuple(known)

    def parse(path: Path, what: str, key: str) -> str:
        if key not in known:
            raise TaxonomyError(f"{path}: {what}: unknown value '{key}'; known: {', '.join(known)}")
        return key

    return parse


def _band(path: Path, what: str, key: str) -> tuple[int, int]:
    low, _, high = key.partition("-")
    if not (low.isdigit() and high.isdigit()) or int(low) > int(high) or int(high) > 120:
        raise TaxonomyError(f"{path}: {what}: age band '{key}' is not 'low-high' in years (0-120)")
    return int(low), int(high)


_PROFILE_KEYS = {"age", "sex", "acuity", "primary", "comorbidities", "companions", "external_causes", "seventh_characters", "intents", "obstetric", "adverse_effects"}


def _profile(path: Path, name: str, entry: Any, pools: Mapping[str, Weighted]) -> Profile:
    what = f"profile '{name}'"
    entry = _mapping(path, what, entry)
    unknown = sorted(set(entry) - _PROFILE_KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], _PROFILE_KEYS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TaxonomyError(f"{path}: {what}: unknown key '{unknown[0]}'{hint}")
    primary = _weighted(path, f"{what}: primary", entry.get("primary"), _code)
    for spec in primary.values:
        if terminology.covers(EXTERNAL_CAUSE_CHAPTER, spec) or spec == EXTERNAL_CAUSE_CHAPTER:
            raise TaxonomyError(f"{path}: {what}: primary '{spec}' is an external cause, which is never first-listed")
    comorbidities = _mapping(path, f"{what}: comorbidities", entry.get("comorbidities"))
    pool = _pool(path, f"{what}: comorbidities", comorbidities.get("pool"), pools)
    companions = tuple(_pool(path, f"{what}: companions", name, pools) for name in entry.get("companions") or [])
    external = entry.get("external_causes")
    return Profile(
        name=name,
        ages=_weighted(path, f"{what}: age", entry.get("age"), _band),
        sexes=_weighted(path, f"{what}: sex", entry.get("sex"), _one_of(SEXES)),
        acuities=_weighted(path, f"{what}: acuity", entry.get("acuity"), _one_of(ACUITIES)),
        primary=primary,
        comorbidity_pool=pool,
        chronic_only=bool(comorbidities.get("chronic", True)),
        child_pool=_pool(path, f"{what}: comorbidities", comorbidities["child_pool"], pools) if "child_pool" in comorbidities else pool,
        comorbidity_counts=_weighted(path, f"{what}: comorbidities: counts", comorbidities.get("counts"), _count),
        companions=companions,
        external_causes=_pool(path, f"{what}: external_causes", external, pools) if external else None,
        seventh_characters=str(entry.get("seventh_characters", "A")),
        intents=str(entry["intents"]) if "intents" in entry else None,
        obstetric=_one_of(("antepartum", "delivery"))(path, f"{what}: obstetric", str(entry["obstetric"])) if "obstetric" in entry else None,
        adverse_effects=bool(entry.get("adverse_effects", False)),
    )


def _pool(path: Path, what: str, name: Any, pools: Mapping[str, Weighted]) -> str:
    if name not in pools:
        close = difflib.get_close_matches(str(name), pools, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TaxonomyError(f"{path}: {what}: unknown pool '{name}'{hint}")
    return str(name)


def _assignment(path: Path, what: str, entry: Any, profiles: Mapping[str, Profile], drugs_default: bool | None) -> Assignment:
    entry = _mapping(path, what, entry)
    unknown = sorted(set(entry) - {"profile", "drugs", "settings", "population"})
    if unknown:
        raise TaxonomyError(f"{path}: {what}: unknown key '{unknown[0]}'; known: drugs, population, profile, settings")
    profile = entry.get("profile")
    chosen = profile if isinstance(profile, dict) else {str(profile): 1}

    def known(path: Path, where: str, name: str) -> str:
        if name not in profiles:
            close = difflib.get_close_matches(name, profiles, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise TaxonomyError(f"{path}: {what}: unknown profile '{name}'{hint}")
        return name

    weighted = _weighted(path, f"{what}: profile", chosen, known)
    population = entry.get("population")
    if population is not None and not isinstance(population, bool):
        raise TaxonomyError(f"{path}: {what}: population must be true or false")
    drugs = entry.get("drugs", drugs_default)
    if drugs is not None and not isinstance(drugs, bool):
        raise TaxonomyError(f"{path}: {what}: drugs must be true or false")
    settings = entry.get("settings") or []
    if not isinstance(settings, list) or not all(isinstance(s, str) and s for s in settings):
        raise TaxonomyError(f"{path}: {what}: settings must be a list of names")
    return Assignment(weighted, drugs, tuple(settings), population)


def _age(path: Path, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 120:
        raise TaxonomyError(f"{path}: {what}: expected an age in years (0-120), got {value!r}")
    return value


def _pairs(path: Path, value: Any) -> list[list[Any]]:
    if not isinstance(value, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in value):
        raise TaxonomyError(f"{path}: never_together: expected a list of [code, code] pairs")
    return value


def _weeks_or_ages(path: Path, what: str, value: Any) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value) and 0 <= value[0] <= value[1] <= 120):
        raise TaxonomyError(f"{path}: {what}: expected [low, high] in years (0-120), got {value!r}")
    return value[0], value[1]


def _weeks(path: Path, what: str, value: Any) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value) and 0 <= value[0] <= value[1] <= 45):
        raise TaxonomyError(f"{path}: {what}: weeks must be [low, high] (0-45), got {value!r}")
    return value[0], value[1]


def _rule(path: Path, position: int, entry: Any) -> AgeSexRule:
    entry = _mapping(path, f"age_sex rule #{position}", entry)
    name = str(entry.get("name") or f"#{position}")
    what = f"age_sex rule '{name}'"
    codes = tuple(_code(path, what, spec) for spec in _list(path, f"{what}: codes", entry.get("codes")))
    sex = entry.get("sex")
    if sex is not None and sex not in SEXES:
        raise TaxonomyError(f"{path}: {what}: sex must be one of {', '.join(SEXES)}, got {sex!r}")
    ages = entry.get("age")
    if ages is not None and not (isinstance(ages, list) and len(ages) == 2 and all(isinstance(a, int) for a in ages) and 0 <= ages[0] <= ages[1] <= 120):
        raise TaxonomyError(f"{path}: {what}: age must be [low, high] in years (0-120), got {ages!r}")
    if sex is None and ages is None:
        raise TaxonomyError(f"{path}: {what}: needs a sex, an age range or both")
    return AgeSexRule(name, str(entry.get("why", "")), codes, sex, (ages[0], ages[1]) if ages else None)


def _positive(path: Path, what: str, value: Any, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not zero):
        raise TaxonomyError(f"{path}: {what}: expected a positive number, got {value!r}")
    return float(value)


def _share(path: Path, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise TaxonomyError(f"{path}: {what}: expected a share from 0 to 1, got {value!r}")
    return float(value)


def _epidemiology(path: Path, n: int, entry: Any) -> Epidemiology:
    what = f"epidemiology #{n}"
    entry = _mapping(path, what, entry)
    unknown = sorted(set(entry) - {"codes", "female", "ages", "min_age", "max_age", "source"})
    if unknown:
        raise TaxonomyError(f"{path}: {what}: unknown key '{unknown[0]}'; known: ages, codes, female, max_age, min_age, source")
    specs = tuple(_code(path, what, spec) for spec in _list(path, f"{what}: codes", entry.get("codes")))
    if not str(entry.get("source") or "").strip():
        raise TaxonomyError(f"{path}: {what} ({', '.join(specs)}): every figure needs its source")
    low = _age(path, f"{what}: min_age", entry.get("min_age", 0))
    high = _age(path, f"{what}: max_age", entry.get("max_age", 120))
    if low > high:
        raise TaxonomyError(f"{path}: {what}: min_age {low} is above max_age {high}")
    return Epidemiology(
        specs,
        _share(path, f"{what}: female", entry["female"]) if "female" in entry else None,
        _weighted(path, f"{what}: ages", entry["ages"], _band) if "ages" in entry else None,
        low,
        high,
        str(entry["source"]),
    )


def _setting(path: Path, name: str, entry: Any) -> Setting:
    entry = _mapping(path, f"settings: {name}", entry)
    kind = _one_of(SETTING_KINDS)(path, f"settings: {name}: kind", str(entry.get("kind")))
    acuities = _weighted(path, f"settings: {name}: acuity", entry.get("acuity"), _one_of(ACUITIES))
    return Setting(kind, dict(zip(acuities.values, acuities.weights)))


def _drug_list(path: Path, what: str, value: Any, drugs: Mapping[str, DrugFacts]) -> frozenset[str]:
    """Drug names, or ``class:NAME`` for every drug of a class; each must be a drug of drugs.yaml."""
    found: set[str] = set()
    for item in _list(path, what, value):
        item = str(item)
        if item.startswith("class:"):
            members = {name for name, facts in drugs.items() if item[6:] in facts.classes}
            if not members:
                raise TaxonomyError(f"{path}: {what}: no drug of drugs.yaml has the class '{item[6:]}'")
            found |= members
        else:
            found.add(_drug(path, what, item, drugs))
    return frozenset(found)


def _drug(path: Path, what: str, value: Any, drugs: Mapping[str, DrugFacts]) -> str:
    name = str(value)
    if name not in drugs:
        close = difflib.get_close_matches(name, drugs, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TaxonomyError(f"{path}: {what}: '{name}' is not a drug of drugs.yaml 'drugs'{hint}")
    return name


def _drug_weights(path: Path, what: str, value: Any, drugs: Mapping[str, DrugFacts]) -> Weighted:
    return _weighted(path, what, value, lambda p, w, key: _drug(p, w, key, drugs))


def _kinds(path: Path, what: str, value: Any) -> tuple[str, ...]:
    return tuple(_one_of(SETTING_KINDS)(path, what, str(kind)) for kind in value or [])


def _prescribing(path: Path, data: dict[str, Any], settings: Mapping[str, Setting]) -> Prescribing:
    drugs: dict[str, DrugFacts] = {}
    for name, entry in _mapping(path, "drugs", data.get("drugs")).items():
        entry = _mapping(path, f"drug '{name}'", entry)
        unknown = sorted(set(entry) - {"class", "classes", "hospital", "min_age", "pregnancy"})
        if unknown:
            raise TaxonomyError(f"{path}: drug '{name}': unknown key '{unknown[0]}'; known: class, classes, hospital, min_age, pregnancy")
        classes = tuple(str(c) for c in (entry.get("classes") or [entry.get("class")]) if c)
        if not classes:
            raise TaxonomyError(f"{path}: drug '{name}': needs a class")
        pregnancy = entry.get("pregnancy")
        drugs[name] = DrugFacts(
            name,
            classes,
            bool(entry.get("hospital", False)),
            _age(path, f"drug '{name}': min_age", entry.get("min_age", 0)),
            _one_of(PREGNANCY_LIMITS)(path, f"drug '{name}': pregnancy", str(pregnancy)) if pregnancy else None,
        )
    treatments = []
    for n, entry in enumerate(_list(path, "treatments", data.get("treatments")), 1):
        what = f"treatment #{n}"
        entry = _mapping(path, what, entry)
        treatments.append(
            Treatment(
                tuple(_code(path, what, spec) for spec in _list(path, f"{what}: codes", entry.get("codes"))),
                _drug_weights(path, f"{what}: drugs", entry.get("drugs"), drugs),
                _weighted(path, f"{what}: count", entry.get("count") or {1: 1}, _count),
                _kinds(path, f"{what}: where", entry.get("where")),
            )
        )
    prophylaxis = []
    for n, entry in enumerate(data.get("prophylaxis") or [], 1):
        what = f"prophylaxis #{n}"
        entry = _mapping(path, what, entry)
        named = tuple(str(s) for s in entry.get("settings") or [])
        for setting in named:
            if setting not in settings:
                raise TaxonomyError(f"{path}: {what}: unknown setting '{setting}' (assignments.yaml settings)")
        prophylaxis.append(
            Prophylaxis(
                str(entry.get("why") or what),
                _kinds(path, f"{what}: where", entry.get("where")),
                named,
                _age(path, f"{what}: min_age", entry.get("min_age", 0)),
                _share(path, f"{what}: chance", entry.get("chance", 1)),
                _drug_weights(path, f"{what}: drugs", entry.get("drugs"), drugs),
            )
        )

    def by_code(key: str) -> dict[str, Weighted]:
        return {_code(path, key, spec): _drug_weights(path, f"{key}: {spec}", weights, drugs) for spec, weights in (data.get(key) or {}).items()}

    return Prescribing(
        limit=int(data.get("limit", 6)),
        treated=_share(path, "treated", data.get("treated", 0.75)),
        drugs=drugs,
        combinations=frozenset(frozenset(_drug(path, "combinations", d, drugs) for d in pair) for pair in data.get("combinations") or []),
        adjuncts={_drug(path, "adjuncts", k, drugs): _drug(path, "adjuncts", v, drugs) for k, v in (data.get("adjuncts") or {}).items()},
        treatments=tuple(treatments),
        prophylaxis=tuple(prophylaxis),
        suspects=by_code("suspects"),
        antidotes=by_code("antidotes"),
        adverse_effects=tuple(
            AdverseEffect(
                tuple(_code(path, f"adverse effect #{n}", spec) for spec in _list(path, f"adverse effect #{n}: effects", e.get("effects"))),
                _code(path, f"adverse effect #{n}: cause", e.get("cause")),
                tuple(_code(path, f"adverse effect #{n}: for", spec) for spec in _list(path, f"adverse effect #{n}: for", e.get("for"))),
            )
            for n, e in enumerate(data.get("adverse_effects") or [], 1)
        ),
        contraindications=tuple(
            Contraindication(
                _drug_list(path, f"contraindication #{n}", e.get("drugs"), drugs),
                tuple(_code(path, f"contraindication #{n}", spec) for spec in _list(path, f"contraindication #{n}: codes", e.get("codes"))),
                str(e.get("why") or ""),
            )
            for n, e in enumerate(data.get("contraindications") or [], 1)
        ),
        interactions=tuple(
            Interaction(
                _drug_list(path, f"interaction #{n}", e.get("first"), drugs),
                _drug_list(path, f"interaction #{n}", e.get("second"), drugs),
                str(e.get("why") or ""),
                _kinds(path, f"interaction #{n}: allowed", e.get("allowed")),
            )
            for n, e in enumerate(data.get("interactions") or [], 1)
        ),
    )


def _guidelines(path: Path, data: dict[str, Any]) -> Guidelines:
    def specs(key: str) -> tuple[str, ...]:
        return tuple(_code(path, f"guidelines: {key}", spec) for spec in data.get(key) or [])

    wrappers = tuple(
        (
            tuple(_code(path, f"guidelines: pregnancy_wrappers #{n}", spec) for spec in _list(path, f"pregnancy_wrappers #{n}: codes", e.get("codes"))),
            _code(path, f"guidelines: pregnancy_wrappers #{n}", e.get("obstetric")),
            bool(e.get("replaces", False)),
        )
        for n, e in enumerate(data.get("pregnancy_wrappers") or [], 1)
    )
    diabetes = tuple(
        (
            tuple(_code(path, f"guidelines: diabetes_with #{n}", spec) for spec in _list(path, f"diabetes_with #{n}: codes", e.get("codes"))),
            tuple(str(x) for x in _list(path, f"diabetes_with #{n}: diabetes", e.get("diabetes"))),
        )
        for n, e in enumerate(data.get("diabetes_with") or [], 1)
    )
    needed = tuple(
        (
            tuple(_code(path, f"guidelines: companions_needed #{n}", spec) for spec in _list(path, f"companions_needed #{n}: codes", e.get("codes"))),
            _code(path, f"guidelines: companions_needed #{n}: needs", e.get("needs")),
        )
        for n, e in enumerate(data.get("companions_needed") or [], 1)
    )
    return Guidelines(specs("never_first"), specs("first_only"), specs("heart_involvement"), wrappers, diabetes, specs("uncomplicated"), needed)
