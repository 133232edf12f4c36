"""One contract suite for the registry seam, run against each implementation in `FACTORIES`.

A factory makes a `Made`: the registry under test and its sense of time. The in-memory registry
runs on a fake clock that `elapse` advances exactly (TTL 60 s, checks 1 s from each deadline). Redis
expires keys on its own real clock, so the Redis factories use short real TTLs and `elapse` sleeps
(just past) the time asked for; `slack_s` is how close to a deadline a check may come there.
Redis factories share session servers (`redis_server`, `redis_cluster`) under a key prefix of
their own per test (`redis_prefix`). The `replicated` factory is a region's `ReplicatedRegistry`:
a `RedisRegistry` on the session server, announcing its writes on a change stream on the same
server, as `registry.factory` builds one with peer regions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from registry.base import Device, NodeInfo, NodeState, Registration, Registry
from registry.changes import ChangeLog
from registry.memory import MemoryRegistry
from registry.redis import RedisRegistry
from registry.replicated import ReplicatedRegistry
from tests.support.clock import FakeClock
from tests.support.redis_servers import RedisCluster, RedisServer

TTL_S = 60.0
DEVICE_TTL_S = 3600.0
REDIS_TTL_S = 0.4
REDIS_DEVICE_TTL_S = 0.8
REDIS_SLACK_S = 0.15
REDIS_PAST_S = 0.005  # Redis expires a key strictly after its PX, to the millisecond


@dataclass
class Made:
    """A registry under test, the TTLs to test it with, and how to let time pass.

    `ttl_s` is the registration (and node) TTL of the expiry tests, `device_ttl_s` the registry's
    device TTL, `slack_s` how close to an expiry a check is made, `elapse(s)` lets s seconds pass.
    Tests that do not wait use the long `TTL_S`.
    """

    registry: Registry
    ttl_s: float
    device_ttl_s: float
    slack_s: float
    elapse: Callable[[float], Awaitable[None]]


async def memory_registry(request: pytest.FixtureRequest) -> Made:
    clock = FakeClock()

    async def elapse(seconds: float) -> None:
        clock.advance(seconds)

    registry = MemoryRegistry(device_ttl_s=DEVICE_TTL_S, clock=clock)
    return Made(registry, TTL_S, DEVICE_TTL_S, 1.0, elapse)


async def _sleep_past(seconds: float) -> None:
    await asyncio.sleep(seconds + REDIS_PAST_S)


def _on_redis(url: str, request: pytest.FixtureRequest) -> Made:
    registry = RedisRegistry.from_url(
        url, prefix=request.getfixturevalue("redis_prefix"), device_ttl_s=REDIS_DEVICE_TTL_S)
    return Made(registry, REDIS_TTL_S, REDIS_DEVICE_TTL_S, REDIS_SLACK_S, _sleep_past)


async def redis_registry(request: pytest.FixtureRequest) -> Made:
    server: RedisServer = request.getfixturevalue("redis_server")
    return _on_redis(server.url, request)


async def cluster_registry(request: pytest.FixtureRequest) -> Made:
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    nodes = ",".join(f"{host}:{port}" for host, port in cluster.startup_nodes)
    return _on_redis(f"redis+cluster://{nodes}", request)


async def replicated_registry(request: pytest.FixtureRequest) -> Made:
    made = await redis_registry(request)
    local = made.registry
    assert isinstance(local, RedisRegistry)
    changes = ChangeLog(local.client, prefix=request.getfixturevalue("redis_prefix"))
    made.registry = ReplicatedRegistry(local, changes, "eu")
    return made


FACTORIES: dict[str, Callable[[pytest.FixtureRequest], Awaitable[Made]]] = {
    "memory": memory_registry,
    "redis": redis_registry,
    "cluster": cluster_registry,
    "replicated": replicated_registry,
}


@pytest.fixture(params=sorted(FACTORIES))
async def made(request: pytest.FixtureRequest) -> AsyncIterator[Made]:
    made = await FACTORIES[request.param](request)
    yield made
    await made.registry.close()


def reg(
    client: str, node_id: str, version: int, *, user: str = "u1", dt: str = "phone"
) -> Registration:
    return Registration(client, user, dt, node_id, version)


def node(node_id: str, state: NodeState = NodeState.ACTIVE, connections: int = 0) -> NodeInfo:
    return NodeInfo(node_id, f"10.0.0.1:{8000 + len(node_id)}", "eu", state, connections)


# --- registrations ------------------------------------------------------------------------------


async def test_register_then_lookup(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1)], TTL_S)
    assert await r.lookup("c1") == reg("c1", "n1", 1)
    assert await r.lookup("c2") is None


async def test_lookup_many_leaves_out_absent_clients(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1), reg("c2", "n2", 1)], TTL_S)
    found = await r.lookup_many(["c1", "c2", "c3"])
    assert found == {"c1": reg("c1", "n1", 1), "c2": reg("c2", "n2", 1)}
    assert await r.lookup_many([]) == {}


async def test_registration_expires_after_its_ttl(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1)], made.ttl_s)
    await made.elapse(made.ttl_s - made.slack_s)
    assert await r.lookup("c1") is not None
    await made.elapse(made.slack_s)
    assert await r.lookup("c1") is None
    assert await r.lookup_many(["c1"]) == {}


async def test_refresh_by_the_owner_extends(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1), reg("c2", "n1", 1)], made.ttl_s)
    await made.elapse(made.ttl_s - made.slack_s)
    assert await r.refresh("n1", ["c1", "c2", "unknown"], made.ttl_s) == 2
    await made.elapse(made.ttl_s - made.slack_s)
    assert await r.lookup("c1") == reg("c1", "n1", 1)


async def test_refresh_by_another_node_changes_nothing(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1)], made.ttl_s)
    await made.elapse(made.ttl_s - made.slack_s)
    assert await r.refresh("n2", ["c1"], made.ttl_s) == 0
    await made.elapse(made.slack_s)
    assert await r.lookup("c1") is None


async def test_refresh_does_not_revive_an_expired_record(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1)], made.ttl_s)
    await made.elapse(made.ttl_s)
    assert await r.refresh("n1", ["c1"], made.ttl_s) == 0
    assert await r.lookup("c1") is None


async def test_unregister_deletes_only_its_own_record(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 5)], TTL_S)
    assert not await r.unregister("c1", "n1", 4)
    assert not await r.unregister("c1", "n2", 5)
    assert await r.lookup("c1") is not None
    assert await r.unregister("c1", "n1", 5)
    assert await r.lookup("c1") is None
    assert not await r.unregister("c1", "n1", 5)


async def test_stale_unregister_after_a_move_keeps_the_new_record(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1)], TTL_S)
    await r.register([reg("c1", "n2", 2)], TTL_S)  # the device reconnected elsewhere
    assert not await r.unregister("c1", "n1", 1)  # the old node's late cleanup
    assert await r.lookup("c1") == reg("c1", "n2", 2)


async def test_an_older_version_never_replaces_a_newer_one(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n2", 2)], TTL_S)
    await r.register([reg("c1", "n1", 1)], TTL_S)  # late or replayed write
    assert await r.lookup("c1") == reg("c1", "n2", 2)
    await r.register([reg("c1", "n3", 3)], TTL_S)
    assert await r.lookup("c1") == reg("c1", "n3", 3)


async def test_registrations_in_one_batch_apply_independently(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 5)], TTL_S)
    await r.register([reg("c1", "n2", 1), reg("c2", "n2", 1)], TTL_S)
    assert (await r.lookup("c1")) == reg("c1", "n1", 5)
    assert (await r.lookup("c2")) == reg("c2", "n2", 1)


# --- devices ------------------------------------------------------------------------------------


async def test_devices_of_user_includes_offline_devices(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1, dt="phone"), reg("c2", "n1", 1, dt="tv")], made.ttl_s)
    await r.register([reg("c3", "n1", 1, user="u2")], made.ttl_s)
    assert await r.unregister("c2", "n1", 1)
    await made.elapse(made.ttl_s)  # registrations gone, devices remembered
    devices = sorted(await r.devices_of_user("u1"), key=lambda d: d.client_id)
    assert devices == [Device("c1", "phone"), Device("c2", "tv")]
    assert await r.devices_of_user("nobody") == []


async def test_device_of_one_client(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1, dt="tv")], TTL_S)
    assert await r.device("c1") == Device("c1", "tv")
    assert await r.device("c2") is None


async def test_devices_expire_after_the_device_ttl(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1)], made.ttl_s)
    await made.elapse(made.device_ttl_s)
    assert await r.devices_of_user("u1") == []
    assert await r.device("c1") is None


async def test_a_device_moving_to_another_user_leaves_the_first(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1, user="u1")], TTL_S)
    await r.register([reg("c1", "n1", 2, user="u2")], TTL_S)
    assert await r.devices_of_user("u1") == []
    assert await r.devices_of_user("u2") == [Device("c1", "phone")]


# --- nodes --------------------------------------------------------------------------------------


async def test_nodes_heartbeat_state_and_expiry(made: Made) -> None:
    r = made.registry
    await r.heartbeat_node(node("n1"), made.ttl_s)
    await r.heartbeat_node(node("n2", NodeState.DRAINING), made.ttl_s / 2)
    by_id = {n.node_id: n for n in await r.nodes()}
    assert by_id["n1"].state is NodeState.ACTIVE
    assert by_id["n2"].state is NodeState.DRAINING
    await made.elapse(made.ttl_s / 2)
    assert [n.node_id for n in await r.nodes()] == ["n1"]
    await made.elapse(made.ttl_s / 2)
    assert await r.nodes() == []


async def test_a_heartbeat_replaces_the_node_record(made: Made) -> None:
    r = made.registry
    await r.heartbeat_node(node("n1", connections=1), TTL_S)
    await r.heartbeat_node(node("n1", NodeState.DRAINING, connections=7), TTL_S)
    assert await r.nodes() == [node("n1", NodeState.DRAINING, connections=7)]


async def test_a_drain_request_is_taken_once_or_expires_and_is_not_a_node(made: Made) -> None:
    r = made.registry
    await r.heartbeat_node(node("n1"), made.ttl_s)
    assert not await r.take_drain_request("n1")
    await r.request_drain("n1", made.ttl_s / 2)
    await r.request_drain("drain:n1", made.ttl_s / 2)  # an odd node id names another request
    assert [n.node_id for n in await r.nodes()] == ["n1"]  # the request is no node record
    assert not await r.take_drain_request("n2")
    assert await r.drain_pending("n1") and await r.drain_pending("n1")  # looking takes nothing
    assert not await r.drain_pending("n2")
    assert await r.take_drain_request("n1")
    assert not await r.take_drain_request("n1")  # taken: a restarted n1 does not drain again
    assert not await r.drain_pending("n1")
    await made.elapse(made.ttl_s / 2)
    assert not await r.drain_pending("drain:n1")
    assert not await r.take_drain_request("drain:n1")  # expired untaken


async def test_remove_node_is_immediate(made: Made) -> None:
    r = made.registry
    await r.heartbeat_node(node("n1"), TTL_S)
    await r.remove_node("n1")
    await r.remove_node("n1")
    assert await r.nodes() == []


async def test_close_is_idempotent(made: Made) -> None:
    await made.registry.close()
    await made.registry.close()


def test_node_count_by_device_type() -> None:
    info = NodeInfo("n1", "a", "eu", NodeState.ACTIVE, 10, (("phone", 6), ("tv", 4)))
    assert info.count() == 10
    assert info.count(frozenset({"tv"})) == 4
    assert info.count(frozenset({"tv", "phone", "watch"})) == 10


# --- locations and batched device reads ---------------------------------------------------------


async def test_locate_many_tells_whether_the_node_is_alive_and_active(made: Made) -> None:
    r = made.registry
    await r.heartbeat_node(node("n1"), TTL_S)
    await r.heartbeat_node(node("n2", NodeState.DRAINING), TTL_S)
    await r.register([reg("c1", "n1", 1), reg("c2", "n2", 1), reg("c3", "dead", 1)], TTL_S)
    found = await r.locate_many(["c1", "c2", "c3", "c4"])
    assert set(found) == {"c1", "c2", "c3"}
    assert found["c1"].registration == reg("c1", "n1", 1) and found["c1"].reachable
    assert found["c2"].node is not None and found["c2"].node.state is NodeState.DRAINING
    assert not found["c2"].reachable
    assert found["c3"].node is None and not found["c3"].reachable


async def test_devices_many_knows_offline_devices(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n1", 1, dt="tv"), reg("c2", "n1", 1, dt="phone")], TTL_S)
    await r.unregister("c2", "n1", 1)
    assert await r.devices_many(["c1", "c2", "c3"]) == {
        "c1": Device("c1", "tv"), "c2": Device("c2", "phone")}


async def test_equal_versions_are_won_by_the_higher_node_id_whatever_the_order(made: Made) -> None:
    r = made.registry
    await r.register([reg("c1", "n2", 5)], TTL_S)
    await r.register([reg("c1", "n1", 5)], TTL_S)
    await r.register([reg("c9", "n1", 5)], TTL_S)
    await r.register([reg("c9", "n2", 5)], TTL_S)
    assert (await r.lookup("c1"), await r.lookup("c9")) == (reg("c1", "n2", 5), reg("c9", "n2", 5))


# --- what the router asks of every registry -----------------------------------------------------


async def test_a_users_devices_narrowed_by_device_type(made: Made) -> None:
    from router.base import Target
    from router.resolve import resolve_clients

    r = made.registry
    await r.register([reg("phone", "n1", 1, user="u1", dt="phone"),
                      reg("tv", "n2", 1, user="u1", dt="tv"),
                      reg("other", "n1", 1, user="u2", dt="tv")], made.ttl_s)
    await r.unregister("tv", "n2", 1)  # offline devices count: their inbox keeps the message
    assert await resolve_clients(Target(users=("u1",)), r) == ("phone", "tv")
    assert await resolve_clients(Target(users=("u1",), device_types=frozenset({"tv"})), r) == (
        "tv",)
    assert await resolve_clients(
        Target(clients=("other", "phone"), device_types=frozenset({"tv"})), r) == ("other",)
