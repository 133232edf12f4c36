"""The replicated registry across two regions, each its own real `redis-server`.

Region A and region B each have a Redis (from `redis_factory`), a local registry, a
`ReplicatedRegistry` over it and a `Replicator` applying the other region's change stream.
Nothing about Redis is mocked; failures are real (SIGKILL, restart on the same port, a cut TCP
link). Tests drive replicators with `step()` (deterministic) or run both `run()` loops.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from core.errors import Unavailable
from core.redis.client import connect
from registry.base import Device, NodeInfo, NodeState, Registration, Registry
from registry.changes import (
    ChangeFormatError,
    ChangeLog,
    NodeBeat,
    NodeRemoved,
    Refreshed,
    Registered,
    Unregistered,
    decode,
    encode,
    stream_key,
)
from registry.memory import MemoryRegistry
from registry.redis import RedisRegistry
from registry.replicated import LOCK_STRIPES, ReplicatedRegistry, apply_change
from registry.replicator import START, Position, Replicator, lease_key_of, position_key_of
from tests.support.clock import FakeClock
from tests.support.redis_servers import RedisCluster, RedisServer
from tests.support.registry_calls import CALLS
from tests.support.tcp_proxy import TcpProxy

PREFIX = "zp"
TTL_S = 30.0
NOW_MS = 1_700_000_000_000

pytestmark = pytest.mark.timeout(30)


def reg(client: str, node: str, version: int, *, user: str = "u1",
        dt: str = "phone") -> Registration:
    return Registration(client, user, dt, node, version)


def node(node_id: str, region: str, state: NodeState = NodeState.ACTIVE,
         connections: int = 0) -> NodeInfo:
    return NodeInfo(node_id, f"127.0.0.1:{9000 + len(node_id)}", region, state, connections,
                    (("phone", connections),))


def client_for(port: int) -> Redis:
    # One quick retry at most: a dead server must fail fast, the replicator does the backoff.
    return Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 1),
                 socket_connect_timeout=1.0, socket_timeout=2.0)


def make_local(redis: Redis) -> Registry:
    """This region's own registry, on its Redis."""
    return RedisRegistry(redis, prefix=PREFIX)


@dataclass
class Region:
    name: str
    server: RedisServer  # the region's Redis (a cluster's first node for a cluster region)
    redis: Any  # Redis, or RedisCluster for a cluster region
    local: Registry
    registry: ReplicatedRegistry
    prefix: str = PREFIX
    cluster_url: str = ""
    links: list[Any] = field(default_factory=list)

    def replicator_from(self, peer: Region, *, via_port: int | None = None,
                        **options: Any) -> Replicator:
        """A replicator applying `peer`'s stream here, over its own link to the peer's Redis."""
        link = connect(peer.cluster_url) if peer.cluster_url \
            else client_for(via_port or peer.server.port)
        self.links.append(link)
        options.setdefault("block_ms", 10)
        options.setdefault("backoff_initial_s", 0.02)
        options.setdefault("backoff_max_s", 0.2)
        return Replicator(self.local, self.redis, peer.name, link, region=self.name,
                          prefix=peer.prefix, position_key=position_key_of(self.prefix, peer.name),
                          lease_key=lease_key_of(self.prefix, peer.name), **options)

    async def close(self) -> None:
        await self.registry.close()
        for link in (*self.links, self.redis):
            await link.aclose()


def make_region(name: str, server: RedisServer, maxlen: int = 100_000) -> Region:
    redis = client_for(server.port)
    local = make_local(redis)
    changes = ChangeLog(redis, prefix=PREFIX, maxlen=maxlen)
    return Region(name, server, redis, local, ReplicatedRegistry(local, changes, name))


def make_cluster_region(name: str, cluster: RedisCluster, prefix: str) -> Region:
    url = "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)
    redis = connect(url)
    local = RedisRegistry(redis, prefix=prefix)
    changes = ChangeLog(redis, prefix=prefix)
    return Region(name, cluster.servers[0], redis, local,
                  ReplicatedRegistry(local, changes, name), prefix, url)


@pytest.fixture
async def regions(
    redis_factory: Callable[..., RedisServer],
) -> AsyncIterator[tuple[Region, Region]]:
    a, b = make_region("eu", redis_factory()), make_region("us", redis_factory())
    yield a, b
    await a.close()
    await b.close()


async def catch_up(replicator: Replicator) -> int:
    """Step until the peer's stream has nothing more; how many entries were read."""
    total = 0
    while n := await replicator.step():
        total += n
    return total


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float) -> float:
    """Poll `check` until it holds; the seconds it took. Fails after `within_s`."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within_s:
            pytest.fail(f"not within {within_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def snapshot(r: Registry, clients: list[str], users: list[str]) -> tuple[Any, ...]:
    devices = {u: sorted(await r.devices_of_user(u), key=lambda d: d.client_id) for u in users}
    nodes = sorted(await r.nodes(), key=lambda n: n.node_id)
    return await r.lookup_many(clients), devices, nodes


# --- the change format (pure) -------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    Registered((reg("c1", "n1", 5), reg("c2", "n2", 2**62, user="u2", dt="tv")), NOW_MS),
    Refreshed("n1", (reg("c1", "n1", 5),), NOW_MS),
    Unregistered("c1", "n1", 5),
    NodeBeat(node("n1", "eu", NodeState.DRAINING, 3), NOW_MS),
    NodeRemoved("n1"),
])
def test_every_change_survives_encoding(change: Any) -> None:
    assert decode(encode(change, "eu")) == ("eu", change)


@pytest.mark.parametrize("data", [
    b"not json", b"{}", b'{"op":"reg","o":"eu"}', b'{"op":"zap","o":"eu"}',
    b'{"op":"unreg","o":"eu","c":"c1","node":"n1","v":"5"}',
    b'{"op":"reg","o":"eu","x":1,"r":[["c1","u1","phone","n1"]]}',
])
def test_a_malformed_change_is_a_format_error(data: bytes) -> None:
    with pytest.raises(ChangeFormatError):
        decode(data)


def test_position_encoding() -> None:
    assert Position.decode(Position("1700-3", 42).encode()) == Position("1700-3", 42)
    assert Position.decode(b"garbage") is None


# --- applying one change (pure: a memory registry and a fake clock) -----------------------------


async def test_apply_carries_the_ttl_over_and_skips_expired_records() -> None:
    clock = FakeClock()
    r = MemoryRegistry(clock=clock)
    assert await apply_change(Registered((reg("c1", "n1", 1),), NOW_MS + 500), r, NOW_MS)
    assert not await apply_change(Registered((reg("c2", "n1", 1),), NOW_MS), r, NOW_MS)
    assert not await apply_change(NodeBeat(node("n1", "eu"), NOW_MS - 1), r, NOW_MS)
    clock.now += 0.49
    assert await r.lookup("c1") is not None
    clock.now += 0.02
    assert await r.lookup("c1") is None and await r.lookup("c2") is None
    assert await r.nodes() == []


async def test_apply_refresh_recreates_a_missing_record_and_extends_an_existing_one() -> None:
    clock = FakeClock()
    r = MemoryRegistry(clock=clock)
    await apply_change(Registered((reg("c1", "n1", 1),), NOW_MS + 1000), r, NOW_MS)
    refresh = Refreshed("n1", (reg("c1", "n1", 1), reg("c2", "n1", 1)), NOW_MS + 5000)
    assert await apply_change(refresh, r, NOW_MS)
    clock.now += 4.9
    assert await r.lookup_many(["c1", "c2"]) == {"c1": reg("c1", "n1", 1),
                                                "c2": reg("c2", "n1", 1)}


async def test_apply_refresh_of_a_loser_leaves_the_winner_alone() -> None:
    clock = FakeClock()
    r = MemoryRegistry(clock=clock)
    await r.register([reg("c1", "n2", 9)], 1.0)
    await apply_change(Refreshed("n1", (reg("c1", "n1", 5),), NOW_MS + 9000), r, NOW_MS)
    await apply_change(Unregistered("c1", "n1", 5), r, NOW_MS)
    clock.now += 1.0
    assert await r.lookup("c1") is None  # n2's record kept its own TTL and was not deleted early


# --- A -> B replication ------------------------------------------------------------------------


async def test_a_registration_in_a_is_visible_in_b(regions: tuple[Region, Region]) -> None:
    a, b = regions
    b_from_a = b.replicator_from(a)
    await a.registry.register([reg("c1", "n1", 1, dt="tv"), reg("c2", "n1", 1)], TTL_S)
    assert await b.registry.lookup("c1") is None  # reads are local
    assert await catch_up(b_from_a) == 1  # one entry per batch call
    assert await b.registry.lookup_many(["c1", "c2"]) == {
        "c1": reg("c1", "n1", 1, dt="tv"), "c2": reg("c2", "n1", 1)}
    assert await b.registry.device("c1") == Device("c1", "tv")
    assert b_from_a.stats.applied == 1


async def test_arrivals_are_told_at_least_once_per_batch(regions: tuple[Region, Region]) -> None:
    """`on_arrivals` (the router's handoff): the registrations a batch brought, after it was
    applied; a failing callback has the batch applied again, callback and all."""
    a, b = regions
    told: list[tuple[str, list[str], Registration | None]] = []
    fail = [True]

    async def arrivals(region: str, regs: Sequence[Registration]) -> None:
        told.append((region, [r.client_id for r in regs], await b.registry.lookup("c1")))
        if fail.pop() if fail else False:
            raise ConnectionError("the peer's queue is down")

    await b.registry.register([reg("c1", "b1", 1)], TTL_S)  # c1 is in region us first
    b_from_a = b.replicator_from(a, on_arrivals=arrivals)
    await a.registry.register([reg("c1", "n1", 2), reg("c2", "n1", 2)], TTL_S)
    await a.registry.unregister("c2", "n1", 2)
    with pytest.raises(ConnectionError):
        await b_from_a.step()
    await catch_up(b_from_a)
    assert told == [("eu", ["c1", "c2"], reg("c1", "n1", 2))] * 2


async def test_an_unregister_replicates(regions: tuple[Region, Region]) -> None:
    a, b = regions
    b_from_a = b.replicator_from(a)
    await a.registry.register([reg("c1", "n1", 1), reg("c2", "n1", 1)], TTL_S)
    await catch_up(b_from_a)
    assert await a.registry.unregister("c1", "n1", 1)
    assert not await a.registry.unregister("c2", "n1", 0)  # stale: deletes nothing anywhere
    await catch_up(b_from_a)
    assert await b.registry.lookup_many(["c1", "c2"]) == {"c2": reg("c2", "n1", 1)}
    assert await b.registry.device("c1") == Device("c1", "phone")  # offline, not forgotten


async def test_a_refresh_keeps_bs_copy_alive(regions: tuple[Region, Region]) -> None:
    a, b = regions
    b_from_a = b.replicator_from(a)
    start = time.monotonic()
    await a.registry.register([reg("c1", "n1", 1)], 1.0)
    await catch_up(b_from_a)
    await _sleep_until(start + 0.5)
    assert await a.registry.refresh("n1", ["c1", "c9"], 1.0) == 1  # until about 1.5 s
    assert await a.registry.refresh("n2", ["c1"], 1.0) == 0  # not n2's: nothing announced
    assert await catch_up(b_from_a) == 1
    await _sleep_until(start + 1.2)  # past the first expiry
    assert await b.registry.lookup("c1") == reg("c1", "n1", 1)
    await eventually(lambda: _absent(b.registry, "c1"), within_s=1.0)  # gone by the new one


async def test_node_heartbeats_replicate_with_their_state(regions: tuple[Region, Region]) -> None:
    a, b = regions
    b_from_a = b.replicator_from(a)
    await a.registry.heartbeat_node(node("n1", "eu", connections=2), TTL_S)
    await a.registry.heartbeat_node(node("n2", "eu"), TTL_S)
    await catch_up(b_from_a)
    assert {n.node_id: n.state for n in await b.registry.nodes()} == {
        "n1": NodeState.ACTIVE, "n2": NodeState.ACTIVE}
    await a.registry.heartbeat_node(node("n1", "eu", NodeState.DRAINING, 2), TTL_S)
    await a.registry.remove_node("n2")
    await a.registry.register([reg("c1", "n1", 1)], TTL_S)
    await catch_up(b_from_a)
    assert await b.registry.nodes() == [node("n1", "eu", NodeState.DRAINING, 2)]
    located = await b.registry.locate_many(["c1"])
    assert located["c1"].node is not None and not located["c1"].reachable  # draining, in eu


async def test_the_ttl_carries_over(regions: tuple[Region, Region]) -> None:
    a, b = regions
    b_from_a = b.replicator_from(a)
    start = time.monotonic()
    await a.registry.register([reg("c1", "n1", 1)], 1.0)
    await a.registry.heartbeat_node(node("n1", "eu"), 1.0)
    await a.registry.register([reg("c2", "n1", 1)], 0.1)
    await _sleep_until(start + 0.5)  # c2 expired before B applied it; c1 has 0.5 s left
    await catch_up(b_from_a)
    assert b_from_a.stats.expired == 1
    assert await b.registry.lookup_many(["c1", "c2"]) == {"c1": reg("c1", "n1", 1)}
    assert len(await b.registry.nodes()) == 1

    async def both_expired() -> bool:
        return await _absent(b.registry, "c1") and await b.registry.nodes() == []

    await eventually(both_expired, within_s=1.5)
    # About 1 s after A's write: a full TTL after B applied them would be 1.5 s or more.
    assert time.monotonic() - start < 1.25


# --- conflicts, replay, positions ---------------------------------------------------------------


@pytest.mark.parametrize("a_first", [True, False], ids=["a-applied-first", "b-applied-first"])
@pytest.mark.parametrize(("a_version", "b_version", "winner"), [
    (100, 100, "us-n1"),  # equal versions: the higher node id wins
    (101, 100, "eu-n1"),  # otherwise the higher version
])
async def test_conflicting_writes_converge_to_one_winner_everywhere(
    regions: tuple[Region, Region], a_first: bool, a_version: int, b_version: int, winner: str,
) -> None:
    a, b = regions
    b_from_a, a_from_b = b.replicator_from(a), a.replicator_from(b)
    await a.registry.register([reg("c1", "eu-n1", a_version)], TTL_S)
    await b.registry.register([reg("c1", "us-n1", b_version)], TTL_S)
    for replicator in (b_from_a, a_from_b) if a_first else (a_from_b, b_from_a):
        await catch_up(replicator)
    in_a, in_b = await a.registry.lookup("c1"), await b.registry.lookup("c1")
    assert in_a == in_b and in_a is not None and in_a.node_id == winner
    # The loser's late refresh and unregister change nothing anywhere.
    loser = "us-n1" if winner == "eu-n1" else "eu-n1"
    loser_region, loser_version = (b, b_version) if loser == "us-n1" else (a, a_version)
    assert await loser_region.registry.refresh(loser, ["c1"], TTL_S) == 0
    assert not await loser_region.registry.unregister("c1", loser, loser_version)
    await catch_up(b_from_a)
    await catch_up(a_from_b)
    assert await a.registry.lookup("c1") == await b.registry.lookup("c1") == in_a


async def _write_a_history(a: Region) -> None:
    await a.registry.register([reg("c1", "n1", 1), reg("c2", "n1", 1, dt="tv")], TTL_S)
    await a.registry.register([reg("c3", "n2", 1, user="u2")], TTL_S)
    await a.registry.unregister("c1", "n1", 1)
    await a.registry.refresh("n1", ["c2"], TTL_S)
    await a.registry.register([reg("c3", "n1", 2, user="u2")], TTL_S)  # c3 moved to n1
    await a.registry.unregister("c3", "n2", 1)  # n2's late cleanup: a no-op
    await a.registry.heartbeat_node(node("n1", "eu", connections=2), TTL_S)
    await a.registry.heartbeat_node(node("n2", "eu"), TTL_S)
    await a.registry.remove_node("n2")


async def test_replaying_the_same_entries_changes_nothing(regions: tuple[Region, Region]) -> None:
    a, b = regions
    await _write_a_history(a)
    clients, users = ["c1", "c2", "c3"], ["u1", "u2"]
    first = b.replicator_from(a)
    assert await catch_up(first) == 9
    once = await snapshot(b.registry, clients, users)
    assert once == await snapshot(a.registry, clients, users)
    await b.redis.delete(position_key_of(PREFIX, "eu"))  # forget the position: replay it all
    again = b.replicator_from(a)
    assert await catch_up(again) == 9 and again.stats.applied == 9
    assert await snapshot(b.registry, clients, users) == once


async def test_a_batch_of_interleaved_changes_ends_as_in_the_origin(
    regions: tuple[Region, Region],
) -> None:
    """Entries of one batch run concurrently unless they share a record: the end state must be
    the origin's whatever the interleaving."""
    a, b = regions
    rng = random.Random(7)
    clients, nodes = [f"c{i}" for i in range(12)], ["n1", "n2", "n3"]
    held: dict[str, Registration] = {}
    for version in range(1, 301):
        client, node_id = rng.choice(clients), rng.choice(nodes)
        roll = rng.random()
        if roll < 0.45:
            held[client] = reg(client, node_id, version, user=f"u{version % 3}")
            await a.registry.register([held[client]], TTL_S)
        elif roll < 0.7 and client in held:
            old = held.pop(client)
            await a.registry.unregister(client, old.node_id, old.version)
        elif roll < 0.85:
            await a.registry.refresh(node_id, rng.sample(clients, 4), TTL_S)
        elif roll < 0.95:
            await a.registry.heartbeat_node(node(node_id, "eu", connections=version), TTL_S)
        else:
            await a.registry.remove_node(node_id)
    b_from_a = b.replicator_from(a, batch=1000)
    assert await b_from_a.step() > 250  # all of it in one batch
    users = ["u0", "u1", "u2"]
    assert await snapshot(b.registry, clients, users) == await snapshot(a.registry, clients, users)


async def test_a_new_replicator_resumes_from_the_persisted_position(
    regions: tuple[Region, Region],
) -> None:
    a, b = regions
    first = b.replicator_from(a)
    await a.registry.register([reg("c1", "n1", 1)], TTL_S)
    await a.registry.register([reg("c2", "n1", 1)], TTL_S)
    await catch_up(first)
    stored = await b.redis.get(position_key_of(PREFIX, "eu"))
    assert stored is not None and Position.decode(stored) == first.position
    # Had the old entries been applied again, c1 would come back in B.
    assert await b.local.unregister("c1", "n1", 1)
    for i in range(3, 8):
        await a.registry.register([reg(f"c{i}", "n1", 1)], TTL_S)
    second = b.replicator_from(a)
    assert await catch_up(second) == 5
    assert second.stats.applied == 5 and second.stats.resyncs == 0
    found = await b.registry.lookup_many([f"c{i}" for i in range(1, 8)])
    assert sorted(found) == ["c2", "c3", "c4", "c5", "c6", "c7"]


async def test_applied_changes_are_not_appended_again(regions: tuple[Region, Region]) -> None:
    a, b = regions
    await a.registry.register([reg("c1", "n1", 1)], TTL_S)
    await catch_up(b.replicator_from(a))
    assert await b.redis.exists(stream_key(PREFIX)) == 0  # B's stream: only B's own writes
    with pytest.raises(TypeError):
        Replicator(b.registry, b.redis, "eu", a.redis)


class HeldRegistry(RedisRegistry):
    """A region's registry whose `register` returns only when `release` is set: a write whose
    local step is done and whose append has not happened yet."""

    release: asyncio.Event | None = None

    async def register(self, registrations: Any, ttl_s: float) -> None:
        await super().register(registrations, ttl_s)
        if self.release is not None:
            await self.release.wait()


async def test_the_stream_has_the_local_order_of_writes_to_one_client(
    regions: tuple[Region, Region],
) -> None:
    a, b = regions
    local = HeldRegistry(a.redis, prefix=PREFIX)
    local.release = asyncio.Event()
    registry = ReplicatedRegistry(local, a.registry.changes, "eu")
    other = next(f"c{i}" for i in range(2, 999)
                 if hash(f"c{i}") % LOCK_STRIPES != hash("c1") % LOCK_STRIPES)
    await registry.unregister(other, "n1", 1)  # warm up the client's connections
    registering = asyncio.create_task(registry.register([reg("c1", "n1", 1)], TTL_S))
    await eventually(lambda: _present(local, "c1"), within_s=1.0)  # written, not yet appended
    leaving = asyncio.create_task(registry.unregister("c1", "n1", 1))
    # A write to another client is not held up...
    assert not await asyncio.wait_for(registry.unregister(other, "n1", 1), 1.0)
    await asyncio.sleep(0.05)
    assert not leaving.done()  # ...but one to the same client waits for the first to append
    local.release.set()
    await asyncio.wait_for(asyncio.gather(registering, leaving), 1.0)
    assert leaving.result() is True
    entries: Any = await a.redis.xrange(stream_key(PREFIX))
    assert [decode(fields[b"d"])[1].__class__ for _, fields in entries] == [
        Unregistered, Unregistered, Registered, Unregistered]
    await catch_up(b.replicator_from(a))
    assert await b.registry.lookup("c1") is None and await a.registry.lookup("c1") is None


async def test_entries_of_ones_own_region_and_unreadable_ones_are_skipped(
    regions: tuple[Region, Region],
) -> None:
    a, b = regions
    b_from_a = b.replicator_from(a)
    await a.registry.register([reg("c1", "n1", 1)], TTL_S)
    await a.redis.xadd(stream_key(PREFIX), {"n": 2, "d": b"{garbage"})
    await a.registry.changes.append(Registered((reg("c2", "n1", 1),), 2**53), "us")
    await a.registry.register([reg("c3", "n1", 1)], TTL_S)
    assert await catch_up(b_from_a) == 4
    assert (b_from_a.stats.malformed, b_from_a.stats.own, b_from_a.stats.applied) == (1, 1, 2)
    assert sorted(await b.registry.lookup_many(["c1", "c2", "c3"])) == ["c1", "c3"]


async def test_a_cluster_region_and_a_single_server_region_replicate_both_ways(
    redis_cluster: RedisCluster, redis_factory: Callable[..., RedisServer], redis_prefix: str,
) -> None:
    a = make_cluster_region("eu", redis_cluster, redis_prefix)
    b = make_region("us", redis_factory())
    try:
        b_from_a, a_from_b = b.replicator_from(a), a.replicator_from(b)
        clients = [f"c{i}" for i in range(40)]  # over many slots of the cluster
        await a.registry.register([reg(c, "eu-n1", 5) for c in clients], TTL_S)
        await b.registry.register([reg("c0", "us-n1", 5), reg("b1", "us-n1", 1)], TTL_S)
        await a.registry.heartbeat_node(node("eu-n1", "eu"), TTL_S)
        await catch_up(b_from_a)
        await catch_up(a_from_b)
        everyone = [*clients, "b1"]
        in_a, in_b = await a.registry.lookup_many(everyone), await b.registry.lookup_many(everyone)
        assert in_a == in_b and len(in_a) == 41 and in_a["c0"].node_id == "us-n1"
        assert await b.registry.nodes() == [node("eu-n1", "eu")]
        assert Position.decode(await a.redis.get(position_key_of(redis_prefix, "us"))) == \
            a_from_b.position
    finally:
        await a.close()
        await b.close()


# --- trimming, outages, restarts, partitions ----------------------------------------------------


async def test_a_stream_trimmed_past_our_position_resyncs_and_converges_by_refreshes(
    redis_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture,
) -> None:
    # Small radix-tree nodes, so that MAXLEN ~ 8 trims as soon as there are more entries.
    a = make_region("eu", redis_factory("--stream-node-max-entries", "4"), maxlen=8)
    b = make_region("us", redis_factory())
    try:
        b_from_a = b.replicator_from(a)
        await a.registry.register([reg("c0", "n1", 1)], TTL_S)
        await catch_up(b_from_a)
        await a.registry.register([reg("c1", "n1", 1), reg("c2", "n1", 1)], TTL_S)
        for _ in range(30):  # B is away while A writes more than its stream keeps
            await a.registry.heartbeat_node(node("n1", "eu"), TTL_S)
        assert int(await a.redis.xlen(stream_key(PREFIX))) < 31
        with caplog.at_level(logging.WARNING, "registry.replicator"):
            await catch_up(b_from_a)
        assert b_from_a.stats.resyncs == 1 and b_from_a.stats.missed >= 1
        assert "trimmed" in caplog.text
        assert await b.registry.lookup_many(["c1", "c2"]) == {}  # their register was lost
        assert len(await b.registry.nodes()) == 1
        # The edge's next refresh carries the full records: B recreates them.
        assert await a.registry.refresh("n1", ["c1", "c2"], TTL_S) == 2
        await catch_up(b_from_a)
        assert await b.registry.lookup_many(["c0", "c1", "c2"]) == \
            await a.registry.lookup_many(["c0", "c1", "c2"])
        assert b_from_a.stats.resyncs == 1
    finally:
        await a.close()
        await b.close()


async def test_b_killed_writes_in_a_succeed_b_restarted_converges(
    regions: tuple[Region, Region], caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = regions
    await a.registry.register([reg("c1", "n1", 1), reg("c2", "n1", 1)], TTL_S)
    await a.registry.heartbeat_node(node("n1", "eu"), TTL_S)
    b_from_a = b.replicator_from(a)
    await catch_up(b_from_a)
    caplog.set_level(logging.WARNING, "registry.replicator")
    task = asyncio.create_task(b_from_a.run())
    try:
        b.server.kill()  # SIGKILL: no persistence, B's records and position are gone
        await a.registry.unregister("c1", "n1", 1)  # A's writes succeed while B is down
        await a.registry.register([reg("c3", "n1", 1), reg("c4", "n2", 1)], TTL_S)
        await a.registry.heartbeat_node(node("n1", "eu", NodeState.DRAINING), TTL_S)
        await eventually(lambda: _at_least(b_from_a.stats.outages, 1), within_s=2.0)
        await asyncio.sleep(0.3)  # several failed attempts...
        assert _count(caplog, "paused") == 1  # ...logged once
        b.server.start()  # same port, empty
        clients = ["c1", "c2", "c3", "c4"]
        want = await snapshot(a.registry, clients, ["u1"])
        await eventually(lambda: _same(b.registry, want, clients, ["u1"]), within_s=3.0)
        await eventually(lambda: _at_least(_count(caplog, "resumed"), 1), within_s=1.0)
        assert _count(caplog, "resumed") == 1 and _count(caplog, "paused") == 1
        assert b_from_a.stats.local_resets == 1  # its position went with B's data
    finally:
        b_from_a.stop()
        await asyncio.wait_for(task, 2.0)


async def test_a_peer_whose_redis_restarted_empty_is_applied_again_from_its_start(
    regions: tuple[Region, Region],
) -> None:
    a, b = regions
    b_from_a = b.replicator_from(a)
    for i in range(5):
        await a.registry.register([reg(f"c{i}", "n1", 1)], TTL_S)
    await catch_up(b_from_a)
    a.server.kill()
    a.server.start()
    await a.registry.register([reg("c9", "n1", 2)], TTL_S)  # A's edges register again
    await catch_up(b_from_a)
    assert b_from_a.stats.peer_resets == 1
    assert await b.registry.lookup("c9") == reg("c9", "n1", 2)
    assert b_from_a.position is not None and b_from_a.position.seq == 1


async def test_a_restart_of_this_regions_redis_between_steps_is_noticed_at_the_next_persist(
    regions: tuple[Region, Region],
) -> None:
    a, b = regions
    b_from_a = b.replicator_from(a)
    await a.registry.register([reg("c1", "n1", 1)], TTL_S)
    await catch_up(b_from_a)
    b.server.kill()
    b.server.start()  # the client reconnects by itself: no error reaches the replicator
    await a.registry.register([reg("c2", "n1", 1)], TTL_S)
    await catch_up(b_from_a)
    assert b_from_a.stats.local_resets == 1
    assert sorted(await b.registry.lookup_many(["c1", "c2"])) == ["c1", "c2"]


async def test_a_peer_stream_ending_before_our_position_is_applied_from_its_start(
    regions: tuple[Region, Region],
) -> None:
    a, b = regions
    await a.registry.register([reg("c1", "n1", 1)], TTL_S)
    # As if A's Redis restarted empty and its clock is now behind the ids we had read.
    await b.redis.set(position_key_of(PREFIX, "eu"), Position("99999999999999-0", 7).encode())
    b_from_a = b.replicator_from(a)
    await catch_up(b_from_a)
    assert b_from_a.stats.peer_resets == 1
    assert await b.registry.lookup("c1") == reg("c1", "n1", 1)


async def test_a_partition_heals_and_both_regions_converge(
    regions: tuple[Region, Region], caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = regions
    to_a, to_b = await TcpProxy(a.server.port).start(), await TcpProxy(b.server.port).start()
    b_from_a = b.replicator_from(a, via_port=to_a.port)
    a_from_b = a.replicator_from(b, via_port=to_b.port)
    caplog.set_level(logging.WARNING, "registry.replicator")
    tasks = [asyncio.create_task(r.run()) for r in (b_from_a, a_from_b)]
    try:
        to_a.cut()
        to_b.cut()
        await a.registry.register([reg("c1", "eu-n1", 100), reg("c2", "eu-n1", 1)], TTL_S)
        await b.registry.register([reg("c1", "us-n1", 100), reg("c3", "us-n1", 1)], TTL_S)
        await eventually(lambda: _at_least(b_from_a.stats.outages + a_from_b.stats.outages, 2),
                         within_s=2.0)
        await asyncio.sleep(0.3)
        assert await b.registry.lookup("c2") is None and await a.registry.lookup("c3") is None
        assert _count(caplog, "paused") == 2  # once per replicator
        to_a.heal()
        to_b.heal()
        clients = ["c1", "c2", "c3"]
        want = {"c1": reg("c1", "us-n1", 100), "c2": reg("c2", "eu-n1", 1),
                "c3": reg("c3", "us-n1", 1)}
        await eventually(lambda: _lookups(a.registry, clients, want), within_s=3.0)
        await eventually(lambda: _lookups(b.registry, clients, want), within_s=3.0)
    finally:
        for r in (b_from_a, a_from_b):
            r.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
        await to_a.close()
        await to_b.close()


async def test_two_regions_show_each_others_clients_within_a_second(
    regions: tuple[Region, Region],
) -> None:
    a, b = regions
    replicators = [b.replicator_from(a, block_ms=100), a.replicator_from(b, block_ms=100)]
    tasks = [asyncio.create_task(r.run()) for r in replicators]
    try:
        await asyncio.sleep(0.05)  # both loops waiting in XREAD BLOCK
        start = time.monotonic()
        await a.registry.register([reg("ca", "eu-n1", 1)], TTL_S)
        await b.registry.register([reg("cb", "us-n1", 1)], TTL_S)

        async def each_sees_the_other() -> bool:
            return await _present(b.registry, "ca") and await _present(a.registry, "cb")

        await eventually(each_sees_the_other, within_s=1.0)
        assert time.monotonic() - start < 1.0
    finally:
        for r in replicators:
            r.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 2.0)


async def test_one_replicator_per_peer_applies_the_others_stand_by_and_take_over(
    regions: tuple[Region, Region],
) -> None:
    a, b = regions
    first, second = (b.replicator_from(a, lease_s=0.3) for _ in range(2))
    tasks = {r: asyncio.create_task(r.run()) for r in (first, second)}
    try:
        await a.registry.register([reg("c1", "n1", 1)], TTL_S)
        # the record is visible in Redis a moment before its replicator counts it: wait for both
        await eventually(lambda: _applied(b.registry, "c1", first, second), within_s=1.0)
        leader, standby = (first, second) if first.leader else (second, first)
        assert leader.leader and not standby.leader
        assert (leader.stats.applied, standby.stats.applied) == (1, 0)
        leader.stop()
        await asyncio.wait_for(tasks.pop(leader), 1.0)  # a clean stop gives the lease up
        await a.registry.register([reg("c2", "n1", 1)], TTL_S)
        await eventually(lambda: _applied(b.registry, "c2", standby), within_s=1.0)
        assert standby.leader and standby.stats.leases == 1
        # resumed from the leader's position: it read one entry and replayed nothing
        assert (standby.stats.entries, standby.stats.applied) == (1, 1)
    finally:
        for replicator in tasks:
            replicator.stop()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 2.0)


async def test_a_write_fails_whole_when_the_regions_redis_is_down(
    regions: tuple[Region, Region],
) -> None:
    a, _ = regions
    a.server.kill()
    with pytest.raises(Unavailable, match="Redis unreachable") as down:
        await a.registry.register([reg("c1", "n1", 1)], TTL_S)
    assert isinstance(down.value.__cause__, RedisConnectionError)
    a.server.start()
    await a.registry.register([reg("c1", "n1", 1)], TTL_S)  # the retry announces it
    entries: Any = await a.redis.xrange(stream_key(PREFIX))
    assert [int(fields[b"n"]) for _, fields in entries] == [1]


async def test_every_operation_raises_unavailable_while_the_regions_redis_is_down(
    regions: tuple[Region, Region],
) -> None:
    a, _ = regions
    a.server.kill()
    for op, call in CALLS.items():
        with pytest.raises(Unavailable, match="Redis unreachable") as down:
            await call(a.registry)
        assert isinstance(down.value.__cause__, RedisConnectionError), op


async def test_an_append_that_fails_after_the_local_write_raises_unavailable(
    regions: tuple[Region, Region],
) -> None:
    a, b = regions  # a's registry, announcing on b's Redis, which dies
    registry = ReplicatedRegistry(a.local, ChangeLog(b.redis, prefix=PREFIX), "eu")
    b.server.kill()
    with pytest.raises(Unavailable, match="Redis unreachable") as down:
        await registry.register([reg("c1", "n1", 1)], TTL_S)
    assert isinstance(down.value.__cause__, RedisConnectionError)
    assert await a.local.lookup("c1") == reg("c1", "n1", 1)  # written here, not announced


async def test_the_position_starts_at_the_beginning(regions: tuple[Region, Region]) -> None:
    a, b = regions
    b_from_a = b.replicator_from(a)
    assert b_from_a.position is None
    assert await b_from_a.step() == 0
    assert b_from_a.position == START


# --- helpers ------------------------------------------------------------------------------------


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


async def _absent(r: Registry, client_id: str) -> bool:
    return await r.lookup(client_id) is None


async def _present(r: Registry, client_id: str) -> bool:
    return await r.lookup(client_id) is not None


async def _applied(r: Registry, client_id: str, *replicators: Replicator) -> bool:
    return await _present(r, client_id) and sum(x.stats.applied for x in replicators) >= 1


async def _at_least(value: int, least: int) -> bool:
    return value >= least


async def _same(r: Registry, want: tuple[Any, ...], clients: list[str], users: list[str]) -> bool:
    return await snapshot(r, clients, users) == want


async def _lookups(r: Registry, clients: list[str], want: dict[str, Registration]) -> bool:
    return await r.lookup_many(clients) == want


def _count(caplog: pytest.LogCaptureFixture, word: str) -> int:
    return sum(word in record.getMessage() for record in caplog.records)
