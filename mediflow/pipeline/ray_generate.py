"""``generate`` on Ray: actors run blocks of the plan through the same :class:`GroupFlow` as a local run and write its shards.

The plan itself is the dataset: a block is the groups whose first item falls in one shard range
(:meth:`Plan.blocks`), handed to an actor as a cursor into the plan's enumeration (a few kB), never
as a list of items; the driver holds the blocks' cursors and the shards' bookkeeping only.

An actor runs its block's groups (an instruction reused by several documents is written once, by
one actor) and commits what it made: a shard range it made whole goes straight to ``data/`` as the
local run writes it; the part of a range that a group starting in the block before also fills (a
group's items may run past its range's end) is written as a *piece*, ``.parts/pieces/block-<b>/``,
laid out like a run folder. The driver joins a range's pieces into its shard the moment they are
all in (:func:`~mediflow.pipeline.output.interleave_range`, one range in memory at a time). Every
request is built from the plan item and the config alone, so the records are the local engine's,
whichever actor made them; a kill keeps every shard already committed, and a rerun runs only the
blocks that touch a range still missing (their answers come from the cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mediflow.config import TEACHER_ROLE, RunConfig
from mediflow.engine import Engine
from mediflow.pipeline.collect import ShardCollector, shard_summary, write_range
from mediflow.pipeline.flow import GroupFlow
from mediflow.pipeline.output import RunOutput, interleave_range
from mediflow.pipeline.plan import InstructionGroup, Plan, PlanCursor, build_plan
from mediflow.pipeline.share import Share
from mediflow.pipeline.stages import Stages
from mediflow.steps import map_ordered, open_engine
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers.negotiation import capabilities_by_role

if TYPE_CHECKING:
    from mediflow.scale.ray_runner import ActorSession

#: Where actors write the part of a shard range they share with another block: ``.parts/pieces/block-<b>/``.
PIECES_DIR = "pieces"


def absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with every path it holds made absolute (output folder, taxonomy, prompts): an actor's
    working folder is its node's, not the driver's, so a relative path would name another folder there."""

    def absolute(path: str | None) -> str | None:
        return None if path is None else os.path.abspath(path)

    output = dataclasses.replace(config.output, dir=os.path.abspath(config.output.dir))
    return dataclasses.replace(config, output=output, taxonomy=absolute(config.taxonomy), prompts=absolute(config.prompts))


@dataclass(frozen=True)
class BlockUnit:
    """One block as an actor gets it: where its groups start in the plan, where they end, and its shard ranges' state."""

    index: int
    cursor: PlanCursor
    end: int
    #: Per shard range the block touches: the items the range holds in this run (all blocks together).
    expected: Mapping[int, int]
    #: Ranges committed by an earlier run: their items are not made again.
    finished: frozenset[int]


@dataclass(frozen=True)
class BlockDone:
    """What an actor hands back for a block: its counts only (the rows are on disk)."""

    index: int
    items: int
    shards: tuple[int, ...]  # ranges it committed itself
    pieces: Mapping[int, int]  # range -> items of it in this block's piece


def pieces_root(out: Path) -> Path:
    return RunOutput(out).parts_dir / PIECES_DIR


def piece_folder(out: Path, block: int) -> Path:
    return pieces_root(out) / f"block-{block:05d}"


class _BlockRows:
    """The collector an actor's flow writes to: the finished items of one block, by plan position."""

    def __init__(self, shard_size: int, finished: Collection[int]) -> None:
        self.shard_size = shard_size
        self.finished = finished
        self.rows: dict[int, tuple[str, dict[str, Any]]] = {}

    def is_finished(self, position: int) -> bool:
        return position // self.shard_size in self.finished

    def add(self, position: int, kind: str, row: dict[str, Any]) -> None:
        self.rows[position] = (kind, row)


@dataclass(frozen=True)
class BlockWork:
    """What every actor needs to run blocks: the run config (paths absolute, see :func:`absolute_paths`) and its start time."""

    config: RunConfig
    created_at: datetime

    @contextlib.asynccontextmanager
    async def open(self, actor: ActorSession) -> AsyncIterator[_BlockWorker]:
        config = self.config
        taxonomy = load_taxonomy(Path(config.taxonomy) if config.taxonomy else None)
        plan = build_plan(config, taxonomy)  # the per-cell counts only: blocks enumerate it from their cursors
        output = RunOutput(config.output.dir, for_driver=True)
        async with open_engine(config.teacher, output.cache_path, config.limits, prices=config.prices, share=actor) as engine:
            stages = Stages(engine, taxonomy, config)
            in_flight = config.records_in_flight or 2 * config.limits.concurrency
            workers = max(1, math.ceil(in_flight / actor.context.actors / config.documents_per_instruction))
            yield _BlockWorker(self, plan, stages, engine, output, workers)


class _BlockWorker:
    def __init__(self, work: BlockWork, plan: Plan, stages: Stages, engine: Engine, output: RunOutput, workers: int) -> None:
        self.work = work
        self.plan = plan
        self.stages = stages
        self.engine = engine
        self.output = output
        self.workers = workers
        config = work.config
        self.share = Share.parse(config.shard) if config.shard else None

    def _groups(self, block: BlockUnit) -> Iterator[InstructionGroup]:
        for group in self.plan.groups(block.cursor):
            if group.items[0].position >= block.end:
                return
            if self.share is None or self.share.holds(group.key):
                yield group

    async def run(self, block: BlockUnit) -> BlockDone:
        config = self.work.config
        size = config.output.shard_size
        rows = _BlockRows(size, block.finished)
        flow = GroupFlow(self.stages, rows, config, teacher=self.engine.teacher.name, created_at=self.work.created_at, cost_of=self.engine.cost_usd)
        todo = (group for group in self._groups(block) if flow.pending(group))
        async for _ in map_ordered(flow.run, todo, self.workers):
            pass
        await self.engine.flush()  # the answers behind a shard are on disk before the shard is
        by_range: dict[int, dict[int, tuple[str, dict[str, Any]]]] = defaultdict(dict)
        for position, item in rows.rows.items():
            by_range[position // size][position] = item
        shards, pieces = [], {}
        for index, items in sorted(by_range.items()):
            whole = len(items) == block.expected.get(index, -1)
            target = self.output if whole else RunOutput(piece_folder(self.output.root, block.index), for_driver=True)
            write_range(target, index, items)
            if whole:
                shards.append(index)
            else:
                pieces[index] = len(items)
        return BlockDone(block.index, len(rows.rows), tuple(shards), pieces)

    def stats(self) -> dict[str, Any]:
        """The engine's running totals, and what this actor's teacher negotiated with the server."""
        return {**self.engine.stats.as_dict(), "teacher_capabilities": capabilities_by_role({TEACHER_ROLE: self.engine.teacher})}


@dataclass
class BlockPlan:
    """The driver's side: which blocks to run, and the pieces still waiting for their range to be whole."""

    collector: ShardCollector
    units: list[BlockUnit]
    waiting: dict[int, int] = field(default_factory=dict)  # range -> items in pieces so far
    blocks_of: dict[int, list[int]] = field(default_factory=dict)  # range -> blocks with a piece of it

    @classmethod
    def of(cls, plan: Plan, collector: ShardCollector, out: Path) -> BlockPlan:
        """The blocks touching a range not committed yet (one pass over the plan's chunk order); a killed run's pieces are dropped."""
        shutil.rmtree(pieces_root(out), ignore_errors=True)  # what they held is in the cache: the blocks make it again for free
        size = collector.shard_size
        units = []
        for block in plan.blocks(size):
            ranges = range(block.cursor.position // size, (block.end - 1) // size + 1)
            expected = {index: collector.expected(index) for index in ranges}
            if any(index not in collector.finished and expected[index] for index in ranges):
                units.append(BlockUnit(block.index, block.cursor, block.end, expected, frozenset(index for index in ranges if index in collector.finished)))
        return cls(collector, units)

    def done(self, block: BlockDone, created_at: datetime) -> None:
        """Take in a block's report: shards it committed, pieces that make a range whole (joined into its shard here)."""
        self.collector.finished.update(block.shards)
        out = self.collector.output.root
        for index, items in block.pieces.items():
            self.waiting[index] = self.waiting.get(index, 0) + items
            self.blocks_of.setdefault(index, []).append(block.index)
            if self.waiting[index] == self.collector.expected(index):
                parts = [RunOutput(piece_folder(out, number)) for number in self.blocks_of.pop(index)]
                records, rejects, positions = interleave_range(parts, index, created_at)
                self.collector.output.write_shard(index, records, rejects, shard_summary(index, records, rejects, positions))
                self.collector.finished.add(index)
                del self.waiting[index]
                for part in parts:
                    _remove_range(part, index)

    def finish(self) -> None:
        """After the last block: no piece may be left over (every range's pieces were joined)."""
        if self.waiting:
            index = min(self.waiting)
            raise RuntimeError(f"shard range {index}: {self.waiting[index]} of {self.collector.expected(index)} items came back")
        shutil.rmtree(pieces_root(self.collector.output.root), ignore_errors=True)


def _remove_range(part: RunOutput, index: int) -> None:
    for path in (part.shard_path(index), part.parts_dir / f"rejects-{index:05d}.parquet", part.parts_dir / f"summary-{index:05d}.json"):
        path.unlink(missing_ok=True)


def drive_blocks(results: Iterator[tuple[int, BlockDone]], blocks: BlockPlan, created_at: datetime, on_items_done: Callable[[int], None]) -> None:
    """The driver's loop: every block's report in, shards joined from pieces as their ranges complete."""
    for _, done in results:
        blocks.done(done, created_at)
        on_items_done(done.items)
    blocks.finish()
