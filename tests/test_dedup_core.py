"""Dedup core: planted near-duplicates found, distinct-but-similar texts kept, order independent."""

import random

import numpy as np
import pyarrow as pa

from mediflow.quality.config import DedupConfig
from mediflow.quality.dedup import find_duplicates

BASE = (
    "Summarize this discharge summary.",
    "The patient is a 67-year-old man admitted with community-acquired pneumonia. Chest X-ray showed a right lower lobe "
    "consolidation. He was treated with ceftriaxone and azithromycin and improved. Creatinine was 1.1 on discharge. "
    "Follow up with the primary care physician in one week with a repeat chest X-ray.",
)
DISTINCT = (
    "Summarize this discharge summary.",
    "The patient is a 45-year-old woman admitted with acute pancreatitis. CT of the abdomen showed peripancreatic "
    "fat stranding. She was treated with fluids and analgesia and improved. Lipase was 900 on admission. "
    "Follow up with gastroenterology in two weeks with a repeat lipase.",
)


def _table(order):
    rows = [
        ("a", *BASE),
        ("b", BASE[0], BASE[1].replace("improved", "got better")),  # paraphrase-level edit
        ("c", BASE[0], ". ".join(reversed(BASE[1].split(". ")))),  # reordered sentences
        ("d", *DISTINCT),  # same template, different findings
    ]
    rows = [rows[i] for i in order]
    return pa.table({"id": [r[0] for r in rows], "instruction": [r[1] for r in rows], "input": [r[2] for r in rows], "task_type": ["summary"] * 4})


def test_near_duplicates_clustered_and_order_independent():
    kept_sets = set()
    for seed in range(4):
        order = list(range(4))
        random.Random(seed).shuffle(order)
        table = _table(order)
        result = find_duplicates(table, DedupConfig())
        ids = table.column("id").to_pylist()
        kept_sets.add(frozenset(i for i, drop in zip(ids, result.drop) if not drop))
    assert kept_sets == {frozenset({"a", "d"})}


def test_chunked_hashing_gives_the_same_clusters():
    """Texts are normalised, hashed and signed chunk by chunk, in this process or in forked ones; neither the chunk size nor the
    number of workers may change any result."""
    table = _table([2, 0, 3, 1])
    whole = find_duplicates(table, DedupConfig(scope="within_task", workers=1))
    for chunk_records, workers in ((1, 1), (3, 1), (1, 2), (3, 2), (1, 3)):
        chunked = find_duplicates(table, DedupConfig(scope="within_task", chunk_records=chunk_records, workers=workers))
        assert np.array_equal(chunked.keeper, whole.keeper)
        assert np.array_equal(chunked.similarity, whole.similarity, equal_nan=True)
        assert chunked.rule == whole.rule and chunked.details == whole.details
