"""A resuming device is replayed the broadcasts it missed, merged with its inbox (fake transport,
memory seams, no sockets)."""

from __future__ import annotations

import pytest

from router.base import Broadcast, InboxEntry, merge_replay
from router.stores.memory import MemoryBroadcastLog
from tests.edge.test_edge_protocol import M1, M2, M3, M4, M5, M6, NOW_MS, Edge, payload
from zuulpush.edge.state import State


class HistoryEdge(Edge):
    def __init__(self) -> None:
        self.history = MemoryBroadcastLog(100, clock_ms=lambda: NOW_MS)
        super().__init__(history=self.history)

    async def broadcast(self, message_id: str, *device_types: str) -> None:
        await self.history.add(Broadcast(message_id, payload(message_id), NOW_MS + 60_000,
                                         frozenset(device_types)))


@pytest.fixture
def edge() -> HistoryEdge:
    return HistoryEdge()


async def test_resume_gets_missed_broadcasts_of_its_type_only(edge: HistoryEdge) -> None:
    await edge.broadcast(M1)  # seen before the disconnect
    await edge.broadcast(M3, "tv")
    await edge.broadcast(M4)
    await edge.broadcast(M5, "ios")
    device = edge.ws("c1", device_type="tv", query=f"&last_id={M2}")
    await edge.flush()
    assert [p["id"] for p in device.pushes()] == [M3, M4]
    assert device.conn.state is State.OPEN


async def test_resume_merges_broadcasts_and_inbox_in_id_order(edge: HistoryEdge) -> None:
    await edge.store("c1", M1, M3, M6)
    await edge.broadcast(M2)
    await edge.broadcast(M4)
    await edge.broadcast(M5, "tv")
    device = edge.ws("c1", device_type="android", query=f"&last_id={M1}")
    await edge.flush()
    assert [p["id"] for p in device.pushes()] == [M2, M3, M4, M6]


async def test_connecting_without_a_last_id_gets_no_old_broadcasts(edge: HistoryEdge) -> None:
    await edge.store("c1", "m2")
    await edge.broadcast("m1")
    await edge.broadcast("m3")
    device = edge.ws("c1")
    await edge.flush()
    assert [p["id"] for p in device.pushes()] == ["m2"]


async def test_sse_last_event_id_resumes_broadcasts(edge: HistoryEdge) -> None:
    await edge.broadcast(M1)
    await edge.broadcast(M2)
    device = edge.sse("c1", headers=[("last-event-id", M1)])
    device.read()
    await edge.flush()
    assert [e["id"] for e in device.events()] == [M2]


async def test_a_broadcast_delivered_live_during_the_replay_is_sent_once(
    edge: HistoryEdge,
) -> None:
    await edge.broadcast(M2)
    device = edge.ws("c1", query=f"&last_id={M1}")
    edge.deliver(M2, broadcast=True)  # the router keeps it, then publishes it
    await edge.flush()
    assert [p["id"] for p in device.pushes()] == [M2]


def test_merge_replay_prefers_the_inbox_entry_and_orders_by_id() -> None:
    inbox = [InboxEntry("m3", b"inbox", 1), InboxEntry("m1", b"inbox", 1)]
    broadcasts = [Broadcast("m3", b"broadcast", 1), Broadcast("m2", b"b", 1, frozenset({"tv"})),
                  Broadcast("m0", b"b", 1, frozenset({"ios"}))]
    merged = merge_replay(inbox, broadcasts, "tv")
    assert [(e.id, e.payload) for e in merged] == [
        ("m1", b"inbox"), ("m2", b"b"), ("m3", b"inbox")]
