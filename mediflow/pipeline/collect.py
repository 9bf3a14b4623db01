"""Gather finished items (in whatever order they finish) into shards of fixed plan ranges.

Records finish out of order: a slow request must not hold back the others. The collector keeps
each unfinished range's rows in memory and commits the range as one shard the moment its last item
finishes; memory is therefore bounded by the items in flight plus the ranges they span, whatever
the run's size. A range finished by an earlier run is never recomputed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any, Protocol

from mediflow.pipeline.output import RunOutput


class Collects(Protocol):
    """Where :class:`~mediflow.pipeline.flow.GroupFlow` hands finished items."""

    def is_finished(self, position: int) -> bool: ...

    def add(self, position: int, kind: str, row: dict[str, Any]) -> None: ...


class PassCollector:
    """A batch-mode pass's collector (:mod:`mediflow.batch.runner`): it knows the committed shards and
    keeps nothing, since a pass only collects the requests still missing and writes no record."""

    def __init__(self, collector: ShardCollector) -> None:
        self._collector = collector

    def is_finished(self, position: int) -> bool:
        return self._collector.is_finished(position)

    def add(self, position: int, kind: str, row: dict[str, Any]) -> None:
        """Dropped: the last pass, which runs online from the full cache, makes the records."""


class ShardCollector:
    """Commits the plan range ``[i*S, (i+1)*S)`` as ``data/part-i`` once all of its items are in.

    A run making one share of the plan (:mod:`mediflow.pipeline.share`) gives ``share_counts``, its
    items per range: its ranges then hold only its items, and commit when those are in.
    """

    def __init__(self, output: RunOutput, plan_size: int, shard_size: int, finished: set[int], share_counts: Mapping[int, int] | None = None) -> None:
        self.output = output
        self.plan_size = plan_size
        self.shard_size = shard_size
        self.finished = set(finished)
        self.share_counts = share_counts
        self._pending: dict[int, dict[int, tuple[str, dict[str, Any]]]] = defaultdict(dict)

    @property
    def shard_count(self) -> int:
        return -(-self.plan_size // self.shard_size)

    @property
    def finished_items(self) -> int:
        """How many of this run's plan items the committed shards cover."""
        return sum(self.expected(shard) for shard in self.finished if shard < self.shard_count)

    def expected(self, shard: int) -> int:
        """How many of this run's items plan range ``shard`` holds."""
        if self.share_counts is not None:
            return self.share_counts.get(shard, 0)
        return min(self.shard_size, self.plan_size - shard * self.shard_size)

    def is_finished(self, position: int) -> bool:
        """Whether the item at ``position`` is already in a committed shard."""
        return position // self.shard_size in self.finished

    def add(self, position: int, kind: str, row: dict[str, Any]) -> None:
        """Hand in one finished item (``kind`` is ``record`` or ``reject``); commits its shard when complete."""
        shard = position // self.shard_size
        if shard in self.finished:
            return
        bucket = self._pending[shard]
        bucket[position] = (kind, row)
        if len(bucket) == self.expected(shard):
            self._commit(shard, bucket)

    def _commit(self, shard: int, bucket: dict[int, tuple[str, dict[str, Any]]]) -> None:
        write_range(self.output, shard, bucket)
        self.finished.add(shard)
        del self._pending[shard]


def write_range(output: RunOutput, shard: int, items: Mapping[int, tuple[str, dict[str, Any]]]) -> None:
    """Commit plan range ``shard`` of ``output`` from its finished items (plan position -> (kind, row)), in plan order."""
    ordered = sorted(items.items())
    rows = [row for _, (kind, row) in ordered if kind == "record"]
    rejects = [row for _, (kind, row) in ordered if kind == "reject"]
    positions = {kind: [position for position, (k, _) in ordered if k == kind] for kind in ("record", "reject")}
    output.write_shard(shard, rows, rejects, shard_summary(shard, rows, rejects, positions))


def shard_summary(shard: int, rows: list[dict[str, Any]], rejects: list[dict[str, Any]], positions: dict[str, list[int]]) -> dict[str, Any]:
    """What one shard holds; ``positions`` (plan positions of its records and rejects, in file order) let ``join`` interleave shares."""
    cells: dict[str, Counter[str]] = defaultdict(Counter)
    usage: Counter[str] = Counter()
    cost: float | None = None
    for kind, group in (("records", rows), ("rejects", rejects)):
        for row in group:
            cell = row.get("cell") or "/".join((row["task_type"], row["input_data"], row["difficulty_level"], row["output_format"]))
            cells[cell][kind] += 1
            usage["prompt_tokens"] += row["usage"]["prompt_tokens"]
            usage["completion_tokens"] += row["usage"]["completion_tokens"]
            if row["usage"]["cost_usd"] is not None:
                cost = (cost or 0.0) + row["usage"]["cost_usd"]
    failures = Counter(f"{row['stage']}: {row['reason']}" for row in rejects)
    return {
        "shard": shard,
        "records": len(rows),
        "rejects": len(rejects),
        "cells": {cell: dict(counts) for cell, counts in sorted(cells.items())},
        "usage": {**usage, "cost_usd": cost},
        "failures": dict(failures),
        "positions": positions,
    }
