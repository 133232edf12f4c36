"""One contract suite for the router's seams: MessageQueue, NodeChannel, Inbox and BroadcastLog.

Every test runs against each implementation named in `FACTORIES`: in memory, on one Redis, and on
a Redis Cluster. A factory makes a `Seams`: it builds the seams under test and knows their sense
of time. The memory seams run on a fake clock that `elapse` advances exactly (dedup window 60 s,
expiry unit 1 s). Redis keeps dedup windows with its own real clock, so the Redis factories use
real time throughout: a short real window and unit, and `elapse` sleeps (just past) the time asked
for; `slack_s` is how far past a deadline a check is made. Redis factories share the session
servers (`redis_server`, `redis_cluster`) under a key prefix of their own per test
(`redis_prefix`). Tests at the end, marked as memory-only, check what only the memory
implementation promises (bounded bookkeeping).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from core.redis.client import Client, connect
from router.base import (
    Broadcast,
    BroadcastLog,
    Delivery,
    Inbox,
    InboxEntry,
    Message,
    MessageQueue,
    NodeChannel,
    Priority,
    PutResult,
    Target,
)
from router.stores.memory import MemoryBroadcastLog, MemoryInbox, MemoryNodeChannel, MemoryQueue
from router.stores.redis_channel import RedisNodeChannel
from router.stores.redis_history import RedisBroadcastLog
from router.stores.redis_inbox import RedisInbox
from router.stores.redis_queue import RedisQueue
from tests.support.clock import FakeClock
from tests.support.redis_servers import RedisCluster, RedisServer

WINDOW_S = 60.0
FAR_MS = 4_000_000_000_000  # an expiry no test reaches (year 2096)
REDIS_WINDOW_S = 0.4
REDIS_UNIT_S = 0.15
REDIS_PAST_S = 0.01  # sleeps overshoot by this much, so a deadline slept to is passed
S = TypeVar("S", MessageQueue, NodeChannel, Inbox, BroadcastLog)

pytestmark = pytest.mark.timeout(60)


class Seams:
    """Builds seams under test; closes them all afterwards.

    `window_s` is the dedup window queues are made with, `unit_s` the expiry step of the inbox
    expiry tests, `slack_s` how far past a deadline a check is made; `now_ms()` is the wall clock
    the inbox reads and `elapse(s)` lets s seconds pass.
    """

    name = "abstract"
    window_s = WINDOW_S
    unit_s = 1.0
    slack_s = 1.0

    def __init__(self) -> None:
        self._made: list[MessageQueue | NodeChannel | Inbox | BroadcastLog] = []

    def queue(self) -> MessageQueue:
        raise NotImplementedError

    def channel(self, max_pending: int = 1000) -> NodeChannel:
        raise NotImplementedError

    def history(self, max_entries: int = 100) -> BroadcastLog:
        raise NotImplementedError

    def inbox(self, max_per_client: int = 100, *, peered: bool = False) -> Inbox:
        raise NotImplementedError

    def now_ms(self) -> int:
        raise NotImplementedError

    async def elapse(self, seconds: float) -> None:
        raise NotImplementedError

    def _track(self, seam: S) -> S:
        self._made.append(seam)
        return seam

    async def close(self) -> None:
        for seam in self._made:
            await seam.close()


class MemorySeams(Seams):
    name = "memory"

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__()
        self.clock = FakeClock()

    def queue(self) -> MessageQueue:
        return self._track(MemoryQueue(self.window_s, clock=self.clock.monotonic))

    def channel(self, max_pending: int = 1000) -> NodeChannel:
        return self._track(MemoryNodeChannel(max_pending))

    def inbox(self, max_per_client: int = 100, *, peered: bool = False) -> Inbox:
        return self._track(MemoryInbox(max_per_client, clock_ms=self.clock.wall_ms,
                                       peered=peered))

    def history(self, max_entries: int = 100) -> BroadcastLog:
        return self._track(MemoryBroadcastLog(max_entries, clock_ms=self.clock.wall_ms))

    def now_ms(self) -> int:
        return self.clock.now_ms

    async def elapse(self, seconds: float) -> None:
        self.clock.advance(seconds)


class RedisSeams(Seams):
    """Seams on one client of the session server (or cluster), under the test's own prefix."""

    name = "redis"
    window_s = REDIS_WINDOW_S
    unit_s = REDIS_UNIT_S
    slack_s = 0.05

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__()
        self.prefix: str = request.getfixturevalue("redis_prefix")
        self.client: Client = connect(self.url(request))

    def url(self, request: pytest.FixtureRequest) -> str:
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url

    def queue(self) -> MessageQueue:
        return self._track(RedisQueue(self.client, prefix=self.prefix,
                                      dedup_window_s=self.window_s))

    def channel(self, max_pending: int = 1000) -> NodeChannel:
        return self._track(RedisNodeChannel(self.client, prefix=self.prefix, maxlen=max_pending))

    def inbox(self, max_per_client: int = 100, *, peered: bool = False) -> Inbox:
        return self._track(RedisInbox(self.client, prefix=self.prefix,
                                      max_per_client=max_per_client, peered=peered))

    def history(self, max_entries: int = 100) -> BroadcastLog:
        return self._track(RedisBroadcastLog(self.client, prefix=self.prefix,
                                             max_entries=max_entries))

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def elapse(self, seconds: float) -> None:
        await asyncio.sleep(seconds + REDIS_PAST_S)

    async def close(self) -> None:
        await super().close()
        await self.client.aclose()


class ClusterSeams(RedisSeams):
    name = "cluster"

    def url(self, request: pytest.FixtureRequest) -> str:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)


FACTORIES: dict[str, Callable[[pytest.FixtureRequest], Seams]] = {
    "memory": MemorySeams,
    "redis": RedisSeams,
    "cluster": ClusterSeams,
}


@pytest.fixture(params=sorted(FACTORIES))
async def seams(request: pytest.FixtureRequest) -> AsyncIterator[Seams]:
    made = FACTORIES[request.param](request)
    yield made
    await made.close()


_counter = iter(range(1, 1_000_000))


def message(
    priority: Priority = Priority.NORMAL, *, dedup_key: str | None = None, tag: str = ""
) -> Message:
    n = next(_counter)
    return Message.create(
        id=f"M{n:08d}", topic=tag or "t", data={"n": n}, ts_ms=1_700_000_000_000,
        priority=priority, ttl_s=60, target=Target(clients=("c1",)), dedup_key=dedup_key,
    )


def entry(n: int, *, expires_at_ms: int = FAR_MS, forwarded: bool = False) -> InboxEntry:
    return InboxEntry(f"E{n:04d}", b'{"n":%d}' % n, expires_at_ms, forwarded)


def broadcast(n: int, *types: str, expires_at_ms: int = FAR_MS) -> Broadcast:
    return Broadcast(f"B{n:04d}", b'{"b":%d}' % n, expires_at_ms, frozenset(types))


def delivery(n: int) -> Delivery:
    return Delivery(f"D{n:04d}", b"{}", clients=("c1",))


# --- MessageQueue -------------------------------------------------------------------------------


async def test_queue_is_fifo_within_a_priority(seams: Seams) -> None:
    queue = seams.queue()
    sent = [message() for _ in range(5)]
    for m in sent:
        assert await queue.put(m) == PutResult(m.id)
    taken = await queue.take("w1", 10, 0)
    assert [t.message for t in taken] == sent


async def test_queue_put_many_keeps_order_and_drops_duplicates_within_it(seams: Seams) -> None:
    queue = seams.queue()
    first = message(dedup_key="seen")
    await queue.put(first)
    batch = [message(), message(dedup_key="seen"), message(dedup_key="k"),
             message(dedup_key="k"), message(Priority.HIGH)]
    assert await queue.put_many(batch) == [
        PutResult(batch[0].id), PutResult(first.id, duplicate=True), PutResult(batch[2].id),
        PutResult(batch[2].id, duplicate=True), PutResult(batch[4].id)]
    assert await queue.put_many([]) == []
    taken = [t.message for t in await queue.take("w1", 10, 0)]
    assert taken == [batch[4], first, batch[0], batch[2]]


async def test_queue_take_returns_at_most_max_n(seams: Seams) -> None:
    queue = seams.queue()
    for _ in range(5):
        await queue.put(message())
    assert len(await queue.take("w1", 2, 0)) == 2
    assert len(await queue.take("w1", 10, 0)) == 3


async def test_queue_take_times_out_empty(seams: Seams) -> None:
    queue = seams.queue()
    assert await queue.take("w1", 10, 0) == []
    assert await queue.take("w1", 10, 0.01) == []


async def test_queue_take_waits_for_a_put(seams: Seams) -> None:
    queue = seams.queue()
    waiting = asyncio.create_task(queue.take("w1", 10, 30))
    await asyncio.sleep(0)  # let the take start waiting
    sent = message()
    await queue.put(sent)
    assert [t.message for t in await waiting] == [sent]


async def test_queue_two_waiting_consumers_share_without_loss(seams: Seams) -> None:
    queue = seams.queue()
    first = asyncio.create_task(queue.take("w1", 1, 30))
    second = asyncio.create_task(queue.take("w2", 1, 30))
    await asyncio.sleep(0)
    sent = [message(), message()]
    for m in sent:
        await queue.put(m)
    got = [t.message for t in await first] + [t.message for t in await second]
    assert sorted(m.id for m in got) == sorted(m.id for m in sent)


async def test_queue_serves_higher_priority_first(seams: Seams) -> None:
    queue = seams.queue()
    low, high = message(Priority.LOW), message(Priority.HIGH)
    await queue.put(low)
    await queue.put(high)
    assert [t.message for t in await queue.take("w1", 1, 0)] == [high]


async def test_queue_weighted_round_when_all_priorities_are_full(seams: Seams) -> None:
    queue = seams.queue()
    for priority in Priority:
        for _ in range(20):
            await queue.put(message(priority))
    taken = await queue.take("w1", 12, 0)
    counts = {p: sum(t.message.priority is p for t in taken) for p in Priority}
    assert counts == {Priority.HIGH: 8, Priority.NORMAL: 3, Priority.LOW: 1}
    assert taken[0].message.priority is Priority.HIGH


async def test_queue_never_starves_low_even_one_at_a_time(seams: Seams) -> None:
    queue = seams.queue()
    for _ in range(100):
        await queue.put(message(Priority.HIGH))
    await queue.put(message(Priority.LOW))
    priorities = [(await queue.take("w1", 1, 0))[0].message.priority for _ in range(12)]
    assert Priority.LOW in priorities
    assert priorities[0] is Priority.HIGH


async def test_queue_dedup_within_window(seams: Seams) -> None:
    queue = seams.queue()
    first, other = message(dedup_key="k"), message(dedup_key="other")
    assert await queue.put(first) == PutResult(first.id)
    assert await queue.put(message(dedup_key="k")) == PutResult(first.id, duplicate=True)
    assert await queue.put(other) == PutResult(other.id)
    assert [t.message for t in await queue.take("w1", 10, 0)] == [first, other]


async def test_queue_duplicate_names_the_original_message_every_time(seams: Seams) -> None:
    """A repeat answers the id of the message that was enqueued under the key (the one that is
    delivered), however often it comes and whichever way it is put, so a sender can match the
    two; `bool()` of a result still says whether it was enqueued."""
    queue = seams.queue()
    original = message(dedup_key="order-7")
    assert await queue.put(original)
    for _ in range(3):
        repeat = await queue.put(message(dedup_key="order-7"))
        assert (repeat.id, repeat.duplicate, bool(repeat)) == (original.id, True, False)
    [from_batch] = await queue.put_many([message(dedup_key="order-7")])
    assert from_batch == PutResult(original.id, duplicate=True)
    assert [t.message for t in await queue.take("w1", 10, 0)] == [original]


async def test_queue_concurrent_puts_of_one_key_name_the_one_enqueued(seams: Seams) -> None:
    queue = seams.queue()
    sent = [message(dedup_key="once") for _ in range(5)]
    results = await asyncio.gather(*(queue.put(m) for m in sent))
    [taken] = [t.message for t in await queue.take("w1", 10, 0)]
    assert sorted(results, key=lambda r: r.duplicate) == [PutResult(taken.id)] + [
        PutResult(taken.id, duplicate=True)] * 4


async def test_queue_dedup_key_free_again_after_window(seams: Seams) -> None:
    queue = seams.queue()
    first, later = message(dedup_key="k"), message(dedup_key="k")
    assert await queue.put(first) == PutResult(first.id)
    await seams.elapse(seams.window_s / 2)
    assert await queue.put(message(dedup_key="k")) == PutResult(first.id, duplicate=True)
    await seams.elapse(seams.window_s / 2 + seams.slack_s)
    assert await queue.put(later) == PutResult(later.id)
    assert await queue.put(message(dedup_key="k")) == PutResult(later.id, duplicate=True)


async def test_queue_without_dedup_key_never_dedups(seams: Seams) -> None:
    queue = seams.queue()
    sent = [message(), message()]
    assert [await queue.put(m) for m in sent] == [PutResult(m.id) for m in sent]


async def test_queue_depth_counts_waiting_only(seams: Seams) -> None:
    queue = seams.queue()
    await queue.put(message(Priority.HIGH))
    await queue.put(message(Priority.LOW))
    await queue.put(message(Priority.LOW))
    assert await queue.depth() == {Priority.HIGH: 1, Priority.NORMAL: 0, Priority.LOW: 2}
    await queue.take("w1", 1, 0)
    assert await queue.depth() == {Priority.HIGH: 0, Priority.NORMAL: 0, Priority.LOW: 2}


async def test_queue_lag_is_how_long_the_oldest_waiting_message_has_waited(
        seams: Seams) -> None:
    queue = seams.queue()
    assert await queue.lag() == {p: 0.0 for p in Priority}
    await queue.put(message(Priority.HIGH))
    await seams.elapse(0.2)
    await queue.put(message(Priority.HIGH))
    await queue.put(message(Priority.LOW))
    lag = await queue.lag()
    assert 0.2 <= lag[Priority.HIGH] < 5 and lag[Priority.NORMAL] == 0.0
    assert lag[Priority.LOW] < lag[Priority.HIGH]
    await queue.take("w1", 1, 0)  # the oldest high one: the next one has waited less
    assert (await queue.lag())[Priority.HIGH] < lag[Priority.HIGH] - 0.1
    await queue.take("w1", 2, 0)
    assert await queue.lag() == {p: 0.0 for p in Priority}


async def test_queue_done_and_close_are_idempotent(seams: Seams) -> None:
    queue = seams.queue()
    await queue.put(message())
    taken = await queue.take("w1", 1, 0)
    receipts = [t.receipt for t in taken]
    await queue.done("w1", receipts)
    await queue.done("w1", receipts)
    await queue.close()
    await queue.close()


async def test_queue_close_releases_a_waiting_take(seams: Seams) -> None:
    queue = seams.queue()
    waiting = asyncio.create_task(queue.take("w1", 1, 30))
    await asyncio.sleep(0)
    await queue.close()
    assert await waiting == []


# --- NodeChannel --------------------------------------------------------------------------------


async def test_channel_keeps_publish_order_across_batches(seams: Seams) -> None:
    channel = seams.channel()
    await channel.publish("n1", [delivery(1), delivery(2)])
    await channel.publish("n1", [delivery(3)])
    assert await channel.receive("n1", 10, 0) == [delivery(1), delivery(2), delivery(3)]


async def test_channel_receive_returns_at_most_max_n(seams: Seams) -> None:
    channel = seams.channel()
    await channel.publish("n1", [delivery(i) for i in range(5)])
    assert await channel.receive("n1", 2, 0) == [delivery(0), delivery(1)]
    assert await channel.receive("n1", 10, 0) == [delivery(i) for i in range(2, 5)]


async def test_channel_nodes_are_separate(seams: Seams) -> None:
    channel = seams.channel()
    await channel.publish("n1", [delivery(1)])
    await channel.publish("n2", [delivery(2)])
    assert await channel.receive("n2", 10, 0) == [delivery(2)]
    assert await channel.receive("n1", 10, 0) == [delivery(1)]


async def test_channel_receive_times_out_empty(seams: Seams) -> None:
    channel = seams.channel()
    await channel.publish("n1", [delivery(1)])
    assert await channel.receive("n2", 10, 0) == []
    assert await channel.receive("n2", 10, 0.01) == []


async def test_channel_receive_waits_for_a_publish(seams: Seams) -> None:
    channel = seams.channel()
    waiting = asyncio.create_task(channel.receive("n1", 10, 30))
    await asyncio.sleep(0)
    await channel.publish("n1", [delivery(1)])
    assert await waiting == [delivery(1)]


async def test_channel_lagging_node_keeps_the_newest(seams: Seams) -> None:
    channel = seams.channel(max_pending=3)
    sent = [delivery(i) for i in range(6)]
    for d in sent:
        await channel.publish("n1", [d])
    received = await channel.receive("n1", 100, 0)
    assert 1 <= len(received) <= 3
    assert received == sent[-len(received):]


async def test_channel_close_is_idempotent(seams: Seams) -> None:
    channel = seams.channel()
    await channel.close()
    await channel.close()


# --- Inbox --------------------------------------------------------------------------------------


async def test_inbox_after_none_returns_all_oldest_first(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in (3, 1, 2):  # out of order, as from several routers
        await inbox.add(["c1"], entry(n))
    assert await inbox.after("c1", None, 10) == [entry(1), entry(2), entry(3)]


async def test_inbox_after_an_id_is_strictly_after_it(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 5):
        await inbox.add(["c1"], entry(n))
    assert await inbox.after("c1", entry(2).id, 10) == [entry(3), entry(4)]
    assert await inbox.after("c1", entry(4).id, 10) == []
    assert await inbox.after("c1", "E0002x", 10) == [entry(3), entry(4)]  # an id never stored


async def test_inbox_after_respects_limit(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 6):
        await inbox.add(["c1"], entry(n))
    assert await inbox.after("c1", None, 2) == [entry(1), entry(2)]
    assert await inbox.after("c1", None, 0) == []


async def test_inbox_unknown_client_is_empty(seams: Seams) -> None:
    inbox = seams.inbox()
    assert await inbox.after("nobody", None, 10) == []
    assert await inbox.ack("nobody", ["E0001"]) == 0
    assert await inbox.through("nobody", "E9999") == 0
    assert await inbox.pull("nobody", None, 10) == []
    assert await inbox.resume_many([("nobody", "E9999")], 10) == [[]]
    await inbox.given_many([("nobody", [("E0001", "E0001")])])
    assert await inbox.after("nobody", None, 10) == []


async def test_inbox_add_stores_for_each_client_separately(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.add(["c1", "c2"], entry(1))
    assert await inbox.ack("c1", [entry(1).id]) == 1
    assert await inbox.after("c1", None, 10) == []
    assert await inbox.after("c2", None, 10) == [entry(1)]


async def test_inbox_add_many_is_add_for_each_item(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.add_many([(["c1", "c2"], entry(2)), (["c1"], entry(1)), ([], entry(3)),
                          (["c2"], entry(2))])
    assert await inbox.after("c1", None, 10) == [entry(1), entry(2)]
    assert await inbox.after("c2", None, 10) == [entry(2)]
    await inbox.add_many([])


async def test_inbox_add_is_idempotent(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.add(["c1"], entry(1))
    await inbox.add(["c1"], entry(1))
    assert await inbox.after("c1", None, 10) == [entry(1)]


async def test_inbox_cap_drops_the_oldest(seams: Seams) -> None:
    inbox = seams.inbox(max_per_client=3)
    for n in range(1, 6):
        await inbox.add(["c1"], entry(n))
    assert await inbox.after("c1", None, 10) == [entry(3), entry(4), entry(5)]


async def test_inbox_skips_expired_entries(seams: Seams) -> None:
    inbox = seams.inbox()
    now, unit_ms = seams.now_ms(), int(seams.unit_s * 1000)
    await inbox.add(["c1"], entry(1, expires_at_ms=now + unit_ms))
    await inbox.add(["c1"], entry(2, expires_at_ms=now + 4 * unit_ms))
    await inbox.add(["c1"], entry(3, expires_at_ms=now + unit_ms))
    await seams.elapse(seams.unit_s)
    assert await inbox.after("c1", None, 10) == [entry(2, expires_at_ms=now + 4 * unit_ms)]
    await seams.elapse(3 * seams.unit_s)
    assert await inbox.after("c1", None, 10) == []


async def test_inbox_does_not_store_an_already_expired_entry(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.add(["c1"], entry(1, expires_at_ms=seams.now_ms()))
    assert await inbox.after("c1", None, 10) == []


async def test_inbox_ack_counts_and_is_idempotent(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 4):
        await inbox.add(["c1"], entry(n))
    assert await inbox.ack("c1", [entry(1).id, entry(3).id, "E9999"]) == 2
    assert await inbox.ack("c1", [entry(1).id, entry(3).id]) == 0
    assert await inbox.after("c1", None, 10) == [entry(2)]


async def test_inbox_ack_many_acks_each_clients_own_entries(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 4):
        await inbox.add(["c1", "c2"], entry(n))
    acks = [("c1", [entry(1).id, entry(2).id]), ("c2", [entry(3).id, "E9999"]), ("c3", ["E1"])]
    assert await inbox.ack_many(acks) == 3
    assert await inbox.ack_many(acks) == 0
    assert await inbox.ack_many([]) == 0
    assert await inbox.after("c1", None, 10) == [entry(3)]
    assert await inbox.after("c2", None, 10) == [entry(1), entry(2)]


async def given(inbox: Inbox, client_id: str, *marks: tuple[int, int]) -> None:
    """Record entries given: (entry n, mark n) each."""
    await inbox.given_many([(client_id, [(entry(n).id, entry(m).id) for n, m in marks])])


async def test_inbox_resume_many_without_a_resume_id_answers_each_first_page(
        seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 6):
        await inbox.add(["c1"], entry(n))
    await inbox.add(["c2"], entry(9))
    reads = [("c1", None), ("nobody", None), ("c2", None)]
    assert await inbox.resume_many(reads, 2) == [[entry(1), entry(2)], [], [entry(9)]]
    assert await inbox.resume_many(reads, 0) == [[]] * 3
    assert await inbox.resume_many([], 10) == []
    assert await inbox.after("c1", None, 10) == [entry(n) for n in range(1, 6)]


async def test_inbox_resume_removes_the_resume_id_and_what_was_given_below_it(
        seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 8):
        await inbox.add(["c1"], entry(n))
    # 1, 2 given in order; 4 given late, after 6 (its mark is 6); 5 given with its own id;
    # 3 never given (its router was killed with the batch taken): older than the resume id.
    await given(inbox, "c1", (1, 1), (2, 2), (5, 5), (4, 6), (6, 6))
    assert await inbox.resume_many([("c1", entry(5).id)], 10) == [
        [entry(3), entry(4), entry(6), entry(7)]]


async def test_inbox_resume_never_removes_what_was_not_given(seams: Seams) -> None:
    """A resume id that is newer than everything does not mean "everything received"."""
    inbox = seams.inbox()
    for n in range(1, 4):
        await inbox.add(["c1", "c2"], entry(n))
    assert await inbox.resume_many([("c1", "E9999"), ("c2", entry(3).id)], 10) == [
        [entry(1), entry(2), entry(3)], [entry(1), entry(2)]]


async def test_inbox_resume_many_resumes_each_client_on_its_own(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 6):
        await inbox.add(["c1", "c2"], entry(n))
        await given(inbox, "c1", (n, n))
        await given(inbox, "c2", (n, n))
    pages = await inbox.resume_many([("c1", entry(2).id), ("c2", entry(4).id),
                                     ("nobody", entry(4).id)], 10)
    assert pages == [[entry(3), entry(4), entry(5)], [entry(5)], []]


async def test_inbox_a_mark_only_rises(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 5):
        await inbox.add(["c1"], entry(n))
    await given(inbox, "c1", (1, 3))  # given late on one connection
    await given(inbox, "c1", (1, 1))  # and in order on another, recorded later
    assert await inbox.through("c1", entry(2).id) == 1  # 2 itself; 1 is kept (mark 3)
    assert await inbox.through("c1", entry(4).id) == 2  # 4 itself, and 1 (3 < 4)
    assert await inbox.after("c1", None, 10) == [entry(3)]


async def test_inbox_given_skips_entries_not_there(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.add(["c1"], entry(2))
    await given(inbox, "c1", (1, 1), (2, 2))  # 1: acked already, or a broadcast
    await inbox.given_many([])
    await inbox.add(["c1"], entry(1))  # stored late: not given
    assert await inbox.through("c1", entry(3).id) == 1
    assert await inbox.after("c1", None, 10) == [entry(1)]


async def test_inbox_ack_and_the_cap_remove_marks_with_their_entries(seams: Seams) -> None:
    inbox = seams.inbox(max_per_client=2)
    await inbox.add(["c1"], entry(1))
    await inbox.add(["c1"], entry(2))
    await given(inbox, "c1", (1, 1), (2, 2))
    assert await inbox.ack("c1", [entry(2).id]) == 1
    await inbox.add(["c1"], entry(2))  # the same id stored again (a router's retry): not given
    await inbox.add(["c1"], entry(3))  # pushes 1 out, with its mark
    await inbox.add(["c1"], entry(1))  # stored again: the cap drops it at once (the oldest)
    await inbox.add(["c1"], entry(4))
    assert await inbox.through("c1", entry(9).id) == 0
    assert await inbox.after("c1", None, 10) == [entry(3), entry(4)]


async def test_inbox_pull_marks_what_it_answers(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in (1, 2, 4, 5):
        await inbox.add(["c1"], entry(n))
    assert await inbox.pull("c1", None, 2) == [entry(1), entry(2)]
    assert await inbox.pull("c1", entry(2).id, 1) == [entry(4)]
    await inbox.add(["c1"], entry(3))  # stored after the pull passed its place
    assert await inbox.through("c1", entry(4).id) == 3
    assert await inbox.after("c1", None, 10) == [entry(3), entry(5)]
    assert await inbox.pull("c1", None, 10) == [entry(3), entry(5)]
    assert await inbox.through("c1", entry(5).id) == 2
    assert await inbox.pull("c1", None, 10) == []


async def test_inbox_keeps_whether_an_entry_was_forwarded(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.add(["c1"], entry(1, forwarded=True))
    await inbox.add(["c1"], entry(2))
    assert await inbox.after("c1", None, 10) == [entry(1, forwarded=True), entry(2)]
    assert await inbox.resume_many([("c1", None)], 10) == [[entry(1, forwarded=True), entry(2)]]


async def test_peered_inbox_trusts_marks_only_from_a_resume_id_given_here(seams: Seams) -> None:
    """One region's inbox of several: a resume id that was not given here, or that came from
    another region, may be from what the device got there: only that id goes."""
    inbox = seams.inbox(peered=True)
    for n in range(1, 4):
        await inbox.add(["c1", "c2", "c3"], entry(n))
    await inbox.add(["c2"], entry(5, forwarded=True))
    await inbox.add(["c3"], entry(5))
    for client_id in ("c1", "c2", "c3"):
        await given(inbox, client_id, (1, 1), (2, 2), (5, 5))
    assert await inbox.resume_many([("c1", entry(4).id), ("c2", entry(5).id),
                                    ("c3", entry(5).id)], 10) == [
        [entry(1), entry(2), entry(3)], [entry(1), entry(2), entry(3)], [entry(3)]]
    assert await inbox.through("c1", entry(3).id) == 1  # 3: here, but not marked
    await given(inbox, "c1", (2, 2))
    assert await inbox.after("c1", None, 10) == [entry(1), entry(2)]


async def test_inbox_unhanded_leaves_out_what_was_handed_to_that_region(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 5):
        await inbox.add(["c1", "c2"], entry(n))
    await inbox.handed_many("b", [("c1", [entry(1).id, entry(3).id, "E9999"]),
                                  ("nobody", [entry(1).id])])
    await inbox.handed_many("c", [("c1", [entry(2).id])])
    await inbox.handed_many("b", [("c1", [entry(1).id])])  # again: no change
    await inbox.handed_many("b", [])
    assert await inbox.unhanded_many("b", ["c1", "c2", "nobody"]) == [
        [entry(2), entry(4)], [entry(n) for n in range(1, 5)], []]
    assert await inbox.unhanded_many("c", ["c1"]) == [[entry(1), entry(3), entry(4)]]
    assert await inbox.unhanded_many("b", []) == []
    assert await inbox.ack("c1", [entry(1).id]) == 1
    await inbox.add(["c1"], entry(1))  # stored again: not handed
    assert await inbox.unhanded_many("b", ["c1"]) == [[entry(1), entry(2), entry(4)]]


async def test_inbox_close_is_idempotent(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.close()
    await inbox.close()


# --- BroadcastLog -------------------------------------------------------------------------------


async def test_history_after_is_strictly_after_oldest_first(seams: Seams) -> None:
    history = seams.history()
    for n in (3, 1, 2, 4):  # out of order, as from several routers
        await history.add(broadcast(n))
    assert await history.after(broadcast(1).id, 10) == [broadcast(2), broadcast(3), broadcast(4)]
    assert await history.after(broadcast(4).id, 10) == []
    assert await history.after("B0002x", 10) == [broadcast(3), broadcast(4)]  # never stored
    assert await history.after("A", 2) == [broadcast(1), broadcast(2)]
    assert await history.after("A", 0) == []


async def test_history_keeps_payload_and_device_types_exactly(seams: Seams) -> None:
    history = seams.history()
    kept = [broadcast(1), broadcast(2, "tv"), broadcast(3, "tv", "ios,\"odd\""),
            Broadcast("B0004", b"\x00{\"data\":\"\\n\"}" + bytes(range(200, 256)), FAR_MS)]
    for b in kept:
        await history.add(b)
    assert await history.after("A", 10) == kept
    assert kept[1].reaches("tv") and not kept[1].reaches("ios") and kept[0].reaches("ios")


async def test_history_add_is_idempotent(seams: Seams) -> None:
    history = seams.history()
    await history.add(broadcast(1, "tv"))
    await history.add(broadcast(1, "tv"))
    assert await history.after("A", 10) == [broadcast(1, "tv")]


async def test_history_cap_drops_the_oldest(seams: Seams) -> None:
    history = seams.history(max_entries=3)
    for n in range(1, 6):
        await history.add(broadcast(n))
    assert await history.after("A", 10) == [broadcast(3), broadcast(4), broadcast(5)]


async def test_history_skips_expired_and_never_keeps_an_expired_one(seams: Seams) -> None:
    history = seams.history()
    now, unit_ms = seams.now_ms(), int(seams.unit_s * 1000)
    await history.add(broadcast(1, expires_at_ms=now + unit_ms))
    await history.add(broadcast(2, expires_at_ms=now + 4 * unit_ms))
    await history.add(broadcast(3, expires_at_ms=now))
    await seams.elapse(seams.unit_s)
    assert await history.after("A", 10) == [broadcast(2, expires_at_ms=now + 4 * unit_ms)]
    await seams.elapse(3 * seams.unit_s)
    assert await history.after("A", 10) == []


async def test_history_close_is_idempotent(seams: Seams) -> None:
    history = seams.history()
    await history.close()
    await history.close()


# --- memory only: bounded bookkeeping -------------------------------------------------------------


async def test_memory_queue_forgets_expired_dedup_keys() -> None:
    clock = FakeClock()
    queue = MemoryQueue(WINDOW_S, clock=clock.monotonic)
    for n in range(100):
        await queue.put(message(dedup_key=f"k{n}"))
    clock.advance(WINDOW_S)
    await queue.put(message(dedup_key="fresh"))
    assert list(queue._seen) == ["fresh"]
    assert len(queue._expiries) == 1


async def test_memory_queue_refuses_past_max_depth() -> None:
    queue = MemoryQueue(WINDOW_S, max_depth=1)
    await queue.put(message())
    with pytest.raises(Exception, match="full") as caught:
        await queue.put(message())
    assert getattr(caught.value, "http_status", None) == 503


async def test_memory_channel_counts_what_a_lagging_node_lost() -> None:
    channel = MemoryNodeChannel(max_pending=3)
    await channel.publish("n1", [delivery(i) for i in range(5)])
    assert channel.pending("n1") == 3
    assert channel.dropped("n1") == 2


async def test_memory_inbox_forgets_emptied_clients() -> None:
    clock = FakeClock()
    inbox = MemoryInbox(10, clock_ms=clock.wall_ms)
    await inbox.add(["a", "b", "c"], entry(1, expires_at_ms=clock.now_ms + 1_000))
    await inbox.ack("a", [entry(1).id])
    await inbox.through("b", entry(1).id)
    assert inbox.clients() == 1
    clock.advance(2)
    assert await inbox.after("c", None, 10) == []
    assert inbox.clients() == 0


async def test_memory_inbox_sweep_prunes_unread_clients() -> None:
    clock = FakeClock()
    inbox = MemoryInbox(10, clock_ms=clock.wall_ms, sweep_interval_ms=1_000)
    await inbox.add([f"c{n}" for n in range(50)], entry(1, expires_at_ms=clock.now_ms + 500))
    clock.advance(1)
    await inbox.add(["fresh"], entry(2))
    assert inbox.clients() == 1
