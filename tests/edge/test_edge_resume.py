"""A resume removes only what the device was given; a lost registration gets its inbox.

On the fake transport and the memory seams (`test_edge_protocol.Edge`). Each test sets up an
order of events that used to lose a message and checks that every one is delivered, or waits.
"""

from __future__ import annotations

import pytest

from tests.edge.test_edge_protocol import M1, M2, M3, M4, M5, M6, Device, Edge, token
from zuulpush.edge.state import State


@pytest.fixture
def edge() -> Edge:
    return Edge()


async def opened(edge: Edge, client_id: str = "c1", *, last_id: str | None = None) -> Device:
    device = edge.ws(client_id, query=f"&last_id={last_id}" if last_id else "")
    await edge.flush()
    assert device.conn.state is State.OPEN
    return device


async def push(edge: Edge, message_id: str, client_id: str = "c1") -> None:
    """What a router does: store, then deliver to the node it found."""
    await edge.store(client_id, message_id)
    edge.deliver(message_id, client_id)


async def test_an_older_message_never_given_survives_a_resume_from_a_newer_one(
        edge: Edge) -> None:
    first = await opened(edge)
    await push(edge, M1)
    await push(edge, M3)
    await edge.store("c1", M2)  # stored; its router was killed before it published
    assert [p["id"] for p in first.pushes()] == [M1, M3]
    first.lose()
    await edge.flush()
    again = await opened(edge, last_id=M3)  # the newest id the device holds
    assert [p["id"] for p in again.pushes()] == [M2]
    assert await edge.stored("c1") == [M2]


async def test_a_message_written_late_survives_a_resume_from_the_one_before_it(
        edge: Edge) -> None:
    first = await opened(edge)
    await push(edge, M5)
    await push(edge, M3)  # older, delivered after M5 (a priority, a router's retry)
    first.lose()  # the device had M5; M3 was still on its way
    await edge.flush()
    again = await opened(edge, last_id=M5)
    assert [p["id"] for p in again.pushes()] == [M3]


async def test_a_connection_that_gave_nothing_proves_nothing(edge: Edge) -> None:
    first = await opened(edge)
    await push(edge, M5)
    await edge.store("c1", M3)  # late, never published
    first.lose()
    await edge.flush()
    second = await opened(edge, last_id=M5)  # written M3, which the device never read
    second.lose()
    await edge.flush()
    third = await opened(edge, last_id=M5)  # so it resumes from M5 again
    assert [p["id"] for p in third.pushes()] == [M3]
    await push(edge, M6)
    assert [p["id"] for p in third.pushes()] == [M6]
    third.lose()
    await edge.flush()
    await opened(edge, last_id=M6)
    assert await edge.stored("c1") == []


async def test_acked_messages_write_no_marks(edge: Edge) -> None:
    device = await opened(edge)
    await push(edge, M1)
    await push(edge, M2)
    device.ack(M1)
    await edge.flush_marks()
    assert await edge.stored("c1") == [M2]
    assert len(edge.server.given) == 0
    assert edge.inbox._boxes["c1"].marks == {M2: M2}


async def test_marks_reach_the_inbox_while_the_connection_stays(edge: Edge) -> None:
    device = await opened(edge)
    await push(edge, M1)
    await push(edge, M2)
    await edge.flush_marks()
    assert edge.inbox._boxes["c1"].marks == {M1: M1, M2: M2}
    device.lose()
    await edge.flush()
    await opened(edge, last_id=M2)
    assert await edge.stored("c1") == []


async def test_a_lost_registration_is_written_again_and_gets_what_waits_for_it(
        edge: Edge) -> None:
    device, other = await opened(edge), await opened(edge, "c2")
    reg = device.conn.registration
    assert reg is not None
    # The registry loses c1 (restarted empty, or this node cut off past the TTL): a message
    # stored meanwhile finds no node and waits in the inbox.
    assert await edge.registry.unregister("c1", reg.node_id, reg.version)
    await edge.store("c1", M1, M2)
    await edge.server.registrar.refresh_registrations()
    assert await edge.registry.lookup("c1") == reg
    assert [p["id"] for p in device.pushes()] == [M1, M2]
    assert other.pushes() == []
    assert (edge.server.stats.reregistered, edge.server.stats.redelivered) == (1, 2)


async def test_a_heartbeat_that_finds_the_node_record_gone_resyncs(edge: Edge) -> None:
    await opened(edge)
    await edge.server.registrar.heartbeat_node()
    assert not edge.server.registrar.resync
    await edge.registry.remove_node(edge.server.node_id)  # what an empty Redis has
    await edge.server.registrar.heartbeat_node()
    assert edge.server.registrar.resync


async def test_a_resume_id_that_is_not_an_id_removes_nothing(edge: Edge) -> None:
    await edge.store("c1", M1, M2, M3, M4)
    first = await opened(edge)
    first.lose()
    await edge.flush()
    for bad in ("zzz", M4.lower(), M4 + "0"):
        device = edge.device()
        response = device.upgrade(f"/ws?token={token('c1')}&last_id={bad}")
        assert response.status == 400
        assert response.json()["error"]["code"] == "invalid_request"
        sse = edge.sse("c1", headers=[("last-event-id", bad)])
        sse.read()
        assert sse.response is not None and sse.response.status_code == 400
    await edge.flush()
    assert await edge.stored("c1") == [M1, M2, M3, M4]
