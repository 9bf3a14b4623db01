"""Whether a text mentions a case's conditions: names found, then read in their context.

**Names.** A code's names are its official description, the tabular list's inclusion terms of the
code and its ancestors up to its category (from the installed ``simple-icd-10-cm``), its clinical
name (``taxonomies/cases/names.yaml``: the name the document prompt gives the teacher), the synonyms
and lay terms of ``taxonomies/cases/synonyms.yaml`` of any chapter, block or code it falls under,
and the code itself (with or without its dot). A name is found when its identifying words (those
left once parentheses and the ``ignore_words`` are removed) stand close together in the text:
all of them within a few words for a name of up to three such words, three quarters of them for a
longer one. A text word matches a name word when it is the same word, an inflection of it
("diabetic" for "diabetes", "cirrhotic" for "cirrhosis", but not "diverticulosis" for
"diverticulitis" nor "hypertrophy" for "hypertension"), or a misspelling of it ("pnuemonia": one
letter away, and not itself a word of the ICD-10-CM descriptions, so "hypotension" is never
"hypertension"). An abbreviation written in capitals (``CHF``) matches case-sensitively as a whole
word. Weeks of gestation (Z3A) are found as "24w2d", "30 weeks", "39+2 weeks".

**Context** (``taxonomies/cases/context.yaml``, after the ConText algorithm): a name inside the scope
of a negation ("Denies EtOH", "No pleural effusion"), a hedge ("r/o", "possible", "?DVT"), a
relative ("mother had breast cancer") or a hypothetical ("risk of stroke", "DVT ppx") is not a
mention; a scope ends with its clause. An ambiguous name ("RA", "PE", "MS", "effusion") counts
only when its sentence confirms it ("seropositive RA on methotrexate", not "SpO2 98% RA"), and
never as a section header ("PE:"). A name found inside another condition's name ("pulmonary
hypertension", "diabetes insipidus") is not a mention of the shorter one. A family-history code
(Z80-Z84) is the exception: its condition must be named *about a relative*.

:meth:`MentionMatcher.find` says, per code, whether it is mentioned, where, and if not, why not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from rapidfuzz.distance import OSA

from mediflow import terminology
from mediflow.cases.book import CaseBook, load_case_book
from mediflow.cases.names import clinical_name
from mediflow.errors import TaxonomyError
from mediflow.resources import taxonomies_dir
from mediflow.textfiles import read_yaml

#: The language rules' file, under a taxonomy folder's ``cases/`` (the built-in one ships in the wheel with the other taxonomies).
CONTEXT_FILE = "context.yaml"
#: The kinds of context that make a name not a mention of the patient's condition.
NOT_ASSERTED: tuple[str, ...] = ("negated", "hedged", "family", "hypothetical")
_DIRECTIONS = ("before", "after")
_TOKEN = re.compile(r"\d+(?:\.\d+)?%?(?![A-Za-z])|[A-Za-z0-9]+(?:['/+][A-Za-z0-9]+)*|\?(?=[A-Za-z])|[.;!?,:()\n]")
_PARENTHESES = re.compile(r"\([^)]*\)|\[[^\]]*\]")
#: Endings that make two words forms of one ("diabetes"/"diabetic", "hypertension"/"hypertensive").
_INFLECTIONS = frozenset("|s|es|ic|ics|ia|ias|al|ive|ives|ion|ions|on|ve|ed|d|ing|e|tic|otic|sis|osis|oses|is|us|i|ism|y|ies|ity|ous|a|atic|ary|er|ers".split("|"))
_MIN_STEM = 4
_MIN_FUZZY = 6
#: Words a "." after does not end a sentence ("vs.", "Dr.", "E. coli").
_NOT_SENTENCE_END = frozenset({"vs", "dr", "mr", "mrs", "ms", "st", "pt", "approx", "no", "fig", "al"})
_SENTENCE_END = frozenset({".", ";", "!", "?", "\n"})
#: Gap allowed between the words of a name, beyond the words themselves.
_SLACK = 3
_FAMILY_HISTORY = "family history of"
#: The words of a listed synonym that need not be in the text ("blood clot in the leg": "blood clot ... leg").
_FUNCTION_WORDS = frozenset({"a", "an", "the", "of", "in", "on", "to", "for", "with", "by", "at", "and", "or"})


class _Token(NamedTuple):
    text: str  # as written
    lower: str
    form: str  # lower case, US spelling: what names are compared with
    start: int  # character offsets
    end: int


_BRITISH = re.compile(r"^(?:ae|oe)(?=[^aeiou])|(?<=[a-z])(?:ae|oe)(?=[^aeiouy])|(?<=[a-z]{3})our$")


@lru_cache(maxsize=1 << 16)
def _spelling(word: str) -> str:
    """US spelling of a British word ("anaemia", "oesophagitis", "tumour"), for words of six letters or more."""
    return _BRITISH.sub(lambda m: "or" if m.group() == "our" else "e", word) if len(word) >= 6 else word


@dataclass(frozen=True)
class MentionContext:
    """The language rules of ``context.yaml``: triggers by kind and direction, terminators, ambiguous and other names."""

    triggers: dict[tuple[str, str], tuple[tuple[str, ...], ...]]  # (kind, direction) -> phrases (word tuples)
    short: frozenset[tuple[str, ...]]
    pseudo: tuple[tuple[str, ...], ...]
    terminators: tuple[tuple[str, ...], ...]
    ambiguous: dict[str, tuple[tuple[str, ...], ...]]  # lower-case name -> confirming phrases
    other_conditions: tuple[tuple[str, ...], ...]
    equivalents: dict[str, tuple[tuple[str, ...], ...]]  # a word -> the phrases that say it otherwise
    not_alone: frozenset[str]  # words that name no condition on their own (a substance, an organ)
    of_a_part: frozenset[str]  # words that name a condition only with the part of the body it is of ("knee pain")

    @classmethod
    def load(cls, data: dict[str, Any] | None = None, *, taxonomy: Path | str | None = None) -> MentionContext:
        """The rules of ``data``, or else of the ``taxonomy`` folder's ``cases/context.yaml`` where it has one (as
        :func:`~mediflow.cases.book.load_case_book` reads the other case files), else the built-in file."""
        if data is None:
            data = _context_data(str(context_path(taxonomy)))
        try:
            triggers = {(kind, direction): tuple(_words(p) for p in phrases) for kind, directions in data["triggers"].items() for direction, phrases in directions.items()}
            bad = [f"{kind}.{direction}" for kind, direction in triggers if kind not in NOT_ASSERTED or direction not in _DIRECTIONS]
            if bad:
                raise TaxonomyError(f"mention context: unknown trigger kind or direction '{bad[0]}' (kinds: {', '.join(NOT_ASSERTED)}; directions: before, after)")
            return cls(
                triggers=triggers,
                short=frozenset(_words(p) for p in data.get("short") or []),
                pseudo=tuple(_words(p) for p in data.get("pseudo") or []),
                terminators=tuple(_words(p) for p in data.get("terminators") or []),
                ambiguous={str(name).lower(): tuple(_words(p) for p in words) for name, words in (data.get("ambiguous") or {}).items()},
                other_conditions=tuple(_words(p) for p in data.get("other_conditions") or []),
                equivalents={str(word).lower(): tuple(_words(p) for p in phrases) for word, phrases in (data.get("equivalents") or {}).items()},
                not_alone=frozenset(w for p in data.get("not_alone") or [] for w in _words(p)),
                of_a_part=frozenset(w for p in data.get("of_a_part") or [] for w in _words(p)),
            )
        except (KeyError, AttributeError) as exc:
            raise TaxonomyError(f"mention context: malformed rules ({exc.__class__.__name__}: {exc})") from exc


def context_path(taxonomy: Path | str | None = None) -> Path:
    """The context rules a taxonomy folder's matcher reads: its ``cases/context.yaml``, or the built-in one."""
    if taxonomy is not None:
        candidate = Path(taxonomy).resolve() / "cases" / CONTEXT_FILE
        if candidate.is_file():
            return candidate
    return taxonomies_dir() / "cases" / CONTEXT_FILE


@cache
def _context_data(location: str) -> dict[str, Any]:
    path = Path(location)
    data = read_yaml(path, "mention context file", TaxonomyError)
    if not isinstance(data, dict):
        raise TaxonomyError(f"{path}: expected a mapping at the top level")
    return data


def _words(phrase: object) -> tuple[str, ...]:
    if not isinstance(phrase, str):  # YAML reads a bare no, yes, on or off as a boolean
        raise TaxonomyError(f"mention context: {phrase!r} is not a phrase; write it in quotes")
    return tuple(token.lower for token in _tokens(str(phrase)) if token.lower not in {",", ":", "(", ")"})


def _tokens(text: str) -> list[_Token]:
    return [_Token(m.group(), m.group().lower(), _spelling(m.group().lower()), m.start(), m.end()) for m in _TOKEN.finditer(text)]


@dataclass(frozen=True)
class _Name:
    """One way of naming a condition: words that must stand close together, or a case-sensitive abbreviation."""

    words: tuple[str, ...]
    text: str  # as listed, for explanations
    abbreviation: bool = False
    ambiguous: tuple[tuple[str, ...], ...] | None = None  # confirming phrases when the name alone is ambiguous

    @property
    def needed(self) -> int:
        return len(self.words) if len(self.words) <= 3 else -(-3 * len(self.words) // 4)


@dataclass(frozen=True)
class Occurrence:
    """One place a name of a code stands in the text, and why it is not a mention (None: it is one)."""

    start: int  # character offsets of its first and last word
    end: int
    why_not: str | None


@dataclass(frozen=True)
class Finding:
    """Whether one code is mentioned in a text: the words that name it, or why it is not mentioned."""

    code: str
    mentioned: bool
    evidence: str = ""  # the words that name it (mentioned), or the first reason it is not
    occurrences: tuple[Occurrence, ...] = field(default=(), compare=False)  # every name found, counted or not

    def explain(self) -> str:
        """One line: the words that name the code, or why it is not mentioned."""
        if self.mentioned:
            return f"named by '{self.evidence}'"
        return self.evidence or "none of its names is in the text"


class _Reading:
    """One text, tokenised once: sentences, clauses, and the context each token is in."""

    def __init__(self, text: str, context: MentionContext) -> None:
        self.text = text
        tokens = _tokens(text)  # a line break inside a wrapped sentence is just a space
        self.tokens = [token for i, token in enumerate(tokens) if token.text != "\n" or _starts_item(text, tokens, i)]
        self.index: dict[str, list[int]] = {}
        self.by_letter: dict[str, list[int]] = {}
        for position, token in enumerate(self.tokens):
            self.index.setdefault(token.lower, []).append(position)
            if token.form[0].isalpha():
                self.by_letter.setdefault(token.form[0], []).append(position)
        self.sentence = self._sentences()
        clause = self._clauses(context)
        self.kinds: list[set[str]] = [set() for _ in self.tokens]
        self.triggers: list[dict[str, int]] = [{} for _ in self.tokens]  # kind -> position of the trigger
        self._scopes(context, clause)
        self.inside_other: list[set[tuple[str, ...]]] = [set() for _ in self.tokens]
        for phrase in context.other_conditions:
            for start in self.phrase_positions(phrase):
                for position in range(start, start + len(phrase)):
                    self.inside_other[position].add(phrase)

    def _sentences(self) -> list[int]:
        """The sentence number of each token: "." (not after "vs", "Dr", an initial or in a number), ";", "!", "?", a new section line."""
        numbers, current = [], 0
        tokens = self.tokens
        for i, token in enumerate(tokens):
            numbers.append(current)
            if token.text == "." and i and (tokens[i - 1].lower in _NOT_SENTENCE_END or (len(tokens[i - 1].text) == 1 and tokens[i - 1].text.isupper())):
                continue
            if token.text == "?" and i + 1 < len(tokens) and tokens[i + 1].start == token.end and tokens[i + 1].text[0].isalnum():
                continue  # "?DVT": a hedge, not a question mark
            if token.text in _SENTENCE_END:
                current += 1
        return numbers

    def _clauses(self, context: MentionContext) -> list[int]:
        """The clause number of each token: sentences cut at terminators; pseudo-triggers and triggers are not terminators."""
        clause = list(self.sentence)
        taken = [False] * len(self.tokens)
        self._claimed: list[tuple[int, int, str, str]] = []  # (start, length, kind, direction) of every trigger
        roles: dict[tuple[str, ...], list[tuple[str, str]]] = {}  # a phrase may be a trigger both ways ("vs", "?")
        for phrase in context.pseudo:
            roles.setdefault(phrase, []).append(("pseudo", ""))
        for (kind, direction), found in context.triggers.items():
            for phrase in found:
                roles.setdefault(phrase, []).append((kind, direction))
        for phrase in context.terminators:
            roles.setdefault(phrase, []).append(("terminator", ""))
        for phrase in sorted(roles, key=len, reverse=True):  # longest first: "no history of" before "history of"
            for start in self.phrase_positions(phrase):
                span = range(start, start + len(phrase))
                if any(taken[p] for p in span):
                    continue
                for p in span:
                    taken[p] = True
                self._claimed += [(start, len(phrase), kind, direction) for kind, direction in roles[phrase]]
        shift = 0
        cuts = sorted(start for start, _, kind, _ in self._claimed if kind == "terminator")
        for position in range(len(self.tokens)):
            while cuts and cuts[0] <= position:
                cuts.pop(0)
                shift += 1
            clause[position] = clause[position] * 10_000 + shift
        return clause

    def _scopes(self, context: MentionContext, clause: list[int]) -> None:
        for start, length, kind, direction in self._claimed:
            if kind in ("pseudo", "terminator"):
                continue
            phrase = tuple(t.lower for t in self.tokens[start : start + length])
            short = phrase in context.short
            positions: Iterable[int] = range(start + length, len(self.tokens)) if direction == "before" else range(start - 1, -1, -1)
            for position in positions:
                if clause[position] != clause[start] or (short and self.tokens[position].text == ","):
                    break
                self.kinds[position].add(kind)
                self.triggers[position].setdefault(kind, start)

    def phrase_positions(self, phrase: Sequence[str]) -> list[int]:
        """Where the exact lower-case words of ``phrase`` stand next to each other."""
        if not phrase:
            return []
        return [p for p in self.index.get(phrase[0], []) if tuple(t.lower for t in self.tokens[p : p + len(phrase)]) == tuple(phrase)]

    def word_positions(self, word: str, abbreviation: bool, also: Sequence[tuple[str, ...]] = ()) -> list[int]:
        """Where a name's word is: the same word (case-sensitive for an abbreviation), an inflection or a misspelling
        of it, or one of the words ``also`` says it otherwise (the last word of a phrase stands for the phrase)."""
        if abbreviation:
            return [i for i, token in enumerate(self.tokens) if token.text == word]
        if not word[0].isalpha():
            return list(self.index.get(word, []))
        found = [i for i in self.by_letter.get(word[0], []) if _same_word(self.tokens[i].form, word) or _misspelt(self.tokens[i].form, word)]
        for phrase in also:
            found += [start + len(phrase) - 1 for start in self.phrase_positions(phrase)]
        return sorted(set(found))

    def snippet(self, positions: Sequence[int], pad: int = 3) -> str:
        start = max(0, min(positions) - pad)
        end = min(len(self.tokens), max(positions) + pad + 1)
        while start > 0 and self.sentence[start - 1] == self.sentence[min(positions)] and min(positions) - start < pad:
            start -= 1
        text = self.text[self.tokens[start].start : self.tokens[end - 1].end]
        return " ".join(text.split())


def _starts_item(text: str, tokens: Sequence[_Token], i: int) -> bool:
    """A line break ends a sentence before a blank line, a header ("Plan:"), a list item or a speaker, not inside a wrapped sentence."""
    following = tokens[i + 1 : i + 5]
    if not following or following[0].text == "\n" or text[tokens[i].end : following[0].start].strip() in ("-", "*", "\u2022"):
        return True
    first = following[0].text
    return first[0].isdigit() or (first[0].isupper() and any(t.text == ":" for t in following[:4]))


def _same_word(text: str, word: str) -> bool:
    """Two forms of one word: equal, or a common stem of 4+ letters followed by endings of :data:`_INFLECTIONS`."""
    if text == word:
        return True
    longest = 0
    for a, b in zip(text, word):
        if a != b:
            break
        longest += 1
    return any(text[n:] in _INFLECTIONS and word[n:] in _INFLECTIONS for n in range(longest, _MIN_STEM - 1, -1))


def _misspelt(text: str, word: str) -> bool:
    """``text`` is a misspelling of ``word``: not a word of the ICD-10-CM descriptions, one edit away (two for long words)."""
    if min(len(text), len(word)) < _MIN_FUZZY or text[0] != word[0] or not text.isalpha() or text in terminology.condition_words():
        return False
    allowed = 2 if min(len(text), len(word)) >= 9 else 1
    return OSA.distance(text, word, score_cutoff=allowed) <= allowed


class MentionMatcher:
    """Finds which of a case's codes a text mentions; the names of each code are worked out once."""

    def __init__(self, book: CaseBook, context: MentionContext | None = None) -> None:
        self.book = book
        self.context = context or MentionContext.load()
        self._names: dict[str, tuple[_Name, ...]] = {}

    @classmethod
    def for_taxonomy(cls, taxonomy: Path | str | None = None) -> MentionMatcher:
        """The matcher of a taxonomy folder (the built-in one by default): its case book and its context rules, each
        file the user folder's ``cases/<file>.yaml`` where it has one."""
        return cls(load_case_book(taxonomy), MentionContext.load(taxonomy=taxonomy))

    def names(self, code: str) -> tuple[_Name, ...]:
        """Every name of ``code`` (see the module docstring)."""
        if code not in self._names:
            description = terminology.description(code)
            phrases = [description, *terminology.inclusion_terms(code)]
            if family_history_code(code):  # "Family history of X": the names of X, said of a relative
                phrases = [phrase[len(_FAMILY_HISTORY) :] for phrase in phrases if phrase.lower().startswith(_FAMILY_HISTORY)]
            synonyms = [name for spec, names in self.book.synonyms.items() if terminology.covers(spec, code) for name in names]
            if not family_history_code(code):
                phrases.append(clinical_name(code, self.book.names))  # the name the document prompt gave the teacher
            found = [name for phrase in phrases for name in self._description(phrase)] + [self._phrase(name, listed=True) for name in synonyms]
            unique: dict[tuple[tuple[str, ...], bool], _Name] = {}
            for name in found:
                if name.words:
                    unique.setdefault((name.words, name.abbreviation), name)
            self._names[code] = tuple(unique.values())
        return self._names[code]

    def _description(self, phrase: str) -> list[_Name]:
        """The names of a description or inclusion term: its equivalents read in ("malignant neoplasm" -> "cancer"), and
        one name per side of an "A or B" ("... of bronchus or lung": bronchus, lung)."""
        text = _PARENTHESES.sub(" ", phrase.lower())
        for word, phrases in self.context.equivalents.items():
            for other in phrases:
                if len(other) > 1:
                    text = re.sub(rf"\b{re.escape(' '.join(other))}\b", word, text)
        words = _words(text)
        if "or" in words[1:-1]:
            at = words.index("or", 1)
            return [self._phrase(" ".join(words[:at] + words[at + 2 :])), self._phrase(" ".join(words[: at - 1] + words[at + 1 :]))]
        return [self._phrase(text)]

    def _phrase(self, phrase: str, listed: bool = False) -> _Name:
        if listed and _is_abbreviation(phrase):
            return _Name((phrase,), phrase, abbreviation=True, ambiguous=self.context.ambiguous.get(phrase.lower()))
        dropped = _FUNCTION_WORDS if listed else self.book.ignore_words  # a listed name is meant word for word
        words = tuple(_spelling(w) for w in _words(_PARENTHESES.sub(" ", phrase)) if w not in dropped and (len(w) > 2 or w[0].isdigit() or listed))
        if not listed and not self._names_a_condition(words):
            words = ()  # "Opioid use disorder" less its ignored words is "opioid": a substance, not the disorder
        ambiguous = self.context.ambiguous.get(" ".join(words)) if len(words) == 1 else None
        return _Name(words, phrase.strip(), ambiguous=ambiguous)

    def _names_a_condition(self, words: tuple[str, ...]) -> bool:
        """Whether a description's identifying words name a condition: not only substances, organs or people
        ("opioid", "kidney"), nor a condition of no part ("injury", "pain"), but "injury ... kidney" or "pain ... knee"."""
        part, alone = self.context.of_a_part, self.context.not_alone
        if any(w not in alone and w not in part for w in words):
            return True
        return any(w in part for w in words) and any(w in alone for w in words)

    def mentioned(self, text: str, codes: list[str]) -> list[str]:
        """The codes among ``codes`` that ``text`` mentions."""
        return [code for code, finding in self.find(text, codes).items() if finding.mentioned]

    def find(self, text: str, codes: Sequence[str]) -> dict[str, Finding]:
        """For each code: mentioned or not, the words that name it, or why it is not mentioned."""
        reading = _Reading(text, self.context)
        return {code: self._find(reading, code) for code in codes}

    def _find(self, reading: _Reading, code: str) -> Finding:
        if _code_pattern(code).search(reading.text):
            return Finding(code, True, code)
        weeks = _weeks_of(code)
        if weeks is not None:
            match = _weeks_pattern(weeks).search(reading.text)
            if match:
                return Finding(code, True, match.group().strip())
        family = family_history_code(code)
        found: list[Occurrence] = []
        evidence = ""
        for name in self.names(code):
            for positions in self._occurrences(reading, name):
                why = self._why_not(reading, code, name, positions, family)
                found.append(Occurrence(reading.tokens[positions[0]].start, reading.tokens[positions[-1]].end, why))
                if why is None and not evidence:
                    evidence = reading.snippet(positions, pad=0)
        if evidence:
            return Finding(code, True, evidence, tuple(found))
        return Finding(code, False, next((o.why_not or "" for o in found), ""), tuple(found))

    def _occurrences(self, reading: _Reading, name: _Name) -> list[list[int]]:
        """Windows of the text holding enough of the name's words close together, each as the positions of the words."""
        equivalents = self.context.equivalents
        hits = sorted((position, index) for index, word in enumerate(name.words) for position in reading.word_positions(word, name.abbreviation, () if name.abbreviation else equivalents.get(word, ())))
        found: list[list[int]] = []
        width = len(name.words) + _SLACK if len(name.words) <= 3 else 2 * len(name.words) + _SLACK
        for i, (first, _) in enumerate(hits):
            chosen: dict[int, int] = {}
            for position, index in hits[i:]:
                if position - first >= width:
                    break
                chosen.setdefault(index, position)
            if len(chosen) >= name.needed and len({reading.sentence[p] for p in chosen.values()}) == 1:
                found.append(sorted(chosen.values()))
        return found

    def _why_not(self, reading: _Reading, code: str, name: _Name, positions: list[int], family: bool) -> str | None:
        """None when this occurrence of ``name`` is a mention of ``code``; else why not, quoting the text."""
        here = reading.snippet(positions)
        if name.ambiguous is not None:
            after = positions[-1] + 1
            if after < len(reading.tokens) and reading.tokens[after].text == ":":
                return f"'{name.text}' is a section header: '{here}'"
            if not self._confirmed(reading, code, name, positions):
                return f"'{name.text}' means something else here (nothing in its sentence confirms it): '{here}'"
        others = set.intersection(*(reading.inside_other[p] for p in positions))
        if others and not any(self._is_name(code, other) for other in others):
            return f"another condition: '{' '.join(sorted(others)[0])}' in '{here}'"
        kinds = set.intersection(*(reading.kinds[p] for p in positions))
        if family:
            if "family" not in kinds:
                return f"not said of a relative: '{here}'"
            kinds.discard("family")
        for kind in NOT_ASSERTED:
            if kind in kinds:
                return f"{kind}: '{here}'"
        return None

    def _confirmed(self, reading: _Reading, code: str, name: _Name, positions: list[int]) -> bool:
        sentence = reading.sentence[positions[0]]
        members = [i for i, s in enumerate(reading.sentence) if s == sentence]
        words = {reading.tokens[i].lower for i in members}
        confirming = list(name.ambiguous or ())
        confirming += [other.words for other in self.names(code) if other.ambiguous is None and not other.abbreviation]
        for phrase in confirming:
            if len(phrase) == 1 and any(_same_word(w, phrase[0]) for w in words):
                return True
            if len(phrase) > 1 and any(p in members for p in reading.phrase_positions(phrase)):
                return True
        return False

    def _is_name(self, code: str, phrase: tuple[str, ...]) -> bool:
        return any(len(name.words) == len(phrase) and all(_same_word(a, b) for a, b in zip(phrase, name.words)) for name in self.names(code))


def family_history_code(code: str) -> bool:
    """Whether ``code`` is a family-history code ("Family history of ..."), which a relative's condition names."""
    return terminology.description(code).lower().startswith(_FAMILY_HISTORY)


def _is_abbreviation(name: str) -> bool:
    return " " not in name and (len(name) <= 6 and any(ch.isupper() for ch in name[1:]) or (name.isupper() and len(name) <= 6))


def _weeks_of(code: str) -> int | None:
    """The weeks of gestation a Z3A code states, when it states one number (Z3A.24 -> 24)."""
    if not code.startswith("Z3A.") or not code[4:].isdigit():
        return None
    weeks = int(code[4:])
    return weeks if 8 <= weeks <= 42 else None


@cache
def _weeks_pattern(weeks: int) -> re.Pattern[str]:
    return re.compile(rf"(?<![\d.]){weeks}(?:\s*\+\s*\d)?\s*(?:weeks?|wks?|w(?:\d+d)?)(?![A-Za-z])|(?<![\d.]){weeks}/40\b", re.IGNORECASE)


@cache
def _code_pattern(code: str) -> re.Pattern[str]:
    bare = code.replace(".", "")
    return re.compile(rf"(?<![A-Za-z0-9])(?:{re.escape(code)}|{re.escape(bare)})(?![A-Za-z0-9])", re.IGNORECASE)
