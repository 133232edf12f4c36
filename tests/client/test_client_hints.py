"""What the edge cannot be made to do on demand, from a tiny real aiohttp server on loopback:
503 with Retry-After, silence, protocol-violation close codes, frames that are not messages.

The edge's own load shedding (503 with a jittered Retry-After) is being built separately; these
tests pin the client's side of that contract with a stand-in server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from zuulpush.client import Backoff, PushClient, ReplacedError

from .conftest import WAIT_S, eventually

Tiny = Callable[[web.Application], Awaitable[str]]
FAST = Backoff(base_s=0.05, cap_s=0.2)


def message(n: int) -> str:
    return orjson.dumps({"id": f"01TEST{n:04d}", "topic": "t", "ts": n, "data": n}).decode()


async def sse_stream(request: web.Request, *events: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event in events:
        await response.write(event.encode())
    return response


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_503_retry_after_is_waited_out_plus_jitter(tiny: Tiny, transport: str) -> None:
    """A shedding edge answers 503 with `Retry-After: 1`: the client comes back no sooner than
    a second later, and not much later either (a full-jitter draw on top)."""
    attempts: list[float] = []
    seen_headers: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        attempts.append(time.monotonic())
        seen_headers.append(dict(request.headers))
        if len(attempts) == 1:
            return web.json_response({"error": {"message": "shedding"}}, status=503,
                                     headers={"Retry-After": "1"})
        if transport == "sse":
            response = await sse_stream(request, f"id: 01TEST0001\ndata: {message(1)}\n\n")
            await asyncio.sleep(WAIT_S)
            return response
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(message(1))
        await ws.receive(timeout=WAIT_S)
        return ws

    app = web.Application()
    app.router.add_get("/" + transport, handler)
    base = await tiny(app)
    async with PushClient(base, "tok", transport=transport, backoff=FAST) as client:
        got = await asyncio.wait_for(client.__anext__(), WAIT_S + 2)
    assert got.id == "01TEST0001" and len(attempts) == 2
    assert 1.0 <= attempts[1] - attempts[0] <= 2.0  # not before Retry-After
    assert 1.0 <= (client.stats.last_delay_s or 0) <= 1.05
    assert seen_headers[0]["Authorization"] == "Bearer tok"


async def test_a_silent_sse_stream_counts_as_dead(tiny: Tiny) -> None:
    """No event and no keepalive for `idle_timeout_s`: reconnect, resuming after the last
    processed id (Last-Event-ID), and honouring the stream's `retry:` as a floor."""
    last_event_ids: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        last_event_ids.append(request.headers.get("Last-Event-ID"))
        n = len(last_event_ids)
        response = await sse_stream(request, "retry: 100\n\n",
                                    f"id: 01TEST{n:04d}\ndata: {message(n)}\n\n")
        await asyncio.sleep(WAIT_S)  # then silence
        return response

    app = web.Application()
    app.router.add_get("/sse", handler)
    base = await tiny(app)
    async with PushClient(base, "tok", transport="sse", idle_timeout_s=0.3,
                          backoff=FAST) as client:
        first = await asyncio.wait_for(client.__anext__(), WAIT_S)
        second = await asyncio.wait_for(client.__anext__(), WAIT_S)
        assert client.stats.last_close_reason.startswith("no traffic")
        assert 0.1 <= (client.stats.last_delay_s or 0) <= 0.1 + 0.05
    assert [first.id, second.id] == ["01TEST0001", "01TEST0002"]
    assert last_event_ids[:2] == [None, "01TEST0001"]


async def test_a_websocket_without_pings_counts_as_dead(tiny: Tiny) -> None:
    connects = 0

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connects
        connects += 1
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await asyncio.sleep(WAIT_S)  # silent: no ping, no message
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    base = await tiny(app)
    async with PushClient(base, "tok", idle_timeout_s=0.3, backoff=FAST) as client:
        await eventually(lambda: client.stats.connects >= 2)
        assert client.stats.last_close_reason.startswith("no traffic")


@pytest.mark.parametrize("code", [1008, 1009])
async def test_a_protocol_violation_close_is_logged_as_a_client_bug_and_retried(
        tiny: Tiny, code: int, caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close(code=code, message=b"violation")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    base = await tiny(app)
    with caplog.at_level(logging.ERROR, logger="zuulpush.client"):
        async with PushClient(base, "tok", backoff=FAST) as client:
            await eventually(lambda: client.stats.connects >= 2)
            assert client.stats.last_close_code == code
    assert any("client bug" in r.getMessage() for r in caplog.records)


async def test_frames_that_are_not_messages_are_skipped_and_repeats_dropped(tiny: Tiny
                                                                            ) -> None:
    acks: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for frame in ("not json", '{"no":"id"}', message(1), message(1), message(2)):
            await ws.send_str(frame)  # the repeat arrives unprocessed: dropped, not acked
        acks.append(orjson.loads(await ws.receive_str(timeout=WAIT_S)))  # 1 was processed
        await ws.send_bytes(b"\x00binary")
        await ws.send_str(message(1))  # a repeat of one already processed: acked again
        await ws.send_str(message(3))
        async for incoming in ws:
            acks.append(orjson.loads(incoming.data))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    base = await tiny(app)
    async with PushClient(base, "tok", ack_delay_s=0.05) as client:
        ids = [(await asyncio.wait_for(client.__anext__(), WAIT_S)).id for _ in range(3)]
        await eventually(lambda: client.stats.duplicates == 2)
    assert ids == ["01TEST0001", "01TEST0002", "01TEST0003"]
    assert client.stats.malformed == 2
    acked = [i for a in acks for i in (a.get("ids") or [a["id"]])]
    assert sorted(acked) == ["01TEST0001", "01TEST0001", "01TEST0002", "01TEST0003"]


async def test_an_sse_reconnect_event_with_4003_stops_the_client(tiny: Tiny) -> None:
    """The SSE form of "replaced": a `reconnect` event with code 4003 (as the edge sends it; the
    real edge is in test_client_server)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return await sse_stream(
            request, 'event: reconnect\ndata: {"code":4003,"reason":"replaced"}\n\n')

    app = web.Application()
    app.router.add_get("/sse", handler)
    base = await tiny(app)
    async with PushClient(base, "tok", transport="sse", backoff=FAST) as client:
        with pytest.raises(ReplacedError):
            await asyncio.wait_for(client.wait_closed(), WAIT_S)
    assert client.stats.connects == 1
