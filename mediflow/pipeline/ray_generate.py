"""``generate`` on Ray: each actor runs instruction groups through the same :class:`GroupFlow` as a local run.

The unit of work is the instruction group (an instruction reused by several documents is written
once, by one actor). An actor's flow hands its finished items to a :class:`_GroupRows` instead of
the run's collector; the rows travel back to the driver, whose :class:`ShardCollector` commits
them as the same shards a local run writes. Every request is built from the plan item and the
config alone, so the records are the local engine's, whichever actor made them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mediflow.config import TEACHER_ROLE, RunConfig
from mediflow.pipeline.flow import GroupFlow
from mediflow.pipeline.output import RunOutput
from mediflow.pipeline.plan import InstructionGroup
from mediflow.pipeline.stages import Stages
from mediflow.steps import open_engine
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers.negotiation import capabilities_by_role

#: One finished item as it travels back to the driver: (plan position, "record" | "reject", row).
ItemRow = tuple[int, str, dict[str, Any]]


class _GroupRows:
    """The collector an actor's flow writes to: it keeps each finished item's row until its group is sent back."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, dict[str, Any]]] = {}

    def is_finished(self, position: int) -> bool:
        return False  # the driver only sends groups with work left, and drops rows of committed shards

    def add(self, position: int, kind: str, row: dict[str, Any]) -> None:
        self.rows[position] = (kind, row)


@dataclass(frozen=True)
class GenerateWork:
    """What every actor needs to run groups: the run config, its start time and the actor count."""

    config: RunConfig
    created_at: datetime
    actors: int

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[_GroupWorker]:

        config = self.config
        taxonomy = load_taxonomy(Path(config.taxonomy) if config.taxonomy else None)
        cache = RunOutput(config.output.dir).cache_path
        async with open_engine(config.teacher, cache, config.limits, prices=config.prices, actors=self.actors) as engine:
            stages = Stages(engine, taxonomy, config)
            rows = _GroupRows()
            flow = GroupFlow(stages, rows, config, teacher=engine.teacher.name, created_at=self.created_at, cost_of=engine.cost_usd)
            yield _GroupWorker(flow, rows, engine, engine.teacher)


class _GroupWorker:
    def __init__(self, flow: Any, rows: _GroupRows, engine: Any, teacher: Any) -> None:
        self.flow = flow
        self.rows = rows
        self.engine = engine
        self.teacher = teacher

    async def run(self, group: InstructionGroup) -> list[ItemRow]:
        await self.flow.run(group)
        return [(item.position, *self.rows.rows.pop(item.position)) for item in group.items if item.position in self.rows.rows]

    def stats(self) -> dict[str, Any]:
        """The engine's running totals, and what this actor's teacher negotiated with the server."""
        return {**self.engine.stats.as_dict(), "teacher_capabilities": capabilities_by_role({TEACHER_ROLE: self.teacher})}
