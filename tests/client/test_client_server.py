"""The SDK against a real server: EmbeddedApp (what `zuulpush serve` runs) on loopback, pushed to
through its real API. Every wait is bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from zuulpush.client import (
    AuthError,
    Backoff,
    ClientState,
    Message,
    PushClient,
    ReplacedError,
)
from zuulpush.edge.wsframes import Close

from .conftest import WAIT_S, Server, ServerFactory, eventually, token

FAST = Backoff(base_s=0.05, cap_s=0.5)
IDLE_S = 2.5 * 0.5  # 2.5x the servers' heartbeat interval


def client(server: Server, client_id: str, **kwargs: object) -> PushClient:
    kwargs.setdefault("backoff", FAST)
    kwargs.setdefault("idle_timeout_s", IDLE_S)
    return PushClient(server.edge, token(client_id), **kwargs)  # type: ignore[arg-type]


async def take(c: PushClient, n: int) -> list[Message]:
    async def collect() -> list[Message]:
        got = []
        async for message in c:
            got.append(message)
            if len(got) == n:
                break
        return got
    return await asyncio.wait_for(collect(), WAIT_S)


@pytest.mark.both_loops
@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_receive_in_order_and_processed_messages_leave_the_inbox(
        server: Server, cid: str, transport: str) -> None:
    sent = []
    async with client(server, cid, transport=transport) as c:
        await c.wait_connected(WAIT_S)
        sent = [await server.push(cid, {"n": n}) for n in range(5)]
        got = await take(c, 5)
        assert [m.id for m in got] == sent
        assert [m.data for m in got] == [{"n": n} for n in range(5)]
        assert got[0].topic == "default" and got[0].ts > 0 and got[0].raw.startswith("{")
        assert c.connected and c.stats.messages == 5 and c.stats.connects == 1
    assert c.state is ClientState.CLOSED and c.last_id == sent[-1]
    if transport == "ws":
        # acked over the socket: leaving the block counted the last one processed too
        await eventually(lambda: _empty(server, cid))
        assert c.stats.acks_sent == 5
    else:
        # SSE has no upstream: the resume point is the ack, taken on the next connection
        assert await server.inbox_ids(cid) == sent
        async with client(server, cid, transport="sse", last_id=c.last_id) as again:
            await again.wait_connected(WAIT_S)
            await eventually(lambda: _empty(server, cid))


async def _empty(server: Server, client_id: str) -> bool:
    return await server.inbox_ids(client_id) == []


async def test_callbacks_sync_and_async_and_acks_are_batched(server: Server, cid: str) -> None:
    seen: list[str] = []
    states: list[ClientState] = []

    async def on_message(message: Message) -> None:
        await asyncio.sleep(0)
        seen.append(message.id)

    c = client(server, cid, on_message=on_message, on_state=states.append, ack_delay_s=0.2)
    async with c:
        await c.wait_connected(WAIT_S)
        sent = [await server.push(cid, n) for n in range(20)]
        await eventually(lambda: len(seen) == 20)
        await eventually(lambda: _empty(server, cid))
    assert seen == sent and c.stats.acks_sent == 20
    # 20 acks in far fewer frames: the edge counted 20 ids; a frame each would be 20 frames
    assert server.app.edge.stats.acks == 20
    assert states == [ClientState.CONNECTING, ClientState.CONNECTED, ClientState.CLOSED]
    with pytest.raises(RuntimeError):
        await c.__anext__()  # callbacks and iteration do not mix


async def test_manual_ack_moves_the_resume_point_only_when_acked(server: Server, cid: str
                                                                 ) -> None:
    async with client(server, cid, auto_ack=False) as c:
        await c.wait_connected(WAIT_S)
        sent = [await server.push(cid, n) for n in range(3)]
        got = await take(c, 3)
        await asyncio.sleep(0.3)
        assert await server.inbox_ids(cid) == sent and c.last_id is None
        c.ack(got[0])
        c.ack(got[1].id)
        await eventually(lambda: _inbox_is(server, cid, sent[2:]))
        assert c.last_id == sent[1]
    assert await server.inbox_ids(cid) == sent[2:]  # leaving the block acks nothing by itself


async def _inbox_is(server: Server, client_id: str, ids: list[str]) -> bool:
    return await server.inbox_ids(client_id) == ids


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_go_away_resumes_without_repeats_or_losses(server: Server, cid: str,
                                                         transport: str) -> None:
    """The edge closes the connection with a hint (as a shutdown, slow-consumer or lifetime
    close does) while messages are received and not yet processed: the client waits the hint,
    resumes after the last processed id, drops the replayed repeats and misses nothing pushed
    meanwhile."""
    async with client(server, cid, transport=transport) as c:
        await c.wait_connected(WAIT_S)
        first = [await server.push(cid, n) for n in range(5)]
        got = await take(c, 2)  # 3 more wait, received and unprocessed, in the client
        await eventually(lambda: c.stats.messages == 5)
        server.app.edge.connections[cid].goaway(Close.RECONNECT, "test", base_delay_ms=400)
        await eventually(lambda: c.state is ClientState.WAITING)
        assert 0.2 <= (c.stats.last_delay_s or 0) <= 0.6  # the hint, jittered by the edge
        meanwhile = [await server.push(cid, n) for n in range(5, 8)]
        await eventually(lambda: c.stats.connects == 2)
        got += await take(c, 6)
        after = await server.push(cid, 8)
        got += await take(c, 1)
    assert [m.id for m in got] == [*first, *meanwhile, after]
    assert c.stats.duplicates >= 3 and c.stats.reconnects == 1
    assert c.stats.last_close_code == Close.RECONNECT


async def test_server_restart_on_the_same_port(servers: ServerFactory, cid: str) -> None:
    """`zuulpush serve` stops (close 4000 with reconnect_after_ms) and a new one starts on the
    same port: the client waits about the hint, reconnects to the new server, and gets what was
    pushed there while it was away from the inbox, after what it processed before."""
    old = await servers()
    changes: list[tuple[ClientState, float]] = []
    async with client(old, cid, on_state=lambda s: changes.append((s, time.monotonic()))) as c:
        await c.wait_connected(WAIT_S)
        before = [await old.push(cid, n) for n in range(3)]
        got = await take(c, 3)
        await old.stop()
        assert c.stats.last_close_code == Close.RECONNECT
        hint_s = c.stats.last_delay_s
        assert hint_s is not None and 0.5 <= hint_s <= 1.5  # jittered_ms(1000) on shutdown
        new = await servers(port=old.port)
        away = [await new.push(cid, n) for n in range(3, 6)]
        assert c.stats.connects == 1  # still waiting: these wait in the new server's inbox
        assert await new.inbox_ids(cid) == away
        await eventually(lambda: c.stats.connects == 2, WAIT_S)
        went_away = next(t for state, t in changes if state is ClientState.WAITING)
        back = next(t for state, t in changes
                    if state is ClientState.CONNECTING and t > went_away)
        assert hint_s <= back - went_away <= hint_s + 0.5  # the hint, not a backoff draw
        got += await take(c, 3)
    assert [m.id for m in got] == before + away and c.stats.duplicates == 0
    await eventually(lambda: _empty(new, cid))


async def test_a_token_provider_is_asked_again_after_a_401(server: Server, cid: str) -> None:
    handed_out: list[str] = []

    async def provider() -> str:
        # the first token has already expired, as a cached one would after a long sleep
        handed_out.append(token(cid, ttl_s=-60) if not handed_out else token(cid))
        return handed_out[-1]

    async with PushClient(server.edge, provider, backoff=FAST) as c:
        await c.wait_connected(WAIT_S)
        assert len(handed_out) == 2 and c.stats.token_refreshes == 1
        assert c.stats.last_delay_s == 0.0  # the first refresh is retried at once
        sent = await server.push(cid, "after refresh")
        assert [m.id for m in await take(c, 1)] == [sent]


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_refused_plain_token_stops_with_auth_error(server: Server, cid: str,
                                                           transport: str) -> None:
    async with PushClient(server.edge, token(cid, ttl_s=-60), transport=transport,
                          backoff=FAST) as c:
        with pytest.raises(AuthError) as refused:
            await c.wait_connected(WAIT_S)
        assert refused.value.status == 401
        with pytest.raises(AuthError):
            await c.__anext__()
        with pytest.raises(AuthError):
            await c.wait_closed()
    assert c.state is ClientState.CLOSED and c.stats.connects == 0


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_replaced_by_a_newer_connection_stops_and_does_not_fight(
        server: Server, cid: str, transport: str) -> None:
    async with client(server, cid, transport=transport) as old:
        await old.wait_connected(WAIT_S)
        async with client(server, cid, transport=transport) as new:
            await new.wait_connected(WAIT_S)
            with pytest.raises(ReplacedError) as replaced:
                await asyncio.wait_for(old.wait_closed(), WAIT_S)
            assert replaced.value.close_code == 4003
            with pytest.raises(ReplacedError):
                await old.__anext__()
            await asyncio.sleep(0.5)  # the old one stays away: the new one keeps its place
            assert new.connected and new.stats.connects == 1
            assert old.stats.connects == 1 and old.state is ClientState.CLOSED
            sent = await server.push(cid, "to the new one")
            assert [m.id for m in await take(new, 1)] == [sent]


async def test_close_from_a_callback_and_nothing_is_left_running(server: Server, cid: str
                                                                 ) -> None:
    tasks_before = asyncio.all_tasks()
    c: PushClient

    async def on_message(message: Message) -> None:
        await c.close()  # stops once this returns; this message counts as processed

    c = client(server, cid, on_message=on_message)
    await c.start()
    await c.wait_connected(WAIT_S)
    sent = [await server.push(cid, n) for n in range(3)]
    await asyncio.wait_for(c.wait_closed(), WAIT_S)
    assert c.stats.messages == 1 and c.last_id == sent[0]
    await eventually(lambda: _inbox_is(server, cid, sent[1:]))  # its ack went out before close
    await c.close()  # again: a no-op
    assert asyncio.all_tasks() == tasks_before
    with pytest.raises(RuntimeError):
        await c.start()


async def test_without_reconnect_the_iteration_ends_with_the_connection(server: Server,
                                                                         cid: str) -> None:
    async with client(server, cid, reconnect=False) as c:
        await c.wait_connected(WAIT_S)
        sent = await server.push(cid, 1)
        await eventually(lambda: c.stats.messages == 1)
        server.app.edge.connections[cid].goaway(Close.RECONNECT, "test", base_delay_ms=10)
        got = [m.id async for m in c]  # the received message, then the end
        assert got == [sent] and c.error is None and c.stats.last_close_code == 4000
        await asyncio.sleep(0.2)
        assert c.stats.connects == 1
