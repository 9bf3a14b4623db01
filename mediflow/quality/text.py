"""Text normalisation and hashed word n-grams, vectorised over whole Arrow columns.

Dedup and decontamination look at millions of records; a Python loop per record (or per token)
would dominate their cost. Here normalisation and tokenisation run inside Arrow's C++ kernels,
each distinct token string is hashed once (``pandas.util.hash_array``, SipHash with a fixed key, so
hashes are stable across runs and chunks), and n-grams are combined from token hashes with numpy
integer arithmetic. The same word tokens serve the rule filters' token counts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Anything that is not a letter or a digit separates words (Unicode-aware, RE2 syntax).
_NON_WORD = r"[^\p{L}\p{N}]+"
_WORD_RE = re.compile(r"\w+", re.UNICODE)
_HASH_KEY = "mediflow.quality"  # 16 characters: pandas' SipHash key; changing it changes every hash
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_NGRAM_BASE = np.uint64(0x100000001B3)


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens of one string: the cheap tokenizer behind the length rules."""
    return _WORD_RE.findall(text.lower())


def normalize_column(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lower-case, punctuation to spaces, whitespace collapsed: what "the same text" means for dedup."""
    filled = pc.fill_null(texts, "")
    spaced = pc.replace_substring_regex(pc.utf8_lower(filled), _NON_WORD, " ")
    normalized = pc.utf8_trim_whitespace(spaced)
    return normalized.combine_chunks() if isinstance(normalized, pa.ChunkedArray) else normalized


#: Spacing a copy changes without changing a value: "7 .5" is "7.5", "7th" is "7". ("1. 1" is left alone: it is also
#: "day 5. 67-year-old"; :meth:`CanonicalTokens.value_fingerprints` reads both alike and the clinical check tells them apart.)
_ORDINAL = r"(?i)(\d)(?:st|nd|rd|th)\b"
_SPLIT_NUMBER = r"(\d) +([.,])(\d)"
#: A space before closing punctuation ("hours ." is "hours.") or after opening punctuation.
_LOOSE_PUNCTUATION = r"\s+([.,;:!?)\]}%])|([(\[{])\s+"
#: One piece of a whitespace token: a dotted abbreviation (b.i.d.), a number (7.5, 1,000), a word or code (e11.9,
#: hba1c) with an optional trailing slash (w/), a symbol that is a word (% &), or a contraction's tail (n't, 's).
_PIECE = re.compile(r"n't|(?:[^\W\d_]\.){2,}|\d+(?:[.,]\d+)*|[^\W_]+(?:\.\d+)*/?|'[a-z]+|[%&+]")
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_SENTENCE_END = frozenset(".!?;")
_CLOSERS = ")]}\"'\u00bb\u201d"
_DIGIT = re.compile(r"\d")
_MEMO_LIMIT = 2_000_000  # distinct raw tokens remembered between batches (typos and values keep adding new ones)


class CanonicalForms:
    """How one raw whitespace token is written canonically: NFKC, case-folded, split into words, abbreviations written out.

    ``table`` maps a word (``pt``, ``w/``, ``b.i.d.``, ``%``, ``n't``) to the words it stands for
    (``patient``, ``with``, ``twice daily``, ``percent``, ``not``); synonyms map to one member of their
    group. A copy that abbreviates and one that writes out then read the same, whichever direction
    the copy took. Numbers lose thousands separators and insignificant zeros (``07.50`` is ``7.5``,
    ``1,000`` is ``1000``). Each distinct raw token is read once, in Python, and remembered.
    """

    def __init__(self, table: dict[str, str]) -> None:
        self.table = {key: tuple(value.split()) for key, value in table.items()}
        self._memo: dict[str, tuple[tuple[str, ...], bool]] = {}
        self._abbreviations: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for key, words in self.table.items():
            if key.isalpha() and len(key) <= 3:  # a short abbreviation: also a piece a split word can leave ("hea rt")
                for word in words:
                    self._abbreviations.setdefault(word, []).append((key, words))

    def abbreviations_of(self, word: str) -> list[tuple[str, tuple[str, ...]]]:
        """The short abbreviations whose written-out form holds ``word``, each with that form (``right``: ``[("rt", ("right",))]``)."""
        return self._abbreviations.get(word, [])

    def words(self, raw: str) -> tuple[tuple[str, ...], bool]:
        """``raw``'s canonical words, and whether it ends a sentence (``.``, ``!``, ``?``, ``;``, not a dotted abbreviation)."""
        found = self._memo.get(raw)
        if found is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            found = self._memo[raw] = self._canonical(raw)
        return found

    def _canonical(self, raw: str) -> tuple[tuple[str, ...], bool]:
        token = unicodedata.normalize("NFKC", raw).casefold().translate(_ZERO_WIDTH).translate(_QUOTES)
        core = token.rstrip(_CLOSERS)
        ends = bool(core) and core[-1] in _SENTENCE_END and not (core.count(".") > 1 and core.rstrip(".") + "." in self.table)
        whole = core.strip(_CLOSERS + "([{\"',:;!?")
        for form in (whole, whole + "."):
            if form in self.table:
                return self.table[form], ends
        words: list[str] = []
        for piece in _PIECE.findall(token.replace("n't", " n't")):
            known = self.table.get(piece, self.table.get(piece.rstrip(".") + "."))
            if known is not None:
                words.extend(known)
            elif piece[0].isdigit():
                words.append(_number(piece))
            elif piece.endswith("/"):
                words.append(piece[:-1])
            else:
                words.extend(self.table.get(piece, (piece,)))
        return tuple(words), ends


def _number(piece: str) -> str:
    """``1,000`` -> ``1000``; ``07.50`` -> ``7.5``; ``7.0`` -> ``7`` (the same value written another way)."""
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", piece):
        piece = piece.replace(",", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", piece):
        whole, _, decimals = piece.partition(".")
        whole, decimals = whole.lstrip("0") or "0", decimals.rstrip("0")
        return f"{whole}.{decimals}" if decimals else whole
    return piece


@dataclass(frozen=True)
class CanonicalTokens:
    """A batch of texts as canonical words, dictionary-encoded: record ``i`` owns ``ids[starts[i]:ends[i]]``.

    Normalising once per text, here, is what makes "the same text" one notion for every step: the
    exact hash, the MinHash shingles, the values, the rapidfuzz similarity and the clinical facts all
    read these words.
    """

    words: pa.Array  # string: the distinct canonical words of the batch
    ids: np.ndarray  # int64 per token: index into ``words``
    starts: np.ndarray  # int64 per record
    ends: np.ndarray  # int64 per record
    sentence_end: np.ndarray  # bool per token: the last word of a sentence

    def texts(self) -> pa.Array:
        """Each record's canonical words joined by single spaces (what rapidfuzz compares)."""
        offsets = pa.array(np.concatenate([self.starts, self.ends[-1:]]).astype(np.int64) if len(self.starts) else np.zeros(1, np.int64))
        joined = pc.binary_join(pa.LargeListArray.from_arrays(offsets, self.words.take(pa.array(self.ids))), " ")
        return joined.cast(pa.string())

    def token_hashes(self, key: str = _HASH_KEY) -> TokenHashes:
        """The words as 64-bit hashes (each distinct word hashed once), for shingles and exact hashes."""
        return TokenHashes(hashes=hash_strings(self.words, key)[self.ids], starts=self.starts, ends=self.ends)

    def record_hashes(self, key: str = _HASH_KEY) -> np.ndarray:
        """A 64-bit hash per record of its word sequence (order matters): equal canonical texts, equal hashes."""
        tokens = self.token_hashes(key)
        position = np.arange(len(self.ids), dtype=np.int64) - np.repeat(self.starts, self.ends - self.starts)
        return _sums(splitmix64(tokens.hashes ^ splitmix64(position.astype(np.uint64) + np.uint64(1))), self.starts, self.ends)

    def value_fingerprints(self) -> np.ndarray:
        """Per record, a 64-bit fingerprint of the values and codes it writes: the multiset of their digit runs.

        A word holding a digit counts as its pieces between full stops (``7.5`` as ``7`` and ``5``;
        ``e11.9`` as ``e11`` and ``9``; a piece of zeros only counts as nothing), so a decimal a
        tokenizer wrote as "7. 5" or "9. 0" has the fingerprint of "7.5" or "9" (``9.0`` is written
        ``9``): equal values give equal fingerprints (the converse is checked word by word, see
        :func:`mediflow.quality.clinical.agree`). Each distinct word is hashed once; a record's
        fingerprint is a difference of running sums.
        """
        has_digit = pc.match_substring_regex(self.words, r"\d").to_numpy(zero_copy_only=False)
        with_digit = self.words.filter(pa.array(has_digit))
        pieces = pc.split_pattern(with_digit, ".")
        flat = pc.list_flatten(pieces)
        piece_hashes = splitmix64(hash_strings(flat, "mediflow.values."))
        piece_hashes[~pc.match_substring_regex(flat, r"[^0.]").to_numpy(zero_copy_only=False)] = 0  # "9.0" is "9": a lone "0" split off is no value
        owner = pc.list_parent_indices(pieces).to_numpy()
        per_digit_word = np.zeros(len(with_digit), np.uint64)
        with np.errstate(over="ignore"):
            np.add.at(per_digit_word, owner, piece_hashes)
        per_word = np.zeros(len(self.words), np.uint64)
        per_word[has_digit] = per_digit_word
        return _sums(per_word[self.ids], self.starts, self.ends)

    def record_words(self, index: int) -> tuple[list[str], list[bool]]:
        """One record's words and sentence ends as Python lists (the clinical check reads them)."""
        start, end = int(self.starts[index]), int(self.ends[index])
        vocabulary = self.vocabulary()
        return [vocabulary[i] for i in self.ids[start:end].tolist()], self.sentence_end[start:end].tolist()

    def vocabulary(self) -> list[str]:
        """The batch's distinct words as a Python list (made once)."""
        cached: list[str] | None = self.__dict__.get("_words_list")
        if cached is None:
            cached = self.words.to_pylist()
            object.__setattr__(self, "_words_list", cached)
        return cached


def _sums(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per record, the sum (modulo 2**64) of ``values[starts[i]:ends[i]]``, as a difference of running sums."""
    running = np.zeros(len(values) + 1, np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum(values, dtype=np.uint64, out=running[1:])
        sums: np.ndarray = running[ends] - running[starts]
    return sums


def canonical_tokens(texts: pa.Array | pa.ChunkedArray, forms: CanonicalForms) -> CanonicalTokens:
    """Normalise a batch of raw texts once: spacing fixed in Arrow, each distinct whitespace token read by ``forms`` once.

    Whitespace of any kind (line breaks, tabs, runs of spaces) separates tokens and nothing else;
    a space before closing punctuation or inside a number ("hours .", "7 .5", "1. 1", "J18. 9") is
    removed first, so spacing never changes a word or a value.
    """
    filled = pc.fill_null(texts, "")
    for pattern, rewrite in ((_ORDINAL, r"\1"), (_SPLIT_NUMBER, r"\1\2\3"), (_LOOSE_PUNCTUATION, r"\1\2")):
        filled = pc.replace_substring_regex(filled, pattern, rewrite)
    offsets, encoded = _split_and_encode(filled)
    raw_tokens = encoded.dictionary.to_pylist()
    vocabulary: dict[str, int] = {}
    counts = np.empty(len(raw_tokens), np.int64)
    ends_sentence = np.empty(len(raw_tokens), bool)
    flat_ids: list[int] = []
    for index, raw in enumerate(raw_tokens):
        words, ends = forms.words(raw)
        counts[index], ends_sentence[index] = len(words), ends
        flat_ids.extend(vocabulary.setdefault(word, len(vocabulary)) for word in words)
    first_id = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    raw_ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    per_token = counts[raw_ids]
    total = int(per_token.sum())
    token_start = np.cumsum(per_token) - per_token
    ids = np.asarray(flat_ids, np.int64)[np.repeat(first_id[raw_ids], per_token) + (np.arange(total, dtype=np.int64) - np.repeat(token_start, per_token))]
    last_word = np.zeros(total, bool)
    has_words = per_token > 0
    last_word[(token_start + per_token - 1)[has_words]] = ends_sentence[raw_ids][has_words]
    running = np.concatenate([[0], np.cumsum(per_token)]).astype(np.int64)
    record_offsets = running[offsets - offsets[0]]
    words = pa.array(list(vocabulary), pa.string())
    return CanonicalTokens(words=words, ids=ids, starts=record_offsets[:-1], ends=record_offsets[1:], sentence_end=last_word)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: spreads structured 64-bit values (sums, products) over all bits."""
    x = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _MIX_1
        x ^= x >> np.uint64(27)
        x *= _MIX_2
        x ^= x >> np.uint64(31)
    return x


def hash_strings(values: pa.Array | pa.ChunkedArray, key: str = _HASH_KEY) -> np.ndarray:
    """A stable 64-bit hash per string (nulls hash like the empty string).

    pandas is imported here, not at the top: it is half of ``mediflow --help``'s start-up (the CLI
    imports the quality configs for their flags, and they this module), and this is its one use."""
    import pandas as pd

    objects = pc.fill_null(values, "").to_numpy(zero_copy_only=False)
    return pd.util.hash_array(objects, hash_key=key, categorize=False).astype(np.uint64)


@dataclass(frozen=True)
class TokenHashes:
    """Every token of a batch of texts as a 64-bit hash, concatenated; record ``i`` owns ``[starts[i], ends[i])``."""

    hashes: np.ndarray  # uint64, one per token
    starts: np.ndarray  # int64, one per record
    ends: np.ndarray  # int64, one per record

    @property
    def lengths(self) -> np.ndarray:
        lengths: np.ndarray = self.ends - self.starts
        return lengths


def _split_and_encode(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.DictionaryArray]:
    """Every whitespace token of ``texts``, dictionary-encoded (each distinct token once), and each text's token offsets."""
    tokens = pc.utf8_split_whitespace(texts)
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    offsets = tokens.offsets.to_numpy().astype(np.int64)
    flat = tokens.values.slice(offsets[0], offsets[-1] - offsets[0]) if len(tokens) else tokens.values
    encoded = pc.dictionary_encode(flat)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return offsets, encoded


def token_hashes(normalized: pa.Array) -> TokenHashes:
    """Hash the whitespace tokens of already-normalised texts; each distinct token is hashed once."""
    offsets, encoded = _split_and_encode(normalized)
    dictionary_hashes = hash_strings(encoded.dictionary)
    hashes = dictionary_hashes[encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    base = offsets[0]
    return TokenHashes(hashes=hashes, starts=offsets[:-1] - base, ends=offsets[1:] - base)


@dataclass(frozen=True)
class NGramHashes:
    """Hashed word n-grams of a batch, concatenated; ``owner[j]`` is the record of n-gram ``j``."""

    hashes: np.ndarray  # uint64
    owner: np.ndarray  # int64 record index within the batch, non-decreasing


def ngram_hashes(tokens: TokenHashes, n: int, *, short_as_one: bool) -> NGramHashes:
    """Hash every run of ``n`` consecutive tokens inside each record.

    With ``short_as_one`` a record with fewer than ``n`` (but at least one) tokens contributes one
    n-gram made of all its tokens, so short texts still get a signature (dedup); without it they
    contribute nothing (decontamination, where a short n-gram would match everywhere).
    """
    lengths = tokens.lengths
    total = len(tokens.hashes)
    if total == 0:
        return NGramHashes(hashes=np.empty(0, np.uint64), owner=np.empty(0, np.int64))
    owner_of_token = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    ends_of_token = tokens.ends[owner_of_token]
    positions = np.arange(total, dtype=np.int64)
    padded = np.concatenate([tokens.hashes, np.zeros(n, np.uint64)])
    combined = padded[:total].copy()
    with np.errstate(over="ignore"):
        for offset in range(1, n):
            inside = positions + offset < ends_of_token
            combined = np.where(inside, combined * _NGRAM_BASE + padded[offset : total + offset], combined)
    full = positions + n <= ends_of_token
    if short_as_one:
        short_start = (positions == tokens.starts[owner_of_token]) & (lengths[owner_of_token] < n)
        full |= short_start
    return NGramHashes(hashes=splitmix64(combined[full]), owner=owner_of_token[full])


def json_strings(value: Any) -> Iterator[str]:
    """Every string inside a parsed JSON value (itself, or nested in lists and mappings), depth first.

    The checks that read JSON answers (ICD-10 codes, verbatim copying, eval-set fields, the audit)
    look at the values a model wrote, never at the schema's keys.
    """
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from json_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from json_strings(item)
