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
found by pattern. The same YAML holds the abbreviation, symbol, synonym and contraction table
that :class:`~mediflow.quality.text.CanonicalForms` writes every text in before anything is
compared, so ``pt`` and ``patient``, ``w/`` and ``with``, ``%`` and ``percent`` are one word.

Facts are compared as multisets, so sentence order never matters, and a negation is compared with
what it negates inside its own sentence. Numbers and codes must agree exactly by default (a typo in
a value is another value; ``values: lenient`` excuses one edit in a value); a distinguishing word
misspelled (one edit or transposition per four letters, words of four letters or more), garbled
into a word that states nothing (one edit per three letters, or the same sound), split in two or
run into the next word is excused where it stood (a shared neighbour), and so is one dropped word
when nothing replaces it. A misspelling that writes another fact word ("mg" as "g", "she" as "he")
is read as that fact: only meaning could tell it from a sibling.
"""

from __future__ import annotations

import multiprocessing
import re
import sys
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jellyfish
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from rapidfuzz.distance import OSA

from mediflow import terminology
from mediflow.errors import ConfigError
from mediflow.quality.text import CanonicalForms, CanonicalTokens, canonical_tokens
from mediflow.resources import taxonomies_dir

_DIGIT = re.compile(r"\d")
#: Sections compared as counts of each class; ``sex`` is compared as a set (pronouns come and go with rewording).
_COUNTED_SECTIONS = ("laterality", "negation", "units", "frequency", "route")
#: Sections that are plain word lists: each word is its own class.
_LISTED_SECTIONS = ("anatomy", "labs", "procedures", "specialties")
_MIN_TYPO_WORD = 4  # a shorter word changed by one letter is another word (he/she, lt/rt)
_UNSEEN = object()
_VALUE = ("value", "")
_MIN_CONDITION_WORD = 4  # shorter ICD-10-CM description words are function words and roman numerals
#: Words a negation skips to reach what it negates ("no evidence of effusion": evidence, then effusion).
_NEGATION_SKIPS = frozenset({"a", "an", "the", "any", "of", "known", "obvious", "further", "other", "new", "signs", "evidence"})


@dataclass(frozen=True)
class Lexicon:
    """What counts as distinguishing: phrases rewritten first, then word -> (section, class)."""

    forms: CanonicalForms  # abbreviation, symbol, synonym, contraction -> the canonical words every text is written in
    word_class: dict[str, tuple[str, str]]
    condition_stop_words: frozenset[str]
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

    def distinguishing(self, words: Counter[str]) -> frozenset[str]:
        """Which of ``words`` have an item: set operations in C, as most words of a note tell nothing."""
        for word in set(words).difference(self._items):
            self.item(word)
        return frozenset(self._distinguishing.intersection(words))

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
    known = {"phrases", "symbols", "synonyms", "contractions", "sex", "numbers", "condition_stop_words", *_COUNTED_SECTIONS, *_LISTED_SECTIONS}
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
    table = {str(k).lower(): str(v or "").lower() for section in ("phrases", "symbols", "contractions") for k, v in (data.get(section) or {}).items()}
    for group in data.get("synonyms") or ():
        words = [str(word).lower() for word in group]
        table.update({word: words[0] for word in words[1:]})
    cues = frozenset(word for word, (section, _) in word_class.items() if section == "negation")
    return Lexicon(CanonicalForms(table), word_class, frozenset(str(w).lower() for w in data.get("condition_stop_words") or ()), cues)


@dataclass(frozen=True)
class Facts:
    """One text's canonical words (a multiset: order-free), the sexes it mentions, and each negation with what it negates."""

    words: Counter[str]
    sexes: frozenset[str]
    negations: tuple[tuple[str, str, str], ...]  # per negation cue: the cue, and the next two words of its sentence it may negate
    distinguishing: frozenset[str]  # the words that have a (section, class) in the lexicon
    key: tuple[object, ...]  # the classes stated (values as written), sexes and negations: equal keys, equal facts
    order: tuple[str, ...] = ()  # the words in the order written: where a word stands (its neighbours), for :func:`_garbled`

    def neighbours(self, word: str) -> set[str]:
        """The words written right before and right after each occurrence of ``word`` (read on demand: only the few
        words two candidates do not share ask, and an index per text would cost memory for every text of a batch)."""
        around: set[str] = set()
        for index, found in enumerate(self.order):
            if found == word:
                around.update(self.order[max(0, index - 1) : index])
                around.update(self.order[index + 1 : index + 2])
        return around


def facts(words: list[str], sentence_end: list[bool], lexicon: Lexicon, cues: list[int] | None = None) -> Facts:
    """The facts of one text's canonical words (:meth:`CanonicalTokens.record_words`).

    A negation cue negates the next words of *its own* sentence (skipping articles and words such
    as "evidence of"); the first two are kept, so a copy that dropped the first still matches.
    ``cues``: the cues' positions, when the caller found them for a whole batch at once.
    """
    counted = Counter(words)
    present = lexicon.distinguishing(counted)
    classes = lexicon._items  # every word of the text is memoised by distinguishing()
    sexes: set[str] = set()
    stated: dict[tuple[str, str], int] = {}
    for word in present:
        item = classes[word]
        if item is _VALUE:
            stated[("value", word)] = counted[word]
        elif item is not None and item[0] == "sex":
            sexes.add(item[1])
        elif item is not None:
            stated[item] = stated.get(item, 0) + counted[word]
    if cues is None:
        cues = [index for index, word in enumerate(words) if word in lexicon.negation_cues] if not lexicon.negation_cues.isdisjoint(present) else []
    negated = tuple(sorted((words[index], *_negated(words, sentence_end, index)) for index in cues))
    frozen_sexes = frozenset(sexes)
    return Facts(counted, frozen_sexes, negated, present, (frozenset(stated.items()), frozen_sexes, negated), tuple(words))


def text_facts(text: str, lexicon: Lexicon) -> Facts:
    """:func:`facts` of one raw text (canonicalised first)."""
    return facts(*canonical_tokens(pa.array([text]), lexicon.forms).record_words(0), lexicon)


def _negated(words: list[str], sentence_end: list[bool], cue: int) -> tuple[str, str]:
    found: list[str] = []
    index = cue
    while len(found) < 2 and not sentence_end[index] and index + 1 < len(words):
        index += 1
        if words[index] not in _NEGATION_SKIPS:
            found.append(words[index])
    return (found + ["", ""])[0], (found + ["", ""])[1]


def _typo_limit(first: str, second: str) -> int:
    """Edits (OSA: insertions, deletions, substitutions, transpositions) a misspelling may make: one per four letters of the
    longer word, rounded up ("chest"/"chester": 2), none when it has fewer than four ("he"/"she", "lt"/"rt", "mg"/"g")."""
    longer = max(len(first), len(second))
    return 0 if longer < _MIN_TYPO_WORD else -(-longer // 4)


def _misspelling(word: str, others: Iterable[str], lexicon: Lexicon, lenient_values: bool) -> str | None:
    """The word of ``others`` that ``word`` is a misspelling of (or the reverse), if any; never between two words of one section.

    Digits are never excused unless ``lenient_values`` (then one edit). Two words the lexicon
    knows in one section ("hypokalemia", "hyperkalemia"; "ileum", "ilium") are two facts, not a typo.
    """
    has_digit = bool(_DIGIT.search(word))
    if has_digit and not lenient_values:
        return None
    section = (lexicon.item(word) or ("",))[0]
    best, best_distance = None, 99
    for other in others:
        if bool(_DIGIT.search(other)) != has_digit:
            continue
        limit = 1 if has_digit else _typo_limit(word, other)
        if limit == 0 or (has_digit and len(word) != len(other) and abs(len(word) - len(other)) > 1):
            continue
        distance = OSA.distance(word, other, score_cutoff=limit)
        if distance <= limit and distance < best_distance and (has_digit or not section or (lexicon.item(other) or ("",))[0] != section or (section == "conditions" and _inflection(word, other))):
            best, best_distance = other, distance
    return best


def _typo_of(word: str, other: str, next_word: str = "") -> bool:
    """Whether ``other`` (followed by ``next_word``) writes ``word``: the same, misspelled, or split in two ("in vasion")."""
    limit = 0 if _DIGIT.search(word) or _DIGIT.search(other) else _typo_limit(word, other)
    return word == other or (limit > 0 and OSA.distance(word, other, score_cutoff=limit) <= limit) or (bool(next_word) and word == other + next_word)


def _garbled(word: str, others: Iterable[str], lexicon: Lexicon, shortest: int = 2) -> bool:
    """Whether one of ``others`` (words that stand where ``word`` stood) that states nothing (no lexicon word, no digit)
    is ``word`` garbled beyond a typo.

    Human misspellings go further than one edit per four letters ("woman"/"wonem", "year"/"yers",
    "daily"/"daylie", "left"/"lelf"), and a keyboard slip in a two-letter word ("no"/"nk") is a
    typo too. A word that is no fact of its own, standing where a fact word stood and written
    close to it, can only be that word garbled: a sibling replaces a fact with another fact of the
    lexicon ("left"/"right", "mg"/"g", "no"/"not" all have a class), and those never pass here.
    Close is one edit per three letters of the longer word, rounded up (one for two- and
    three-letter words), or the same Metaphone or NYSIIS code (how the word sounds, from
    jellyfish) of two letters or more and three or more. The caller makes sure the words stood
    where ``word`` stood (:func:`_where_it_stood`; a negated word: right after its cue), so an
    everyday word elsewhere in the note ("to", "on" for "no") never stands in for a fact; such a
    word may then be a single letter (``shortest=1``: "no" -> "n", a letter dropped).
    """
    if len(word) < 2 or _DIGIT.search(word):
        return False
    return any(len(other) >= shortest and not _DIGIT.search(other) and lexicon.item(other) is None and _written_close(word, other) for other in others)


def _where_it_stood(word: str, others: Counter[str], mine: Facts, theirs: Facts) -> list[str]:
    """The words of ``others`` that share a neighbour with ``word`` (the word before or after it): only a word written where
    ``word`` stood can be it misspelled ("right lower lobe" / "rihgt lower lobe"; not "on night air" elsewhere in the note)."""
    around = mine.neighbours(word)
    return [other for other in others if not around.isdisjoint(theirs.neighbours(other))]


def _split_with_typo(word: str, others: Iterable[str], theirs: Facts) -> bool:
    """Whether the other text writes ``word`` cut in two where a letter was lost or replaced by a space or a symbol
    ("hemoptysis" / "hemo tysis", "placed" / "p aced", "woman" / "w man"): two neighbouring words, one of them the
    other text's own, joined within the typo limit (words of four letters or more, no digits)."""
    if len(word) < _MIN_TYPO_WORD or _DIGIT.search(word):
        return False
    own = set(others)
    order = theirs.order
    for first, second in zip(order, order[1:]):
        if (first in own or second in own) and not _DIGIT.search(first + second):
            joined = first + second
            limit = _typo_limit(word, joined)
            if limit and OSA.distance(word, joined, score_cutoff=limit) <= limit:
                return True
    return False


@lru_cache(maxsize=1 << 16)
def _written_close(word: str, other: str) -> bool:
    limit = -(-max(len(word), len(other)) // 3)
    if OSA.distance(word, other, score_cutoff=limit) <= limit:
        return True
    if min(len(word), len(other)) < _MIN_TYPO_WORD:
        return False
    sound = jellyfish.metaphone(word)
    if len(sound) >= 2 and sound == jellyfish.metaphone(other):
        return True
    spelled = jellyfish.nysiis(word)
    return len(spelled) >= 3 and spelled == jellyfish.nysiis(other)


def _inflection(first: str, second: str) -> bool:
    """One word inflected ("fluid"/"fluids", "place"/"placed", "fall"/"falls"): a condition word, not another condition."""
    shorter, longer = sorted((first, second), key=len)
    return longer.startswith(shorter) and longer[len(shorter) :] in ("s", "es", "d", "ed", "ing")


def _split_decimal(word: str, mine: Counter[str], theirs: Counter[str]) -> bool:
    """A value the other text writes with its decimal point spaced out ("7.5" / "7. 5"), or the reverse."""
    whole, point, decimals = word.partition(".")
    if point and whole and decimals and theirs.get(whole, 0) > 0 and theirs.get(decimals, 0) > (whole == decimals):
        return True
    for other in theirs:
        whole, point, decimals = other.partition(".")
        if point and ((whole == word and decimals in mine) or (decimals == word and whole in mine)):
            return True
    return False


def _split_or_merged(word: str, mine: Counter[str], theirs: Counter[str], forms: CanonicalForms) -> bool:
    """Whether the other text writes ``word`` split in two ("pneu monia") or run into its neighbour ("chestpain", "presentingwith").

    A piece split off that happens to be an abbreviation was written out like one ("hea rt" reads
    "hea right", "ed ema" "emergency department ema"): such a piece counts as the abbreviation, and
    the words it was written out as are explained by the word they were split from.
    """
    for cut in range(1, len(word)):
        head, tail = word[:cut], word[cut:]
        if _written(head, theirs, forms, 1 + (head == tail)) and _written(tail, theirs, forms, 1):
            return True
    for other in theirs:
        if other.startswith(word) and other[len(word) :] in mine:
            return True
        if other.endswith(word) and other[: len(other) - len(word)] in mine:
            return True
    for abbreviation, expansion in forms.abbreviations_of(word):  # ``word`` is a split-off abbreviation written out
        if all(piece in mine for piece in expansion):
            for other in theirs:
                if (other.startswith(abbreviation) and other[len(abbreviation) :] in mine) or (other.endswith(abbreviation) and other[: -len(abbreviation)] in mine):
                    return True
    return False


def _written(piece: str, words: Counter[str], forms: CanonicalForms, count: int) -> bool:
    """Whether ``words`` hold ``piece`` (``count`` times), as itself or as the words its abbreviation is written out as."""
    if words.get(piece, 0) >= count:
        return True
    expansion = forms.table.get(piece)
    return bool(expansion) and all(words.get(part, 0) > 0 for part in expansion or ())


#: Sections one of whose words a copy may drop with nothing in its place ("metformin 500 mg" -> "metformin 500"; "intravenous
#: ceftriaxone" -> "ceftriaxone"); a dropped negation, sex, side, number word, drug or value is another case, and so is any replacement.
_DROPPABLE = frozenset({"units", "anatomy", "labs", "procedures", "specialties", "route", "frequency"})


def agree(a: Facts, b: Facts, lexicon: Lexicon, lenient_values: bool = False) -> bool:
    """Whether two texts state the same facts, up to misspellings, split or merged words and one dropped word.

    Only the words one text has more of than the other can differ in a fact. Each distinguishing
    one (a sex, side, negation, unit, dose frequency, route, organ, lab, procedure, specialty, drug,
    condition, number word, value) must be explained: the other text has a word of the same class
    ("man"/"male"; any of its sexes), or writes it misspelled (a value: only its decimal point
    spaced out, or one edit with ``lenient_values``), split in two, or run together with its
    neighbour. A condition word left unexplained conflicts only when the other text puts another
    condition or content word in its place; one unit, organ, lab, procedure, specialty, route or
    dose-frequency word is excused when it is the only word left and nothing stands in its place (a
    dropped word, not a replacement). Negations are then compared with what they negate,
    misspellings excused. With strict values, :func:`same_cases` has already compared the value
    fingerprints (digit runs) before this.
    """
    if a.key == b.key:
        return True  # the same classes, values, sexes and negations: nothing left to excuse
    a_only, b_only = a.words - b.words, b.words - a.words
    unexplained: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    misspelled: set[str] = set()  # words the other text writes misspelled, split or run together
    for side, mine, theirs, my_facts, their_facts in (("a", a_only, b_only, a, b), ("b", b_only, a_only, b, a)):
        telling = sorted(my_facts.distinguishing.intersection(mine))  # only these can state another fact
        if not telling:
            continue
        their_classes = Counter(lexicon.item(word) for word in their_facts.distinguishing.intersection(theirs) for _ in range(theirs[word]))
        for word in telling:
            item = lexicon.item(word)
            if item is None or (item == _VALUE and (_split_decimal(word, mine, theirs) or not word.strip("0"))):
                continue  # "9.0" is written "9"; its "0" split off by a tokenizer is no value
            for _ in range(mine[word]):
                if item[0] == "sex" and item[1] in their_facts.sexes:
                    continue
                if item != _VALUE and their_classes[item] > 0:
                    their_classes[item] -= 1
                    continue
                stood = _where_it_stood(word, theirs, my_facts, their_facts)
                if _misspelling(word, stood, lexicon, lenient_values) or _split_or_merged(word, mine, theirs, lexicon.forms) or _garbled(word, stood, lexicon, shortest=1) or _split_with_typo(word, theirs, their_facts):
                    misspelled.add(word)
                    continue
                unexplained[side].append(item)
    return _rewording_allowed(unexplained, a_only, b_only, lexicon) and _same_negations(a, b, misspelled, lexicon)


def _rewording_allowed(unexplained: dict[str, list[tuple[str, str]]], a_only: Counter[str], b_only: Counter[str], lexicon: Lexicon) -> bool:
    """The looser rules: condition words dropped by rewording, or one organ/lab/unit... word dropped, with nothing in their place."""
    a_left, b_left = unexplained["a"], unexplained["b"]
    if not a_left and not b_left:
        return True
    if a_left and b_left:
        return False  # one fact replaced by another
    left = a_left or b_left
    hard = [item for item in left if item[0] != "conditions"]
    if hard and (len(left) > 1 or hard[0][0] not in _DROPPABLE):
        return False
    replaced_by, mine = (b_only, a_only) if a_left else (a_only, b_only)
    return not any(_content_word(word, lexicon) and not _misspelling(word, mine, lexicon, False) and not _split_or_merged(word, replaced_by, mine, lexicon.forms) for word in replaced_by)  # nothing else stands in its place


def _same_negations(a: Facts, b: Facts, misspelled: set[str], lexicon: Lexicon) -> bool:
    """Each negation negates the same thing in both texts, misspelled, split or not; a first negated word dropped from one
    text may be skipped. A negation whose cue the other text writes misspelled (``misspelled``, excused word by word by
    :func:`agree`) is not read there as a negation, so it has nothing to be compared with."""
    if a.negations == b.negations:
        return True
    mine = [negation for negation in a.negations if negation[0] not in misspelled]
    rest = [negation for negation in b.negations if negation[0] not in misspelled]
    if len(mine) != len(rest):
        return False
    for _, first, second in mine:
        for index, (_, other_first, other_second) in enumerate(rest):
            if (
                _typo_of(first, other_first, other_second)
                or _typo_of(other_first, first, second)
                or _garbled(first, (other_first,), lexicon)
                or _garbled(other_first, (first,), lexicon)
                or first in misspelled
                or other_first in misspelled
                or (first not in b.words and (second == other_first or (bool(second) and _typo_of(second, other_first, other_second))))
                or (other_first not in a.words and other_second and _typo_of(first, other_second))
            ):
                del rest[index]
                break
        else:
            return False
    return True


def _content_word(word: str, lexicon: Lexicon) -> bool:
    return len(word) >= _MIN_CONDITION_WORD and word not in lexicon.condition_stop_words and not _DIGIT.search(word)


def value_fingerprints(texts: pa.Array | pa.ChunkedArray, lexicon: Lexicon | None = None) -> np.ndarray:
    """Per text, a 64-bit fingerprint of the multiset of values and codes it writes with digits (order-free).

    Values are the facts no typo excuses (a changed digit is a changed age, dose or result), and
    most same-template siblings differ in one, so the dedup stage computes this for every record
    (from the canonical words it already has, :meth:`CanonicalTokens.value_fingerprints`) and only
    records with equal values become candidates. ``7.50`` = ``7.5``, ``1,000`` = ``1000``,
    ``7 .5`` = ``7.5``; equal fingerprints = equal values.
    """
    return canonical_tokens(texts, (lexicon or Lexicon.load()).forms).value_fingerprints()


_PARALLEL_FROM = 2_000  # pairs a forked process is worth (a fork of a multi-GB stage costs tens of milliseconds)


def same_cases(tokens: CanonicalTokens, pairs: np.ndarray, lexicon: Lexicon, fingerprints: np.ndarray | None = None, lenient_values: bool = False, workers: int = 1, parallel_from: int = _PARALLEL_FROM) -> np.ndarray:
    """Per pair of record indices into ``tokens``: do the two state the same values and distinguishing facts?

    Values first, for every pair at once (``fingerprints``, or computed from ``tokens``), unless
    ``lenient_values``; the facts of :func:`agree` only for the pairs left, each text read once.
    That word check is Python, one pair at a time, and was 40% of the stage at 2.5M records: from
    ``parallel_from`` pairs on, ``workers`` processes share it (forked, so they read this batch's
    words and the memoised lexicon without copying them; every word of the batch is classified
    first, here, so the forks only read).
    """
    if lenient_values:
        same = np.ones(len(pairs), bool)
    else:
        if fingerprints is None:
            fingerprints = tokens.value_fingerprints()
        same = fingerprints[pairs[:, 0]] == fingerprints[pairs[:, 1]]
    todo = np.flatnonzero(same)
    is_cue = pc.is_in(tokens.words, value_set=pa.array(sorted(lexicon.negation_cues), pa.string())).to_numpy(zero_copy_only=False)[tokens.ids]
    cue_positions = np.flatnonzero(is_cue)  # every negation cue of the batch, found at once
    cue_bounds = np.searchsorted(cue_positions, np.stack([tokens.starts, tokens.ends], axis=1))
    check = _PairCheck(tokens, pairs, lexicon, lenient_values, cue_positions, cue_bounds)
    parts = min(workers, len(todo) // max(1, parallel_from) + 1) if can_fork() else 1
    if parts <= 1:
        same[todo] = check.run(todo)
        return same
    lexicon.distinguishing(Counter(tokens.vocabulary()))  # the forks then only read the memo (what they add is lost)
    chunks = np.array_split(todo, parts)
    global _FORKED_CHECK
    _FORKED_CHECK = check
    try:
        with ProcessPoolExecutor(max_workers=parts - 1, mp_context=multiprocessing.get_context("fork")) as pool:
            forked = [pool.submit(_forked_part, chunk) for chunk in chunks[1:]]
            same[chunks[0]] = check.run(chunks[0])
            for chunk, future in zip(chunks[1:], forked):
                same[chunk] = future.result()
    finally:
        _FORKED_CHECK = None
    return same


_FORKED_CHECK: _PairCheck | None = None  # the batch a forked worker reads (set just before the fork, never pickled)


def can_fork() -> bool:
    """Whether work can go to forked processes that read this one's memory (Linux; elsewhere a fork is unsafe or missing)."""
    return "fork" in multiprocessing.get_all_start_methods() and sys.platform == "linux"


def _forked_part(positions: np.ndarray) -> np.ndarray:
    assert _FORKED_CHECK is not None, "a forked worker of same_cases runs only with the batch its parent set"
    return _FORKED_CHECK.run(positions)


@dataclass
class _PairCheck:
    """One batch's word check: :func:`agree` for chosen pairs, each text's facts read once per process."""

    tokens: CanonicalTokens
    pairs: np.ndarray
    lexicon: Lexicon
    lenient_values: bool
    cue_positions: np.ndarray
    cue_bounds: np.ndarray
    read: dict[int, Facts] = field(default_factory=dict)

    def facts_of(self, index: int) -> Facts:
        found = self.read.get(index)
        if found is None:
            low, high = self.cue_bounds[index].tolist()
            found = self.read[index] = facts(*self.tokens.record_words(index), self.lexicon, (self.cue_positions[low:high] - self.tokens.starts[index]).tolist())
        return found

    def run(self, positions: np.ndarray) -> np.ndarray:
        """Whether each pair at ``positions`` agrees."""
        return np.array([agree(self.facts_of(first), self.facts_of(second), self.lexicon, self.lenient_values) for first, second in self.pairs[positions].tolist()], bool)


def same_case(first: str, second: str, lexicon: Lexicon, lenient_values: bool = False) -> bool:
    """:func:`same_cases` for two raw texts."""
    tokens = canonical_tokens(pa.array([first, second]), lexicon.forms)
    return bool(same_cases(tokens, np.array([[0, 1]]), lexicon, lenient_values=lenient_values)[0])
