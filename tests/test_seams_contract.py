"""One contract suite for the router's seams: MessageQueue, NodeChannel and Inbox.

Every test runs against each implementation named in `FACTORIES`. An implementation is added by
writing a factory (a `Seams` subclass) and naming it there; the Redis one will time its dedup
window and expiries with the same injected clocks or a short real window. Tests at the end, marked
as memory-only, check what only the memory implementation promises (bounded bookkeeping).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from router.base import (
    Delivery,
    Inbox,
    InboxEntry,
    Message,
    MessageQueue,
    NodeChannel,
    Priority,
    Target,
)
from router.memory import MemoryInbox, MemoryNodeChannel, MemoryQueue

WINDOW_S = 60.0
S = TypeVar("S", MessageQueue, NodeChannel, Inbox)


class FakeClock:
    """Seconds (monotonic) and milliseconds (wall) that move only when told."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.now_ms = 1_700_000_000_000

    def monotonic(self) -> float:
        return self.now_s

    def wall_ms(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_s += seconds
        self.now_ms += int(seconds * 1000)


class Seams:
    """Builds seams under test sharing one fake clock; closes them all afterwards."""

    name = "abstract"

    def __init__(self) -> None:
        self.clock = FakeClock()
        self._made: list[MessageQueue | NodeChannel | Inbox] = []

    def queue(self, dedup_window_s: float = WINDOW_S) -> MessageQueue:
        raise NotImplementedError

    def channel(self, max_pending: int = 1000) -> NodeChannel:
        raise NotImplementedError

    def inbox(self, max_per_client: int = 100) -> Inbox:
        raise NotImplementedError

    def _track(self, seam: S) -> S:
        self._made.append(seam)
        return seam

    async def close(self) -> None:
        for seam in self._made:
            await seam.close()


class MemorySeams(Seams):
    name = "memory"

    def queue(self, dedup_window_s: float = WINDOW_S) -> MessageQueue:
        return self._track(MemoryQueue(dedup_window_s, clock=self.clock.monotonic))

    def channel(self, max_pending: int = 1000) -> NodeChannel:
        return self._track(MemoryNodeChannel(max_pending))

    def inbox(self, max_per_client: int = 100) -> Inbox:
        return self._track(MemoryInbox(max_per_client, clock_ms=self.clock.wall_ms))


FACTORIES: dict[str, Callable[[], Seams]] = {"memory": MemorySeams}


@pytest.fixture(params=sorted(FACTORIES))
async def seams(request: pytest.FixtureRequest) -> AsyncIterator[Seams]:
    made = FACTORIES[request.param]()
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


def entry(n: int, *, expires_at_ms: int = 1_700_000_000_000 + 60_000) -> InboxEntry:
    return InboxEntry(f"E{n:04d}", b'{"n":%d}' % n, expires_at_ms)


def delivery(n: int) -> Delivery:
    return Delivery(f"D{n:04d}", b"{}", clients=("c1",))


# --- MessageQueue -------------------------------------------------------------------------------


async def test_queue_is_fifo_within_a_priority(seams: Seams) -> None:
    queue = seams.queue()
    sent = [message() for _ in range(5)]
    for m in sent:
        assert await queue.put(m)
    taken = await queue.take("w1", 10, 0)
    assert [t.message for t in taken] == sent


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
    assert await queue.put(message(dedup_key="k"))
    assert not await queue.put(message(dedup_key="k"))
    assert await queue.put(message(dedup_key="other"))
    assert len(await queue.take("w1", 10, 0)) == 2


async def test_queue_dedup_key_free_again_after_window(seams: Seams) -> None:
    queue = seams.queue()
    assert await queue.put(message(dedup_key="k"))
    seams.clock.advance(WINDOW_S / 2)
    assert not await queue.put(message(dedup_key="k"))
    seams.clock.advance(WINDOW_S / 2 + 1)
    assert await queue.put(message(dedup_key="k"))


async def test_queue_without_dedup_key_never_dedups(seams: Seams) -> None:
    queue = seams.queue()
    assert await queue.put(message())
    assert await queue.put(message())


async def test_queue_depth_counts_waiting_only(seams: Seams) -> None:
    queue = seams.queue()
    await queue.put(message(Priority.HIGH))
    await queue.put(message(Priority.LOW))
    await queue.put(message(Priority.LOW))
    assert await queue.depth() == {Priority.HIGH: 1, Priority.NORMAL: 0, Priority.LOW: 2}
    await queue.take("w1", 1, 0)
    assert await queue.depth() == {Priority.HIGH: 0, Priority.NORMAL: 0, Priority.LOW: 2}


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
    assert await inbox.ack_through("nobody", "E9999") == 0


async def test_inbox_add_stores_for_each_client_separately(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.add(["c1", "c2"], entry(1))
    assert await inbox.ack("c1", [entry(1).id]) == 1
    assert await inbox.after("c1", None, 10) == []
    assert await inbox.after("c2", None, 10) == [entry(1)]


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
    now = seams.clock.now_ms
    await inbox.add(["c1"], entry(1, expires_at_ms=now + 1_000))
    await inbox.add(["c1"], entry(2, expires_at_ms=now + 10_000))
    await inbox.add(["c1"], entry(3, expires_at_ms=now + 1_000))
    seams.clock.advance(1)
    assert await inbox.after("c1", None, 10) == [entry(2, expires_at_ms=now + 10_000)]
    seams.clock.advance(9)
    assert await inbox.after("c1", None, 10) == []


async def test_inbox_does_not_store_an_already_expired_entry(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.add(["c1"], entry(1, expires_at_ms=seams.clock.now_ms))
    assert await inbox.after("c1", None, 10) == []


async def test_inbox_ack_counts_and_is_idempotent(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 4):
        await inbox.add(["c1"], entry(n))
    assert await inbox.ack("c1", [entry(1).id, entry(3).id, "E9999"]) == 2
    assert await inbox.ack("c1", [entry(1).id, entry(3).id]) == 0
    assert await inbox.after("c1", None, 10) == [entry(2)]


async def test_inbox_ack_through_removes_up_to_and_including(seams: Seams) -> None:
    inbox = seams.inbox()
    for n in range(1, 6):
        await inbox.add(["c1"], entry(n))
    assert await inbox.ack_through("c1", entry(3).id) == 3
    assert await inbox.ack_through("c1", entry(3).id) == 0
    assert await inbox.after("c1", None, 10) == [entry(4), entry(5)]
    assert await inbox.ack_through("c1", "E9999") == 2
    assert await inbox.after("c1", None, 10) == []


async def test_inbox_close_is_idempotent(seams: Seams) -> None:
    inbox = seams.inbox()
    await inbox.close()
    await inbox.close()


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
    await inbox.ack_through("b", entry(1).id)
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
