"""Whether a text names a case's conditions: by the words of a description, a synonym, or the code.

For each code the names are its official description, the tabular list's inclusion terms of the
code and its ancestors up to its category (from the installed ``simple-icd-10-cm``), and the
synonyms of ``taxonomies/cases/synonyms.yaml`` of any chapter, block or code it falls under. A name
is mentioned when the text holds its identifying words (the words left once parentheses and the
``ignore_words`` are removed), matched on a six-letter stem ("diabetic" names "diabetes") - all of
them for a name of up to three such words, three quarters of them for a longer one. An
abbreviation written in capitals (``CHF``) matches case-sensitively as a whole word; a code matches
with or without its dot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from mediflow import terminology
from mediflow.cases.book import CaseBook

_WORD = re.compile(r"[a-z][a-z0-9']*")
_PARENTHESES = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_STEM = 6


def _stem(word: str) -> str:
    return word[:_STEM]


@dataclass(frozen=True)
class _Name:
    """One way of naming a condition: the stems that must appear, or an exact abbreviation."""

    stems: frozenset[str]
    abbreviation: str | None = None

    def found_in(self, stems: frozenset[str], text: str) -> bool:
        if self.abbreviation is not None:
            return re.search(rf"(?<![A-Za-z0-9]){re.escape(self.abbreviation)}(?![A-Za-z0-9])", text) is not None
        if not self.stems:
            return False
        hits = len(self.stems & stems)
        return hits == len(self.stems) if len(self.stems) <= 3 else hits >= 0.75 * len(self.stems)


class MentionMatcher:
    """Finds which of a case's codes a text names; the names of each code are worked out once."""

    def __init__(self, book: CaseBook) -> None:
        self.book = book
        self._names: dict[str, tuple[_Name, ...]] = {}

    def names(self, code: str) -> tuple[_Name, ...]:
        if code not in self._names:
            phrases = [terminology.description(code), *terminology.inclusion_terms(code)]
            synonyms = [name for spec, names in self.book.synonyms.items() if terminology.covers(spec, code) for name in names]
            found = [self._phrase(phrase) for phrase in phrases]
            found += [_Name(frozenset(), name) if _is_abbreviation(name) else self._phrase(name) for name in synonyms]
            self._names[code] = tuple(name for name in found if name.stems or name.abbreviation)
        return self._names[code]

    def _phrase(self, phrase: str) -> _Name:
        words = _WORD.findall(_PARENTHESES.sub(" ", phrase.lower()))
        return _Name(frozenset(_stem(w) for w in words if len(w) > 2 and w not in self.book.ignore_words))

    def mentioned(self, text: str, codes: list[str]) -> list[str]:
        """The codes among ``codes`` that ``text`` names."""
        stems = frozenset(_stem(word) for word in _WORD.findall(text.lower()))
        return [code for code in codes if _code_in(code, text) or any(name.found_in(stems, text) for name in self.names(code))]


def _is_abbreviation(name: str) -> bool:
    return len(name) <= 6 and any(ch.isupper() for ch in name[1:]) or (name.isupper() and len(name) <= 6)


@cache
def _code_pattern(code: str) -> re.Pattern[str]:
    bare = code.replace(".", "")
    return re.compile(rf"(?<![A-Za-z0-9])(?:{re.escape(code)}|{re.escape(bare)})(?![A-Za-z0-9])", re.IGNORECASE)


def _code_in(code: str, text: str) -> bool:
    return _code_pattern(code).search(text) is not None
