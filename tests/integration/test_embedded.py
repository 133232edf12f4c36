"""EmbeddedApp in the test's own event loop: the same push path without a subprocess.

Each test here runs twice, on a plain asyncio loop and on uvloop (see conftest), because an
application may embed the edge in either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from .clients import (
    OP_PING,
    http_exchange,
    push_api,
    raw_connection,
    raw_ws_handshake,
    read_frame,
    sse_stream,
    ws_connect,
    ws_recv_ids,
    ws_recv_json,
    ws_request,
    ws_url,
)
from .servers import HEARTBEAT_S, Embedded

Ids = Callable[[str], str]


async def test_push_reaches_websocket_and_sse_devices(embedded: Embedded, ids: Ids) -> None:
    user, phone, web = ids("user"), ids("phone"), ids("web")
    async with (ws_connect(ws_url(embedded.edge, token=embedded.token(phone, user))) as ws,
                aiohttp.ClientSession() as session,
                sse_stream(session, embedded.edge, embedded.token(web, user, "web")) as sse,
                push_api(embedded.api, embedded.api_key) as api):
        first = await api.send("to phone", clients=[phone])
        assert (await ws_recv_json(ws))["id"] == first
        second = await api.send("to web", clients=[web])
        assert (await sse.next()).id == second

        status, body = await api.push({"to": {"users": [user]}, "data": {"both": True}})
        assert (status, body["targets"]) == (202, 2)
        assert (await ws_recv_json(ws))["data"] == {"both": True}
        assert (await sse.next()).json()["id"] == body["id"]
    assert embedded.app.edge.stats.delivered >= 4


async def test_ack_and_resume(embedded: Embedded, ids: Ids) -> None:
    client = ids("phone")
    url = ws_url(embedded.edge, token=embedded.token(client))
    async with push_api(embedded.api, embedded.api_key) as api:
        async with ws_connect(url) as ws:
            sent = [await api.send(n, clients=[client]) for n in range(3)]
            assert await ws_recv_ids(ws, 3) == sent
            await ws.send(orjson.dumps({"type": "ack", "id": sent[0]}).decode())
        async with ws_connect(url) as ws:
            assert await ws_recv_ids(ws, 2) == sent[1:]
        async with ws_connect(ws_url(embedded.edge, token=embedded.token(client),
                                     last_id=sent[1])) as ws:
            sentinel = await api.send("sentinel", clients=[client])
            assert await ws_recv_ids(ws, 2) == [sent[2], sentinel]


async def test_heartbeat_and_rejections(embedded: Embedded, ids: Ids) -> None:
    async with raw_connection(embedded.edge) as (reader, writer):
        await raw_ws_handshake(reader, writer, f"/ws?token={embedded.token(ids('dead'))}")
        assert (await read_frame(reader, 2 * HEARTBEAT_S + 1))[0] == OP_PING
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            await read_frame(reader, 2 * HEARTBEAT_S + 1)
    answer = await http_exchange(embedded.edge, ws_request("/ws?token=nope"))
    assert answer.status == 401 and answer.json()["error"]["code"] == "invalid_token"
    assert embedded.app.edge.stats.heartbeat_timeouts == 1


async def test_stop_sends_reconnect_hints(embedded: Embedded, ids: Ids) -> None:
    async with (ws_connect(ws_url(embedded.edge, token=embedded.token(ids("phone")))) as ws,
                aiohttp.ClientSession() as session,
                sse_stream(session, embedded.edge,
                           embedded.token(ids("web"), device_type="web")) as sse):
        stopping = asyncio.create_task(embedded.app.stop(grace_s=2.0))
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(ws.recv(), 5)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 4000
        assert orjson.loads(caught.value.rcvd.reason)["reconnect_after_ms"] > 0
        event = await sse.next(5)
        assert event.event == "reconnect" and event.json()["reconnect_after_ms"] > 0
        await asyncio.wait_for(stopping, 5)
    assert embedded.app.edge.open_count() == 0


async def test_an_sse_device_resuming_gets_the_broadcast_it_missed(
        embedded: Embedded, ids: Ids) -> None:
    tv = ids("tv")
    async with aiohttp.ClientSession() as session, \
            push_api(embedded.api, embedded.api_key) as api:
        async with sse_stream(session, embedded.edge, embedded.token(tv, device_type="tv")) as sse:
            seen = await api.send("before", clients=[tv])
            assert (await sse.next()).id == seen
        missed = await api.send("for tvs", broadcast=True, device_types=["tv"])
        await api.send("for phones", broadcast=True, device_types=["phone"])
        await asyncio.sleep(0.2)  # routed while the device was away
        async with sse_stream(session, embedded.edge, embedded.token(tv, device_type="tv"),
                              last_event_id=seen) as again:
            event = await again.next()
            assert (event.id, event.json()["data"]) == (missed, "for tvs")
            with pytest.raises(TimeoutError):
                await again.next(0.3)
