"""Exact and near-duplicate detection that holds at millions of records.

1. **Exact**: a 128-bit hash of the normalised text (two SipHash keys) groups identical texts.
2. **Near**: every record gets a MinHash signature over hashed word shingles and (``clinical``)
   a fingerprint of the values it writes (in the same pass as its exact hashes); LSH banding over
   one representative per exact group proposes candidate pairs among records writing the same
   values; each candidate is *confirmed* with a rapidfuzz similarity on the normalised texts
   (``threshold``), so LSH's false positives never count, and (``clinical``) by its clinically
   distinguishing tokens agreeing (:mod:`mediflow.quality.clinical`). For the ``pair`` key both
   the instruction and the document must reach the threshold.
3. **Clusters**: connected components over exact and confirmed edges, so the result is
   transitive and does not depend on the input order. Each cluster keeps its best record: highest
   judge ``quality`` when present, then the smallest ``id`` (deterministic).

``scope: within_task`` salts every hash with the task, so records of different tasks never meet.
Besides the input columns, only uint32/uint64 numpy arrays grow with the input (signatures:
``num_perm`` x 4 bytes a record): normalising, hashing and shingling run over chunks of records,
and a candidate's texts are normalised again when it is confirmed, so no whole-input text column
is ever derived.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rapidfuzz import fuzz, process

from mediflow.quality.clinical import Lexicon, can_fork, same_cases
from mediflow.quality.components import component_labels
from mediflow.quality.config import DedupConfig
from mediflow.quality.minhash import MinHasher, band_keys, bucket_pairs, unique_pairs
from mediflow.quality.text import CanonicalTokens, canonical_tokens, hash_strings, ngram_hashes, splitmix64

_SECOND_HASH_KEY = "mediflow.dedup.2"
_CONFIRM_BATCH = 20_000  # candidate pairs whose texts and clinical facts are held at once (100k took the 1M peak from 2.5 to 4.4 GB)


def key_text(table: pa.Table, key: str) -> pa.Array:
    """The text a dedup key compares: one column, or ``pair`` = instruction and document together."""
    if key == "pair":
        joined = pc.binary_join_element_wise(pc.fill_null(table.column("instruction"), ""), pc.fill_null(table.column("input"), ""), "\n")
        return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
    column = table.column(key)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


@dataclass
class Edges:
    """Duplicate edges found so far: endpoints, similarity (exact = 1.0), which key, and whether exact."""

    left: list[np.ndarray] = field(default_factory=list)
    right: list[np.ndarray] = field(default_factory=list)
    similarity: list[np.ndarray] = field(default_factory=list)
    key: list[np.ndarray] = field(default_factory=list)
    exact: list[np.ndarray] = field(default_factory=list)

    def add(self, left: np.ndarray, right: np.ndarray, similarity: np.ndarray, key: int, exact: bool) -> None:
        self.left.append(left.astype(np.int64))
        self.right.append(right.astype(np.int64))
        self.similarity.append(similarity.astype(np.float64))
        self.key.append(np.full(len(left), key, np.int8))
        self.exact.append(np.full(len(left), exact, bool))

    def arrays(self) -> tuple[np.ndarray, ...]:
        if not self.left:
            empty = np.empty(0, np.int64)
            return empty, empty, np.empty(0), np.empty(0, np.int8), np.empty(0, bool)
        return tuple(np.concatenate(parts) for parts in (self.left, self.right, self.similarity, self.key, self.exact))


@dataclass
class DedupResult:
    """Per record: dropped or not, the kept record of its cluster, and the strongest edge that tied it there."""

    drop: np.ndarray  # bool
    keeper: np.ndarray  # int64 index of the record kept for this record's cluster
    cluster_size: np.ndarray  # int64
    similarity: np.ndarray  # float64: strongest similarity of this record's edges (nan without edges)
    rule: list[str]  # per record: "exact:<key>" / "near:<key>" / ""
    details: dict[str, Any]


@dataclass
class KeyHashes:
    """What one pass over a key's texts leaves behind: no text, only fixed-width numpy arrays.

    Whole-input copies of the joined and normalised texts (and the Python strings hashing needs)
    took the stage's peak at 1M records from 1.8 GB to 5.8 GB, so each chunk of records is
    normalised, hashed and signed, then let go.
    """

    first: np.ndarray  # uint64 per record: content hash (salted), also the LSH buckets' sort key
    second: np.ndarray  # uint64 per record: a second, independent content hash (128 bits together)
    signatures: np.ndarray  # (n, num_perm) uint32 MinHash per record; (n, 0) without near dedup
    has_shingles: np.ndarray  # bool per record (all False without near dedup)
    values: np.ndarray  # uint64 per record: its value fingerprint (CanonicalTokens.value_fingerprints; all 0 unless values are strict)


def _hash_key(table: pa.Table, key: str, salt: np.ndarray, config: DedupConfig, lexicon: Lexicon) -> KeyHashes:
    """Normalise (once per text), hash and (for near dedup) sign ``key``'s texts, ``chunk_records`` records at a time.

    Signing is numpy on one core and, with the normalisation, half of the stage at 2.5M records:
    with ``workers`` > 1 (on Linux) the chunks go to forked processes, which read the input from
    this one's memory without copying it and send back only the chunk's fixed-width arrays.
    """
    n = table.num_rows
    first, second = np.empty(n, np.uint64), np.empty(n, np.uint64)
    signatures = np.empty((n, config.num_perm if config.near else 0), np.uint32)
    has_shingles = np.zeros(n, bool)
    values = np.zeros(n, np.uint64)
    job = _ChunkJob(table, key, salt, config, lexicon)
    starts = list(range(0, n, config.chunk_records))
    workers = min(_workers(config), len(starts)) if can_fork() else 1
    if workers <= 1:
        chunks: Iterator[ChunkHashes] = map(job.run, starts)
        for begin, chunk in zip(starts, chunks):
            chunk.store(begin, first, second, signatures, has_shingles, values)
        return KeyHashes(first, second, signatures, has_shingles, values)
    global _FORKED_CHUNKS
    _FORKED_CHUNKS = job
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for begin, chunk in zip(starts, pool.map(_forked_chunk, starts)):
                chunk.store(begin, first, second, signatures, has_shingles, values)
    finally:
        _FORKED_CHUNKS = None
    return KeyHashes(first, second, signatures, has_shingles, values)


@dataclass
class ChunkHashes:
    """What one chunk of records leaves behind: its hashes, signatures and value fingerprints."""

    first: np.ndarray
    second: np.ndarray
    signatures: np.ndarray
    has_shingles: np.ndarray
    values: np.ndarray

    def store(self, begin: int, first: np.ndarray, second: np.ndarray, signatures: np.ndarray, has_shingles: np.ndarray, values: np.ndarray) -> None:
        end = begin + len(self.first)
        first[begin:end], second[begin:end], values[begin:end] = self.first, self.second, self.values
        signatures[begin:end], has_shingles[begin:end] = self.signatures, self.has_shingles


@dataclass
class _ChunkJob:
    """One key's texts, normalised, hashed and signed a chunk at a time (in this process or a forked one)."""

    table: pa.Table
    key: str
    salt: np.ndarray
    config: DedupConfig
    lexicon: Lexicon

    def run(self, start: int) -> ChunkHashes:
        config = self.config
        canonical = canonical_tokens(key_text(self.table.slice(start, config.chunk_records), self.key), self.lexicon.forms)
        count = len(canonical.starts)
        salt = self.salt[start : start + count]
        first = canonical.record_hashes() ^ salt
        second = splitmix64(canonical.record_hashes(_SECOND_HASH_KEY) ^ salt)
        signatures = np.empty((count, config.num_perm if config.near else 0), np.uint32)
        has_shingles, values = np.zeros(count, bool), np.zeros(count, np.uint64)
        if config.near:
            tokens = canonical.token_hashes()
            shingles = ngram_hashes(tokens, config.shingle_size, short_as_one=True)
            signatures = MinHasher(config.num_perm, config.seed).signatures(shingles, count)
            has_shingles = tokens.lengths > 0
            if config.clinical and config.values == "strict":
                values = canonical.value_fingerprints()
        return ChunkHashes(first, second, signatures, has_shingles, values)


_FORKED_CHUNKS: _ChunkJob | None = None  # what a forked signing worker reads (set just before the fork, never pickled)


def _forked_chunk(start: int) -> ChunkHashes:
    assert _FORKED_CHUNKS is not None, "a forked signing worker runs only with the job its parent set"
    return _FORKED_CHUNKS.run(start)


def _workers(config: DedupConfig) -> int:
    """Processes the stage may use: ``workers``, or one per core."""
    return config.workers or os.cpu_count() or 1


def _exact_groups(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The representative (smallest index) of each record's exact group: equal 128-bit content hashes."""
    order = np.lexsort((second, first))
    same = np.concatenate([[False], (first[order][1:] == first[order][:-1]) & (second[order][1:] == second[order][:-1])])
    group_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))
    representative = np.empty(len(order), np.int64)
    representative[order] = order[group_start]
    return representative


def confirm(table: pa.Table, key: str, pairs: np.ndarray, config: DedupConfig, values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """rapidfuzz similarity (0-1) of each candidate pair, and whether it is a confirmed duplicate.

    Similarity runs in C++ batches on all cores, on the canonical texts (:func:`text.canonical_tokens`:
    the same words the hashes and signatures were made of). A ``pair`` is a duplicate only when its
    instruction *and* its document are: the joined text finds candidates, but a long shared
    document would otherwise hide two different questions asked of it; its similarity is the lower
    of the two fields'. With ``clinical`` a pair over the threshold must also agree on its
    clinically distinguishing tokens (:mod:`mediflow.quality.clinical`): two notes on one template
    about two patients are as similar as a copy with typos. ``values`` (per record, its value
    fingerprint) spares the check computing them again.
    """
    scorer = getattr(fuzz, config.scorer)
    scores = np.empty(len(pairs), np.float64)
    confirmed = np.zeros(len(pairs), bool)
    lexicon = Lexicon.load(config.clinical_tokens)
    for start in range(0, len(pairs), _CONFIRM_BATCH):  # a batch's texts at a time, so memory stays flat
        batch = pairs[start : start + _CONFIRM_BATCH]
        score = np.ones(len(batch))
        rows, local = np.unique(batch, return_inverse=True)  # each text normalised once, however many pairs it is in
        local = local.reshape(batch.shape)
        fields = [canonical_tokens(key_text(table.select([name]).take(pa.array(rows)), name), lexicon.forms) for name in (("instruction", "input") if key == "pair" else (key,))]
        for canonical in fields:
            texts = canonical.texts().to_pylist()
            left, right = ([texts[row] for row in local[:, side].tolist()] for side in (0, 1))
            score = np.minimum(score, process.cpdist(left, right, scorer=scorer, workers=-1) / 100.0)
        similar = score >= config.threshold
        if config.clinical and similar.any():
            tokens = fields[0] if len(fields) == 1 else concatenate_fields(*fields)
            similar[similar] = same_cases(tokens, local[similar], lexicon, None if values is None else values[rows], config.values == "lenient", workers=_workers(config))
        scores[start : start + len(batch)] = score
        confirmed[start : start + len(batch)] = similar
    return scores, confirmed


def concatenate_fields(first: CanonicalTokens, second: CanonicalTokens) -> CanonicalTokens:
    """Each record's words of ``first`` then of ``second`` (the instruction, then its document: the ``pair`` key's facts).

    The first field's last word ends a sentence, so a negation at the end of an instruction never
    reaches into the document.
    """
    words = pa.concat_arrays([first.words, second.words])
    first_lengths, second_lengths = first.ends - first.starts, second.ends - second.starts
    lengths = first_lengths + second_lengths
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ids = np.empty(int(lengths.sum()), np.int64)
    ends_sentence = np.empty(len(ids), bool)
    for part, offset, count, shift in ((first, starts, first_lengths, 0), (second, starts + first_lengths, second_lengths, len(first.words))):
        position = np.repeat(offset - part.starts, count) + np.arange(len(part.ids))  # a record's tokens are contiguous, in order
        ids[position] = part.ids + shift
        ends_sentence[position] = part.sentence_end
    ends_sentence[(starts + first_lengths - 1)[first_lengths > 0]] = True
    return CanonicalTokens(words=words, ids=ids, starts=starts, ends=starts + lengths, sentence_end=ends_sentence)


def _lsh_candidates(hashes: KeyHashes, representative: np.ndarray, salt: np.ndarray, config: DedupConfig) -> tuple[np.ndarray, int]:
    """Candidate pairs ``(i, j)`` of exact-group representatives (record indices, ``i < j``, sorted,
    unique), and how many pairs the bands proposed before the signature check.

    Each band's pairs are checked against the signatures and merged into the unique set at once,
    so only one band's raw pairs are ever held. With the clinical check, a record's values
    (:func:`clinical.value_fingerprints`) salt its band keys: two records that write different
    values are never duplicates, so they never share a bucket. Same-template siblings share whole
    bands; before this salt they made 189M proposed and 1.58M candidate pairs at 1M records.
    """
    is_representative = representative == np.arange(len(representative))
    candidates = np.empty((0, 2), np.int64)
    proposed = 0
    for keys in band_keys(hashes.signatures, config.bands, salt ^ hashes.values):
        pairs = bucket_pairs(keys, hashes.first, hashes.has_shingles & is_representative, config.max_bucket, config.window)
        proposed += len(pairs)
        pairs = pairs[_estimated_jaccard(hashes.signatures, pairs) >= config.min_signature_jaccard]
        candidates = unique_pairs(np.concatenate([candidates, pairs]))
    return candidates, proposed


def _estimated_jaccard(signatures: np.ndarray, pairs: np.ndarray, batch: int = 8_192) -> np.ndarray:
    """Share of equal MinHash values per pair: an unbiased Jaccard estimate that costs no text access.

    LSH proposes every pair sharing one band; most of them share nothing else. This cheap check
    discards them before the (100x dearer) rapidfuzz confirmation. Without the clinical check's
    value salt it is the stage's largest cost (189M pairs at 1M templated records), so the gathered
    rows of a batch stay cache-sized and equal values are counted, not averaged as floats.
    """
    equal = np.empty(len(pairs), np.int64)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        equal[start : start + len(chunk)] = np.count_nonzero(np.take(signatures, chunk[:, 0], axis=0) == np.take(signatures, chunk[:, 1], axis=0), axis=1)
    share: np.ndarray = equal / signatures.shape[1]
    return share


def _keepers(labels: np.ndarray, ids: pa.Array, quality: np.ndarray | None) -> np.ndarray:
    """The index kept for each record's cluster: best quality, then smallest id."""
    sort_table = pa.table(
        {
            "label": labels,
            "neg_quality": -np.nan_to_num(quality, nan=-np.inf) if quality is not None else np.zeros(len(labels)),
            "id": ids,
        }
    )
    order = pc.sort_indices(sort_table, sort_keys=[("label", "ascending"), ("neg_quality", "ascending"), ("id", "ascending")]).to_numpy()
    sorted_labels = labels[order]
    first = np.concatenate([[True], sorted_labels[1:] != sorted_labels[:-1]])
    keeper_of_label = np.empty(len(labels), np.int64)
    keeper_of_label[sorted_labels[first]] = order[first]
    keepers: np.ndarray = keeper_of_label[labels]
    return keepers


@dataclass
class KeyCandidates:
    """One key's exact groups and its LSH candidate pairs, before any text is compared."""

    representative: np.ndarray  # int64 per record: the smallest index of its exact group
    pairs: np.ndarray  # (k, 2) int64 candidate pairs of representatives, i < j, unique
    proposed: int  # pairs the LSH bands proposed before the signature check
    values: np.ndarray  # uint64 per record: its value fingerprint (all 0 without the clinical check)


def scope_salt(table: pa.Table, config: DedupConfig) -> np.ndarray:
    """Per record, what its hashes are salted with: its task under ``within_task`` scope, else nothing."""
    if config.scope == "within_task" and "task_type" in table.column_names:
        return splitmix64(hash_strings(table.column("task_type")))
    return np.zeros(table.num_rows, np.uint64)


def key_candidates(table: pa.Table, key: str, salt: np.ndarray, config: DedupConfig) -> KeyCandidates:
    """Exact groups and (with ``near``) LSH candidates of ``key``; the signatures are let go on return."""
    hashes = _hash_key(table, key, salt, config, Lexicon.load(config.clinical_tokens))
    representative = _exact_groups(hashes.first, hashes.second)
    if not config.near:
        return KeyCandidates(representative, np.empty((0, 2), np.int64), 0, hashes.values)
    pairs, proposed = _lsh_candidates(hashes, representative, salt, config)
    return KeyCandidates(representative, pairs, proposed, hashes.values)


def find_duplicates(table: pa.Table, config: DedupConfig) -> DedupResult:
    """Cluster ``table``'s records (needs ``id``, the key columns, ``task_type`` for within-task scope)."""
    n = table.num_rows
    if n == 0:
        empty = np.empty(0, np.int64)
        return DedupResult(drop=np.empty(0, bool), keeper=empty, cluster_size=empty, similarity=np.empty(0), rule=[], details={"dropped": 0})
    salt = scope_salt(table, config)
    edges = Edges()
    details: dict[str, Any] = {}
    for key_index, key in enumerate(config.keys):
        found = key_candidates(table, key, salt, config)
        members = np.flatnonzero(found.representative != np.arange(n))
        key_details: dict[str, Any] = {"exact_pairs": int(len(members)) if config.exact else 0}
        if config.exact:
            edges.add(found.representative[members], members, np.ones(len(members)), key_index, exact=True)
        if config.near:
            similarity, confirmed = confirm(table, key, found.pairs, config, found.values)
            edges.add(found.pairs[confirmed, 0], found.pairs[confirmed, 1], similarity[confirmed], key_index, exact=False)
            key_details.update(
                lsh_pairs=found.proposed, candidate_pairs=int(len(found.pairs)), confirmed_pairs=int(confirmed.sum()), clinical_conflicts=int((similarity >= config.threshold).sum() - confirmed.sum()), signed_texts=n - int(len(members))
            )
        details[key] = key_details
    left, right, similarity, key_of_edge, exact = edges.arrays()
    labels = component_labels(n, np.stack([left, right], axis=1))
    quality = table.column("quality").to_numpy(zero_copy_only=False).astype(np.float64) if "quality" in table.column_names else None
    keeper = _keepers(labels, table.column("id"), quality)
    cluster_size = np.bincount(labels, minlength=n)[labels]

    best_similarity = np.full(n, np.nan)
    rule = [""] * n
    if len(left):
        strength = similarity + exact  # an exact edge (2.0) beats any near one
        order = np.argsort(-strength, kind="stable")
        nodes = np.concatenate([left[order], right[order]])
        edge_of_node = np.concatenate([order, order])
        position = np.concatenate([np.arange(len(order)), np.arange(len(order))])
        by_strength = np.lexsort((position, nodes))
        nodes, edge_of_node = nodes[by_strength], edge_of_node[by_strength]
        first = np.concatenate([[True], nodes[1:] != nodes[:-1]])
        for node, edge in zip(nodes[first].tolist(), edge_of_node[first].tolist()):
            best_similarity[node] = similarity[edge]
            rule[node] = f"{'exact' if exact[edge] else 'near'}:{config.keys[key_of_edge[edge]]}"
    drop = keeper != np.arange(n)
    details["clusters_with_duplicates"] = int(len(np.unique(labels[cluster_size > 1])))
    details["dropped"] = int(drop.sum())
    return DedupResult(drop=drop, keeper=keeper, cluster_size=cluster_size, similarity=best_similarity, rule=rule, details=details)
