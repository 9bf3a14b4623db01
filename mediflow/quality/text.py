"""Text normalisation and hashed word n-grams, vectorised over whole Arrow columns.

Dedup and decontamination look at millions of records; a Python loop per record (or per token)
would dominate their cost. Here normalisation and tokenisation run inside Arrow's C++ kernels,
each distinct token string is hashed once (``pandas.util.hash_array``, SipHash with a fixed key, so
hashes are stable across runs and chunks), and n-grams are combined from token hashes with numpy
integer arithmetic. The same word tokens serve the rule filters' token counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
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
    """A stable 64-bit hash per string (nulls hash like the empty string)."""
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


def token_hashes(normalized: pa.Array) -> TokenHashes:
    """Hash the whitespace tokens of already-normalised texts; each distinct token is hashed once."""
    tokens = pc.utf8_split_whitespace(normalized)
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    offsets = tokens.offsets.to_numpy().astype(np.int64)
    flat = tokens.values.slice(offsets[0], offsets[-1] - offsets[0]) if len(tokens) else tokens.values
    encoded = pc.dictionary_encode(flat)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
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
