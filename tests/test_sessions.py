"""`router.pages.sessions`: the dashboard's session cookie (pure), and one contract suite for
`SessionRevocations` run against the in-memory store, one real Redis and a real Redis Cluster
(`redis_server`, `redis_cluster`, under a per-test prefix); then what only the Redis store shows
(its keys and their TTL, one slot) and an unreachable Redis. Nothing is mocked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.crc import key_slot

from core.errors import Unavailable
from core.redis.client import connect
from router.pages.sessions import (
    REVOCATION_MARGIN_S,
    MemorySessionRevocations,
    Session,
    SessionRevocations,
    read_session,
    session_cookie,
)
from router.stores.redis_sessions import RedisSessionRevocations
from tests.support.redis_servers import RedisCluster, RedisServer

pytestmark = pytest.mark.timeout(60)

KEY = "the-admin-key"
SID = "0123456789abcdef0123456789abcdef"


# --- the cookie, no I/O --------------------------------------------------------------------------


def test_a_cookie_states_its_session_and_expiry_under_the_admin_keys_signature() -> None:
    cookie = session_cookie(KEY, 2000, SID)
    assert cookie.startswith(f"2000.{SID}.")
    assert read_session(KEY, cookie, 1999.0) == Session(SID, 2000)
    assert read_session(KEY, cookie, 2000.0) is None  # expired
    assert read_session("another-key", cookie, 1000.0) is None
    other_id = "f" * 32
    assert read_session(KEY, cookie.replace(SID, other_id), 1000.0) is None  # id not signed
    assert read_session(KEY, cookie.replace("2000.", "9999."), 1000.0) is None


def test_each_login_is_a_session_of_its_own() -> None:
    first, second = session_cookie(KEY, 2000), session_cookie(KEY, 2000)
    assert first != second
    one, two = read_session(KEY, first, 0), read_session(KEY, second, 0)
    assert one is not None and two is not None and one.session_id != two.session_id


def test_a_revocation_outlives_its_cookie_by_the_margin() -> None:
    assert Session(SID, 2000).revocation_ttl_s(1900.0) == 100 + REVOCATION_MARGIN_S


# --- the contract, against every store -----------------------------------------------------------


@dataclass
class Stores:
    """The store under test; `elapse(s)` lets s seconds pass for it (memory: a fake clock;
    Redis: real time, its TTLs being the server's)."""

    store: SessionRevocations
    elapse: Callable[[float], Awaitable[None]]


def cluster_url(cluster: RedisCluster) -> str:
    return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def stores(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Stores]:
    if request.param == "memory":
        now = [100.0]

        async def advance(seconds: float) -> None:
            now[0] += seconds

        yield Stores(MemorySessionRevocations(lambda: now[0]), advance)
        return
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        url = cluster_url(request.getfixturevalue("redis_cluster"))
    store = RedisSessionRevocations.from_url(url, prefix=redis_prefix)
    yield Stores(store, asyncio.sleep)
    await store.close()


async def test_a_revoked_session_is_revoked_and_others_are_not(stores: Stores) -> None:
    store = stores.store
    assert not await store.is_revoked(SID)
    await store.revoke(SID, 60)
    await store.revoke(SID, 60)  # idempotent
    assert await store.is_revoked(SID)
    assert not await store.is_revoked("f" * 32)


async def test_a_revocation_lasts_its_time_and_no_longer(stores: Stores) -> None:
    store = stores.store
    await store.revoke("short", 0.3)
    await store.revoke("long", 60)
    await stores.elapse(0.5)
    assert not await store.is_revoked("short")
    assert await store.is_revoked("long")


async def test_a_session_already_over_is_not_recorded(stores: Stores) -> None:
    await stores.store.revoke("over", 0)
    await stores.store.revoke("long over", -100)
    assert not await stores.store.is_revoked("over")
    assert not await stores.store.is_revoked("long over")


async def test_closing_twice_is_harmless(redis_server: RedisServer, redis_prefix: str) -> None:
    store = RedisSessionRevocations.from_url(redis_server.url, prefix=redis_prefix)
    await store.close()
    await store.close()
    memory = MemorySessionRevocations()
    await memory.close()
    await memory.close()


def test_the_memory_store_drops_expired_revocations_as_it_revokes() -> None:
    now = [0.0]
    store = MemorySessionRevocations(lambda: now[0])

    async def run() -> None:
        await store.revoke("a", 1)
        now[0] = 2.0
        await store.revoke("b", 1)
        assert len(store) == 1 and await store.is_revoked("b")

    asyncio.run(run())


# --- what only Redis shows -----------------------------------------------------------------------


async def test_the_redis_key_is_the_id_under_one_tag_with_the_revocations_ttl(
        redis_server: RedisServer, redis_prefix: str) -> None:
    store = RedisSessionRevocations.from_url(redis_server.url, prefix=redis_prefix)
    client = connect(redis_server.url)
    try:
        assert store.key(SID) == f"{{{redis_prefix}:sessions}}:{SID}"
        await store.revoke(SID, 60)
        pttl = await client.pttl(store.key(SID))
        assert 59_000 < pttl <= 60_000
    finally:
        await client.aclose()
        await store.close()


async def test_on_a_cluster_every_key_is_in_one_slot(redis_cluster: RedisCluster,
                                                     redis_prefix: str) -> None:
    store = RedisSessionRevocations.from_url(cluster_url(redis_cluster), prefix=redis_prefix)
    try:
        ids = [f"{i:032x}" for i in range(20)]
        assert len({key_slot(store.key(s).encode()) for s in ids}) == 1
        for session_id in ids:
            await store.revoke(session_id, 60)
        assert all([await store.is_revoked(s) for s in ids])
    finally:
        await store.close()


async def test_an_unreachable_redis_is_unavailable(redis_factory: Callable[..., RedisServer],
                                                   redis_prefix: str) -> None:
    server = redis_factory()
    store = RedisSessionRevocations.from_url(server.url, prefix=redis_prefix)
    server.stop()
    try:
        with pytest.raises(Unavailable):
            await store.revoke(SID, 60)
        with pytest.raises(Unavailable):
            await store.is_revoked(SID)
    finally:
        await store.close()
