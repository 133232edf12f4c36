"""Messages from POST /v1/push to devices, over a real `zuulpush serve` and real clients.

A device's registration is written shortly after its handshake (by the edge's registry task), so
tests that need the registry to know a device first `sync` it: push to the client by id and wait
for that message. Receiving it proves the registration is written (a live delivery needs the
registry lookup to find it; a replay runs after it).

Asserting that a device does NOT get a message: push a sentinel to it afterwards and check the
sentinel is the next thing it receives (one device's messages arrive in queue order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from .clients import (
    PushApi,
    curl_sse,
    push_api,
    sse_stream,
    ws_connect,
    ws_recv_ids,
    ws_recv_json,
    ws_url,
)
from .servers import ServerProcess

Ids = Callable[[str], str]


async def aiohttp_ws_recv_json(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 5.0
                               ) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout_s)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    return orjson.loads(message.data)  # type: ignore[no-any-return]


async def test_push_to_client_over_websocket(server: ServerProcess, ids: Ids) -> None:
    client = ids("phone")
    async with (ws_connect(ws_url(server.edge, token=server.token(client))) as ws,
                push_api(server.api, server.api_key) as api):
        status, body = await api.push(
            {"to": {"clients": [client]}, "topic": "news", "data": {"n": 1}})
        assert status == 202
        assert body["targets"] == 1
        message = await ws_recv_json(ws)
    assert message["id"] == body["id"]
    assert message["topic"] == "news"
    assert message["data"] == {"n": 1}
    assert isinstance(message["ts"], int) and abs(message["ts"] / 1000 - time.time()) < 60


async def test_push_to_user_reaches_websocket_and_sse_devices(
        server: ServerProcess, ids: Ids) -> None:
    user, phone, laptop = ids("user"), ids("phone"), ids("laptop")
    async with (aiohttp.ClientSession() as session,
                session.ws_connect(ws_url(server.edge, token=server.token(phone, user, "phone")),
                                   timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws,
                curl_sse(server.edge, server.token(laptop, user, "web")) as curl,
                push_api(server.api, server.api_key) as api):
        hello_phone = await api.send("hello", clients=[phone])
        assert (await aiohttp_ws_recv_json(ws))["id"] == hello_phone
        hello_laptop = await api.send("hello", clients=[laptop])
        assert (await curl.next_event()).id == hello_laptop

        status, body = await api.push({"to": {"users": [user]}, "data": {"for": "both"}})
        assert (status, body["targets"]) == (202, 2)
        over_ws = await aiohttp_ws_recv_json(ws)
        over_sse = await curl.next_event()
    assert over_ws["id"] == body["id"] and over_ws["data"] == {"for": "both"}
    assert over_sse.id == body["id"] and over_sse.event == "message"
    assert over_sse.json() == over_ws


async def sync_ws(api: PushApi, ws: Any, client: str) -> None:
    """Wait until the registry knows `client` (see the module docstring)."""
    hello = await api.send("sync", clients=[client])
    assert (await ws_recv_json(ws))["id"] == hello


async def test_device_types_narrow_a_user_push(server: ServerProcess, ids: Ids) -> None:
    user, phone, tv = ids("user"), ids("phone"), ids("tv")
    async with (ws_connect(ws_url(server.edge, token=server.token(phone, user, "phone"))) as p,
                ws_connect(ws_url(server.edge, token=server.token(tv, user, "tv"))) as t,
                push_api(server.api, server.api_key) as api):
        await sync_ws(api, p, phone)
        await sync_ws(api, t, tv)
        status, body = await api.push(
            {"to": {"users": [user], "device_types": ["tv"]}, "data": "tv only"})
        assert (status, body["targets"]) == (202, 1)
        assert (await ws_recv_json(t))["id"] == body["id"]
        sentinel = await api.send("sentinel", clients=[phone])
        assert (await ws_recv_json(p))["id"] == sentinel


async def test_broadcast_reaches_every_device_and_device_types_narrow_it(
        server: ServerProcess, ids: Ids) -> None:
    phone, tv, web = ids("phone"), ids("tv"), ids("web")
    async with (ws_connect(ws_url(server.edge, token=server.token(phone, ids("a"), "phone"))) as p,
                ws_connect(ws_url(server.edge, token=server.token(tv, ids("b"), "tv"))) as t,
                curl_sse(server.edge, server.token(web, ids("c"), "web")) as w,
                push_api(server.api, server.api_key) as api):
        await sync_ws(api, p, phone)
        await sync_ws(api, t, tv)
        hello = await api.send("sync", clients=[web])
        assert (await w.next_event()).id == hello

        everyone = await api.send({"all": True}, broadcast=True)
        assert (await ws_recv_json(p))["id"] == everyone
        assert (await ws_recv_json(t))["id"] == everyone
        assert (await w.next_event()).id == everyone

        tvs = await api.send({"tvs": True}, broadcast=True, device_types=["tv"])
        assert (await ws_recv_json(t))["id"] == tvs
        sentinels = [await api.send("sentinel", clients=[c]) for c in (phone, web)]
        assert (await ws_recv_json(p))["id"] == sentinels[0]
        assert (await w.next_event()).id == sentinels[1]


async def test_acked_message_is_not_replayed_but_unacked_one_is(
        server: ServerProcess, ids: Ids) -> None:
    client = ids("phone")
    url = ws_url(server.edge, token=server.token(client))
    async with push_api(server.api, server.api_key) as api:
        async with ws_connect(url) as ws:
            acked = await api.send(1, clients=[client])
            unacked = await api.send(2, clients=[client])
            assert await ws_recv_ids(ws, 2) == [acked, unacked]
            await ws.send(orjson.dumps({"type": "ack", "id": acked}).decode())
        async with ws_connect(url) as ws:
            replayed = await ws_recv_json(ws)
            assert replayed["id"] == unacked and replayed["data"] == 2
            await ws.send(orjson.dumps({"type": "ack", "ids": [unacked]}).decode())
            sentinel = await api.send("sentinel", clients=[client])
            assert (await ws_recv_json(ws))["id"] == sentinel


async def test_offline_device_gets_messages_in_order_on_reconnect(
        server: ServerProcess, ids: Ids) -> None:
    user, client, never_seen = ids("user"), ids("phone"), ids("new-phone")
    async with push_api(server.api, server.api_key) as api:
        async with ws_connect(ws_url(server.edge, token=server.token(client, user))) as ws:
            await sync_ws(api, ws, client)
            await ws.send(orjson.dumps({"type": "ack", "id": "nothing-to-ack"}).decode())
        sent = []
        for n in range(5):
            status, body = await api.push({"to": {"users": [user]}, "data": n})
            assert (status, body["targets"]) == (202, 1), body  # known device, offline now
            sent.append(body["id"])
        status, body = await api.push({"to": {"clients": [never_seen]}, "data": "first"})
        assert (status, body["targets"]) == (202, 1), body

        async with ws_connect(ws_url(server.edge, token=server.token(client, user))) as ws:
            # The sync message was never acked, so it comes first.
            received = await ws_recv_ids(ws, 6)
            assert received[1:] == sent
        async with ws_connect(ws_url(server.edge, token=server.token(never_seen, user))) as ws:
            assert (await ws_recv_json(ws))["id"] == body["id"]


async def test_sse_resumes_after_last_event_id(server: ServerProcess, ids: Ids) -> None:
    client = ids("web")
    token = server.token(client, device_type="web")
    async with push_api(server.api, server.api_key) as api:
        async with curl_sse(server.edge, token) as curl:
            sent = [await api.send(n, clients=[client]) for n in range(3)]
            assert [(await curl.next_event()).id for _ in sent] == sent
        later = await api.send(3, clients=[client])
        async with curl_sse(server.edge, token, headers=[f"Last-Event-ID: {sent[1]}"]) as curl:
            sentinel = await api.send("sentinel", clients=[client])
            events = [await curl.next_event() for _ in range(3)]
        assert [e.id for e in events] == [sent[2], later, sentinel]
        assert [e.json()["data"] for e in events] == [2, 3, "sentinel"]


async def test_sse_resume_with_aiohttp(server: ServerProcess, ids: Ids) -> None:
    client = ids("web")
    token = server.token(client, device_type="web")
    async with aiohttp.ClientSession() as session, push_api(server.api, server.api_key) as api:
        async with sse_stream(session, server.edge, token) as stream:
            first = await api.send("a", clients=[client])
            assert (await stream.next()).id == first
        second = await api.send("b", clients=[client])
        async with sse_stream(session, server.edge, token, last_event_id=first) as stream:
            event = await stream.next()
    assert (event.id, event.event, event.json()["data"]) == (second, "message", "b")


async def test_websocket_resumes_after_last_id(server: ServerProcess, ids: Ids) -> None:
    client = ids("phone")
    token = server.token(client)
    async with push_api(server.api, server.api_key) as api:
        async with ws_connect(ws_url(server.edge, token=token)) as ws:
            sent = [await api.send(n, clients=[client]) for n in range(3)]
            assert await ws_recv_ids(ws, 3) == sent
        later = await api.send(3, clients=[client])
        async with ws_connect(ws_url(server.edge, token=token, last_id=sent[1])) as ws:
            sentinel = await api.send("sentinel", clients=[client])
            assert await ws_recv_ids(ws, 3) == [sent[2], later, sentinel]


BURST = 10_000


async def test_burst_of_10k_messages_arrives_complete_and_in_order(
        server: ServerProcess, ids: Ids) -> None:
    """One sender posts 10,000 messages one after another over a keep-alive session (each sent
    only once the previous one was accepted), while the device reads: it must get every message
    exactly once, in the order the API accepted them."""
    client = ids("phone")
    started = time.monotonic()
    async with (ws_connect(ws_url(server.edge, token=server.token(client)),
                           max_queue=None) as ws,
                push_api(server.api, server.api_key) as api):
        await sync_ws(api, ws, client)

        async def send_all() -> list[str]:
            return [await api.send(i, clients=[client]) for i in range(BURST)]

        async def receive_all() -> list[dict[str, Any]]:
            return [await ws_recv_json(ws, 10) for _ in range(BURST)]

        receiving = asyncio.create_task(receive_all())
        try:
            sent = await asyncio.wait_for(send_all(), 40)
            received = await asyncio.wait_for(receiving, 20)
        finally:
            receiving.cancel()
    elapsed = time.monotonic() - started

    assert len(sent) == len(set(sent)) == BURST
    assert [m["id"] for m in received] == sent
    assert [m["data"] for m in received] == list(range(BURST))
    assert elapsed < 45, f"burst took {elapsed:.1f}s"


async def test_newer_connection_replaces_the_older_with_4003(server: ServerProcess, ids: Ids
                                                            ) -> None:
    client = ids("phone")
    url = ws_url(server.edge, token=server.token(client))
    async with ws_connect(url) as old, push_api(server.api, server.api_key) as api:
        await sync_ws(api, old, client)
        async with ws_connect(url) as new:
            with pytest.raises(ConnectionClosed) as caught:
                await asyncio.wait_for(old.recv(), 5)
            assert caught.value.rcvd is not None and caught.value.rcvd.code == 4003
            sent = await api.send("to the newer one", clients=[client])
            received = await ws_recv_json(new)
            if received["data"] == "sync":  # unacked, so replayed to the newer connection
                received = await ws_recv_json(new)
            assert received["id"] == sent


async def test_expired_message_is_never_delivered(server: ServerProcess, ids: Ids) -> None:
    client = ids("phone")
    async with push_api(server.api, server.api_key) as api:
        status, _ = await api.push({"to": {"clients": [client]}, "data": "stale", "ttl": 1})
        assert status == 202
        fresh = await api.send("fresh", clients=[client])
        await asyncio.sleep(1.2)
        async with ws_connect(ws_url(server.edge, token=server.token(client))) as ws:
            assert (await ws_recv_json(ws))["id"] == fresh


async def test_reconnecting_device_gets_an_inbox_larger_than_the_write_limit(
        server: ServerProcess, ids: Ids) -> None:
    """A device that was offline reconnects and reads as fast as it can (loopback): it should get
    its whole inbox (600 messages of 40 kB, 24 MB: more than the 1 MiB write limit plus what
    loopback socket buffers hold) without being closed as a slow consumer."""
    client = ids("tv")
    async with push_api(server.api, server.api_key) as api:
        sent = [await api.send("x" * 40_000, clients=[client]) for _ in range(600)]
    async with ws_connect(ws_url(server.edge, token=server.token(client, device_type="tv")),
                          max_size=None, max_queue=None) as ws:
        received = await ws_recv_ids(ws, len(sent), timeout_s=20)
    assert received == sent
