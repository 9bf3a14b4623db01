"""The plan of a run: which records to make, stratified over the taxonomy's cells, seeded, and lazy.

A *stratum* is a compatible (task, document type) pair of the taxonomy at one difficulty level;
each gets ``per_cell`` x the level's ``weight`` records (the taxonomy weights the three hardest
levels 1.5, as the paper emphasises them), split between the output formats by ``json_share``.
Fractional counts are settled by a seeded coin per stratum, so the shares hold over the run in
expectation and every stratum is as even as its size allows. A *cell* is a stratum at one output
format.

Everything is derived from content, never from a position in a list: an item's seed (hence its
teacher calls' cache keys and its clinical case) is a hash of the run seed and the item's (task,
document type, difficulty, format, index). Adding a task to a config therefore leaves the seed of
every existing item unchanged, and the same config always gives the same plan.

Instruction reuse (the released set has ~700k instructions over 2.5M rows): the items of one
*stream* (task, difficulty, format) are sorted by document category and type, then cut into
chunks of ``documents_per_instruction``; one instruction is written per chunk (an
:class:`InstructionGroup`), for its first document and the chunk's document types, and reused for
every document of the chunk.

The plan is never materialised. :func:`build_plan` keeps only the per-cell counts (a few thousand
integers, whatever ``per_cell`` is); :meth:`Plan.groups` enumerates the groups as a stream. The
order is stratified and seeded: streams are interleaved by a smooth weighted round robin (each
stream's k-th chunk is due at ``(k + offset) / chunks``, the offset a seeded number), and each
stream visits its chunks in a seeded golden-ratio stride permutation, so every prefix of the plan
(``max_records``, or a run stopped early) holds every stream and document category in proportion.
Enumerating ``max_records`` items costs those items only, and memory is bounded by the number of
streams, so a 2.5M-item plan costs what a 100-item plan costs (``benchmarks/plan.py``).
"""

from __future__ import annotations

import bisect
import difflib
import functools
import hashlib
import heapq
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, islice

from mediflow.config import RunConfig
from mediflow.errors import ConfigError
from mediflow.records import content_id
from mediflow.taxonomy import Taxonomy

#: 1/phi: the stride of the within-stream permutation spreads any prefix evenly over the stream.
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class PlanItem:
    """One record to make."""

    task: str
    document_type: str
    difficulty: str
    output_format: str
    index: int  # index within its cell: the teacher calls' sample index
    seed: int  # derived from content: the teacher calls' seed and the clinical case's RNG seed
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
    document_types: tuple[str, ...]  # the distinct types of the whole chunk: the instruction must fit them all


@dataclass(frozen=True)
class _Stream:
    """The items of one (task, difficulty, format), as sorted (category, document type, count) segments."""

    task: str
    difficulty: str
    output_format: str
    segments: tuple[tuple[str, str, int], ...]
    starts: tuple[int, ...]  # cumulative item offset of each segment
    size: int  # items in the stream

    def member(self, offset: int) -> tuple[str, int]:
        """The (document type, index within its cell) of the stream's ``offset``-th item in sorted order."""
        segment = bisect.bisect_right(self.starts, offset) - 1
        return self.segments[segment][1], offset - self.starts[segment]


class Plan:
    """The groups of a run, enumerated lazily in stratified seeded order; ``id`` changes whenever any record to make changes."""

    def __init__(self, streams: Sequence[_Stream], *, seed: int, chunk_size: int, limit: int | None, shard_size: int) -> None:
        self._streams = tuple(streams)
        self._seed = seed
        self._chunk_size = chunk_size
        self._limit = limit
        total = sum(stream.size for stream in self._streams)
        self._length = total if limit is None else min(total, limit)
        self.id = content_id(
            "plan-v2",
            seed,
            chunk_size,
            limit,
            shard_size,
            [(s.task, s.difficulty, s.output_format, s.segments) for s in self._streams],
        )

    def __len__(self) -> int:
        return self._length

    @property
    def group_count(self) -> int:
        """How many instruction groups (teacher calls for instructions) the plan holds."""
        if self._limit is None or self._length == sum(s.size for s in self._streams):
            return sum(-(-s.size // self._chunk_size) for s in self._streams)
        return sum(1 for _ in self.groups())

    def strata(self) -> Counter[tuple[str, str, str, str]]:
        """Items per cell (task, document type, difficulty, format) of the whole plan, ``max_records`` applied."""
        if self._length < sum(s.size for s in self._streams):
            return Counter((i.task, i.document_type, i.difficulty, i.output_format) for i in self.items())
        counts: Counter[tuple[str, str, str, str]] = Counter()
        for stream in self._streams:
            for _, document_type, count in stream.segments:
                counts[(stream.task, document_type, stream.difficulty, stream.output_format)] += count
        return counts

    def items(self) -> Iterator[PlanItem]:
        """Every item in plan order."""
        for group in self.groups():
            yield from group.items

    def sample(self, count: int) -> list[PlanItem]:
        """The first ``count`` items: a stratified sample of the plan."""
        return list(islice(self.items(), count))

    def groups(self, start: PlanCursor | None = None) -> Iterator[InstructionGroup]:
        """The instruction groups in plan order, positions assigned as they come; stops at ``max_records``.

        ``start``: resume the enumeration there (a :class:`PlanBlock`'s cursor) instead of at the beginning.
        """
        heap = list(start.heap) if start is not None else self._first_heap()
        position = start.position if start is not None else 0
        while heap and position < self._length:
            stream, chunk = self._next_chunk(heap)
            first = chunk * self._chunk_size
            members = [stream.member(offset) for offset in range(first, min(first + self._chunk_size, stream.size))]
            key = content_id(self._seed, stream.task, stream.difficulty, stream.output_format, members)
            items = []
            for document_type, index in members[: self._length - position]:
                item_seed = _seed_of(self._seed, stream.task, document_type, stream.difficulty, stream.output_format, index)
                items.append(PlanItem(stream.task, document_type, stream.difficulty, stream.output_format, index, item_seed % (2**31), position))
                position += 1
            types = tuple(dict.fromkeys(document_type for document_type, _ in members))
            yield InstructionGroup(key, stream.task, stream.difficulty, stream.output_format, tuple(items), types)

    def blocks(self, size: int) -> Iterator[PlanBlock]:
        """The plan cut into blocks of whole groups: block ``b`` holds the groups whose first item falls in ``[b*size, (b+1)*size)``
        (``engine: ray`` hands one to an actor per shard range). One pass over the chunk order, building no item."""
        heap = self._first_heap()
        position, block, cursor = 0, -1, PlanCursor((), 0)
        while heap and position < self._length:
            if position // size != block:
                if block >= 0:
                    yield PlanBlock(block, cursor, position)
                block, cursor = position // size, PlanCursor(tuple(heap), position)
            stream, chunk = self._next_chunk(heap)
            position += min(self._chunk_size, stream.size - chunk * self._chunk_size, self._length - position)
        if block >= 0:
            yield PlanBlock(block, cursor, position)

    def _first_heap(self) -> list[tuple[float, int, int]]:
        """The round robin's start: ``(due time, stream number, chunks already given)`` per stream."""
        heap = [(offset / chunks, number, 0) for number, (chunks, offset, _, _) in self._shapes.items()]
        heapq.heapify(heap)
        return heap

    def _next_chunk(self, heap: list[tuple[float, int, int]]) -> tuple[_Stream, int]:
        """The next (stream, chunk) of the order (streams interleaved by weighted round robin, chunks by a seeded
        stride permutation), taken off ``heap``."""
        _, number, given = heapq.heappop(heap)
        chunks, offset, shift, stride = self._shapes[number]
        if given + 1 < chunks:
            heapq.heappush(heap, ((given + 1 + offset) / chunks, number, given + 1))
        return self._streams[number], (shift + given * stride) % chunks

    @functools.cached_property
    def _shapes(self) -> dict[int, tuple[int, float, int, int]]:
        """Per stream number: (chunks, offset, shift, stride)."""
        shapes: dict[int, tuple[int, float, int, int]] = {}
        for number, stream in enumerate(self._streams):
            if stream.size:
                name = (stream.task, stream.difficulty, stream.output_format)
                chunks = -(-stream.size // self._chunk_size)
                shapes[number] = (chunks, _unit(self._seed, "offset", *name), _seed_of(self._seed, "shift", *name) % chunks, _stride(chunks))
        return shapes


@dataclass(frozen=True)
class PlanCursor:
    """A point of the plan's enumeration: the round robin's state there and the next item's position."""

    heap: tuple[tuple[float, int, int], ...]
    position: int


@dataclass(frozen=True)
class PlanBlock:
    """Whole groups of the plan: those starting in shard range ``index``; their items are ``[cursor.position, end)``."""

    index: int
    cursor: PlanCursor
    end: int


def _stride(size: int) -> int:
    """A step near ``size``/phi and coprime with ``size``: ``(shift + k * step) % size`` visits every chunk once, spread out."""
    stride = max(1, round(size * _GOLDEN))
    while math.gcd(stride, size) != 1:
        stride += 1
    return stride


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


def build_plan(config: RunConfig, taxonomy: Taxonomy) -> Plan:
    """The seeded, stratified plan of ``config`` over ``taxonomy`` (a :class:`mediflow.taxonomy.Taxonomy`).

    Only the per-cell counts are computed here; items are enumerated by :meth:`Plan.groups`.
    """
    tasks = _check_names("tasks", config.tasks, taxonomy.tasks)
    document_types = _check_names("document_types", config.document_types, taxonomy.document_types)
    weights = {level.name: level.weight for level in taxonomy.difficulty_levels}
    difficulties = _check_names("difficulty_levels", config.difficulty_levels, weights)
    formats = [fmt for fmt in taxonomy.output_formats if fmt in ("plain_text", "json")]
    wanted_tasks, wanted_types = set(tasks), set(document_types)
    pairs = [(task, doc) for task, doc in taxonomy.cells() if task in wanted_tasks and doc in wanted_types]
    if not pairs:
        raise ConfigError(f"no compatible (task, document type) pair in tasks={config.tasks} x document_types={config.document_types}")
    segments: dict[tuple[str, str, str], list[tuple[str, str, int]]] = {}
    for task, doc in pairs:
        category = taxonomy.document_types[doc].category
        for difficulty in difficulties:
            split = _stratum_counts(config, (task, doc, difficulty), weights[difficulty])
            for fmt in formats:
                if split.get(fmt, 0):
                    segments.setdefault((task, difficulty, fmt), []).append((category, doc, split[fmt]))
    streams = []
    for (task, difficulty, fmt), parts in sorted(segments.items()):
        parts.sort()
        starts = (0, *accumulate(count for _, _, count in parts))
        streams.append(_Stream(task, difficulty, fmt, tuple(parts), starts[:-1], starts[-1]))
    return Plan(
        streams,
        seed=config.seed,
        chunk_size=config.documents_per_instruction,
        limit=config.max_records,
        shard_size=config.output.shard_size,
    )
