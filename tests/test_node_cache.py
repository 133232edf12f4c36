"""NodeCache: one registry call per batch while the nodes are active; everything else afresh."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from registry.base import Location, NodeInfo, NodeState, Registration
from registry.memory import MemoryRegistry
from router.node_cache import NodeCache

TTL_S = 60.0


class CountingRegistry(MemoryRegistry):
    """Counts the calls NodeCache makes (not those `locate_many` makes inside)."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: 0.0)
        self.calls: Counter[str] = Counter()
        self._inside = False

    def _count(self, name: str) -> None:
        if not self._inside:
            self.calls[name] += 1

    async def lookup_many(self, client_ids: Iterable[str]) -> dict[str, Registration]:
        self._count("lookup_many")
        return await super().lookup_many(client_ids)

    async def locate_many(self, client_ids: Iterable[str]) -> dict[str, Location]:
        self._count("locate_many")
        self._inside = True
        try:
            return await super().locate_many(client_ids)
        finally:
            self._inside = False

    async def nodes(self) -> list[NodeInfo]:
        self._count("nodes")
        return await super().nodes()

    async def node(self, node_id: str, state: NodeState = NodeState.ACTIVE) -> None:
        await self.heartbeat_node(NodeInfo(node_id, "addr", "eu", state, 0), TTL_S)

    async def connect(self, client: str, node_id: str) -> None:
        await self.register([Registration(client, "u", "phone", node_id, 1)], TTL_S)


async def world() -> tuple[CountingRegistry, NodeCache, list[float]]:
    registry, clock = CountingRegistry(), [0.0]
    await registry.node("n1")
    await registry.connect("c1", "n1")
    return registry, NodeCache(registry, 1.0, clock=lambda: clock[0]), clock


async def test_clients_on_active_nodes_cost_one_lookup_per_batch_after_the_first() -> None:
    registry, cache, clock = await world()
    first = await cache.locate_many(["c1", "nobody"])
    assert first == await registry.locate_many(["c1", "nobody"])
    assert first["c1"].reachable and "nobody" not in first
    registry.calls.clear()
    clock[0] = 0.9
    assert await cache.locate_many(["c1"]) == first
    assert registry.calls == {"lookup_many": 1}
    clock[0] = 1.0  # max age: the nodes are read again, alongside the lookup
    await cache.locate_many(["c1"])
    assert registry.calls == {"lookup_many": 2, "nodes": 1}


async def test_a_node_not_active_in_the_cache_is_located_afresh() -> None:
    registry, cache, clock = await world()
    await registry.node("n2", NodeState.DRAINING)
    await registry.connect("c2", "n2")
    await registry.connect("c3", "n3")  # a node that started after the cache was read
    located = await cache.locate_many(["c1", "c2"])
    assert not located["c2"].reachable
    await registry.node("n2")  # restarted under its node id: active again
    await registry.node("n3")
    registry.calls.clear()
    clock[0] = 0.5
    located = await cache.locate_many(["c1", "c2", "c3"])
    assert located["c2"].reachable and located["c3"].reachable and located["c1"].reachable
    assert registry.calls == {"lookup_many": 1, "locate_many": 1}


async def test_an_active_node_that_began_draining_is_trusted_until_max_age() -> None:
    """Safe: a delivery to a node that no longer serves the client leaves it in the inbox."""
    registry, cache, clock = await world()
    await cache.locate_many(["c1"])
    await registry.node("n1", NodeState.DRAINING)
    clock[0] = 0.5
    assert (await cache.locate_many(["c1"]))["c1"].reachable
    clock[0] = 1.5
    assert not (await cache.locate_many(["c1"]))["c1"].reachable
