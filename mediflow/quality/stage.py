"""The one loop every quality stage runs: read batches, decide, write kept and rejected, report.

A stage only supplies ``decide(batch, offset) -> (batch, Drops)`` (a coroutine for
:func:`run_stage_async`, the judge's): which rows of the batch to drop
and, for each drop, the rule, score, reason and match. Opening the input (:func:`open_input`),
guarding and locking the output folder (:class:`OutputFolder`), staged publication
(:class:`StagedWriter`) and counting are the same for all stages, so every stage's output folder
and manifest look alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
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
AsyncDecide = Callable[[pa.Table, int], Awaitable[tuple[pa.Table, Drops]]]


def open_stage(source: Path | InputData, out: Path, stage: str, config: dict[str, Any], *, overwrite: bool = False, other_inputs: Iterable[Path] = ()) -> tuple[InputData, OutputFolder]:
    """Check the input and open (guard, lock) the output folder, before any work or teacher call."""
    data = source if isinstance(source, InputData) else open_input(source)
    folder = OutputFolder.open(out, kind=stage, config=config, inputs=[data.ref()], input_paths=other_inputs, overwrite=overwrite)
    return data, folder


class _StageWrite:
    """The loop's bookkeeping, the same for a sync and an async ``decide``: counts, kept and rejected rows, publication."""

    def __init__(self, data: InputData, folder: OutputFolder) -> None:
        self.data = data
        self.folder = folder
        self.stage = folder.manifest.kind
        self.report = StageReport(self.stage)
        self.writer = StagedWriter(folder)
        self.schema: pa.Schema | None = None
        self.offset = 0

    def batches(self) -> Iterator[pa.Table]:
        for batch in self.data.iter_batches():
            self.report.count_in(batch)
            yield batch

    def add(self, batch: pa.Table, drops: Drops) -> None:
        self.offset += batch.num_rows
        self.schema = batch.schema
        kept = batch.filter(pa.array(~drops.mask))
        self.writer.keep(kept)
        self.report.count_kept(kept)
        if drops.mask.any():
            rejects = reject_table(batch.filter(pa.array(drops.mask)), self.stage, drops.rule, drops.score, drops.reason, drops.match)
            self.writer.reject(rejects)
            self.report.count_dropped(rejects)

    def publish(self, details: Callable[[], dict[str, Any]] | None) -> StageReport:
        report = self.report
        if details is not None:
            report.details.update(details())
        counts = {"in": report.records_in, "kept": report.kept, "rejected": report.dropped}
        schema = self.schema if self.schema is not None else self.data.schema()
        self.writer.publish(schema, counts, {"stage": self.stage, "input": str(self.data.path), "report": report.as_dict()})
        return report


@contextmanager
def _writing(data: InputData, folder: OutputFolder) -> Iterator[_StageWrite]:
    with folder:
        stage = _StageWrite(data, folder)
        try:
            yield stage
        except BaseException:
            stage.writer.abandon()
            raise


def run_stage(data: InputData, folder: OutputFolder, decide: Decide, details: Callable[[], dict[str, Any]] | None = None) -> StageReport:
    """Run ``decide`` over ``data`` batch by batch and publish ``folder``; returns the stage's report."""
    with _writing(data, folder) as stage:
        for batch in stage.batches():
            stage.add(*decide(batch, stage.offset))
        return stage.publish(details)


async def run_stage_async(data: InputData, folder: OutputFolder, decide: AsyncDecide, details: Callable[[], dict[str, Any]] | None = None) -> StageReport:
    """:func:`run_stage` with a coroutine ``decide`` (the judge's: it waits on the teacher), in the caller's event loop."""
    with _writing(data, folder) as stage:
        for batch in stage.batches():
            stage.add(*await decide(batch, stage.offset))
        return stage.publish(details)
