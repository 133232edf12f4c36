"""What the contract suite cannot see of `RedisRegistry`: where keys land, TTLs in Redis, when a
re-registration leaves the TTL and the user index alone, round trips per batch, exact versions
beyond 2**53, the cluster's slots, and surviving a restart.

Every test runs against real `redis-server` processes (the session `redis_server` and
`redis_cluster` under a per-test prefix, or a private server from `redis_factory` where a test
counts commands or restarts the server). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from core.errors import Unavailable
from core.redis.client import pack_with_hiredis
from core.redis.keys import tag, untag
from registry.base import Device, NodeInfo, NodeState, Registration
from registry.redis import PIPELINE_ITEMS, SCRIPT_ITEMS, RedisRegistry, connect
from registry.redis_layout import Keys
from tests.support.redis_servers import RedisCluster as ClusterServers
from tests.support.redis_servers import RedisServer
from tests.support.registry_calls import CALLS

TTL_S = 60.0
ODD_IDS = ["a{b", "a}b", "}lead", "{}", "{x}y", "x:y:{z}", "%7D", "%", "", "ü-ß-漢字-🙂",
           "a" * 256]

pytestmark = pytest.mark.timeout(60)


def reg(client: str, node: str = "n1", version: int = 1, *, user: str = "u1",
        dt: str = "phone") -> Registration:
    return Registration(client, user, dt, node, version)


def cluster_url(cluster: ClusterServers) -> str:
    return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)


@pytest.fixture
async def single(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[RedisRegistry]:
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    yield registry
    await registry.close()


@pytest.fixture
async def cluster(redis_cluster: ClusterServers,
                  redis_prefix: str) -> AsyncIterator[RedisRegistry]:
    registry = RedisRegistry.from_url(cluster_url(redis_cluster), prefix=redis_prefix)
    yield registry
    await registry.close()


# --- key layout ---------------------------------------------------------------------------------


def test_tags_escape_only_what_would_end_or_empty_the_tag() -> None:
    assert tag("phone-1") == "phone-1"
    assert tag("a}b") == "a%7Db" and tag("50%") == "50%25" and tag("") == "%"
    assert tag("{x:y}") == "{x:y%7D"
    for id_ in [*ODD_IDS, "%25", "%%7D}", "}}}"]:
        assert "}" not in tag(id_) and tag(id_) and untag(tag(id_)) == id_


def test_keys_are_where_the_module_docstring_says() -> None:
    keys = Keys("zp")
    assert keys.client("c1") == "zp:c:{c1}"
    assert keys.client("a}b") == "zp:c:{a%7Db}"
    assert keys.user("ü") == "zp:u:{ü}"
    assert keys.node_set == "{zp:nodes}"
    assert keys.node("edge-1}") == "{zp:nodes}:edge-1}"
    for bad in ("", "a{b", "a}b"):
        with pytest.raises(ValueError):
            Keys(bad)


@pytest.mark.parametrize("client_id", ODD_IDS)
def test_a_clients_key_hashes_to_its_own_tag(client_id: str) -> None:
    keys = Keys("zp")
    assert key_slot(keys.client(client_id).encode()) == key_slot(tag(client_id).encode())


async def test_odd_ids_land_in_their_keys_and_round_trip(single: RedisRegistry) -> None:
    client = single.client
    regs = [reg(cid, node=f"n:{{{i}}}", user=f"u}}{cid}", dt="tv:ü", version=i + 1)
            for i, cid in enumerate(ODD_IDS)]
    await single.register(regs, TTL_S)
    for r in regs:
        assert await client.exists(single.keys.client(r.client_id)) == 1
        assert await single.lookup(r.client_id) == r
        assert await single.device(r.client_id) == Device(r.client_id, "tv:ü")
        assert await single.devices_of_user(r.user_id) == [Device(r.client_id, "tv:ü")]
    assert await single.lookup_many(ODD_IDS) == {r.client_id: r for r in regs}
    for r in regs:
        assert await single.unregister(r.client_id, r.node_id, r.version)
    assert await single.lookup_many(ODD_IDS) == {}
    assert len(await single.devices_many(ODD_IDS)) == len(ODD_IDS)  # offline, not forgotten


def times(raw: bytes) -> tuple[int, int]:
    """A stored record's LIVE_UNTIL and DEVICE_UNTIL (wall-clock ms)."""
    _, device_until, live_until = raw.split(b"\xff")[:3]
    return int(live_until), int(device_until)


async def test_the_client_key_carries_the_device_ttl_and_the_record_its_times(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix, device_ttl_s=600)
    client, keys = registry.client, registry.keys
    now = time.time() * 1000
    await registry.register([reg("c1")], 30)
    assert 599_000 < await client.pttl(keys.client("c1")) <= 600_000
    assert 599_000 < await client.pttl(keys.user("u1")) <= 600_000
    live_until, device_until = times(await client.get(keys.client("c1")))
    assert now + 29_000 < live_until <= now + 31_000
    assert now + 599_000 < device_until <= now + 601_000
    assert await registry.refresh("n1", ["c1"], 90) == 1
    assert now + 89_000 < times(await client.get(keys.client("c1")))[0] <= now + 91_000
    assert 598_000 < await client.pttl(keys.client("c1")) <= 600_000  # the device TTL, kept
    await registry.heartbeat_node(NodeInfo("n1", "a:1", "eu", NodeState.ACTIVE, 0), 15)
    assert 14_000 < await client.pttl(keys.node("n1")) <= 15_000
    await registry.close()


async def test_a_known_device_registering_again_keeps_its_ttl_until_half_is_gone(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """The reconnect storm's steady state: no TTL write and no index write, until the device
    part is due (less than half the device TTL left), or the user or device type changes."""
    clock = [time.time() * 1000]
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix, device_ttl_s=600,
                                      clock_ms=lambda: clock[0])
    client, key, index = registry.client, registry.keys.client("c1"), registry.keys.user("u1")
    await registry.register([reg("c1", "n1", 1)], 30)
    score = await client.zscore(index, "c1")
    await client.pexpire(key, 500_000)  # a mark: KEEPTTL leaves it, PX replaces it
    await registry.register([reg("c1", "n2", 2)], 30)
    assert await registry.lookup("c1") == reg("c1", "n2", 2)
    assert await client.pttl(key) <= 500_000 and await client.zscore(index, "c1") == score

    clock[0] += 301_000  # past half the device TTL: due
    await registry.register([reg("c1", "n2", 3)], 30)
    assert await client.pttl(key) > 599_000
    assert await client.zscore(index, "c1") == score + 301_000
    await client.pexpire(key, 500_000)
    await registry.register([reg("c1", "n2", 4, dt="tv")], 30)  # the device type changed
    assert await client.pttl(key) > 599_000
    assert await registry.device("c1") == Device("c1", "tv")
    await registry.close()


async def test_a_registration_sent_again_after_a_lost_index_write_is_indexed(
    single: RedisRegistry,
) -> None:
    """REGISTER ran but the index write after it did not (a timeout, a dropped connection): the
    same registration retried, or the device's next one, still reaches the user's index."""
    client, keys = single.client, single.keys
    await client.set(keys.user("u1"), "not a sorted set")  # INDEX_ADD fails: WRONGTYPE
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await single.register([reg("c1", "n1", 1), reg("c2", "n1", 1)], TTL_S)
    assert len(await single.lookup_many(["c1", "c2"])) == 2  # REGISTER ran
    await client.delete(keys.user("u1"))
    await single.register([reg("c1", "n1", 1)], TTL_S)  # the edge's retry: same registration
    await single.register([reg("c2", "n2", 2)], TTL_S)  # or the device reconnected elsewhere
    assert set(await single.devices_of_user("u1")) == {Device("c1", "phone"),
                                                      Device("c2", "phone")}


async def test_a_device_part_is_pending_until_its_index_write_is_confirmed(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Until CONFIRM (the third round trip) the device part lasts half of half the device TTL,
    so it counts as due: the next registration, even a newer one of the same user and type,
    writes the index again. Confirmed, it lasts the whole device TTL."""
    clock = [time.time() * 1000]
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix, device_ttl_s=600,
                                      clock_ms=lambda: clock[0])
    client, key, index = registry.client, registry.keys.client("c1"), registry.keys.user("u1")

    def device_until(record: bytes) -> int:
        return int(record[21:36])

    await client.set(index, "not a sorted set")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await registry.register([reg("c1", "n1", 1)], 30)
    assert device_until(await client.get(key)) == int(clock[0]) + 150_000
    await client.delete(index)
    clock[0] += 1000
    await registry.register([reg("c1", "n2", 2)], 30)
    assert device_until(await client.get(key)) == int(clock[0]) + 600_000
    assert await registry.devices_of_user("u1") == [Device("c1", "phone")]
    await registry.close()


async def test_an_unregistered_or_expired_record_is_replaced_whatever_its_version(
    single: RedisRegistry,
) -> None:
    await single.register([reg("c1", "n1", 5)], TTL_S)
    assert await single.unregister("c1", "n1", 5)
    await single.register([reg("c1", "n2", 3)], TTL_S)  # not live: any registration replaces it
    assert await single.lookup("c1") == reg("c1", "n2", 3)
    await single.register([reg("c2", "n1", 5)], 0.05)
    await asyncio.sleep(0.06)
    await single.register([reg("c2", "n2", 3, user="u2")], TTL_S)
    assert await single.lookup("c2") == reg("c2", "n2", 3, user="u2")
    assert await single.devices_of_user("u1") == [Device("c1", "phone")]


async def test_a_registration_longer_than_the_device_ttl_keeps_its_key(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix, device_ttl_s=0.2)
    await registry.register([reg("c1"), reg("c2")], 0.4)
    await asyncio.sleep(0.25)
    assert await registry.refresh("n1", ["c2"], 0.4) == 1  # now outlasts the device part
    assert set(await registry.lookup_many(["c1", "c2"])) == {"c1", "c2"}
    assert await registry.device("c1") == Device("c1", "phone")  # known while connected
    await asyncio.sleep(0.2)
    assert set(await registry.lookup_many(["c1", "c2"])) == {"c2"}
    assert await registry.client.exists(registry.keys.client("c1")) == 0
    await registry.close()


async def test_redis_expires_records_and_the_index_and_node_set_are_pruned(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix, device_ttl_s=0.5)
    client, keys = registry.client, registry.keys
    await registry.register([reg("c1"), reg("c2", dt="tv")], 0.15)
    await registry.heartbeat_node(NodeInfo("n1", "a:1", "eu", NodeState.ACTIVE, 2), 0.15)
    await asyncio.sleep(0.2)
    assert await registry.lookup_many(["c1", "c2"]) == {}
    assert await registry.nodes() == []
    assert await client.smembers(keys.node_set) == set()
    assert len(await registry.devices_of_user("u1")) == 2
    await asyncio.sleep(0.35)
    assert await registry.devices_of_user("u1") == []
    assert await client.exists(keys.user("u1"), keys.client("c1"), keys.client("c2")) == 0
    await registry.close()


async def test_a_device_that_moves_leaves_the_old_users_index(single: RedisRegistry) -> None:
    await single.register([reg("c1", user="u1"), reg("c2", user="u1")], TTL_S)
    await single.register([reg("c1", version=2, user="u2")], TTL_S)
    members = await single.client.zrange(single.keys.user("u1"), 0, -1)
    assert members == [b"c2"]
    assert await single.devices_of_user("u2") == [Device("c1", "phone")]


async def test_an_index_member_whose_device_record_names_another_user_is_pruned(
    single: RedisRegistry,
) -> None:
    """A race between the two slots can leave a stale member; reads skip and prune it."""
    await single.register([reg("c1", user="u1")], TTL_S)
    await single.client.zadd(single.keys.user("u2"), {"c1": 1e15})
    assert await single.devices_of_user("u2") == []
    assert await single.client.zrange(single.keys.user("u2"), 0, -1) == []
    assert await single.devices_of_user("u1") == [Device("c1", "phone")]


# --- versions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [2**53, 2**60, 10**19])
async def test_versions_beyond_2_53_compare_exactly(single: RedisRegistry, base: int) -> None:
    await single.register([reg("c1", "n2", base + 1)], TTL_S)
    await single.register([reg("c1", "n9", base)], TTL_S)  # one less: loses, whatever the node
    assert await single.lookup("c1") == reg("c1", "n2", base + 1)
    await single.register([reg("c1", "n1", base + 2)], TTL_S)
    assert await single.lookup("c1") == reg("c1", "n1", base + 2)
    assert not await single.unregister("c1", "n1", base + 1)
    assert await single.unregister("c1", "n1", base + 2)


async def test_equal_versions_order_node_ids_bytewise_like_python(single: RedisRegistry) -> None:
    nodes = ["n-Z", "n-a", "n-é", "n-😀", "n-a-longer", "N"]
    for i, order in enumerate((nodes, list(reversed(nodes)))):
        for node_id in order:
            await single.register([reg(f"c{i}", node_id, 7)], TTL_S)
        assert (await single.lookup(f"c{i}")) == reg(f"c{i}", max(nodes), 7)


async def test_versions_outside_20_digits_are_refused(single: RedisRegistry) -> None:
    await single.register([reg("c1", version=10**20 - 1)], TTL_S)
    assert (await single.lookup("c1")) == reg("c1", version=10**20 - 1)
    for bad in (-1, 10**20):
        with pytest.raises(ValueError):
            await single.register([reg("c2", version=bad)], TTL_S)


async def test_concurrent_writers_of_one_client_end_with_the_highest_version(
    single: RedisRegistry,
) -> None:
    writes = [reg("c1", f"n{v % 5}", v) for v in range(1, 201)]
    random.Random(7).shuffle(writes)
    await asyncio.gather(*(single.register([w], TTL_S) for w in writes))
    assert await single.lookup("c1") == reg("c1", "n0", 200)


# --- round trips --------------------------------------------------------------------------------


class CountingConnection(Connection):
    """A real connection that counts how often it writes to the socket (one per round trip)."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        await super().send_packed_command(command, check_health)


async def command_calls(client: Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_batch_costs_a_bounded_number_of_round_trips_and_commands(
    redis_factory: Any,
) -> None:
    server = redis_factory()
    pool = ConnectionPool(connection_class=CountingConnection, host="127.0.0.1",
                          port=server.port)
    client = Redis.from_pool(pool)
    registry = RedisRegistry(client, prefix="rt")
    await registry.register([reg("warm-up")], TTL_S)  # connect, load the scripts
    n = 2 * PIPELINE_ITEMS + 1000
    ids = [f"client-{i}" for i in range(n)]
    pipelines = math.ceil(n / PIPELINE_ITEMS)
    await client.config_resetstat()

    CountingConnection.sends = 0
    await registry.register([reg(c, user=f"u{i}") for i, c in enumerate(ids)], TTL_S)
    scripts_per_pipeline = math.ceil(PIPELINE_ITEMS / SCRIPT_ITEMS)
    # register, index the new devices, confirm their device part
    assert CountingConnection.sends == 3 * pipelines
    assert await command_calls(client, "evalsha") <= pipelines * 3 * scripts_per_pipeline

    await client.config_resetstat()
    CountingConnection.sends = 0  # a reconnect storm of known devices: no index round trip
    await registry.register([reg(c, "n2", 2, user=f"u{i}") for i, c in enumerate(ids)], TTL_S)
    assert CountingConnection.sends == pipelines
    assert await command_calls(client, "evalsha") <= pipelines * scripts_per_pipeline
    assert await command_calls(client, "zadd") == 0

    CountingConnection.sends = 0
    assert len(await registry.lookup_many(ids)) == n
    assert len(await registry.devices_many(ids)) == n
    assert await registry.refresh("n2", ids, TTL_S) == n
    assert CountingConnection.sends == 3 * pipelines
    assert await command_calls(client, "mget") <= 2 * math.ceil(n / 1000)
    await client.aclose()


# --- cluster ------------------------------------------------------------------------------------


async def test_cluster_keeps_each_clients_key_and_each_users_index_in_their_tags_slots(
    cluster: RedisRegistry,
) -> None:
    client = cluster.client
    assert isinstance(client, RedisCluster)
    regs = [reg(cid, user=f"user-{cid}") for cid in ODD_IDS]
    await cluster.register(regs, TTL_S)
    for r in regs:
        assert await client.cluster_keyslot(cluster.keys.client(r.client_id)) == \
            key_slot(tag(r.client_id).encode())
        assert await client.cluster_keyslot(cluster.keys.user(r.user_id)) == \
            key_slot(tag(r.user_id).encode())
        assert await cluster.lookup(r.client_id) == r
        assert await cluster.devices_of_user(r.user_id) == [Device(r.client_id, "phone")]
    assert len({await client.cluster_keyslot(cluster.keys.node(n)) for n in ("a", "b}", "")}) == 1


async def test_cluster_batch_of_5000_spreads_over_every_master_and_round_trips(
    cluster: RedisRegistry, redis_cluster: ClusterServers, redis_prefix: str
) -> None:
    regs = [reg(f"client-{i}", f"n{i % 3}", i + 1, user=f"u{i // 4}", dt=("tv", "phone")[i % 2])
            for i in range(5000)]
    await cluster.register(regs, TTL_S)
    for server in redis_cluster.servers:
        keys = server.cli("--scan", "--pattern", f"{redis_prefix}:c:*").split()
        assert len(keys) > 1000  # about a third each
    assert await cluster.lookup_many(r.client_id for r in regs) == {r.client_id: r for r in regs}
    devices = await cluster.devices_many(r.client_id for r in regs)
    assert devices == {r.client_id: Device(r.client_id, r.device_type) for r in regs}
    assert await cluster.refresh("n1", [r.client_id for r in regs], TTL_S) == 1667
    assert sorted(d.client_id for d in await cluster.devices_of_user("u7")) == \
        [f"client-{i}" for i in (28, 29, 30, 31)]


async def test_cluster_reloads_scripts_after_a_flush(
    cluster: RedisRegistry, redis_cluster: ClusterServers
) -> None:
    await cluster.register([reg("c1")], TTL_S)
    for server in redis_cluster.servers:
        server.cli("script", "flush")
    await cluster.register([reg(f"c{i}", version=2) for i in range(50)], TTL_S)
    assert await cluster.refresh("n1", ["c1"], TTL_S) == 1
    assert await cluster.unregister("c1", "n1", 2)


# --- the server going away ----------------------------------------------------------------------


async def test_a_restarted_redis_is_used_again_without_help(redis_factory: Any) -> None:
    server = redis_factory()
    registry = RedisRegistry.from_url(server.url, prefix="rs")
    await registry.register([reg("c1")], TTL_S)
    await registry.heartbeat_node(NodeInfo("n1", "a:1", "eu", NodeState.ACTIVE, 1), TTL_S)
    server.stop()
    with pytest.raises(Unavailable, match="Redis unreachable") as down:  # the registry's outage
        await registry.lookup("c1")
    assert isinstance(down.value.__cause__, RedisConnectionError)
    with pytest.raises(Unavailable, match="Redis unreachable") as down:
        await registry.register([reg("c1", version=2)], TTL_S)
    assert isinstance(down.value.__cause__, RedisConnectionError)
    server.start()  # same port, empty (no persistence), no scripts loaded
    assert await registry.lookup("c1") is None
    await registry.register([reg("c1", version=3), reg("c2", version=3)], TTL_S)
    assert await registry.lookup("c1") == reg("c1", version=3)
    assert await registry.refresh("n1", ["c1", "c2"], TTL_S) == 2
    assert await registry.devices_of_user("u1") == [Device("c1", "phone"), Device("c2", "phone")]
    assert await registry.unregister("c2", "n1", 3)
    await registry.close()


async def test_every_operation_raises_unavailable_while_redis_is_down(redis_factory: Any) -> None:
    server = redis_factory()
    registry = RedisRegistry.from_url(server.url, prefix="down")
    await registry.register([reg("c1")], TTL_S)
    server.stop()
    for op, call in CALLS.items():
        with pytest.raises(Unavailable, match="Redis unreachable") as down:
            await call(registry)
        assert isinstance(down.value.__cause__, RedisConnectionError), op
    await registry.close()


# --- clients ------------------------------------------------------------------------------------


async def test_connect_makes_a_cluster_client_for_cluster_urls() -> None:
    cluster = connect("redis+cluster://user:pw@127.0.0.1:7001,[::1]:7002/")
    assert isinstance(cluster, RedisCluster)
    assert [(n.host, n.port) for n in cluster.startup_nodes] == \
        [("127.0.0.1", 7001), ("::1", 7002)]
    single = connect("redis://127.0.0.1:7001/2")
    assert isinstance(single, Redis)
    await cluster.aclose()
    await single.aclose()
    for bad in ("127.0.0.1:7001", "redis+cluster://hostonly", "redis+cluster://h:port"):
        with pytest.raises(ValueError):
            connect(bad)
    with pytest.raises(ValueError):
        connect("redis://127.0.0.1:7001", decode_responses=True)
    with pytest.raises(ValueError):
        RedisRegistry(Redis(decode_responses=True))


@pytest.mark.parametrize("args", [
    ("SET", "k", b"v\xff", 1, 1.5),
    ("SCRIPT LOAD", "return 1"),
    (b"CLIENT SETINFO", b"LIB-NAME", "redis-py"),
    ("EVALSHA", "0" * 40, 2, "zp:c:{ü}", "zp:u:{ü}", bytearray(b"x"), memoryview(b"y")),
])
def test_hiredis_packing_matches_redis_pys(args: tuple[Any, ...]) -> None:
    assert pack_with_hiredis(*args) == [b"".join(Connection().pack_command(*args))]


async def test_close_closes_only_a_client_the_registry_made(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    registry = RedisRegistry(client, prefix="close")
    await registry.close()
    assert await client.ping()
    await client.aclose()


def test_the_fast_registration_builder_makes_the_same_value() -> None:
    from registry.redis_layout import _registration

    built = _registration("c", "u", "tv", "n1", 2**60)
    assert built == Registration("c", "u", "tv", "n1", 2**60)
    assert hash(built) == hash(Registration("c", "u", "tv", "n1", 2**60))
    with pytest.raises(AttributeError):
        built.node_id = "other"  # type: ignore[misc]
