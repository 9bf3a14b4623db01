"""Recall on misspelled copies, split by what the misspelling wrote: another real word, or a non-word.

Spelling correction tells two kinds of error apart (Kukich, 1992): a *non-word* error ("woman" ->
"wonem", "no" -> "nk") writes no word of the language, so it can only be a word garbled; a
*real-word* error writes another word ("fever" -> "favorite", "mass" -> "mess", "mg" -> "g",
"she" -> "he"), which a reader tells from a changed fact only by meaning. nlpaug's and AugLy's
misspelling lists hold both. This splits every planted copy of a set that ``benchmarks/dedup.py``
has measured by the words the copy writes that its original does not: a copy is *real-word* when
one of them (two letters or more; single letters are dictionary entries as letters) is a word of
pyspellchecker's English dictionary (a third-party word list, the ``bench`` extra), otherwise
*non-word*. It prints, per kind of copy, the copies and the share merged with their original in
each class, from the ``dedup-out`` the last measure run left in the set's folder.

    python benchmarks/dedup_real_words.py /tmp/mediflow-dedup-bench-noise/n100000-dup0.1-seed13-augly
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from dedup_set import COPY_KINDS, KINDS

_WORD = re.compile(r"[a-z]+")


def _words(text: str) -> Counter[str]:
    return Counter(_WORD.findall(text.lower()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a set folder of benchmarks/dedup.py after a measure run (records.parquet, clusters.npy, kinds.npy, dedup-out/)")
    args = parser.parse_args()
    from spellchecker import SpellChecker

    dictionary = SpellChecker()
    table = pq.read_table(args.folder / "records.parquet", columns=["id", "instruction", "input"])
    truth, kinds = np.load(args.folder / "clusters.npy"), np.load(args.folder / "kinds.npy")
    row_of = {record_id: row for row, record_id in enumerate(table.column("id").to_pylist())}
    keeper = np.arange(len(truth))
    for reject in pq.read_table(args.folder / "dedup-out" / "rejects.parquet", columns=["id", "match"]).to_pylist():
        keeper[row_of[reject["id"]]] = row_of[reject["match"]]
    copy_kinds = [KINDS.index(kind) for kind in COPY_KINDS]
    is_copy = np.isin(kinds, copy_kinds)
    original = np.empty(int(truth.max()) + 1, np.int64)
    original[truth[~is_copy]] = np.flatnonzero(~is_copy)
    texts = [f"{instruction}\n{document}" for instruction, document in zip(table.column("instruction").to_pylist(), table.column("input").to_pylist())]
    counts: dict[str, dict[str, list[int]]] = {}
    for copy in np.flatnonzero(is_copy).tolist():
        source = int(original[truth[copy]])
        written = _words(texts[copy]) - _words(texts[source])
        real = [word for word in written if len(word) >= 2 and dictionary.known([word])]
        found = keeper[copy] == keeper[source]
        cell = counts.setdefault(KINDS[kinds[copy]], {"non-word": [0, 0], "real-word": [0, 0]})["real-word" if real else "non-word"]
        cell[0] += 1
        cell[1] += int(found)
    print("| kind of copy | non-word copies | recall | real-word copies | recall |")
    print("|---|---:|---:|---:|---:|")
    for kind, cells in counts.items():
        (non, non_found), (real, real_found) = cells["non-word"], cells["real-word"]
        print(f"| {kind} | {non:,} | {non_found / non if non else float('nan'):.4f} | {real:,} | {real_found / real if real else float('nan'):.4f} |")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
