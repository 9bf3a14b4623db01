"""Load and check the case data of ``taxonomies/cases/``: profiles, assignments, rules, drugs, synonyms.

Every code a file names (a chapter number, a block, a category or a subcategory) must exist in the
installed ICD-10-CM table; every weight must be positive; every pool and profile a file refers to
must be defined. A problem is one :class:`~mediflow.errors.TaxonomyError` line naming the file,
the entry and the value, with a "did you mean" where a close name exists. A user taxonomy folder
may hold its own ``cases/<file>.yaml``: it replaces the built-in file of that name. Drug names are
checked against the drug vocabulary by the sampler, which is the only user of them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mediflow import terminology
from mediflow.errors import TaxonomyError
from mediflow.resources import taxonomies_dir
from mediflow.textfiles import read_yaml

#: The files of ``taxonomies/cases/``.
FILES: tuple[str, ...] = ("profiles", "assignments", "rules", "drugs", "synonyms")
SEXES: tuple[str, ...] = ("female", "male")
ACUITIES: tuple[str, ...] = ("routine", "urgent", "emergent", "critical")
#: External causes (chapter 20) are never first-listed (ICD-10-CM guideline I.C.20).
EXTERNAL_CAUSE_CHAPTER = "20"


@dataclass(frozen=True)
class Weighted:
    """Values with relative weights (not necessarily summing to 1)."""

    values: tuple[Any, ...]
    weights: tuple[float, ...]


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


@dataclass(frozen=True)
class Assignment:
    """The profile a document type's cases come from, whether it shows medications, its settings override."""

    profile: str
    drugs: bool | None  # None: as the document type's category says
    settings: tuple[str, ...] = ()


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
    term_rules: tuple[tuple[tuple[str, ...], tuple[int, int]], ...]  # (code specs, weeks of gestation they allow)
    never_together: tuple[tuple[str, str], ...]  # clinical exclusions beyond Excludes1
    excludes1: bool
    one_per_category: bool
    drug_counts: Weighted
    supportive_drugs: tuple[str, ...]
    treatments: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (code specs, generic drug names)
    drug_min_age: dict[str, int]
    not_in_pregnancy: frozenset[str]
    synonyms: dict[str, tuple[str, ...]]
    ignore_words: frozenset[str]  # description words that do not identify a condition (mention filter)
    version: str

    def assignment(self, document_type: str, category: str) -> Assignment:
        """The document type's own entry over its category's over the default, key by key."""
        broad = self.categories.get(category, self.default)
        own = self.document_types.get(document_type)
        if own is None:
            return broad
        drugs = own.drugs if own.drugs is not None else broad.drugs
        return Assignment(own.profile, drugs if drugs is not None else True, own.settings or broad.settings)


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
    pools = {
        name: _weighted_codes(paths["profiles"], f"pool '{name}'", entries)
        for name, entries in _mapping(paths["profiles"], "pools", profiles_file.get("pools")).items()
    }
    profiles = {
        name: _profile(paths["profiles"], name, entry, pools)
        for name, entry in _mapping(paths["profiles"], "profiles", profiles_file.get("profiles")).items()
    }
    assignments = raw["assignments"]
    where = paths["assignments"]
    default = _assignment(where, "default", assignments.get("default"), profiles, True)
    categories = {
        name: _assignment(where, f"category '{name}'", entry, profiles, default.drugs)
        for name, entry in _mapping(where, "categories", assignments.get("categories") or {}).items()
    }
    document_types = {
        name: _assignment(where, f"document type '{name}'", entry, profiles, None)
        for name, entry in _mapping(where, "document_types", assignments.get("document_types") or {}).items()
    }
    rules_file = raw["rules"]
    rules = tuple(_rule(paths["rules"], position, entry) for position, entry in enumerate(rules_file.get("age_sex") or [], 1))
    sex_words = {
        _one_of(SEXES)(paths["rules"], "sex_words", sex): frozenset(str(w).lower() for w in _list(paths["rules"], f"sex_words: {sex}", words))
        for sex, words in (rules_file.get("sex_words") or {}).items()
    }
    gestation = rules_file.get("gestation") or {}
    trimesters = {
        str(phrase).lower(): _weeks(paths["rules"], f"gestation: trimesters: {phrase}", weeks)
        for phrase, weeks in (gestation.get("trimesters") or {}).items()
    }
    term_rules = tuple(
        (
            tuple(_code(paths["rules"], f"gestation rule #{n}", spec) for spec in _list(paths["rules"], f"gestation rule #{n}: codes", entry.get("codes"))),
            _weeks(paths["rules"], f"gestation rule #{n}", entry.get("weeks")),
        )
        for n, entry in enumerate(gestation.get("codes") or [], 1)
    )
    drugs_file = raw["drugs"]
    treatments = tuple(
        (
            tuple(_code(paths["drugs"], f"treatment #{n}", spec) for spec in _list(paths["drugs"], f"treatment #{n}: codes", entry.get("codes"))),
            tuple(str(drug) for drug in _list(paths["drugs"], f"treatment #{n}: drugs", entry.get("drugs"))),
        )
        for n, entry in enumerate(_list(paths["drugs"], "treatments", drugs_file.get("treatments")), 1)
    )
    synonyms = {
        _code(paths["synonyms"], "synonyms", spec): tuple(str(s) for s in _list(paths["synonyms"], f"synonyms of {spec}", names))
        for spec, names in _mapping(paths["synonyms"], "synonyms", raw["synonyms"].get("synonyms")).items()
    }
    return CaseBook(
        profiles=profiles,
        pools=pools,
        default=default,
        categories=categories,
        document_types=document_types,
        rules=rules,
        sex_words=sex_words,
        trimesters=trimesters,
        term_rules=term_rules,
        never_together=tuple(
            (_code(paths["rules"], "never_together", pair[0]), _code(paths["rules"], "never_together", pair[1]))
            for pair in _pairs(paths["rules"], rules_file.get("never_together") or [])
        ),
        excludes1=bool(rules_file.get("excludes1", True)),
        one_per_category=bool(rules_file.get("one_per_category", True)),
        drug_counts=_weighted(paths["drugs"], "count", drugs_file.get("count"), _count),
        supportive_drugs=tuple(str(d) for d in _list(paths["drugs"], "supportive", drugs_file.get("supportive"))),
        treatments=treatments,
        drug_min_age={str(k): _age(paths["drugs"], f"min_age: {k}", v) for k, v in (drugs_file.get("min_age") or {}).items()},
        not_in_pregnancy=frozenset(str(d) for d in drugs_file.get("not_in_pregnancy") or []),
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


_PROFILE_KEYS = {"age", "sex", "acuity", "primary", "comorbidities", "companions", "external_causes", "seventh_characters"}


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
    )


def _pool(path: Path, what: str, name: Any, pools: Mapping[str, Weighted]) -> str:
    if name not in pools:
        close = difflib.get_close_matches(str(name), pools, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TaxonomyError(f"{path}: {what}: unknown pool '{name}'{hint}")
    return str(name)


def _assignment(path: Path, what: str, entry: Any, profiles: Mapping[str, Profile], drugs_default: bool | None) -> Assignment:
    entry = _mapping(path, what, entry)
    unknown = sorted(set(entry) - {"profile", "drugs", "settings"})
    if unknown:
        raise TaxonomyError(f"{path}: {what}: unknown key '{unknown[0]}'; known: drugs, profile, settings")
    profile = entry.get("profile")
    if profile not in profiles:
        close = difflib.get_close_matches(str(profile), profiles, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TaxonomyError(f"{path}: {what}: unknown profile '{profile}'{hint}")
    drugs = entry.get("drugs", drugs_default)
    if drugs is not None and not isinstance(drugs, bool):
        raise TaxonomyError(f"{path}: {what}: drugs must be true or false")
    settings = entry.get("settings") or []
    if not isinstance(settings, list) or not all(isinstance(s, str) and s for s in settings):
        raise TaxonomyError(f"{path}: {what}: settings must be a list of names")
    return Assignment(str(profile), drugs, tuple(settings))


def _age(path: Path, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 120:
        raise TaxonomyError(f"{path}: {what}: expected an age in years (0-120), got {value!r}")
    return value


def _pairs(path: Path, value: Any) -> list[list[Any]]:
    if not isinstance(value, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in value):
        raise TaxonomyError(f"{path}: never_together: expected a list of [code, code] pairs")
    return value


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
    if ages is not None and not (
        isinstance(ages, list) and len(ages) == 2 and all(isinstance(a, int) for a in ages) and 0 <= ages[0] <= ages[1] <= 120
    ):
        raise TaxonomyError(f"{path}: {what}: age must be [low, high] in years (0-120), got {ages!r}")
    if sex is None and ages is None:
        raise TaxonomyError(f"{path}: {what}: needs a sex, an age range or both")
    return AgeSexRule(name, str(entry.get("why", "")), codes, sex, (ages[0], ages[1]) if ages else None)
