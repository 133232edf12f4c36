"""Locate clients with one registry round trip in the common case: the active nodes, cached.

On Redis, `Registry.locate_many` is two round trips: the clients' registrations, then their
nodes' records. A router worker does it for every batch, and the nodes change rarely (an edge
starts, drains or dies), so `NodeCache` keeps the ACTIVE node records for `max_age_s` and reads
only the registrations. Only "active" is ever taken from the cache:

- a registration on a node the cache holds as active is located there. If that node has begun
  draining or died since, the delivery reaches a node that no longer serves the client, and the
  message waits in the inbox, where it was stored before the lookup: what the worker does for any
  client that left its node after the lookup. No message depends on the node record being fresh.
- a registration on any other node (unknown to the cache, draining, dead) is located afresh
  with `locate_many`, so a node that became active again (an edge restarted under its node id)
  or a new one is never taken for unreachable on old news: that would hold back a message from a
  device that is connected and has already replayed its inbox.

The cache is refreshed, with `nodes()`, concurrently with the lookup of the first batch after
it is `max_age_s` old, so it costs no round trip of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from registry.base import Location, NodeInfo, NodeState, Registry

DEFAULT_MAX_AGE_S = 1.0


class NodeCache:
    """`locate_many` through a cache of the active nodes (module docstring)."""

    def __init__(self, registry: Registry, max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._max_age_s = max_age_s
        self._clock = clock
        self._active: dict[str, NodeInfo] = {}
        self._read_at: float | None = None

    async def locate_many(self, client_ids: Iterable[str]) -> dict[str, Location]:
        ids = list(client_ids)
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._max_age_s:
            found, nodes = await asyncio.gather(self._registry.lookup_many(ids),
                                                self._registry.nodes())
            self._active = {n.node_id: n for n in nodes if n.state is NodeState.ACTIVE}
            self._read_at = now
        else:
            found = await self._registry.lookup_many(ids)
        located: dict[str, Location] = {}
        unsure: list[str] = []
        for client_id, registration in found.items():
            node = self._active.get(registration.node_id)
            if node is None:
                unsure.append(client_id)
            else:
                located[client_id] = Location(registration, node)
        if unsure:
            located.update(await self._registry.locate_many(unsure))
        return located
