"""The ``decontaminate`` stage: drop every record that shares a word n-gram with an evaluation set.

The eval sets' texts are normalised like dedup's (lower case, punctuation to spaces) and cut into
hashed word n-grams (13 by default, as in GPT-3's and most later decontamination); the distinct
hashes form one sorted array, so checking a record is a ``searchsorted`` per n-gram and the stage
streams any number of records in bounded memory. A record is dropped when any configured column
shares one n-gram with any eval item; the reject names the eval item it shares most with.

Eval texts shorter than ``n`` words would otherwise be invisible. They are matched whole instead:
a text of ``k`` words (``MIN_RUN <= k < n``) matches a record holding the same ``k`` consecutive
words, and a shorter one (a one-line question, an answer option) only a record column that equals
it entirely, because a run of a few words ("what is the diagnosis") occurs in countless unrelated
records. ``MIN_RUN`` is 8, GPT-3's lower bound on its decontamination n.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mediflow.configuration import to_plain
from mediflow.errors import ConfigError
from mediflow.folders import InputData, open_input
from mediflow.quality.config import DecontamConfig
from mediflow.quality.eval_sets import read_eval_set
from mediflow.quality.report import StageReport
from mediflow.quality.stage import Drops, open_stage, run_stage
from mediflow.quality.text import hash_strings, ngram_hashes, normalize_column, token_hashes

#: Fewest consecutive words a match may rest on; shorter eval texts match only an equal column.
MIN_RUN = 8
#: Records hashed at a time (a batch of long documents expands to several arrays of its token count).
_CHUNK_ROWS = 5_000
#: The run length that stands for "the whole column equals the eval text".
_WHOLE = 0


@dataclass(frozen=True)
class EvalIndex:
    """Every distinct eval n-gram, grouped by run length and sorted, with the first item that has it."""

    labels: list[str]  # "<path>#<id>" per eval item
    hashes: np.ndarray  # uint64: sorted within each run length's slice
    entry_item: np.ndarray  # int64: the item (index into labels) of each entry
    runs: dict[int, slice]  # run length (n, a short text's length, or _WHOLE) -> its slice of hashes
    per_set: dict[str, dict[str, int]]  # for the manifest: items and distinct entries per eval set


def _entries(texts: list[str], items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(run length, hash, item)`` of every n-gram, and of every short text matched whole."""
    normalized = normalize_column(pa.array(texts, pa.string()))
    tokens = token_hashes(normalized)
    grams = ngram_hashes(tokens, n, short_as_one=True)  # a text shorter than n gives one gram: all of it
    length = tokens.lengths[grams.owner]
    as_run = length >= min(MIN_RUN, n)
    whole = np.flatnonzero((tokens.lengths > 0) & (tokens.lengths < min(MIN_RUN, n)))
    run = np.concatenate([np.minimum(length[as_run], n), np.full(len(whole), _WHOLE)])
    hashes = np.concatenate([grams.hashes[as_run], hash_strings(normalized.take(pa.array(whole, pa.int64())))])
    return run.astype(np.int64), hashes, np.concatenate([items[grams.owner[as_run]], items[whole]])


def build_index(config: DecontamConfig) -> EvalIndex:
    """Read every eval set and index its n-grams (the earliest item keeps an n-gram that several share)."""
    if not config.eval:
        raise ConfigError("decontaminate.eval: no evaluation sets given")
    labels: list[str] = []
    runs, hashes, items = [], [], []
    per_set: dict[str, dict[str, int]] = {}
    for spec in config.eval:
        texts = read_eval_set(spec)
        run, hashed, item = _entries(texts.texts, np.asarray(texts.item, np.int64) + len(labels), config.ngram)
        labels += texts.labels
        per_set[spec.path] = {"items": len(texts.labels), "entries": int(len(np.unique(hashed)))}
        runs.append(run)
        hashes.append(hashed)
        items.append(item)
    run, hashed, item = (np.concatenate(parts) for parts in (runs, hashes, items))
    order = np.lexsort((item, hashed, run))
    run, hashed, item = run[order], hashed[order], item[order]
    first = np.concatenate([[True], (run[1:] != run[:-1]) | (hashed[1:] != hashed[:-1])]) if len(run) else np.empty(0, bool)
    run, hashed, item = run[first], hashed[first], item[first]
    lengths, starts = np.unique(run, return_index=True)
    ends = np.append(starts[1:], len(run))
    return EvalIndex(
        labels=labels,
        hashes=hashed,
        entry_item=item,
        runs={int(k): slice(int(s), int(e)) for k, s, e in zip(lengths, starts, ends)},
        per_set=per_set,
    )


def _hits(index: EvalIndex, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(row, entry)`` for every n-gram (or whole column) of ``texts`` found in the index."""
    normalized = normalize_column(texts)
    tokens = token_hashes(normalized)
    rows, entries = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for run, part in index.runs.items():
        if run == _WHOLE:
            owner = np.flatnonzero(tokens.lengths > 0)
            hashes = hash_strings(normalized.take(pa.array(owner, pa.int64())))
        else:
            grams = ngram_hashes(tokens, run, short_as_one=False)
            owner, hashes = grams.owner, grams.hashes
        table = index.hashes[part]
        position = np.minimum(np.searchsorted(table, hashes), len(table) - 1)
        found = table[position] == hashes
        rows.append(owner[found])
        entries.append(position[found] + part.start)
    return np.concatenate(rows), np.concatenate(entries)


def find_contamination(index: EvalIndex, batch: pa.Table, columns: tuple[str, ...], n: int) -> Drops:
    """Drop each row sharing an n-gram with an eval item; ``match`` is the item it shares most with."""
    drops = Drops.none(batch.num_rows)
    found_rows, found_entries, found_columns = [], [], []
    for column_index, column in enumerate(columns):
        for start in range(0, batch.num_rows, _CHUNK_ROWS):
            rows, entries = _hits(index, batch.column(column).slice(start, _CHUNK_ROWS))
            found_rows.append(rows + start)
            found_entries.append(entries)
            found_columns.append(np.full(len(rows), column_index, np.int64))
    if not found_rows or sum(len(r) for r in found_rows) == 0:
        return drops
    rows, entries, column_of = (np.concatenate(parts) for parts in (found_rows, found_entries, found_columns))
    entry_count, item_count = len(index.hashes), len(index.labels)
    distinct = np.unique(rows * entry_count + entries)  # an n-gram met twice (or in two columns) counts once
    rows_d, items_d = distinct // entry_count, index.entry_item[distinct % entry_count]
    pairs, shared = np.unique(rows_d * item_count + items_d, return_counts=True)
    pair_rows, pair_items = pairs // item_count, pairs % item_count
    best = np.lexsort((pair_items, -shared, pair_rows))
    best = best[np.concatenate([[True], pair_rows[best][1:] != pair_rows[best][:-1]])]
    row_columns = np.unique(rows * len(columns) + column_of)  # sorted by row, then column
    first_column = np.searchsorted(row_columns // len(columns), pair_rows[best])
    drops.mask[pair_rows[best]] = True
    for row, item, count, at in zip(pair_rows[best].tolist(), pair_items[best].tolist(), shared[best].tolist(), first_column.tolist()):
        where = []
        while at < len(row_columns) and row_columns[at] // len(columns) == row:
            where.append(columns[row_columns[at] % len(columns)])
            at += 1
        drops.rule.append(f"ngram_overlap:{n}")
        drops.score.append(float(count))
        drops.reason.append(f"{n}-gram overlap with {index.labels[item]} in {', '.join(where)} ({count} shared)")
        drops.match.append(index.labels[item])
    return drops


def _check_columns(source: InputData, columns: tuple[str, ...]) -> None:
    present = source.columns
    missing = [c for c in columns if c not in present]
    if missing:
        raise ConfigError(f"decontaminate.columns: {', '.join(missing)} not in the input {source.path} (it has: {', '.join(present)})")


def run_decontaminate(source: Path | InputData, out: Path, config: DecontamConfig, *, overwrite: bool = False) -> StageReport:
    """Remove records overlapping ``config.eval`` from ``source`` and write ``out`` (kept, rejects, manifest)."""
    data = source if isinstance(source, InputData) else open_input(source)
    _check_columns(data, config.columns)
    index = build_index(config)  # reads (and so checks) every eval set before the output is touched
    data, folder = open_stage(data, out, "decontaminate", to_plain(config), overwrite=overwrite, other_inputs=[Path(spec.path) for spec in config.eval])
    matched: dict[str, int] = {}

    def decide(batch: pa.Table, offset: int) -> tuple[pa.Table, Drops]:
        drops = find_contamination(index, batch, config.columns, config.ngram)
        for label in drops.match:
            if label is not None:
                matched[label] = matched.get(label, 0) + 1
        return batch, drops

    def details() -> dict[str, Any]:
        return {"eval_sets": index.per_set, "min_run": min(MIN_RUN, config.ngram), "removed_per_eval_item": dict(sorted(matched.items()))}

    return run_stage(data, folder, decide, details=details)
