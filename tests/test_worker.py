"""RouterWorker over the memory seams: store first, deliver per active node, drop the expired."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from registry.base import NodeInfo, NodeState, Registration
from registry.memory import MemoryRegistry
from router.base import Broadcast, Delivery, InboxEntry, Message, Priority, Taken, Target
from router.config import RouterConfig
from router.memory import MemoryBroadcastLog, MemoryInbox, MemoryNodeChannel, MemoryQueue
from router.worker import RouterWorker

NOW_MS = 1_700_000_000_000
TTL_S = 60.0


class SpyQueue(MemoryQueue):
    """A memory queue that remembers what was marked done."""

    def __init__(self) -> None:
        super().__init__(600.0)
        self.done_receipts: list[str] = []

    async def done(self, consumer: str, receipts: Sequence[str]) -> None:
        self.done_receipts.extend(receipts)


class FailingChannel(MemoryNodeChannel):
    """Fails every publish to node `bad`."""

    async def publish(self, node_id: str, deliveries: Sequence[Delivery]) -> None:
        if node_id == "bad":
            raise ConnectionError("node unreachable")
        await super().publish(node_id, deliveries)


@dataclass
class World:
    queue: SpyQueue
    registry: MemoryRegistry
    inbox: MemoryInbox
    channel: MemoryNodeChannel
    worker: RouterWorker
    history: MemoryBroadcastLog

    async def connect(self, client: str, node_id: str) -> None:
        await self.registry.register([Registration(client, "u", "phone", node_id, 1)], TTL_S)

    async def node(self, node_id: str, state: NodeState = NodeState.ACTIVE) -> None:
        await self.registry.heartbeat_node(NodeInfo(node_id, "addr", "eu", state, 0), TTL_S)

    async def received(self, node_id: str) -> list[Delivery]:
        return await self.channel.receive(node_id, 1000, 0)

    async def stored(self, client: str) -> list[str]:
        return [e.id for e in await self.inbox.after(client, None, 1000)]


async def make_world(channel: MemoryNodeChannel | None = None) -> World:
    queue = SpyQueue()
    registry = MemoryRegistry(clock=lambda: 0.0)
    world_clock = [NOW_MS]
    inbox = MemoryInbox(100, clock_ms=lambda: world_clock[0])
    channel = channel or MemoryNodeChannel(1000)
    history = MemoryBroadcastLog(100, clock_ms=lambda: world_clock[0])
    worker = RouterWorker(
        queue, registry, inbox, channel, consumer="w1", config=RouterConfig(),
        clock_ms=lambda: world_clock[0], take_timeout_s=0.01, history=history,
    )
    return World(queue, registry, inbox, channel, worker, history)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    made = await make_world()
    await made.node("n1")
    await made.node("n2")
    yield made
    await made.queue.close()
    await made.channel.close()


_counter = iter(range(1, 1_000_000))


def message(*clients: str, ts_ms: int = NOW_MS, ttl_s: int = 60, **target: object) -> Message:
    n = next(_counter)
    return Message.create(
        id=f"M{n:08d}", topic="t", data=n, ts_ms=ts_ms, priority=Priority.NORMAL, ttl_s=ttl_s,
        target=Target(clients=clients, **target),  # type: ignore[arg-type]
    )


def taken(*messages: Message) -> list[Taken]:
    return [Taken(m, m.id) for m in messages]


async def test_delivers_one_batch_per_node(world: World) -> None:
    await world.connect("c1", "n1")
    await world.connect("c2", "n1")
    await world.connect("c3", "n2")
    first, second = message("c1", "c2", "c3"), message("c3", "c1")
    await world.worker.handle(taken(first, second))
    assert await world.received("n1") == [
        Delivery(first.id, first.payload, clients=("c1", "c2")),
        Delivery(second.id, second.payload, clients=("c1",)),
    ]
    assert await world.received("n2") == [
        Delivery(first.id, first.payload, clients=("c3",)),
        Delivery(second.id, second.payload, clients=("c3",)),
    ]
    assert world.worker.stats.delivered == 4
    assert world.worker.stats.stored == 5
    assert world.queue.done_receipts == [first.id, second.id]


async def test_delivered_messages_also_wait_in_the_inbox_until_acked(world: World) -> None:
    await world.connect("c1", "n1")
    sent = message("c1", ttl_s=30)
    await world.worker.handle(taken(sent))
    assert await world.inbox.after("c1", None, 10) == [
        InboxEntry(sent.id, sent.payload, NOW_MS + 30_000)
    ]


async def test_expired_message_is_dropped_counted_and_not_stored(world: World) -> None:
    await world.connect("c1", "n1")
    stale = message("c1", ts_ms=NOW_MS - 60_000, ttl_s=60)
    fresh = message("c1")
    await world.worker.handle(taken(stale, fresh))
    assert world.worker.stats.expired == 1
    assert [d.message_id for d in await world.received("n1")] == [fresh.id]
    assert await world.stored("c1") == [fresh.id]
    assert world.queue.done_receipts == [stale.id, fresh.id]


async def test_offline_client_finds_the_message_in_its_inbox(world: World) -> None:
    sent = message("offline")
    await world.worker.handle(taken(sent))
    assert await world.received("n1") == []
    assert await world.stored("offline") == [sent.id]
    assert world.worker.stats.held == 1
    assert world.worker.stats.delivered == 0


async def test_draining_node_is_skipped(world: World) -> None:
    await world.node("n2", NodeState.DRAINING)
    await world.connect("c1", "n1")
    await world.connect("c2", "n2")
    sent = message("c1", "c2")
    await world.worker.handle(taken(sent))
    assert [d.clients for d in await world.received("n1")] == [("c1",)]
    assert await world.received("n2") == []
    assert await world.stored("c2") == [sent.id]
    assert world.worker.stats.held == 1


async def test_dead_node_is_skipped(world: World) -> None:
    await world.connect("c1", "gone")  # registered, but the node stopped heartbeating
    sent = message("c1")
    await world.worker.handle(taken(sent))
    assert await world.received("gone") == []
    assert await world.stored("c1") == [sent.id]


async def test_broadcast_goes_to_every_active_node_and_no_inbox(world: World) -> None:
    await world.node("n3", NodeState.DRAINING)
    await world.connect("c1", "n1")
    sent = message(broadcast=True, device_types=frozenset({"tv"}))
    await world.worker.handle(taken(sent))
    expected = Delivery(sent.id, sent.payload, broadcast=True, device_types=frozenset({"tv"}))
    assert await world.received("n1") == [expected]
    assert await world.received("n2") == [expected]
    assert await world.received("n3") == []
    assert world.inbox.clients() == 0
    assert world.worker.stats.delivered == 2


class HistoryCheckingChannel(MemoryNodeChannel):
    """Records, at each publish, which broadcasts the history already held."""

    def __init__(self) -> None:
        super().__init__(1000)
        self.history: MemoryBroadcastLog | None = None
        self.kept_at_publish: list[list[str]] = []

    async def publish(self, node_id: str, deliveries: Sequence[Delivery]) -> None:
        assert self.history is not None
        self.kept_at_publish.append([b.id for b in await self.history.after("", 100)])
        await super().publish(node_id, deliveries)


async def test_broadcast_is_kept_in_the_history_before_it_is_published() -> None:
    channel = HistoryCheckingChannel()
    world = await make_world(channel)
    channel.history = world.history
    await world.node("n1")
    tv, everyone = message(broadcast=True, device_types=frozenset({"tv"})), message(broadcast=True)
    await world.worker.handle(taken(tv, everyone))
    assert await world.history.after("", 10) == [
        Broadcast(tv.id, tv.payload, tv.expires_at_ms, frozenset({"tv"})),
        Broadcast(everyone.id, everyone.payload, everyone.expires_at_ms),
    ]
    assert channel.kept_at_publish == [[tv.id, everyone.id]]
    assert world.worker.stats.kept == 2


async def test_only_live_broadcasts_are_kept(world: World) -> None:
    await world.connect("c1", "n1")
    expired = message(broadcast=True, ts_ms=NOW_MS - 120_000)
    await world.worker.handle(taken(message("c1"), expired))
    assert await world.history.after("", 10) == []
    assert world.worker.stats.kept == 0


async def test_message_resolved_to_nobody_is_just_done(world: World) -> None:
    sent = message()
    await world.worker.handle(taken(sent))
    assert world.worker.stats.stored == 0
    assert world.queue.done_receipts == [sent.id]


async def test_a_failing_node_does_not_hold_up_the_others() -> None:
    world = await make_world(FailingChannel(1000))
    await world.node("bad")
    await world.node("n1")
    await world.connect("c1", "bad")
    await world.connect("c2", "n1")
    sent = message("c1", "c2")
    await world.worker.handle(taken(sent))
    assert [d.clients for d in await world.received("n1")] == [("c2",)]
    assert world.worker.stats.publish_errors == 1
    assert await world.stored("c1") == [sent.id]
    assert world.queue.done_receipts == [sent.id]


async def test_run_takes_from_the_queue_until_stopped(world: World) -> None:
    await world.connect("c1", "n1")
    sent = message("c1")
    await world.queue.put(sent)
    running = asyncio.create_task(world.worker.run())
    received = await world.channel.receive("n1", 10, 30)
    world.worker.stop()
    await running
    assert [d.message_id for d in received] == [sent.id]
    assert world.queue.done_receipts == [sent.id]


async def test_run_survives_a_failing_batch(world: World) -> None:
    await world.node("n1")

    async def broken_nodes() -> list[NodeInfo]:
        raise RuntimeError("registry down")

    world.registry.nodes = broken_nodes  # type: ignore[method-assign]
    await world.queue.put(message("c1"))
    running = asyncio.create_task(world.worker.run())
    while world.worker.stats.errors == 0:
        await asyncio.sleep(0)
    world.worker.stop()
    await running
    assert world.queue.done_receipts == []
