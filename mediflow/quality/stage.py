"""The one loop every quality stage runs: read batches, decide, write kept and rejected, report.

A stage only supplies ``decide(batch, offset) -> (batch, Drops)``: which rows of the batch to drop
and, for each drop, the rule, score, reason and match. Reading, writing, atomic publication and
counting are the same for all stages, so every stage's output folder and manifest look alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mediflow import __version__
from mediflow.quality.io import StageOutput, empty_input_schema, iter_batches, reject_table
from mediflow.quality.report import StageReport


@dataclass
class Drops:
    """Which rows of a batch to drop, and why (lists aligned with the dropped rows, in row order)."""

    mask: np.ndarray
    rule: list[str] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    match: list[str | None] = field(default_factory=list)

    @classmethod
    def none(cls, rows: int) -> Drops:
        return cls(mask=np.zeros(rows, dtype=bool))


Decide = Callable[[pa.Table, int], tuple[pa.Table, Drops]]


def run_stage(
    source: Path,
    out: Path,
    stage: str,
    decide: Decide,
    config: dict[str, Any],
    details: Callable[[], dict[str, Any]] | None = None,
) -> StageReport:
    """Run ``decide`` over ``source`` batch by batch and publish ``out``; returns the stage's report."""
    report = StageReport(stage)
    output = StageOutput(out, source)
    schema: pa.Schema | None = None
    try:
        offset = 0
        for batch in iter_batches(source):
            report.count_in(batch)
            batch, drops = decide(batch, offset)
            offset += batch.num_rows
            schema = batch.schema
            kept = batch.filter(pa.array(~drops.mask))
            output.keep(kept)
            report.count_kept(kept)
            if drops.mask.any():
                rejects = reject_table(batch.filter(pa.array(drops.mask)), stage, drops.rule, drops.score, drops.reason, drops.match)
                output.reject(rejects)
                report.count_dropped(rejects)
        if details is not None:
            report.details.update(details())
        manifest = {
            "stage": stage,
            "mediflow_version": __version__,
            "input": str(source),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": config,
            "report": report.as_dict(),
        }
        output.finish(manifest, schema if schema is not None else empty_input_schema(source))
    except BaseException:
        output.abandon()
        raise
    return report
