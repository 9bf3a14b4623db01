"""The plan of a run: which records to make, stratified over the taxonomy's cells and seeded.

A *stratum* is a compatible (task, document type) pair of the taxonomy at one difficulty level;
each gets ``per_cell`` x the level's ``weight`` records (the taxonomy weights the three hardest
levels 1.5, as the paper emphasises them), split between the output formats by ``json_share``.
Fractional counts are settled by a seeded coin per stratum, so the shares hold over the run in
expectation and every stratum is as even as its size allows. A *cell* is a stratum at one output
format.

Everything is derived from content, never from a position in a list: an item's seed (hence its
teacher calls' cache keys) is a hash of the run seed and the item's (task, document type, difficulty,
format, index). Adding a task to a config therefore leaves the cache keys of every existing item
unchanged, and the same config always gives the same plan.

Instruction reuse (the released set has ~700k instructions over 2.5M rows): the items of one
(task, difficulty, format) are sorted by document category and type, then cut into groups of
``documents_per_instruction``; one instruction is written per group, for its first document and
the group's document types, and reused for every document of the group. Groups are then put in a
seeded order, so that any prefix of the plan (``max_records``, or a run stopped early) is a
stratified sample rather than the first task only.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mediflow.config import RunConfig
from mediflow.errors import ConfigError
from mediflow.records import content_id


@dataclass(frozen=True)
class PlanItem:
    """One record to make."""

    task: str
    document_type: str
    difficulty: str
    output_format: str
    index: int  # index within its cell: the teacher calls' sample index
    seed: int  # derived from content: the teacher calls' seed and the seed facts' RNG seed
    position: int = -1  # place in the plan (which shard the record goes to)

    @property
    def cell(self) -> str:
        """The cell's name, as counted in the manifest."""
        return f"{self.task}/{self.document_type}/{self.difficulty}/{self.output_format}"


@dataclass(frozen=True)
class InstructionGroup:
    """Items that share one instruction: same task, difficulty and format, compatible document types."""

    key: str
    task: str
    difficulty: str
    output_format: str
    items: tuple[PlanItem, ...]
    document_types: tuple[str, ...]  # the distinct types of the whole group: the instruction must fit them all


@dataclass(frozen=True)
class Plan:
    """The groups of a run, in order; ``id`` changes whenever any record to make changes."""

    groups: tuple[InstructionGroup, ...]
    id: str

    @property
    def items(self) -> list[PlanItem]:
        """Every item in plan order."""
        return [item for group in self.groups for item in group.items]

    def __len__(self) -> int:
        return sum(len(group.items) for group in self.groups)


def _seed_of(*parts: object) -> int:
    """A 48-bit number derived from content (BLAKE2b of the parts; names hold no unit separator)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=6).digest()
    return int.from_bytes(digest, "big")


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) derived from content."""
    return _seed_of(*parts) / float(2**48)


def _check_names(key: str, wanted: Sequence[str] | None, known: Iterable[str]) -> list[str]:
    known = list(known)
    if wanted is None:
        return known
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{key}: unknown name '{name}'; {hint}known: {', '.join(known)}")
    return list(dict.fromkeys(wanted))


def _seeded_round(value: float, *key: object) -> int:
    """``value`` rounded down or up, up with probability equal to its fractional part (a seeded coin)."""
    whole = math.floor(value)
    return whole + (1 if _unit(*key) < value - whole else 0)


def _stratum_counts(config: RunConfig, stratum: tuple[str, str, str], weight: float) -> dict[str, int]:
    """Records per output format for one stratum: ``per_cell`` x the difficulty's weight, split by ``json_share``."""
    total = _seeded_round(config.per_cell * weight, config.seed, "count", *stratum)
    n_json = min(total, _seeded_round(total * config.json_share, config.seed, "json-share", *stratum))
    return {"json": n_json, "plain_text": total - n_json}


def build_plan(config: RunConfig, taxonomy: object) -> Plan:
    """The seeded, stratified plan of ``config`` over ``taxonomy`` (a :class:`mediflow.taxonomy.Taxonomy`)."""
    tasks = _check_names("tasks", config.tasks, taxonomy.tasks)
    document_types = _check_names("document_types", config.document_types, taxonomy.document_types)
    weights = {level.name: level.weight for level in taxonomy.difficulty_levels}
    difficulties = _check_names("difficulty_levels", config.difficulty_levels, weights)
    formats = [fmt for fmt in taxonomy.output_formats if fmt in ("plain_text", "json")]
    wanted_tasks, wanted_types = set(tasks), set(document_types)
    pairs = [(task, doc) for task, doc in taxonomy.cells() if task in wanted_tasks and doc in wanted_types]
    if not pairs:
        raise ConfigError(
            f"no compatible (task, document type) pair in tasks={config.tasks} x document_types={config.document_types}"
        )

    # Items are plain tuples (category, document type, index) until their position is known: the
    # plan of a 2.5M-record run is built in seconds.
    by_stream: dict[tuple[str, str, str], list[tuple[str, str, int]]] = defaultdict(list)
    for task, doc in pairs:
        category = taxonomy.document_types[doc].category
        for difficulty in difficulties:
            split = _stratum_counts(config, (task, doc, difficulty), weights[difficulty])
            for fmt in formats:
                by_stream[(task, difficulty, fmt)].extend((category, doc, index) for index in range(split.get(fmt, 0)))

    size = config.documents_per_instruction
    chunks: list[tuple[str, tuple[str, str, str], list[tuple[str, str, int]]]] = []
    for stream, members in by_stream.items():
        members.sort()
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            chunks.append((content_id(config.seed, *stream, [(doc, index) for _, doc, index in chunk]), stream, chunk))
    chunks.sort(key=lambda chunk: _seed_of(config.seed, "order", chunk[0]))

    groups: list[InstructionGroup] = []
    position = 0
    limit = config.max_records if config.max_records is not None else math.inf
    for key, (task, difficulty, fmt), chunk in chunks:
        if position >= limit:
            break
        items = []
        for _, doc, index in chunk[: int(min(len(chunk), limit - position))]:
            seed = _seed_of(config.seed, task, doc, difficulty, fmt, index) % (2**31)
            items.append(PlanItem(task, doc, difficulty, fmt, index, seed, position))
            position += 1
        types = tuple(dict.fromkeys(doc for _, doc, _ in chunk))
        groups.append(InstructionGroup(key, task, difficulty, fmt, tuple(items), types))
    plan_id = content_id([g.key for g in groups], [len(g.items) for g in groups], config.output.shard_size)
    return Plan(tuple(groups), plan_id)
