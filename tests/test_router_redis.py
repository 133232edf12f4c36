"""What the seams' contract suite cannot see of the router's Redis seams: a dead consumer's
messages claimed by another, dedup and weighted rounds shared by separate clients, payloads that
round-trip byte for byte, the inbox's cap and TTLs in Redis, cluster slots, a node channel fed by
two publishers, and surviving a Redis restart.

Real `redis-server` processes only (the session `redis_server` and `redis_cluster` under a
per-test prefix, or a private server from `redis_factory` to restart). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.crc import key_slot

from core.errors import Unavailable
from core.redis.client import Client, connect
from core.redis.keys import tag
from router.base import Delivery, InboxEntry, Message, Priority, PutResult, Target
from router.stores.redis_channel import RedisNodeChannel
from router.stores.redis_inbox import RedisInbox
from router.stores.redis_queue import RedisQueue
from tests.support.redis_servers import RedisCluster, RedisServer, free_port

WINDOW_S = 60.0
FAR_MS = 4_000_000_000_000
ODD_IDS = ["a{b", "a}b", "}lead", "{}", "%7D", "%", "", "ü-漢字-🙂", "x" * 200]

pytestmark = pytest.mark.timeout(60)


def cluster_url(cluster: RedisCluster) -> str:
    return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Client]:
    made = connect(redis_server.url)
    yield made
    await made.aclose()


@pytest.fixture(params=["single", "cluster"])
async def either_client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A client of the session server, then of the session cluster."""
    if request.param == "single":
        server: RedisServer = request.getfixturevalue("redis_server")
        made = connect(server.url)
    else:
        made = connect(cluster_url(request.getfixturevalue("redis_cluster")))
    yield made
    await made.aclose()


@pytest.fixture
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[Client]:
    made = connect(cluster_url(redis_cluster))
    yield made
    await made.aclose()


_counter = iter(range(1, 1_000_000))


def message(priority: Priority = Priority.NORMAL, *, dedup_key: str | None = None,
            data: Any = None, target: Target | None = None, topic: str = "t") -> Message:
    n = next(_counter)
    return Message.create(
        id=f"M{n:08d}", topic=topic, data={"n": n} if data is None else data,
        ts_ms=1_700_000_000_000, priority=priority, ttl_s=60,
        target=target or Target(clients=("c1",)), dedup_key=dedup_key)


# --- queue --------------------------------------------------------------------------------------


async def test_a_dead_consumers_batch_is_claimed_by_another_after_claim_idle(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    dying = RedisQueue.from_url(redis_server.url, prefix=redis_prefix, dedup_window_s=WINDOW_S,
                                claim_idle_s=0.3)
    sent = [message(p) for p in (Priority.LOW, Priority.HIGH, Priority.NORMAL, Priority.HIGH)]
    for m in sent:
        await dying.put(m)
    assert len(await dying.take("dead", 10, 0)) == 4
    await dying.close()  # never calls done: the process is gone

    survivor = RedisQueue.from_url(redis_server.url, prefix=redis_prefix,
                                   dedup_window_s=WINDOW_S, claim_idle_s=0.3)
    started = time.monotonic()
    assert await survivor.take("alive", 10, 0) == []  # not idle long enough yet
    claimed = await survivor.take("alive", 10, 5)  # waiting, it claims on schedule
    waited = time.monotonic() - started
    assert sorted(t.message.id for t in claimed) == sorted(m.id for m in sent)
    assert [t.message.priority for t in claimed][:2] == [Priority.HIGH, Priority.HIGH]
    assert 0.25 <= waited < 1.5
    await survivor.done("alive", [t.receipt for t in claimed])
    assert await survivor.depth() == dict.fromkeys(Priority, 0)
    pending = await survivor._client.execute_command("XPENDING", survivor.streams[1], "routers")
    assert pending["pending"] == 0
    assert await survivor.take("alive", 10, 0.4) == []  # nothing comes back once done
    await survivor.close()


async def test_done_deletes_entries_so_depth_is_what_waits(
    client: Client, redis_prefix: str
) -> None:
    queue = RedisQueue(client, prefix=redis_prefix, dedup_window_s=WINDOW_S)
    for _ in range(5):
        await queue.put(message(Priority.LOW))
    taken = await queue.take("w1", 3, 0)
    assert await queue.depth() == {Priority.HIGH: 0, Priority.NORMAL: 0, Priority.LOW: 2}
    assert await client.xlen(queue.streams[2]) == 5
    await queue.done("w1", [t.receipt for t in taken])
    await queue.done("w1", [t.receipt for t in taken])
    assert await client.xlen(queue.streams[2]) == 2
    assert await queue.depth() == {Priority.HIGH: 0, Priority.NORMAL: 0, Priority.LOW: 2}


async def test_dedup_holds_across_two_clients(redis_server: RedisServer, redis_prefix: str) -> None:
    first = RedisQueue.from_url(redis_server.url, prefix=redis_prefix, dedup_window_s=WINDOW_S)
    second = RedisQueue.from_url(redis_server.url, prefix=redis_prefix, dedup_window_s=WINDOW_S)
    results = await asyncio.gather(*(q.put(message(dedup_key="order-7{x}"))
                                     for q in (first, second) for _ in range(10)))
    [enqueued] = [r for r in results if not r.duplicate]
    assert [r for r in results if r.duplicate] == [PutResult(enqueued.id, duplicate=True)] * 19
    assert await first._client.get(first.dedup_key("order-7{x}")) == enqueued.id.encode()
    pttl = await first._client.pttl(first.dedup_key("order-7{x}"))
    assert 0 < pttl <= WINDOW_S * 1000
    assert sum((await second.depth()).values()) == 1
    await first.close()
    await second.close()


async def test_a_full_queue_stops_put_many_part_way(client: Client, redis_prefix: str) -> None:
    queue = RedisQueue(client, prefix=redis_prefix, dedup_window_s=WINDOW_S, max_depth=3)
    await queue.put(message())
    batch = [message(dedup_key="a"), message(), message(dedup_key="b"), message()]
    assert await queue.put_many(batch) == [PutResult(batch[0].id), PutResult(batch[1].id)]
    assert not await client.exists(queue.dedup_key("b"))  # refused: its key was not kept
    with pytest.raises(Unavailable, match="full"):
        await queue.put_many(batch[2:])


async def test_puts_of_one_loop_turn_go_to_redis_as_one_script_call(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    queue = RedisQueue.from_url(redis_server.url, prefix=redis_prefix, dedup_window_s=WINDOW_S)
    try:
        await queue.put(message())  # loads the script, makes the connection
        before = await _script_calls(queue._client)
        sent = [message(dedup_key="d" if i % 10 == 0 else None) for i in range(100)]
        results = await asyncio.gather(*(queue.put(m) for m in sent))
        # One call still, with each repeat's original id in it: the GET replaced an EXISTS.
        assert await _script_calls(queue._client) - before == 1
        assert results == [PutResult(m.id) if i % 10 or i == 0
                           else PutResult(sent[0].id, duplicate=True) for i, m in enumerate(sent)]
        taken = await queue.take("w", 200, 0)
        assert [t.message.id for t in taken][1:] == [
            m.id for i, m in enumerate(sent) if results[i]]
    finally:
        await queue.close()


async def test_a_take_marks_the_last_batch_done_in_the_same_call(
    client: Client, redis_prefix: str
) -> None:
    queue = RedisQueue(client, prefix=redis_prefix, dedup_window_s=WINDOW_S)
    for _ in range(3):
        await queue.put(message())
    first = await queue.take("w", 2, 0)
    before = await _script_calls(client)
    second = await queue.take("w", 2, 0, [t.receipt for t in first])
    assert await _script_calls(client) - before == 1
    assert len(second) == 1
    pending = await client.xpending(queue.streams[int(Priority.NORMAL)], "routers")
    assert pending["pending"] == 1  # the second batch's only: the first is done and deleted
    assert await client.xlen(queue.streams[int(Priority.NORMAL)]) == 1


async def test_a_coalesced_put_on_an_unreachable_redis_is_unavailable(
    redis_prefix: str,
) -> None:
    queue = RedisQueue.from_url(f"redis://127.0.0.1:{free_port()}", prefix=redis_prefix,
                                dedup_window_s=WINDOW_S)
    try:
        results = await asyncio.gather(*(queue.put(message()) for _ in range(3)),
                                       return_exceptions=True)
        assert [type(r) for r in results] == [Unavailable] * 3
    finally:
        await queue.close()


async def test_a_dedup_key_from_an_older_version_still_dedups_naming_the_repeat(
    client: Client, redis_prefix: str
) -> None:
    """Keys written before they held the original's id hold "1" (a fleet part way through an
    upgrade): a repeat is still dropped, answered with its own id as it was then."""
    queue = RedisQueue(client, prefix=redis_prefix, dedup_window_s=WINDOW_S)
    await client.set(queue.dedup_key("old"), b"1", px=60_000)
    repeat = message(dedup_key="old")
    assert await queue.put(repeat) == PutResult(repeat.id, duplicate=True)
    assert await queue.depth() == {p: 0 for p in Priority}


async def _script_calls(client: Client) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha",
                                                                  "cmdstat_eval"))


async def test_weighted_rounds_are_shared_by_every_consumer(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    queues = [RedisQueue.from_url(redis_server.url, prefix=redis_prefix, dedup_window_s=WINDOW_S)
              for _ in range(3)]
    for priority in Priority:
        for _ in range(20):
            await queues[0].put(message(priority))
    taken = [(await queues[i % 3].take(f"w{i % 3}", 1, 0))[0] for i in range(24)]
    counts = {p: sum(t.message.priority is p for t in taken) for p in Priority}
    assert counts == {Priority.HIGH: 16, Priority.NORMAL: 6, Priority.LOW: 2}
    for queue in queues:
        await queue.close()


async def test_full_queue_refuses_and_enqueues_nothing(client: Client, redis_prefix: str) -> None:
    queue = RedisQueue(client, prefix=redis_prefix, dedup_window_s=WINDOW_S, max_depth=2)
    await queue.put(message(Priority.HIGH))
    await queue.put(message(Priority.LOW))
    with pytest.raises(Unavailable, match="full"):
        await queue.put(message(Priority.NORMAL, dedup_key="k"))
    await queue.done("w", [t.receipt for t in await queue.take("w", 1, 0)])
    assert await queue.put(message(Priority.NORMAL, dedup_key="k"))  # the key was not kept


ODD_DATA: Any = {"ü": "漢字🙂", "nested": [1, 2.5, None, True, {"": []}], "q": "\"\\\u0000",
                 "big": 2**62, "s": "x" * 10_000}


async def test_messages_round_trip_with_every_field(
    either_client: Client, redis_prefix: str
) -> None:
    queue = RedisQueue(either_client, prefix=redis_prefix, dedup_window_s=WINDOW_S)
    sent = [
        message(data=ODD_DATA, topic="tópico/🙂", dedup_key="{dedup}:ü",
                target=Target(clients=("a{b", "ü"), users=("u1",),
                              device_types=frozenset({"tv", "phone"}))),
        message(Priority.HIGH, data=[], target=Target(broadcast=True,
                                                      device_types=frozenset({"web"}))),
        message(Priority.LOW, data="plain", target=Target(users=("u-🙂",))),
        message(data=1, target=Target(clients=("x", "y"))).forward("eu-wëst", ("y",)),
    ]
    assert sent[-1].forwarded_from == "eu-wëst" and sent[-1].target == Target(clients=("y",))
    for m in sent:
        assert await queue.put(m)
    taken = await queue.take("w", 10, 0)
    assert sorted((t.message for t in taken), key=lambda m: m.id) == sent
    assert taken[0].message.payload == sent[1].payload


async def test_inbox_and_channel_keep_payload_bytes_exactly(
    client: Client, redis_prefix: str
) -> None:
    raw = bytes(range(256)) + "ü🙂".encode()
    inbox = RedisInbox(client, prefix=redis_prefix, max_per_client=10)
    await inbox.add(["ü-client"], InboxEntry("E1", raw, FAR_MS))
    assert await inbox.after("ü-client", None, 10) == [InboxEntry("E1", raw, FAR_MS)]
    channel = RedisNodeChannel(client, prefix=redis_prefix)
    sent = [Delivery("D1", raw, clients=("a", "ü")), Delivery("D2", b""),
            Delivery("D3", b"{}", broadcast=True, device_types=frozenset({"tv", "web"}))]
    await channel.publish("n1", sent)
    assert await channel.receive("n1", 10, 0) == sent


# --- inbox --------------------------------------------------------------------------------------


async def test_inbox_cap_and_ttl_are_visible_in_redis(client: Client, redis_prefix: str) -> None:
    inbox = RedisInbox(client, prefix=redis_prefix, max_per_client=3)
    ids_key, entries_key, marks_key, handed_key = inbox.keys("c1")
    now = int(time.time() * 1000)
    for n in range(1, 6):
        await inbox.add(["c1"], InboxEntry(f"E{n}", b"x", now + 60_000))
        await inbox.given_many([("c1", [(f"E{n}", f"E{n}")])])
        await inbox.handed_many("b", [("c1", [f"E{n}"])])
    assert await client.zrange(ids_key, 0, -1) == [b"E3", b"E4", b"E5"]
    assert sorted(await client.hkeys(entries_key)) == [b"E3", b"E4", b"E5"]
    assert sorted(await client.hkeys(marks_key)) == [b"E3", b"E4", b"E5"]
    assert sorted(await client.hkeys(handed_key)) == [b"E3", b"E4", b"E5"]
    for key in (ids_key, entries_key, marks_key, handed_key):
        assert 55_000 < await client.pttl(key) <= 60_000
    await inbox.add(["c1"], InboxEntry("E6", b"x", now + 5_000))  # shorter: TTL kept
    assert await client.pttl(ids_key) > 55_000
    await inbox.add(["c1"], InboxEntry("E7", b"x", now + 120_000))  # longer: TTL extended
    for key in (ids_key, entries_key, marks_key, handed_key):
        assert 115_000 < await client.pttl(key) <= 120_000


async def test_an_idle_inbox_disappears_once_its_last_entry_expired(
    client: Client, redis_prefix: str
) -> None:
    inbox = RedisInbox(client, prefix=redis_prefix, max_per_client=10)
    now = int(time.time() * 1000)
    await inbox.add(["c1", "c2"], InboxEntry("E1", b"x", now + 200))
    await inbox.add(["c1"], InboxEntry("E2", b"x", now + 300))
    await inbox.given_many([("c1", [("E1", "E1")])])
    assert await client.exists(*inbox.keys("c1"), *inbox.keys("c2")) == 5
    await asyncio.sleep(0.35)
    assert await client.exists(*inbox.keys("c1"), *inbox.keys("c2")) == 0


async def test_inbox_reads_delete_expired_entries_and_acks_empty_the_keys(
    client: Client, redis_prefix: str
) -> None:
    inbox = RedisInbox(client, prefix=redis_prefix, max_per_client=10)
    now = int(time.time() * 1000)
    await inbox.add(["c1"], InboxEntry("E1", b"x", now + 100))
    await inbox.add(["c1"], InboxEntry("E2", b"y", FAR_MS))
    await asyncio.sleep(0.15)
    assert await inbox.after("c1", None, 10) == [InboxEntry("E2", b"y", FAR_MS)]
    assert await client.zcard(inbox.keys("c1")[0]) == 1
    await inbox.given_many([("c1", [("E2", "E2")])])
    assert await inbox.ack("c1", ["E2"]) == 1
    assert await client.exists(*inbox.keys("c1")) == 0


async def test_inbox_add_to_many_clients_and_long_pages(client: Client, redis_prefix: str) -> None:
    inbox = RedisInbox(client, prefix=redis_prefix, max_per_client=2000)
    clients = [f"c{n}" for n in range(3000)]
    await inbox.add(clients, InboxEntry("E1", b"x", FAR_MS))
    assert await inbox.after("c2999", None, 10) == [InboxEntry("E1", b"x", FAR_MS)]
    for n in range(1200):
        await inbox.add(["c0"], InboxEntry(f"F{n:05d}", b"x", FAR_MS))
    page = await inbox.after("c0", "E1", 1100)
    assert [e.id for e in page] == [f"F{n:05d}" for n in range(1100)]
    assert len(await inbox.pull("c0", None, 2000)) == 1201
    assert await inbox.through("c0", "F01199") == 1201


async def test_cluster_keeps_one_clients_inbox_keys_in_its_tags_slot(
    cluster_client: Client, redis_prefix: str
) -> None:
    inbox = RedisInbox(cluster_client, prefix=redis_prefix, max_per_client=10)
    await inbox.add(ODD_IDS, InboxEntry("E1", b"x", FAR_MS))
    for client_id in ODD_IDS:
        keys = inbox.keys(client_id)
        assert {key_slot(k.encode()) for k in keys} == {key_slot(tag(client_id).encode())}
        assert await inbox.pull(client_id, None, 10) == [InboxEntry("E1", b"x", FAR_MS)]
        await inbox.given_many([(client_id, [("E1", "E1")])])
        assert await inbox.resume_many([(client_id, None)], 10) == [
            [InboxEntry("E1", b"x", FAR_MS)]]
        await inbox.handed_many("b", [(client_id, ["E1"])])
        assert await inbox.unhanded_many("b", [client_id]) == [[]]
        assert await inbox.through(client_id, "E1") == 1
    queue = RedisQueue(cluster_client, prefix=redis_prefix, dedup_window_s=WINDOW_S)
    slots = {key_slot(k.encode()) for k in (*queue.streams, queue.credits_key,
                                            queue.dedup_key("a{b}"))}
    assert len(slots) == 1
    channel = RedisNodeChannel(cluster_client, prefix=redis_prefix)
    assert key_slot(channel.key("n}1").encode()) == key_slot(tag("n}1").encode())


# --- node channel -------------------------------------------------------------------------------


async def test_channel_receives_two_publishers_each_in_order(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    publishers = [RedisNodeChannel.from_url(redis_server.url, prefix=redis_prefix)
                  for _ in range(2)]
    receiver = RedisNodeChannel.from_url(redis_server.url, prefix=redis_prefix)
    assert await receiver.receive("n1", 10, 0) == []

    async def publish(who: int) -> None:
        for n in range(50):
            await publishers[who].publish("n1", [Delivery(f"P{who}-{n:03d}", b"{}")])

    await asyncio.gather(publish(0), publish(1))
    got: list[str] = []
    while len(got) < 100:
        batch = await receiver.receive("n1", 7, 2)
        assert batch
        got += [d.message_id for d in batch]
    for who in (0, 1):
        mine = [i for i in got if i.startswith(f"P{who}-")]
        assert mine == [f"P{who}-{n:03d}" for n in range(50)]
    for channel in (*publishers, receiver):
        await channel.close()


async def test_channel_trims_what_it_handed_out_and_expires_idle_streams(
    client: Client, redis_prefix: str
) -> None:
    channel = RedisNodeChannel(client, prefix=redis_prefix, ttl_s=30)
    for n in range(300):
        await channel.publish("n1", [Delivery(f"D{n}", b"{}")])
    assert 29_000 < await client.pttl(channel.key("n1")) <= 30_000
    assert len(await channel.receive("n1", 1000, 0)) == 300
    assert await channel.receive("n1", 1000, 0) == []
    assert await client.xlen(channel.key("n1")) < 300


async def test_channel_first_receive_catches_up_only_on_recent_deliveries(
    client: Client, redis_prefix: str
) -> None:
    publisher = RedisNodeChannel(client, prefix=redis_prefix)
    await publisher.publish("n1", [Delivery("old", b"{}")])
    await asyncio.sleep(0.05)
    late = RedisNodeChannel(client, prefix=redis_prefix, catch_up_s=0.02)
    assert await late.receive("n1", 10, 0) == []
    waiting = asyncio.create_task(late.receive("n1", 10, 5))
    await asyncio.sleep(0.05)
    await publisher.publish("n1", [Delivery("new", b"{}")])
    assert [d.message_id for d in await waiting] == ["new"]
    recent = RedisNodeChannel(client, prefix=redis_prefix)
    assert [d.message_id for d in await recent.receive("n1", 10, 0)] == ["old", "new"]


async def test_close_releases_a_waiting_receive(redis_server: RedisServer) -> None:
    channel = RedisNodeChannel.from_url(redis_server.url, prefix="closing")
    waiting = asyncio.create_task(channel.receive("n1", 10, 30))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await channel.close()
    assert await waiting == []
    assert time.monotonic() - started < 0.5


# --- the server going away ----------------------------------------------------------------------


async def test_a_restarted_redis_is_used_again_without_help(redis_factory: Any) -> None:
    server = redis_factory()
    queue = RedisQueue.from_url(server.url, prefix="rs", dedup_window_s=WINDOW_S)
    inbox = RedisInbox.from_url(server.url, prefix="rs", max_per_client=10)
    channel = RedisNodeChannel.from_url(server.url, prefix="rs")
    await queue.put(message())
    assert len(await queue.take("w", 10, 0)) == 1
    await channel.publish("n1", [Delivery("D1", b"{}")])
    assert len(await channel.receive("n1", 10, 0)) == 1

    server.stop()
    entry = InboxEntry("E1", b"x", FAR_MS)
    for call in (queue.put(message()), queue.take("w", 10, 0), queue.depth(),
                 inbox.add(["c1"], entry), inbox.after("c1", None, 10),
                 channel.publish("n1", [Delivery("D2", b"{}")]), channel.receive("n1", 10, 0)):
        with pytest.raises(Unavailable):
            await call

    server.start()  # same port, empty (no persistence): no streams, no group, no scripts
    sent = message(Priority.HIGH)
    assert await queue.put(sent)
    assert [t.message for t in await queue.take("w", 10, 0)] == [sent]
    assert await queue.depth() == dict.fromkeys(Priority, 0)
    await inbox.add(["c1"], entry)
    assert await inbox.after("c1", None, 10) == [entry]
    waiting = asyncio.create_task(channel.receive("n1", 10, 5))
    await asyncio.sleep(0.05)
    await channel.publish("n1", [Delivery("D3", b"{}")])
    assert [d.message_id for d in await waiting] == ["D3"]
    for seam in (queue, inbox, channel):
        await seam.close()


async def test_connections_broken_while_idle_are_made_again_by_the_first_call(
        redis_factory: Any) -> None:
    """Redis restarts while the pools' connections are idle: each seam's next call succeeds on
    the new server, rather than failing once per pooled connection."""
    server = redis_factory()
    queue = RedisQueue.from_url(server.url, prefix="rs", dedup_window_s=WINDOW_S)
    inbox = RedisInbox.from_url(server.url, prefix="rs", max_per_client=10)
    channel = RedisNodeChannel.from_url(server.url, prefix="rs")
    entry = InboxEntry("E1", b"x", FAR_MS)
    await queue.put(message())
    await inbox.add(["c1"], entry)
    await channel.publish("n1", [Delivery("D1", b"{}")])
    server.stop()
    server.start()  # same port, empty; nothing called in between
    sent = message()
    assert await queue.put(sent)
    await inbox.add(["c1"], entry)
    assert await inbox.after("c1", None, 10) == [entry]
    await channel.publish("n1", [Delivery("D2", b"{}")])
    assert [d.message_id for d in await channel.receive("n1", 10, 0)] == ["D2"]
    assert [t.message for t in await queue.take("w", 10, 0)] == [sent]
    for seam in (queue, inbox, channel):
        await seam.close()


async def test_a_read_waiting_when_redis_restarts_carries_on_on_the_new_one(
        redis_factory: Any) -> None:
    """An edge's blocking receive is in flight when Redis restarts: the broken call reconnects
    and is sent again (`RECONNECT_RETRY`), and gets what is published next, rather than failing
    the delivery loop's read."""
    server = redis_factory()
    channel = RedisNodeChannel.from_url(server.url, prefix="rs")
    publisher = RedisNodeChannel.from_url(server.url, prefix="rs")
    waiting = asyncio.create_task(channel.receive("n1", 10, 5))
    await asyncio.sleep(0.1)
    server.stop()
    server.start()  # same port, empty
    await publisher.publish("n1", [Delivery("D1", b"{}")])
    assert [d.message_id for d in await asyncio.wait_for(waiting, 10)] == ["D1"]
    for seam in (channel, publisher):
        await seam.close()
