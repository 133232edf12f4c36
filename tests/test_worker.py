"""RouterWorker over the memory seams: store first, deliver per active node, drop the expired;
across regions, forwarding to the peer region's queue, whose router stores and delivers there
(`router.regions`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from core.errors import Unavailable
from registry.base import Location, NodeInfo, NodeState, Registration
from registry.memory import MemoryRegistry
from router import worker as worker_module
from router.base import Broadcast, Delivery, InboxEntry, Message, Priority, Taken, Target
from router.config import RouterConfig
from router.regions import Regions, Route
from router.stores.memory import MemoryBroadcastLog, MemoryInbox, MemoryNodeChannel, MemoryQueue
from router.worker import RouterWorker, WorkerStats

NOW_MS = 1_700_000_000_000
TTL_S = 60.0


class SpyQueue(MemoryQueue):
    """A memory queue that remembers what was marked done."""

    def __init__(self, max_depth: int | None = None) -> None:
        super().__init__(600.0, max_depth=max_depth)
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


async def test_run_marks_a_batch_done_with_its_next_take(world: World) -> None:
    await world.connect("c1", "n1")
    first, second = message("c1"), message("c1")
    await world.queue.put(first)
    running = asyncio.create_task(world.worker.run())
    await world.channel.receive("n1", 10, 30)
    await world.queue.put(second)
    await world.channel.receive("n1", 10, 30)
    assert world.queue.done_receipts == [first.id]
    world.worker.stop()
    await running
    assert world.queue.done_receipts == [first.id, second.id]  # the last one on the way out


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


class FlakyQueue(SpyQueue):
    """Unreachable for the first `down` takes."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down

    async def take(self, consumer: str, max_n: int, timeout_s: float,
                   done: Sequence[str] = ()) -> list[Taken]:
        if self.down:
            self.down -= 1
            raise Unavailable("message queue: Redis unreachable")
        return await super().take(consumer, max_n, timeout_s, done)


async def test_an_outage_of_the_queue_is_logged_once_and_its_end_too(
        caplog: pytest.LogCaptureFixture) -> None:
    queue = FlakyQueue(down=3)
    worker = RouterWorker(queue, MemoryRegistry(clock=lambda: 0.0), MemoryInbox(10),
                          MemoryNodeChannel(10), consumer="w1", config=RouterConfig(),
                          take_timeout_s=0.001)
    with caplog.at_level(logging.WARNING, logger="router.worker"):
        running = asyncio.create_task(worker.run())
        for _ in range(2000):  # bounded: 2 s at most
            if not queue.down and caplog.records[-1].getMessage().endswith("again"):
                break
            await asyncio.sleep(0.001)
        worker.stop()
        await running
    assert [r.getMessage() for r in caplog.records] == [
        "router worker w1 cannot take from the queue (message queue: Redis unreachable); "
        "retrying", "router worker w1 takes from the queue again"]
    assert worker.stats.errors == 3


# Across regions: regions "a" and "b", each with its own registry (the replicated view: a test
# decides what each region has seen), queue, inbox, channel, history and worker, peers of each
# other; nodes "a1" (region a), "b1" and "b2" (region b) and "c1" (region c, a peer of neither).

@dataclass
class Region:
    name: str
    registry: MemoryRegistry
    queue: SpyQueue
    inbox: MemoryInbox
    channel: MemoryNodeChannel
    history: MemoryBroadcastLog
    worker: RouterWorker | None = None

    async def node(self, node_id: str, region_name: str,
                   state: NodeState = NodeState.ACTIVE) -> None:
        await self.registry.heartbeat_node(NodeInfo(node_id, "addr", region_name, state, 0),
                                           TTL_S)

    async def connect(self, client: str, node_id: str) -> None:
        await self.registry.register([Registration(client, "u", "phone", node_id, 1)], TTL_S)

    async def handle(self, *messages: Message) -> None:
        assert self.worker is not None
        await self.worker.handle(taken(*messages))

    async def route_queued(self) -> list[Message]:
        """Take what was forwarded here and route it; returns the messages taken."""
        assert self.worker is not None
        batch = await self.queue.take("w", 1000, 0)
        if batch:
            await self.worker.handle(batch)
        return [t.message for t in batch]

    async def received(self, node_id: str) -> list[Delivery]:
        return await self.channel.receive(node_id, 1000, 0)

    async def stored(self, client: str) -> list[str]:
        return [e.id for e in await self.inbox.after(client, None, 1000)]

    async def kept(self) -> list[str]:
        return [b.id for b in await self.history.after("", 1000)]

    @property
    def stats(self) -> WorkerStats:
        assert self.worker is not None
        return self.worker.stats


def region(name: str, queue: SpyQueue | None = None,
           channel: MemoryNodeChannel | None = None) -> Region:
    return Region(name, MemoryRegistry(clock=lambda: 0.0), queue or SpyQueue(),
                  MemoryInbox(100, clock_ms=lambda: NOW_MS),
                  MemoryNodeChannel(1000) if channel is None else channel,
                  MemoryBroadcastLog(100, clock_ms=lambda: NOW_MS))


@dataclass
class Fleet:
    a: Region
    b: Region

    async def connect(self, client: str, node_id: str) -> None:
        """`client` connected on `node_id`, as both regions' registries see it."""
        for r in (self.a, self.b):
            await r.connect(client, node_id)


async def make_fleet(a: Region | None = None, b: Region | None = None) -> Fleet:
    a, b = a or region("a"), b or region("b")
    for here, peer in ((a, b), (b, a)):
        here.worker = RouterWorker(here.queue, here.registry, here.inbox, here.channel,
                                   consumer="w1", config=RouterConfig(), clock_ms=lambda: NOW_MS,
                                   history=here.history, region=here.name,
                                   peers={peer.name: peer.queue})
        for node_id, region_name in (("a1", "a"), ("b1", "b"), ("b2", "b"), ("c1", "c")):
            await here.node(node_id, region_name)
    return Fleet(a, b)


@pytest.fixture
async def fleet() -> Fleet:
    return await make_fleet()


async def test_a_client_in_a_peer_region_is_stored_here_and_forwarded_there(
        fleet: Fleet) -> None:
    await fleet.connect("cb", "b1")
    sent = message("cb")
    await fleet.a.handle(sent)
    assert await fleet.a.stored("cb") == [sent.id]
    assert await fleet.a.received("b1") == []
    assert (fleet.a.stats.stored, fleet.a.stats.held, fleet.a.stats.delivered) == (1, 0, 0)
    assert fleet.a.stats.forwarded == {"b": 1}
    assert fleet.a.queue.done_receipts == [sent.id]
    assert await fleet.b.route_queued() == [dataclasses.replace(sent, forwarded_from="a")]
    assert await fleet.b.stored("cb") == [sent.id]
    assert await fleet.b.received("b1") == [Delivery(sent.id, sent.payload, clients=("cb",))]
    assert fleet.b.stats.delivered == 1 and not fleet.b.stats.forwarded


async def test_one_batch_forwards_each_message_once_per_region_with_its_clients_there(
        fleet: Fleet) -> None:
    for client, node_id in (("ca", "a1"), ("cb1", "b1"), ("cb2", "b1"), ("cb3", "b2")):
        await fleet.connect(client, node_id)
    first, second = message("ca", "cb1", "cb2", "cb3"), message("cb3", "ca")
    await fleet.a.handle(first, second)
    assert await fleet.a.received("a1") == [
        Delivery(first.id, first.payload, clients=("ca",)),
        Delivery(second.id, second.payload, clients=("ca",)),
    ]
    forwarded = await fleet.b.route_queued()
    assert [(m.id, m.target.clients, m.forwarded_from, m.dedup_key) for m in forwarded] == [
        (first.id, ("cb1", "cb2", "cb3"), "a", None), (second.id, ("cb3",), "a", None)]
    assert await fleet.b.received("b1") == [Delivery(first.id, first.payload,
                                                     clients=("cb1", "cb2"))]
    assert await fleet.b.received("b2") == [
        Delivery(first.id, first.payload, clients=("cb3",)),
        Delivery(second.id, second.payload, clients=("cb3",)),
    ]
    assert await fleet.b.stored("ca") == []  # a client of region a has no copy in b
    assert await fleet.b.stored("cb3") == [first.id, second.id]
    assert fleet.a.stats.stored == 6 and fleet.b.stats.stored == 4


async def test_an_offline_client_is_forwarded_to_every_peer_and_waits_in_each_inbox(
        fleet: Fleet) -> None:
    await fleet.connect("dead-node", "gone")  # registered, its node stopped heartbeating
    sent = message("offline", "dead-node")
    await fleet.a.handle(sent)
    await fleet.b.route_queued()
    for r in (fleet.a, fleet.b):
        for client in ("offline", "dead-node"):
            assert await r.stored(client) == [sent.id]
    assert fleet.a.stats.held == 0 and fleet.a.stats.forwarded == {"b": 1}
    assert fleet.b.stats.held == 2 and fleet.b.stats.delivered == 0
    assert await fleet.a.route_queued() == []  # never forwarded back


async def test_a_device_that_just_connected_in_a_peer_is_reached_through_its_registry(
        fleet: Fleet) -> None:
    """The replication-lag race: region a has not seen the device's new connection in b yet
    (it looks offline there), so a message routed in a must still reach it in b, live."""
    await fleet.b.connect("mover", "b1")  # region b's registry only: not replicated to a yet
    sent = message("mover")
    await fleet.a.handle(sent)
    assert fleet.a.stats.delivered == 0
    await fleet.b.route_queued()
    assert await fleet.b.received("b1") == [Delivery(sent.id, sent.payload, clients=("mover",))]
    assert await fleet.b.stored("mover") == [sent.id]


async def test_a_device_seen_in_a_peer_is_reached_where_it_is_now(fleet: Fleet) -> None:
    """Region a still sees the device on b1 (stale); region b knows it moved to b2."""
    await fleet.connect("mover", "b1")
    await fleet.b.registry.register([Registration("mover", "u", "phone", "b2", 2)], TTL_S)
    sent = message("mover")
    await fleet.a.handle(sent)
    await fleet.b.route_queued()
    assert await fleet.b.received("b1") == []
    assert await fleet.b.received("b2") == [Delivery(sent.id, sent.payload, clients=("mover",))]


async def test_a_forwarded_message_is_routed_where_it_arrives_and_never_forwarded_again(
        fleet: Fleet) -> None:
    await fleet.b.connect("back-in-a", "a1")  # b sees it in a: the origin region's own business
    sent = message("back-in-a", "offline").forward("a", ("back-in-a", "offline"))
    await fleet.b.handle(sent)
    assert await fleet.b.stored("back-in-a") == [sent.id]
    assert await fleet.b.stored("offline") == [sent.id]
    assert fleet.b.stats.held == 2 and not fleet.b.stats.forwarded
    assert await fleet.a.route_queued() == []
    assert await fleet.b.received("a1") == [] and await fleet.a.received("a1") == []


async def test_a_client_on_a_draining_node_of_a_peer_waits_in_its_inbox_there(
        fleet: Fleet) -> None:
    await fleet.b.node("b1", "b", NodeState.DRAINING)
    await fleet.connect("cb", "b1")
    sent = message("cb")
    await fleet.a.handle(sent)
    await fleet.b.route_queued()
    assert await fleet.b.stored("cb") == [sent.id]
    assert await fleet.b.received("b1") == []
    assert fleet.b.stats.held == 1


async def test_an_unconfigured_region_is_counted_logged_once_and_kept_here(
        fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    await fleet.connect("cc", "c1")
    first, second = message("cc"), message("cc")
    with caplog.at_level(logging.WARNING, logger="router.worker"):
        await fleet.a.handle(first)
        await fleet.a.handle(second)
    assert await fleet.a.stored("cc") == [first.id, second.id]
    assert await fleet.b.route_queued() == []
    for r in (fleet.a, fleet.b):
        assert await r.received("c1") == []
    assert fleet.a.stats.unroutable_region == 2 and fleet.a.stats.held == 2
    assert [r.getMessage() for r in caplog.records if "'c'" in r.getMessage()] == [
        "router in region 'a' has no peer region 'c' (--peer-region c=URL): its clients' "
        "messages wait in this region's inbox"]


async def test_a_broadcast_is_kept_and_delivered_in_each_region_by_its_own_router(
        fleet: Fleet) -> None:
    await fleet.b.node("b2", "b", NodeState.DRAINING)
    sent = message(broadcast=True, device_types=frozenset({"tv"}))
    await fleet.a.handle(sent)
    expected = [Delivery(sent.id, sent.payload, broadcast=True, device_types=frozenset({"tv"}))]
    assert await fleet.a.received("a1") == expected
    assert await fleet.a.received("b1") == [] and await fleet.a.kept() == [sent.id]
    assert await fleet.b.kept() == []  # not until region b's router takes it
    assert await fleet.b.route_queued() == [sent.forward("a")]
    assert await fleet.b.kept() == [sent.id]
    assert await fleet.b.received("b1") == expected
    assert await fleet.b.received("b2") == []  # draining
    assert await fleet.b.received("a1") == []  # region a's node: a's router delivered it
    for r in (fleet.a, fleet.b):
        assert await r.received("c1") == []
        assert (r.stats.delivered, r.stats.kept, r.stats.unroutable_nodes) == (1, 1, 1)
        assert r.inbox.clients() == 0
    assert fleet.a.stats.forwarded == {"b": 1} and not fleet.b.stats.forwarded
    assert await fleet.a.route_queued() == []


class DownQueue(SpyQueue):
    async def put_many(self, messages: Sequence[Message]) -> list[bool]:
        raise ConnectionError("region b unreachable")


async def test_a_peer_region_down_fails_nothing_here(caplog: pytest.LogCaptureFixture) -> None:
    fleet = await make_fleet(b=region("b", queue=DownQueue()))
    await fleet.connect("ca", "a1")
    await fleet.connect("cb", "b1")
    with caplog.at_level(logging.ERROR, logger="router.worker"):
        for _ in range(2):
            sent, everyone = message("ca", "cb"), message(broadcast=True)
            await fleet.a.handle(sent, everyone)
            assert await fleet.a.received("a1") == [
                Delivery(sent.id, sent.payload, clients=("ca",)),
                Delivery(everyone.id, everyone.payload, broadcast=True)]
            assert await fleet.a.stored("cb") == [sent.id]
            assert fleet.a.queue.done_receipts[-2:] == [sent.id, everyone.id]
            await fleet.a.inbox.ack("cb", [sent.id])
    assert fleet.a.stats.region_errors == 4 and fleet.a.stats.errors == 0
    assert not fleet.a.stats.forwarded
    assert len([r for r in caplog.records if "peer region b does not take" in r.getMessage()]) == 1


class HangingQueue(SpyQueue):
    """A peer region whose Redis accepts connections and never answers."""

    async def put_many(self, messages: Sequence[Message]) -> list[bool]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def test_a_peer_that_hangs_holds_up_one_batch_per_retry_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "FORWARD_TIMEOUT_S", 0.05)
    fleet = await make_fleet(b=region("b", queue=HangingQueue()))
    await fleet.connect("ca", "a1")
    loop = asyncio.get_running_loop()
    took = []
    for _ in range(3):
        sent = message("ca", "offline")
        began = loop.time()
        await fleet.a.handle(sent)
        took.append(loop.time() - began)
        assert (await fleet.a.received("a1"))[-1].message_id == sent.id
    assert took[0] >= 0.05 and max(took[1:]) < 0.05  # then skipped for PEER_RETRY_AFTER_S
    assert fleet.a.stats.region_errors == 3 and fleet.a.stats.errors == 0


class SwitchQueue(SpyQueue):
    """A peer region's queue that refuses everything while `down`."""

    down = True

    async def put_many(self, messages: Sequence[Message]) -> list[bool]:
        if self.down:
            raise ConnectionError("region b unreachable")
        return await super().put_many(messages)


async def test_what_a_peer_region_did_not_take_is_sent_once_it_takes_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut-off peer region's forwards are held (they are in this region's inboxes anyway) and
    sent, oldest first, with the first batch after it is due a try; expired ones are dropped."""
    monkeypatch.setattr(worker_module, "PEER_RETRY_AFTER_S", 0.0)
    fleet = await make_fleet(b=region("b", queue=SwitchQueue()))
    await fleet.connect("cb", "b1")
    held = [message("cb"), message("cb"), message("cb", ts_ms=NOW_MS - 120_000)]  # last: expired
    for sent in held:
        await fleet.a.handle(sent)
    assert fleet.a.stats.region_errors == 3 and not fleet.a.stats.forwarded
    fleet.b.queue.down = False  # type: ignore[attr-defined]
    later = message("cb")
    await fleet.a.handle(later)
    assert [m.id for m in await fleet.b.route_queued()] == [held[0].id, held[1].id, later.id]
    assert fleet.a.stats.forwarded == {"b": 3} and fleet.a.stats.expired == 1
    await fleet.connect("ca", "a1")
    await fleet.a.handle(message("ca"))
    assert fleet.a.stats.forwarded == {"b": 3}  # sent once


async def test_held_forwards_go_between_batches_when_the_queue_is_quiet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "PEER_RETRY_AFTER_S", 0.0)
    fleet = await make_fleet(b=region("b", queue=SwitchQueue()))
    await fleet.connect("cb", "b1")
    sent = message("cb")
    await fleet.a.handle(sent)
    fleet.b.queue.down = False  # type: ignore[attr-defined]
    worker = RouterWorker(fleet.a.queue, fleet.a.registry, fleet.a.inbox, fleet.a.channel,
                          consumer="w2", config=RouterConfig(), clock_ms=lambda: NOW_MS,
                          region="a", peers={"b": fleet.b.queue}, take_timeout_s=0.01)
    worker._unsent = fleet.a.worker._unsent  # the same held forwards, and no batch to come
    running = asyncio.create_task(worker.run())
    for _ in range(500):  # bounded: 5 s
        if worker.stats.forwarded:
            break
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(running, 5)
    assert worker.stats.forwarded == {"b": 1}
    assert [m.id for m in await fleet.b.route_queued()] == [sent.id]


async def test_held_forwards_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "UNSENT_MAX", 2)
    fleet = await make_fleet(b=region("b", queue=SwitchQueue()))
    await fleet.connect("cb", "b1")
    held = [message("cb") for _ in range(3)]
    for sent in held:
        await fleet.a.handle(sent)
    assert fleet.a.stats.unsent_dropped == 1
    assert [m.id for m in fleet.a.worker._unsent["b"]] == [held[1].id, held[2].id]


async def test_a_peer_queue_that_fills_up_part_way_counts_what_it_did_not_take() -> None:
    fleet = await make_fleet(b=region("b", queue=SpyQueue(max_depth=1)))
    first, second = message("offline"), message("offline")
    await fleet.a.handle(first, second)
    assert fleet.a.stats.forwarded == {"b": 1} and fleet.a.stats.region_errors == 1
    assert [m.id for m in await fleet.b.route_queued()] == [first.id]


async def test_without_peers_every_node_is_reached_on_the_one_channel() -> None:
    world = await make_world()
    for node_id, region_name in (("n1", "a"), ("n2", "b")):
        await world.registry.heartbeat_node(
            NodeInfo(node_id, "addr", region_name, NodeState.ACTIVE, 0), TTL_S)
    await world.connect("c2", "n2")
    direct, everyone = message("c2"), message(broadcast=True)
    await world.worker.handle(taken(direct, everyone))
    assert [d.message_id for d in await world.received("n2")] == [direct.id, everyone.id]
    assert [d.message_id for d in await world.received("n1")] == [everyone.id]
    stats = world.worker.stats
    assert (stats.unroutable_region, stats.unroutable_nodes, stats.forwarded) == (0, 0, {})


def test_routes() -> None:
    queue = MemoryQueue(600.0)
    regions = Regions(name="a", peers={"b": queue, "c": queue})

    def at(region_name: str | None, state: NodeState = NodeState.ACTIVE) -> Location:
        node = None if region_name is None else NodeInfo("n", "addr", region_name, state, 0)
        return Location(Registration("c", "u", "phone", "n", 1), node)

    assert regions.route(None) == Route(forward_to=("b", "c"))
    assert regions.route(at(None)) == Route(forward_to=("b", "c"))
    assert regions.route(at("a")) == Route(live=True)
    assert regions.route(at("a", NodeState.DRAINING)) == Route()
    assert regions.route(at("b")) == Route(forward_to=("b",))
    assert regions.route(at("c", NodeState.DRAINING)) == Route(forward_to=("c",))
    assert regions.route(at("d")) == Route(unroutable="d")
    for where in (None, at(None), at("b"), at("c")):
        assert regions.route(where, forwarded=True) == Route()
    assert regions.route(at("a"), forwarded=True) == Route(live=True)
    assert regions.route(at("d"), forwarded=True) == Route(unroutable="d")
    alone = Regions(name="a")
    assert alone.route(at("d")) == Route(live=True) and alone.route(None) == Route()
    with pytest.raises(ValueError, match="own region"):
        Regions(name="a", peers={"a": queue})


async def test_expired_and_delivered_are_also_counted_by_priority(world: World) -> None:
    await world.connect("c1", "n1")
    await world.connect("c2", "n2")
    high = dataclasses.replace(message("c1", "c2"), priority=Priority.HIGH)
    stale = dataclasses.replace(message("c1", ts_ms=NOW_MS - 60_000, ttl_s=60),
                                priority=Priority.LOW)
    await world.worker.handle(taken(high, message("c1"), stale))
    stats = world.worker.stats
    assert stats.delivered_by == {Priority.HIGH: 2, Priority.NORMAL: 1}
    assert stats.expired_by == {Priority.LOW: 1} and stats.expired == 1
    assert stats.delivered == sum(stats.delivered_by.values())
