"""`router.pages.process_stats` and its stores: the record's encoding, one contract suite run
against
the in-memory store, one real Redis and a real Redis Cluster (`redis_server`, `redis_cluster`
under a per-test prefix), what only the Redis store shows (its keys, one slot, pruning the
index), and `StatsPublisher` riding out a real Redis outage (a private `redis_factory` server,
stopped and started again). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.crc import key_slot

from core.errors import Unavailable
from core.redis.client import connect
from router.pages.process_stats import (
    MemoryProcessStats,
    ProcessStats,
    ProcessStatsStore,
    decode,
    encode,
    merge_processes,
)
from router.pages.stats_publisher import REMOVE_TIMEOUT_S, StatsPublisher
from router.stores.redis_process_stats import RedisProcessStats
from tests.support.redis_servers import RedisCluster, RedisServer

pytestmark = pytest.mark.timeout(60)

ODD_IDS = ["host-1-abc", "a}b", "{x}", "ü-漢字", ""]


def record(process_id: str = "p1", kind: str = "api", **totals: int) -> ProcessStats:
    return ProcessStats.of(process_id, kind, "eu", totals)


# --- values, no I/O ------------------------------------------------------------------------------


def test_a_record_round_trips_and_sorts_its_totals() -> None:
    rec = record("r-1", "router", taken=5, expired=2)
    assert rec.totals == (("expired", 2), ("taken", 5))
    assert decode(encode(rec)) == rec
    for process_id in ODD_IDS:
        assert decode(encode(record(process_id))).process_id == process_id


def test_a_later_records_extra_fields_are_ignored() -> None:
    raw = b'["p", "api", "eu", [["deduped", 3]], "a field added later"]'
    assert decode(raw) == ProcessStats("p", "api", "eu", (("deduped", 3),))


def test_the_local_record_replaces_the_published_copy() -> None:
    merged = merge_processes([record("b", deduped=1), record("r", "router", expired=4)],
                             [record("b", deduped=7), record("c")])
    assert [(r.kind, r.process_id, r.totals) for r in merged] == [
        ("api", "b", (("deduped", 7),)), ("api", "c", ()), ("router", "r", (("expired", 4),))]


# --- the contract, against every store -----------------------------------------------------------


@dataclass
class Stores:
    """Makes the store under test; `elapse(s)` lets s seconds pass for it (memory: a fake
    clock; Redis: real time, its TTLs being the server's)."""

    store: ProcessStatsStore
    elapse: Callable[[float], Awaitable[None]]


def cluster_url(cluster: RedisCluster) -> str:
    return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def stores(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Stores]:
    if request.param == "memory":
        now = [100.0]

        async def advance(seconds: float) -> None:
            now[0] += seconds

        yield Stores(MemoryProcessStats(lambda: now[0]), advance)
        return
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        url = cluster_url(request.getfixturevalue("redis_cluster"))
    store = RedisProcessStats.from_url(url, prefix=redis_prefix)
    yield Stores(store, asyncio.sleep)
    await store.close()


async def test_published_records_are_live_and_a_new_publish_replaces_the_old(
        stores: Stores) -> None:
    store = stores.store
    assert await store.live() == []
    await store.publish(record("a", deduped=1), 60)
    await store.publish(record("r", "router", expired=2), 60)
    await store.publish(record("a", deduped=5), 60)
    assert sorted(await store.live(), key=lambda r: r.process_id) == [
        record("a", deduped=5), record("r", "router", expired=2)]


async def test_a_removed_record_is_gone_and_removing_twice_is_harmless(stores: Stores) -> None:
    store = stores.store
    await store.publish(record("a"), 60)
    await store.remove("a")
    await store.remove("a")
    await store.remove("never-published")
    assert await store.live() == []


async def test_a_record_not_published_again_expires_and_a_later_publish_revives_it(
        stores: Stores) -> None:
    store = stores.store
    await store.publish(record("short", deduped=1), 0.3)
    await store.publish(record("long", deduped=2), 60)
    await stores.elapse(0.5)
    assert await store.live() == [record("long", deduped=2)]
    await store.publish(record("short", deduped=3), 60)
    assert record("short", deduped=3) in await store.live()


async def test_odd_process_ids_are_kept_as_they_are(stores: Stores) -> None:
    for process_id in ODD_IDS:
        await stores.store.publish(record(process_id), 60)
    assert sorted(r.process_id for r in await stores.store.live()) == sorted(ODD_IDS)


def test_the_memory_store_prunes_expired_records_as_it_lists() -> None:
    now = [0.0]
    store = MemoryProcessStats(lambda: now[0])

    async def run() -> None:
        await store.publish(record("a"), 1)
        now[0] = 2.0
        assert len(store) == 1 and await store.live() == [] and len(store) == 0

    asyncio.run(run())


# --- what only Redis shows -----------------------------------------------------------------------


async def test_the_redis_keys_share_one_tag_and_expired_ids_leave_the_index(
        redis_server: RedisServer, redis_prefix: str) -> None:
    store = RedisProcessStats.from_url(redis_server.url, prefix=redis_prefix)
    client = connect(redis_server.url)
    try:
        assert store.set_key == f"{{{redis_prefix}:procs}}"
        assert store.key("a}b") == f"{{{redis_prefix}:procs}}:a}}b"
        await store.publish(record("gone"), 0.2)
        await store.publish(record("stays"), 60)
        pttl = await client.pttl(store.key("stays"))
        assert 59_000 < pttl <= 60_000
        assert await client.smembers(store.set_key) == {b"gone", b"stays"}
        await asyncio.sleep(0.4)
        assert [r.process_id for r in await store.live()] == ["stays"]
        assert await client.smembers(store.set_key) == {b"stays"}  # pruned as found
        await store.remove("stays")
        assert await client.exists(store.set_key, store.key("stays")) == 0
    finally:
        await client.aclose()
        await store.close()


async def test_on_a_cluster_every_key_is_in_one_slot(redis_cluster: RedisCluster,
                                                     redis_prefix: str) -> None:
    store = RedisProcessStats.from_url(cluster_url(redis_cluster), prefix=redis_prefix)
    try:
        ids = [f"proc-{i}" for i in range(20)]
        slots = {key_slot(store.key(p).encode()) for p in ids}
        assert slots == {key_slot(store.set_key.encode())}
        for process_id in ids:
            await store.publish(record(process_id, "router", expired=1), 0.3 if
                                process_id.endswith("7") else 60)
        await asyncio.sleep(0.5)
        live = await store.live()
        assert sorted(r.process_id for r in live) == sorted(set(ids) - {"proc-7", "proc-17"})
    finally:
        await store.close()


async def test_an_unreachable_redis_is_unavailable(redis_factory: Callable[..., RedisServer],
                                                   redis_prefix: str) -> None:
    server = redis_factory()
    store = RedisProcessStats.from_url(server.url, prefix=redis_prefix)
    server.stop()
    try:
        with pytest.raises(Unavailable):
            await store.publish(record(), 60)
        with pytest.raises(Unavailable):
            await store.live()
    finally:
        await store.close()


# --- the publisher -------------------------------------------------------------------------------


async def test_the_publisher_logs_an_outage_once_and_publishes_again_after_it(
        redis_factory: Callable[..., RedisServer], redis_prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    server = redis_factory()
    store = RedisProcessStats.from_url(server.url, prefix=redis_prefix)
    counts = {"deduped": 0}
    publisher = StatsPublisher(store, lambda: record("api-1", **counts), interval_s=0.05,
                               ttl_s=5)
    caplog.set_level(logging.WARNING, logger="zuulpush")
    try:
        publisher.start()
        await until(lambda: publisher.publishes >= 1)
        server.stop()
        before = publisher.publishes
        await asyncio.sleep(0.5)  # several failed publishes
        assert publisher.publishes == before
        failures = [r for r in caplog.records if "not published" in r.getMessage()]
        assert len(failures) == 1
        counts["deduped"] = 9
        server.start()
        # (the first may be one made before, that waited for the server)
        await until(lambda: publisher.publishes > before + 1)
        assert await store.live() == [record("api-1", deduped=9)]
        assert any("published again" in r.getMessage() for r in caplog.records)
        await publisher.stop()
        assert await store.live() == []  # a stopping process removes its record
    finally:
        await publisher.stop()
        await store.close()


async def test_a_stopping_publisher_does_not_wait_long_for_a_redis_that_does_not_answer(
        redis_factory: Callable[..., RedisServer], redis_prefix: str) -> None:
    server = redis_factory()
    store = RedisProcessStats.from_url(server.url, prefix=redis_prefix)
    publisher = StatsPublisher(store, lambda: record("api-2"), interval_s=60, ttl_s=60)
    try:
        publisher.start()
        await until(lambda: publisher.publishes == 1)
        server.pause()
        started = time.monotonic()
        await publisher.stop()
        assert time.monotonic() - started < REMOVE_TIMEOUT_S + 0.5
    finally:
        server.resume()
        await store.close()


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout_s)
