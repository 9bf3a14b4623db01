"""The run's coordinator actor: the limits every engine actor draws from, and the actors' running totals.

One per Ray run, started by the driver on its own node (it needs no CPU):

- **Limits**: it holds the run's rpm and tpm buckets (one pair per teacher) at the whole configured
  limit, or the one the server reports. Each actor's engine takes chunks of a tenth of a second
  from them (:class:`~mediflow.engine.limits.LeasedBucket`), so the actors together keep the limit
  and an actor alone (the tail of a run, the survivors of a node loss) gets all of it.
- **Totals**: each actor reports its engines' totals after every batch and once a second, after
  flushing its answers. An actor that dies keeps its last report, so the manifest's session counts
  include the requests it paid for; only the requests in flight at its death are not counted
  (they were not answered to it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mediflow.engine.limits import TokenBucket


class Coordinator:
    """The actor's class (``ray.remote`` is applied by :func:`start_coordinator`, so this module imports without Ray)."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._reports: dict[str, dict[str, Any]] = {}

    def _bucket(self, name: str, per_minute: float | None) -> TokenBucket:
        if name not in self._buckets:
            self._buckets[name] = TokenBucket(per_minute)
        return self._buckets[name]

    async def take(self, name: str, per_minute: float, amount: float) -> float:
        """Wait until bucket ``name`` holds ``amount``; take it and return it."""
        await self._bucket(name, per_minute).acquire(amount)
        return amount

    def give_back(self, name: str, amount: float) -> None:
        if name in self._buckets:
            self._buckets[name].refund(amount)

    def observe(self, name: str, limit: float | None, remaining: float | None, user_limit: float | None) -> None:
        self._bucket(name, user_limit).observe_server(limit, remaining, user_limit=user_limit)

    def report(self, actor: str, stats: dict[str, Any]) -> None:
        """An actor's running totals (the latest replaces the earlier ones)."""
        self._reports[actor] = stats

    def reports(self) -> dict[str, dict[str, Any]]:
        return dict(self._reports)

    def limits(self) -> dict[str, float | None]:
        """Each bucket's limit now (per minute), for tests and the manifest."""
        return {name: bucket.per_minute for name, bucket in self._buckets.items()}


class CoordinatorLimits:
    """:class:`~mediflow.engine.limits.SharedLimits` on the coordinator actor, as an engine actor sees it.

    ``give_back`` and ``observe`` do not wait for the coordinator, but their calls are awaited in the
    background: a call whose result nobody awaits may never leave an actor that is about to hand back a batch.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._sending: set[asyncio.Future[Any]] = set()

    async def take(self, name: str, per_minute: float, amount: float) -> float:
        granted: float = await self._handle.take.remote(name, per_minute, amount)
        return granted

    def give_back(self, name: str, amount: float) -> None:
        self._send(self._handle.give_back.remote(name, amount))

    def observe(self, name: str, limit: float | None, remaining: float | None, user_limit: float | None) -> None:
        self._send(self._handle.observe.remote(name, limit, remaining, user_limit))

    def _send(self, call: Any) -> None:
        future = asyncio.ensure_future(call)
        self._sending.add(future)
        future.add_done_callback(self._sending.discard)


def start_coordinator() -> Any:
    """The coordinator actor of a run, pinned to the driver's node (hard affinity; no CPU reserved: it only waits).

    The driver's node is the one node whose loss ends the run anyway (the driver goes with it), so the
    coordinator adds no node the run cannot lose. Soft affinity (to the head) was not enough: Ray may
    place a soft-pinned actor on any node, and a run that lost that node lost its limits and totals.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    where = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(Coordinator).options(num_cpus=0, max_concurrency=1000, scheduling_strategy=where)
    return actor.remote()
