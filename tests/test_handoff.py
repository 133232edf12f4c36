"""`Handoff`: what waits in this region's inbox for a device that left follows it."""

from __future__ import annotations

import orjson

from core.ids import IdGenerator
from registry.base import Registration
from registry.memory import MemoryRegistry
from router.base import InboxEntry, Priority, Target
from router.handoff import Handoff
from router.stores.memory import MemoryInbox, MemoryQueue

NOW_MS = 1_700_000_000_000
TTL_S = 60.0


def entry(ids: IdGenerator, n: int) -> InboxEntry:
    message_id = ids.new(NOW_MS + n)
    payload = orjson.dumps({"id": message_id, "topic": "news", "ts": NOW_MS + n, "data": n})
    return InboxEntry(message_id, payload, NOW_MS + n + 30_000)


class Region:
    def __init__(self) -> None:
        self.registry = MemoryRegistry()
        self.inbox = MemoryInbox(5000, clock_ms=lambda: NOW_MS)
        self.peer_queue = MemoryQueue(60.0)
        self.handoff = Handoff(self.registry, self.inbox, {"b": self.peer_queue}, region="a")

    async def taken(self) -> list[str]:
        return [t.message.id for t in await self.peer_queue.take("t", 10_000, 0)]


async def test_a_client_that_left_a_node_here_has_its_inbox_forwarded_to_where_it_is() -> None:
    a, ids = Region(), IdGenerator()
    stored = [entry(ids, n) for n in range(3)]
    for e in stored:
        await a.inbox.add(["c1"], e)
    new = Registration("c1", "u", "phone", "b1", 2)
    await a.registry.register([new], TTL_S)  # what the replicator applied
    await a.handoff.arrived("b", [new])
    taken = await a.peer_queue.take("t", 10, 0)
    assert [t.message.id for t in taken] == [e.id for e in stored]
    message = taken[0].message
    assert (message.payload, message.forwarded_from, message.target) == (
        stored[0].payload, "a", Target(clients=("c1",)))
    assert (message.topic, message.priority) == ("news", Priority.HIGH)
    assert message.expires_at_ms >= stored[0].expires_at_ms
    assert [e.id for e in await a.inbox.after("c1", None, 10)] == [e.id for e in stored]
    assert (a.handoff.stats.clients, a.handoff.stats.messages) == (1, 3)
    assert await a.inbox.unhanded_many("b", ["c1"]) == [[]]


async def test_what_was_forwarded_here_or_handed_there_already_is_not_sent_again() -> None:
    a, ids = Region(), IdGenerator()
    mine, theirs, sent = entry(ids, 1), entry(ids, 2), entry(ids, 3)
    await a.inbox.add(["c1"], mine)
    await a.inbox.add(["c1"], InboxEntry(theirs.id, theirs.payload, theirs.expires_at_ms,
                                         forwarded=True))  # region b's own: b has it
    await a.inbox.add(["c1"], sent)
    await a.inbox.handed_many("b", [("c1", [sent.id])])  # a's router forwarded it already
    new = Registration("c1", "u", "phone", "b1", 2)
    await a.registry.register([new], TTL_S)
    await a.handoff.arrived("b", [new])
    assert await a.taken() == [mine.id]
    await a.handoff.arrived("b", [new])  # applied again: handed already
    assert await a.taken() == []


async def test_a_client_whose_registration_here_is_not_the_arrival_is_left_alone() -> None:
    a, ids = Region(), IdGenerator()
    await a.inbox.add(["back"], entry(ids, 1))
    arrival = Registration("back", "u", "phone", "b1", 2)
    await a.registry.register([Registration("back", "u", "phone", "a1", 3)], TTL_S)  # newer
    await a.handoff.arrived("b", [arrival])
    await a.handoff.arrived("nowhere", [arrival])  # no such peer: nothing to do
    assert await a.taken() == []


async def test_a_long_inbox_is_forwarded_whole() -> None:
    a, ids = Region(), IdGenerator()
    stored = [entry(ids, n) for n in range(1203)]
    for e in stored:
        await a.inbox.add(["c1"], e)
    new = Registration("c1", "u", "phone", "b1", 2)
    await a.registry.register([new], TTL_S)
    await a.handoff.arrived("b", [new])
    assert await a.taken() == [e.id for e in stored]
