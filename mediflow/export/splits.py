"""Train / validation / test splits by document, stratified by task x document type, seeded.

Several records (tasks, instructions) share one synthetic document; a model that saw a document's
records in training would be scored on a memorised document if another of its records sat in the
test split. So the unit of the split is the document (``document_id``, or a hash of ``input`` for
records from elsewhere), never the record. Stratification: each document belongs to the stratum
(task, document type) of its most frequent record kind; documents are ordered stratum by stratum,
shuffled inside a stratum by a seeded hash, and dealt to the split whose share is most behind its
target. Every stratum then gets its proportional share (up to rounding) and the global proportions
are exact up to one document, for any seed and any input order.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from mediflow.errors import MediflowError
from mediflow.records import content_id

SPLITS: tuple[str, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitFractions:
    """Target shares of documents per split; they must sum to 1."""

    train: float = 0.9
    validation: float = 0.05
    test: float = 0.05

    def __post_init__(self) -> None:
        values = self.as_dict()
        if any(value < 0 for value in values.values()) or abs(sum(values.values()) - 1.0) > 1e-6:
            raise MediflowError(f"split fractions must be >= 0 and sum to 1, got {values}")

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def document_key(document_id: str | None, document: str | None) -> str:
    """The unit of the split: the record's document id, else a hash of its document text."""
    if document_id:
        return document_id
    return "input:" + content_id(document or "")


def assign_splits(documents: Iterable[tuple[str, str, str]], fractions: SplitFractions, seed: int) -> dict[str, str]:
    """Map each document key to a split. ``documents`` yields (document key, task, document type) per record."""
    kinds: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for key, task, document_type in documents:
        kinds[key][(task, document_type)] += 1
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key, counter in kinds.items():
        top = min(counter.items(), key=lambda item: (-item[1], item[0]))[0]  # most frequent, then alphabetical
        strata[top].append(key)
    targets = fractions.as_dict()
    dealt = Counter[str]()
    assignment: dict[str, str] = {}
    for stratum in sorted(strata):
        for key in sorted(strata[stratum], key=lambda k: _seeded_hash(seed, k)):
            total = sum(dealt.values()) + 1
            split = max(SPLITS, key=lambda s: (targets[s] * total - dealt[s], -SPLITS.index(s)))
            assignment[key] = split
            dealt[split] += 1
    return assignment


def _seeded_hash(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()
