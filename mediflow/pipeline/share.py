"""``--shard K/N``: the deterministic K-th of N shares of a plan, for schedulers without Ray.

A share is a filter on the plan, never a second plan: every run of a sharded job builds the same
full plan and keeps the instruction groups whose key hashes to its share. The unit is the
instruction group (not the item) so that an instruction reused by several documents is written
once, in one share, exactly as in the unsharded run. Kept items keep their full-plan positions, so
each share's shard files cover the same plan ranges as the unsharded run's and
``mediflow join`` (:mod:`mediflow.pipeline.join`) can interleave them back into the unsharded run's
records, in its order.

The hash is of the group's content key (BLAKE2b), so a share does not depend on the order the
plan is produced in, and the N shares of a plan are disjoint and cover it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from mediflow.errors import ConfigError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class Keyed(Protocol):
    """What a share selects by: an instruction group's content key (:class:`~mediflow.pipeline.plan.InstructionGroup`)."""

    @property
    def key(self) -> str: ...


Group = TypeVar("Group", bound=Keyed)


@dataclass(frozen=True)
class Share:
    """Share ``index`` of ``count``, counted from 1 (a Kubernetes indexed Job passes ``JOB_COMPLETION_INDEX + 1``)."""

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Share:
        """``"K/N"`` with 1 <= K <= N; a malformed spec is one ConfigError line."""
        match = _SPEC.match(str(spec))
        if not match:
            raise ConfigError(f"shard: {spec!r} is not K/N (e.g. 2/8: the second of eight shares)")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 1 <= index <= count:
            raise ConfigError(f"shard: {spec!r} needs 1 <= K <= N (shares are counted from 1)")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, group_key: str) -> bool:
        """Whether the instruction group with content key ``group_key`` belongs to this share."""
        digest = hashlib.blake2b(group_key.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index - 1

    def select(self, groups: Iterable[Group]) -> Iterator[Group]:
        """The groups of this share, in plan order (positions unchanged)."""
        return (group for group in groups if self.holds(group.key))
