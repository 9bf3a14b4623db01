"""The one loop every quality stage runs: read batches, decide, write kept and rejected, report.

A stage only supplies ``decide(batch, offset) -> (batch, Drops)``: which rows of the batch to drop
and, for each drop, the rule, score, reason and match. Opening the input (:func:`open_input`),
guarding and locking the output folder (:class:`OutputFolder`), staged publication
(:class:`StagedWriter`) and counting are the same for all stages, so every stage's output folder
and manifest look alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mediflow.folders import InputData, OutputFolder, StagedWriter, open_input, reject_table
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


def open_stage(
    source: Path | InputData, out: Path, stage: str, config: dict[str, Any], *, overwrite: bool = False, other_inputs: Iterable[Path] = ()
) -> tuple[InputData, OutputFolder]:
    """Check the input and open (guard, lock) the output folder, before any work or teacher call."""
    data = source if isinstance(source, InputData) else open_input(source)
    folder = OutputFolder.open(out, kind=stage, config=config, inputs=[data.ref()], input_paths=other_inputs, overwrite=overwrite)
    return data, folder


def run_stage(
    data: InputData,
    folder: OutputFolder,
    decide: Decide,
    details: Callable[[], dict[str, Any]] | None = None,
) -> StageReport:
    """Run ``decide`` over ``data`` batch by batch and publish ``folder``; returns the stage's report."""
    stage = folder.manifest.kind
    report = StageReport(stage)
    with folder:
        writer = StagedWriter(folder)
        schema: pa.Schema | None = None
        try:
            offset = 0
            for batch in data.iter_batches():
                report.count_in(batch)
                batch, drops = decide(batch, offset)
                offset += batch.num_rows
                schema = batch.schema
                kept = batch.filter(pa.array(~drops.mask))
                writer.keep(kept)
                report.count_kept(kept)
                if drops.mask.any():
                    rejects = reject_table(batch.filter(pa.array(drops.mask)), stage, drops.rule, drops.score, drops.reason, drops.match)
                    writer.reject(rejects)
                    report.count_dropped(rejects)
            if details is not None:
                report.details.update(details())
            counts = {"in": report.records_in, "kept": report.kept, "rejected": report.dropped}
            writer.publish(schema if schema is not None else data.schema(), counts, {"stage": stage, "input": str(data.path), "report": report.as_dict()})
        except BaseException:
            writer.abandon()
            raise
    return report
