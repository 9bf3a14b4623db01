"""Clinically distinguishing tokens: the facts two near-identical notes must share to be duplicates.

Generated clinical notes are templated: two notes about two patients can share every sentence and
differ only in an age, a sex, a side, a dose, a negation, a lab value, a drug, an organ or a code.
Text similarity (rapidfuzz, shingle Jaccard) scores such siblings 0.9-1.0, as high as a copy with
a few typos, so no threshold separates them. This module extracts those tokens from each text and
compares them: a candidate pair is a duplicate only when the text is near-identical *and* the
distinguishing tokens agree (see ``docs/dedup.md`` for the measurements behind this).

What counts as distinguishing is data: ``taxonomies/clinical_tokens.yaml`` maps words to the
class they are compared as (``he``/``man``/``male`` are one sex; ``two``/``2`` one number;
``mg``/``milligrams`` one unit) and lists organs; drugs are the real drug vocabulary's names and
conditions the ICD-10-CM descriptions' words (:mod:`mediflow.terminology`); numbers and codes are
found by pattern. Numbers
and codes must agree exactly (a typo in a value is a different value); a distinguishing *word*
that a typo turned into an unknown word (``metformin`` -> ``metfromin``) is excused.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from rapidfuzz.distance import OSA

from mediflow import terminology
from mediflow.errors import ConfigError
from mediflow.quality.text import hash_strings, splitmix64
from mediflow.resources import taxonomies_dir

#: Words; a token holding a digit (a value, a code such as ``e11.9``) is left to value_fingerprints.
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?|%")
_DIGIT = re.compile(r"\d")
#: Sections compared as counts of each class; ``sex`` is compared as a set (pronouns come and go with rewording).
_COUNTED_SECTIONS = ("laterality", "negation", "units", "frequency", "route")
#: Sections that are plain word lists: each word is its own class.
_LISTED_SECTIONS = ("anatomy", "labs", "procedures", "specialties")
_MIN_TYPO_WORD = 4  # a shorter word changed by one letter is another word (he/she, lt/rt)
_UNSEEN = object()
_VALUE = ("value", "")
_MIN_CONDITION_WORD = 4  # shorter ICD-10-CM description words are function words and roman numerals


@dataclass(frozen=True)
class Lexicon:
    """What counts as distinguishing: phrases rewritten first, then word -> (section, class)."""

    phrases: dict[str, str]  # abbreviation -> the words it stands for
    word_class: dict[str, tuple[str, str]]
    condition_stop_words: frozenset[str]
    phrase_pattern: re.Pattern[str] | None
    negation_cues: frozenset[str]
    _items: dict[str, tuple[str, str] | None] = field(default_factory=dict, compare=False, repr=False)
    _distinguishing: set[str] = field(default_factory=set, compare=False, repr=False)  # memoised words whose item is not None

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        """Read a lexicon YAML (default: the built-in ``taxonomies/clinical_tokens.yaml``)."""
        return _load(str(Path(path) if path else taxonomies_dir() / "clinical_tokens.yaml"))

    def item(self, word: str) -> tuple[str, str] | None:
        """The (section, class) a token counts as, or ``None`` for a word that tells no case from another.

        Numbers and codes by pattern; then lexicon words, the real drug vocabulary (by generic
        name) and the ICD-10-CM description words (conditions). Memoised: a corpus has few distinct tokens.
        """
        found = self._items.get(word, _UNSEEN)
        if found is _UNSEEN:
            found = self._items[word] = self._classify(word)
            if found is not None:
                self._distinguishing.add(word)
        return found  # type: ignore[return-value]

    def distinguishing(self, words: Counter[str]) -> set[str]:
        """Which of ``words`` have an item: set operations in C, as most words of a note tell nothing."""
        for word in set(words).difference(self._items):
            self.item(word)
        return self._distinguishing.intersection(words)

    def _classify(self, word: str) -> tuple[str, str] | None:
        if _DIGIT.search(word):
            return _VALUE  # compared by value_fingerprints, not here
        if word in self.word_class:
            section, name = self.word_class[word]
            return (section, name)
        generic = terminology.generic_drug_name(word) if len(word) >= _MIN_TYPO_WORD else None
        if generic is not None:
            return ("drugs", generic)
        if len(word) >= _MIN_CONDITION_WORD and word not in self.condition_stop_words and word in terminology.condition_words():
            return ("conditions", word)
        return None


@lru_cache(maxsize=8)
def _load(path: str) -> Lexicon:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"clinical_tokens: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"clinical_tokens: {path} is not a mapping of sections")
    known = {"phrases", "sex", "numbers", "condition_stop_words", *_COUNTED_SECTIONS, *_LISTED_SECTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"clinical_tokens: {path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    word_class: dict[str, tuple[str, str]] = {}
    for section in ("sex", "numbers", *_COUNTED_SECTIONS):
        for name, words in (data.get(section) or {}).items():
            for word in words:
                word_class[str(word).lower()] = (section, str(name))
    for section in _LISTED_SECTIONS:
        for word in data.get(section) or ():
            word_class[str(word).lower()] = (section, str(word).lower())
    phrases = {str(k).lower(): f" {v} " for k, v in (data.get("phrases") or {}).items()}
    alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    pattern = re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])") if phrases else None
    cues = frozenset(word for word, (section, _) in word_class.items() if section == "negation")
    return Lexicon(phrases, word_class, frozenset(str(w).lower() for w in data.get("condition_stop_words") or ()), pattern, cues)


@dataclass(frozen=True)
class Facts:
    """One text's distinguishing tokens: counted classes, the set of sexes, and the surface words behind them."""

    counts: Counter[tuple[str, str]]
    sexes: frozenset[str]
    surface: dict[tuple[str, str], set[str]]  # class -> the words that spelled it (for the typo excuse)
    other_words: Counter[str]  # the words that are not distinguishing (where a typo'd one ends up)


def _tokens(text: str, lexicon: Lexicon) -> list[str]:
    """Lower-cased word tokens of a raw text, abbreviations written out (tokens with digits are values)."""
    lowered = text.lower()
    if lexicon.phrase_pattern is not None:
        lowered = lexicon.phrase_pattern.sub(lambda match: lexicon.phrases[match.group(0)], lowered)
    return _TOKEN.findall(lowered)


def value_fingerprints(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per text, a 64-bit fingerprint of the multiset of values and codes written with digits.

    Values are the facts no typo excuses (a changed digit is a changed age, dose or result), and
    most same-template siblings differ in one, so the dedup stage computes this for every record
    and only records with equal values can become candidates at all. Tokens holding a digit
    (``7.50`` = ``7.5``, ``1,000`` = ``1000``, ``E11.9``) are each hashed and summed per text
    (order-free). Equal fingerprints = equal values.

    Every rule reads one whitespace-separated token at a time, so the texts are only split and
    dictionary-encoded (in Arrow's C++ kernels), the rules run once per *distinct* token
    (:func:`_token_values`), and a text's fingerprint is a difference of running sums: at 2.5M
    records this is what keeps the value check off the stage's critical path.
    """
    tokens = pc.utf8_split_whitespace(pc.fill_null(texts, ""))
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    offsets = tokens.offsets.to_numpy().astype(np.int64)
    if len(tokens) == 0:
        return np.zeros(0, np.uint64)
    flat = tokens.values.slice(offsets[0], offsets[-1] - offsets[0])
    encoded = pc.dictionary_encode(flat)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    per_token = _token_values(encoded.dictionary)[encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    running = np.zeros(len(per_token) + 1, np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum(per_token, dtype=np.uint64, out=running[1:])
        sums: np.ndarray = running[offsets[1:] - offsets[0]] - running[offsets[:-1] - offsets[0]]  # modulo 2**64
    return sums


def _token_values(words: pa.Array) -> np.ndarray:
    """Per distinct whitespace token, the sum of the hashes of the values it writes (0 for none)."""
    has_digit = pc.match_substring_regex(words, r"\d").to_numpy(zero_copy_only=False)
    text = pc.utf8_lower(pc.filter(words, has_digit))
    for _ in range(2):  # 1,000,000: each pass joins every other group
        text = pc.replace_substring_regex(text, r"(\d),(\d\d\d)", r"\1\2")
    text = pc.replace_substring_regex(text, r"[^a-z0-9.]+", " ")
    text = pc.replace_substring_regex(text, r"\.+(\s|$)|(^|\s)\.+", " ")  # a full stop is not a decimal point
    parts = pc.utf8_split_whitespace(text)
    flat = pc.list_flatten(parts)
    owner = pc.list_parent_indices(parts).to_numpy()
    with_digit = pc.match_substring_regex(flat, r"\d")
    values, owner = pc.filter(flat, with_digit), owner[with_digit.to_numpy(zero_copy_only=False)]
    for pattern, rewrite in ((r"^0+(\d)", r"\1"), (r"^(\d+\.\d*[1-9])0+$", r"\1"), (r"^(\d+)\.0+$", r"\1")):
        values = pc.replace_substring_regex(values, pattern, rewrite)
    sums = np.zeros(len(text), np.uint64)
    with np.errstate(over="ignore"):
        np.add.at(sums, owner, splitmix64(hash_strings(values)))
    contribution = np.zeros(len(words), np.uint64)
    contribution[has_digit] = sums
    return contribution


def facts(text: str, lexicon: Lexicon) -> Facts:
    """The distinguishing tokens of ``text``.

    A note has ~80 distinct words and only a few distinguish it, so the words are counted in C,
    the distinguishing ones picked out by a set intersection, and only those looked at in Python.
    """
    tokens = _tokens(text, lexicon)
    other = Counter(tokens)
    counts: Counter[tuple[str, str]] = Counter()
    surface: dict[tuple[str, str], set[str]] = {}
    sexes: set[str] = set()
    negated = False
    classes = lexicon._items  # every word of the text is memoised by distinguishing()
    for token in lexicon.distinguishing(other):
        count = other.pop(token)
        item = classes[token]
        if item is _VALUE or item is None:
            continue
        if item[0] == "negation":
            negated = True  # counted below, with the word each one negates
            continue
        if item[0] == "sex":
            sexes.add(item[1])
        else:
            counts[item] += count
        spellings = surface.get(item)
        if spellings is None:
            surface[item] = {token}
        else:
            spellings.add(token)
    if negated:  # what is negated: a negation moved to another finding is another case
        tokens.append("")
        for index in [i for i, token in enumerate(tokens) if token in lexicon.negation_cues]:
            what = ("negation", tokens[index + 1])
            counts[what] += 1
            surface.setdefault(what, set()).add(tokens[index])
    return Facts(counts, frozenset(sexes), surface, other)


def _typo_of(words: set[str] | frozenset[str], candidates: Counter[str]) -> bool:
    """Whether one of ``candidates`` is ``words``' spelling with a typo (an edit or a swap of two letters per five letters)."""
    for word in words:
        if len(word) < _MIN_TYPO_WORD or _DIGIT.search(word):
            continue
        limit = max(1, len(word) // 5)
        if any(OSA.distance(word, other, score_cutoff=limit) <= limit for other in candidates):
            return True
    return False


def agree(a: Facts, b: Facts, lexicon: Lexicon) -> bool:
    """Whether two texts state the same distinguishing facts (up to typos in distinguishing words).

    Each class a text has more of than the other must be explained by a typo: one of its words
    misspelled into a non-distinguishing word that only the other text has (for a negation, its
    cue, or the negated word misspelled in the other text's negation). Values written with digits
    are not compared here but by :func:`value_fingerprints` (see :func:`same_cases`). A condition
    word (ICD-10-CM vocabulary) is looser, as rewording drops and adds them ("acute"): it conflicts
    only when the other text puts another condition or another content word in its place.
    """
    if a.counts == b.counts and a.sexes == b.sexes:
        return True
    missing = {side: [item for item in mine.counts if mine.counts[item] > theirs.counts.get(item, 0)] for side, mine, theirs in (("a", a, b), ("b", b, a))}
    a_only_words, b_only_words = a.other_words - b.other_words, b.other_words - a.other_words
    dropped_conditions = []
    for side, mine, theirs, their_words in (("a", a, b, b_only_words), ("b", b, a, a_only_words)):
        their_negated = Counter(word for section, word in missing["b" if side == "a" else "a"] if section == "negation")
        unexplained = [
            item for item in [*missing[side], *(("sex", sex) for sex in mine.sexes - theirs.sexes)]
            if not _typo_of(mine.surface[item], their_words) and not (item[0] == "negation" and _typo_of({item[1]}, their_negated))
        ]
        if any(section != "conditions" for section, _ in unexplained):
            return False
        dropped_conditions.append(bool(unexplained))
    if all(dropped_conditions):
        return False  # one finding replaced by another
    if any(dropped_conditions):  # replaced by a word outside the vocabulary ("jaundice" -> "new confusion")?
        replaced_by, other_side = (b_only_words, a_only_words) if dropped_conditions[0] else (a_only_words, b_only_words)
        return not any(_content_word(word, lexicon) and not _typo_of({word}, other_side) for word in replaced_by)
    return True


def _content_word(word: str, lexicon: Lexicon) -> bool:
    return len(word) >= _MIN_CONDITION_WORD and word not in lexicon.condition_stop_words


def same_cases(texts: pa.Array | pa.ChunkedArray, pairs: np.ndarray, lexicon: Lexicon, fingerprints: np.ndarray | None = None) -> np.ndarray:
    """Per pair of indices into ``texts`` (raw): do the two state the same values and distinguishing facts?

    Values first, for every pair at once (:func:`value_fingerprints`, or ``fingerprints`` already
    computed for ``texts``); the word facts of :func:`agree` only for pairs whose values are equal,
    each text read once.
    """
    if fingerprints is None:
        fingerprints = value_fingerprints(texts)
    same: np.ndarray = fingerprints[pairs[:, 0]] == fingerprints[pairs[:, 1]]
    read: dict[int, Facts] = {}

    def facts_of(index: int) -> Facts:
        if index not in read:
            read[index] = facts(texts[index].as_py() or "", lexicon)
        return read[index]

    for position in np.flatnonzero(same).tolist():
        same[position] = agree(facts_of(int(pairs[position, 0])), facts_of(int(pairs[position, 1])), lexicon)
    return same


def same_case(first: str, second: str, lexicon: Lexicon) -> bool:
    """:func:`same_cases` for two texts."""
    return bool(same_cases(pa.array([first, second]), np.array([[0, 1]]), lexicon)[0])
